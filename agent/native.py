"""The proxy's hot modules compiled with mypyc, used only when built from the sources in this tree.

`make native` (`scripts/build-native`) compiles `MODULES` with mypyc into `build/native/`
(never next to the sources, where Python would import a `.so` before its `.py`) and writes
`build/native/manifest.json` last: the sha256 of every source the compiler read for them (the
compiled modules and every `agent` module they import, directly or not), the interpreter's
extension suffix, and the binaries. At `import agent`, `install()` reads the manifest and hashes
those sources again: only when every hash matches, the interpreter is the one built for and the
shared library loads does it put a finder first on `sys.meta_path` that loads exactly the
manifest's modules from `build/native/`. Otherwise everything runs from the `.py` files and
`status()` says why (the agent logs it at startup; `eci-agent doctor` shows it). So an edited
source is never served by an old binary: the edit turns the whole build off until it is rebuilt.
All or nothing: the compiled modules share one library and check that the classes they are
handed are their own compiled ones, so old binaries are never mixed with new sources.

`ECI_AGENT_NATIVE=0` forces pure Python (to compare, or to rule the build out).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: The modules compiled: the per-connection state object and the driver, and the policy code a
#: create is judged with (see docs/BENCHMARKS.md). `agent.policy.goslice` stays Python (mypyc
#: cannot subclass `list`); a compiled function refuses a value of another type than annotated
#: (TypeError), which the gate turns into a refusal: fail closed, like any policy error.
MODULES = (
    "agent.proxy.connection",
    "agent.proxy.server",
    "agent.policy.gojson",
    "agent.policy.mounts",
    "agent.policy.imageref",
    "agent.policy.images",
    "agent.policy.decide",
    "agent.policy.isolation",
)
#: Set to 0 (or off, no, false) to run pure Python whatever is built.
ENV = "ECI_AGENT_NATIVE"
FORMAT = 1
MANIFEST = "manifest.json"
#: The checkout this package lives in, and where the build goes.
ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "build" / "native"


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled modules are in use, and if not, why."""

    compiled: bool
    reason: str  # why not (empty when compiled)
    modules: tuple[str, ...] = ()
    stale: bool = False  # a build exists but does not match the sources (or cannot load)

    def describe(self) -> str:
        if self.compiled:
            return f"compiled with mypyc ({', '.join(self.modules)})"
        return f"pure Python ({self.reason})"


_status = NativeStatus(False, "agent.native.install() was not called")


def status() -> NativeStatus:
    return _status


# -- sources ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source of an `agent` module in the checkout at `root`, or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The `agent` modules that `module` imports anywhere in its file (top level, functions,
    TYPE_CHECKING blocks: mypy reads them all), with their parent packages."""
    import ast

    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from agent.policy import gojson` imports a module too
            found.update(f"{target}.{alias.name}" for alias in node.names)
    out: set[str] = set()
    for name in found:
        if name == "agent" or name.startswith("agent."):
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def source_closure(modules: Iterable[str], root: Path = ROOT) -> dict[str, Path]:
    """`modules` and every `agent` module they import, transitively: module -> source file."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue  # a name imported from a module, not a module
        seen[name] = path
        todo.extend(_imports(name, path) - seen.keys())
    return seen


def source_hashes(modules: Iterable[str], root: Path = ROOT) -> dict[str, str]:
    """Relative path -> sha256 of every source the compiled `modules` depend on."""
    closure = source_closure(modules, root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(closure.values(), key=lambda p: p.as_posix())
    }


# -- loading --------------------------------------------------------------------------------


class _Finder:
    """A `sys.meta_path` finder: finds exactly the modules of a verified build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def check(native_dir: Path = NATIVE_DIR, root: Path = ROOT) -> tuple[NativeStatus, dict[str, Path]]:
    """Whether the build in `native_dir` matches the sources in `root`: the status, and the
    module -> binary map to load when it does."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return NativeStatus(False, f"{ENV}={os.environ[ENV]}"), {}
    manifest_path = native_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        return NativeStatus(False, "not built; `make native` compiles the hot modules"), {}
    except (OSError, ValueError) as err:
        return NativeStatus(False, f"unreadable {manifest_path}: {err}", stale=True), {}
    try:
        why, files = _verify(manifest, native_dir, root)
    except (KeyError, TypeError, AttributeError, ValueError):
        why, files = f"{manifest_path} is malformed", {}
    if not why:
        why = _untrusted(native_dir, (manifest_path, *files.values()))
    if why:
        return NativeStatus(False, why + "; run `make native` again", stale=True), {}
    return NativeStatus(True, "", tuple(manifest["modules"])), files


def _verify(manifest: Any, native_dir: Path, root: Path) -> tuple[str, dict[str, Path]]:
    """What does not match (empty if all does), and the module -> binary map."""
    if manifest["format"] != FORMAT:
        return f"unknown manifest format {manifest['format']!r}", {}
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    if manifest["extension_suffix"] != suffix:
        return f"built for another Python ({manifest['extension_suffix']}, this is {suffix})", {}
    sources = dict(manifest["sources"])
    if not sources:
        raise ValueError("no sources")
    for rel, digest in sources.items():
        try:
            now: str | None = sha256_file(root / str(rel))
        except OSError:
            now = None
        if now != digest:
            return f"{rel} {'changed' if now is not None else 'is gone'} since the build", {}
    files: dict[str, Path] = {}
    for module, info in dict(manifest["binaries"]).items():
        file = native_dir / str(info["file"])
        if not file.resolve().is_relative_to(native_dir.resolve()):
            return f"{file} is outside {native_dir}", {}
        try:
            have: str | None = sha256_file(file)
        except OSError:
            have = None
        if have != info["sha256"]:
            return f"{file} is missing or not the one built", {}
        files[str(module)] = file
    compiled = manifest["modules"]
    if not isinstance(compiled, list) or not compiled or not set(compiled) <= files.keys():
        raise ValueError("modules")
    return "", files


def _untrusted(native_dir: Path, paths: Iterable[Path]) -> str:
    """Why the build may not be loaded into this process (empty: it may). The agent runs as
    root: a build that another user could have written (the folder, the manifest or a binary
    owned by someone other than root or this user, or writable by group or others) would be
    their code running as root, so it is not used."""
    me = os.geteuid()
    for path in (native_dir, *paths):
        try:
            st = path.lstat()
        except OSError as err:
            return f"cannot check {path}: {err.strerror}"
        if st.st_uid not in (0, me):
            return f"{path} belongs to uid {st.st_uid}, not to root or this user"
        if st.st_mode & 0o022:
            return f"{path} is writable by group or others ({oct(st.st_mode & 0o777)})"
    return ""


def install(native_dir: Path = NATIVE_DIR, root: Path = ROOT) -> NativeStatus:
    """Serve the compiled modules when the build matches the sources (see the module doc).
    Must run before any of them is imported (agent/__init__.py calls it)."""
    global _status
    if _status.compiled:
        return _status
    if any(m in sys.modules for m in MODULES):
        _status = NativeStatus(False, "a hot module was imported before agent.native.install()")
        return _status
    try:
        found, files = check(native_dir, root)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with a build, run the sources
        found, files = NativeStatus(False, f"cannot check the build: {err!r}", stale=True), {}
    if found.compiled:
        finder = _Finder(files)
        sys.meta_path.insert(0, finder)
        try:
            # Load the shared library now (not the modules: their code runs when imported), so
            # that a binary that cannot load leaves pure Python rather than a failed import.
            for name in files:
                if name not in found.modules:
                    importlib.import_module(name)
        except ImportError as err:
            sys.meta_path.remove(finder)
            for name in files:
                sys.modules.pop(name, None)
            found = NativeStatus(False, f"the build does not load: {err}", stale=True)
    _status = found
    return _status


# -- building -------------------------------------------------------------------------------


def build_prerequisite_missing() -> str:
    """What this machine lacks to build (mypyc, setuptools, Python.h, a C compiler), or ""."""
    import shutil
    import sysconfig

    try:
        import mypyc.build  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as err:
        return f"mypyc or setuptools missing ({err})"
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").is_file():
        return f"no Python.h in {include!r}"
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        return "no C compiler (cc)"
    return ""


def build(root: Path = ROOT, native_dir: Path = NATIVE_DIR) -> int:
    """Compile `MODULES` with mypyc into `native_dir` (replaced whole, manifest written last)."""
    import shutil
    import tempfile

    lacking = build_prerequisite_missing()
    if lacking:
        print(f"native: {lacking}; not built", file=sys.stderr)
        return 1
    from mypyc.build import mypycify
    from setuptools import setup

    before = source_hashes(MODULES, root)
    paths = [str(module_file(m, root)) for m in MODULES]
    native_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="native-", dir=native_dir.parent))
    out = work / "out"
    cwd = os.getcwd()
    try:
        os.chdir(root)  # mypy reads its configuration (pyproject.toml) from here
        extensions = mypycify(
            ["--config-file", str(root / "pyproject.toml"), *paths],
            target_dir=str(work / "c"),
            group_name="eci_agent_native",
        )
        for ext in extensions:
            # mypyc builds with -Werror: a warning that a newer compiler adds would leave the
            # agent in pure Python. Warnings are shown, not fatal.
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-Werror"]
        # Not from the checkout: setup() would read its pyproject.toml, which this
        # (possibly older) setuptools need not understand; the build needs nothing from it.
        os.chdir(work)
        setup(
            name="eci-agent-native",
            ext_modules=extensions,
            script_args=[
                "build_ext",
                "--build-lib",
                str(out),
                "--build-temp",
                str(work / "obj"),
            ],
        )
        os.chdir(cwd)
        if source_hashes(MODULES, root) != before:
            print("native: sources changed during the build; not installed", file=sys.stderr)
            return 1
        binaries: dict[str, dict[str, object]] = {}
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        for file in sorted(out.rglob("*" + suffix)):
            rel = file.relative_to(out).as_posix()
            module = rel[: -len(suffix)].replace("/", ".")
            binaries[module] = {"file": rel, "sha256": sha256_file(file)}
        missing = [m for m in MODULES if m not in binaries]
        if missing:
            print(f"native: mypyc built no {', '.join(missing)}", file=sys.stderr)
            return 1
        import mypy.version

        manifest = {
            "format": FORMAT,
            "modules": list(MODULES),
            "extension_suffix": suffix,
            "python": sys.version.split()[0],
            "mypyc": mypy.version.__version__,
            "binaries": binaries,
            "sources": before,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        # Whatever the umask: only the owner may write what a root agent loads (`_untrusted`).
        for path in (out, *out.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o022)
        old = native_dir.with_name(native_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if native_dir.exists():
            native_dir.rename(old)
        out.rename(native_dir)
        shutil.rmtree(old, ignore_errors=True)
    except (SystemExit, Exception) as err:  # noqa: BLE001 - a failed build leaves pure Python
        print(f"native: build failed ({err}); {native_dir} left as it was", file=sys.stderr)
        return 1
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    print(f"native: compiled {', '.join(MODULES)} into {native_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["build"], ["build", "--force"]):
        found, _ = check()
        if found.compiled and "--force" not in args:
            print(f"native: up to date ({found.describe()}); --force rebuilds")
            return 0
        return build()
    if args == ["can-build"]:
        missing = build_prerequisite_missing()
        print(missing or "this machine can build the compiled modules")
        return 1 if missing else 0
    if args == ["status"]:
        found, _ = check()
        print(found.describe())
        return 0 if found.compiled else 1
    print("usage: scripts/build-native [--force | --status | --can-build]", file=sys.stderr)
    return 2
