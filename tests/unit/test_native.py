"""The compiled hot modules are used only when their build matches the sources (agent/native.py).

These tests use a fake build (a manifest and placeholder binaries in a temp dir); whether the
real build in build/native is used is checked against what was imported.
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)


def fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout with two sources and a build of them: (native dir, root)."""
    root = tmp_path / "src"
    (root / "agent" / "proxy").mkdir(parents=True)
    (root / "agent" / "__init__.py").write_text("")
    (root / "agent" / "proxy" / "__init__.py").write_text("")
    (root / "agent" / "proxy" / "connection.py").write_text("from agent.proxy import helper\n")
    (root / "agent" / "proxy" / "helper.py").write_text("X = 1\n")
    out = tmp_path / "native"
    (out / "agent" / "proxy").mkdir(parents=True)
    binaries = {}
    for module in ("agent.proxy.connection", "grp__mypyc"):
        rel = module.replace(".", "/") + SUFFIX
        (out / rel).write_bytes(b"not really a shared library")
        binaries[module] = {"file": rel, "sha256": native.sha256_file(out / rel)}
    manifest = {
        "format": native.FORMAT,
        "modules": ["agent.proxy.connection"],
        "extension_suffix": SUFFIX,
        "binaries": binaries,
        "sources": native.source_hashes(["agent.proxy.connection"], root),
    }
    (out / native.MANIFEST).write_text(json.dumps(manifest))
    return out, root


def test_sources_are_the_module_and_what_it_imports(tmp_path: Path) -> None:
    _, root = fake_build(tmp_path)
    assert sorted(native.source_hashes(["agent.proxy.connection"], root)) == [
        "agent/__init__.py",
        "agent/proxy/__init__.py",
        "agent/proxy/connection.py",
        "agent/proxy/helper.py",
    ]


def test_the_real_closure_holds_the_compiled_modules_and_their_imports() -> None:
    closure = native.source_closure(native.MODULES, REPO)
    assert set(native.MODULES) <= closure.keys()
    assert {"agent.policy.decide", "agent.proxy.grpc_inspect", "agent"} <= closure.keys()
    assert "agent.cli.main" not in closure


def test_a_matching_build_is_used(tmp_path: Path) -> None:
    out, root = fake_build(tmp_path)
    found, files = native.check(out, root)
    assert found.compiled and found.modules == ("agent.proxy.connection",)
    assert files["agent.proxy.connection"] == out / f"agent/proxy/connection{SUFFIX}"
    assert "compiled with mypyc" in found.describe()


@pytest.mark.parametrize("rel", ["agent/proxy/connection.py", "agent/proxy/helper.py"])
def test_an_edited_source_turns_the_build_off(tmp_path: Path, rel: str) -> None:
    out, root = fake_build(tmp_path)
    with (root / rel).open("a") as f:
        f.write("# edited\n")
    found, files = native.check(out, root)
    assert not found.compiled and found.stale and files == {}
    assert f"{rel} changed since the build" in found.reason
    assert found.describe().startswith("pure Python")


def test_a_deleted_source_turns_the_build_off(tmp_path: Path) -> None:
    out, root = fake_build(tmp_path)
    (root / "agent/proxy/helper.py").unlink()
    found, _ = native.check(out, root)
    assert not found.compiled and "agent/proxy/helper.py is gone" in found.reason


@pytest.mark.parametrize("damage", ["replace", "delete"])
def test_a_binary_other_than_the_one_built_turns_the_build_off(tmp_path: Path, damage: str) -> None:
    out, root = fake_build(tmp_path)
    binary = out / f"grp__mypyc{SUFFIX}"
    if damage == "replace":
        binary.write_bytes(b"another one, same length.. !")
    else:
        binary.unlink()
    found, _ = native.check(out, root)
    assert not found.compiled and found.stale and "not the one built" in found.reason


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    out, root = fake_build(tmp_path)
    manifest = json.loads((out / native.MANIFEST).read_text())
    manifest["extension_suffix"] = ".cpython-39-x86_64-linux-gnu.so"
    (out / native.MANIFEST).write_text(json.dumps(manifest))
    found, _ = native.check(out, root)
    assert not found.compiled and "another Python" in found.reason


@pytest.mark.parametrize("text", ["{", "[]", "null", '{"format": 1}'])
def test_a_malformed_manifest_is_not_used(tmp_path: Path, text: str) -> None:
    out, root = fake_build(tmp_path)
    (out / native.MANIFEST).write_text(text)
    found, _ = native.check(out, root)
    assert not found.compiled and found.stale


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sources", []),
        ("sources", "x"),
        ("sources", {"agent/proxy/connection.py": 5}),
        ("binaries", []),
        ("binaries", {"m": "x"}),
        ("modules", []),
        ("modules", "agent.proxy.connection"),
        ("modules", ["agent.other"]),
        ("format", None),
    ],
)
def test_a_manifest_with_wrong_fields_is_not_used(tmp_path: Path, key: str, value: Any) -> None:
    out, root = fake_build(tmp_path)
    manifest = json.loads((out / native.MANIFEST).read_text())
    manifest[key] = value
    (out / native.MANIFEST).write_text(json.dumps(manifest))
    found, files = native.check(out, root)
    assert not found.compiled and found.stale and files == {}


def test_no_build(tmp_path: Path) -> None:
    found, _ = native.check(tmp_path / "nothing", tmp_path)
    assert not found.compiled and not found.stale and "make native" in found.reason


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_environment_can_turn_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    out, root = fake_build(tmp_path)
    monkeypatch.setenv(native.ENV, value)
    found, _ = native.check(out, root)
    assert not found.compiled and not found.stale and native.ENV in found.reason


def test_a_build_that_does_not_load_leaves_pure_python(tmp_path: Path) -> None:
    out, root = fake_build(tmp_path)
    # In a fresh interpreter, with agent/native.py loaded on its own (not through `import
    # agent`, which would install the real build): the placeholder binary fails to load.
    code = f"""
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("native_under_test", {str(native.__file__)!r})
n = sys.modules["native_under_test"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(n)
s = n.install(Path({str(out)!r}), Path({str(root)!r}))
assert not s.compiled and s.stale and "does not load" in s.reason, s
assert not any(isinstance(f, n._Finder) for f in sys.meta_path)
assert "grp__mypyc" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_what_is_imported_is_what_status_says() -> None:
    import agent.proxy.connection as connection
    import agent.proxy.server as server

    compiled = native.status().compiled
    for module in (connection, server):
        assert str(module.__file__).endswith(SUFFIX) == compiled, module.__file__
        if compiled:
            assert Path(str(module.__file__)).is_relative_to(native.NATIVE_DIR)


@pytest.mark.parametrize("what", ["dir", "manifest", "binary"])
def test_a_build_others_could_write_is_not_loaded(tmp_path: Path, what: str) -> None:
    """The agent runs as root: a build that group or others may write is their code."""
    out, root = fake_build(tmp_path)
    target = {
        "dir": out,
        "manifest": out / native.MANIFEST,
        "binary": out / f"grp__mypyc{SUFFIX}",
    }[what]
    target.chmod(target.stat().st_mode | 0o002)
    found, files = native.check(out, root)
    assert not found.compiled and files == {}
    assert "writable by group or others" in found.reason and str(target) in found.reason


def test_a_binary_outside_the_build_is_not_loaded(tmp_path: Path) -> None:
    out, root = fake_build(tmp_path)
    elsewhere = tmp_path / f"evil{SUFFIX}"
    elsewhere.write_bytes(b"x")
    manifest = json.loads((out / native.MANIFEST).read_text())
    manifest["binaries"]["grp__mypyc"] = {
        "file": str(elsewhere),
        "sha256": native.sha256_file(elsewhere),
    }
    (out / native.MANIFEST).write_text(json.dumps(manifest))
    found, _ = native.check(out, root)
    assert not found.compiled and "is outside" in found.reason
