"""`eci-agent doctor` on the real private engine: each finding reproduced, then put back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.doctor.gather import Accounts
from tests.e2e.agent_process import AgentProcess, http_over_unix
from tests.env import Stack
from tests.env._sys import free_tcp_port

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the doctor reads what only root can")


def doctor(*args: str) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is (r.returncode == 0)
    return r.returncode, doc["findings"], doc


def of(findings: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check]


def against(agent: AgentProcess, stack: Any, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    code, findings, _doc = doctor(
        "--engine", stack.engine_socket, "--control", agent.control,
        "--settings", str(agent.settings_path), *extra,
    )  # fmt: skip
    return code, findings


@contextlib.contextmanager
def changed_mode(path: str, mode: int, gid: int | None = None) -> Iterator[None]:
    st = os.stat(path)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        yield
    finally:
        os.chown(path, -1, st.st_gid)
        os.chmod(path, st.st_mode & 0o7777)


@needs_root
def test_the_healthy_parts(agent: AgentProcess, stack: Any) -> None:
    raw = http_over_unix(
        stack.engine_socket, b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    )
    version = json.loads(raw.partition(b"\r\n\r\n")[2])
    _code, findings = against(agent, stack)
    (engine,) = of(findings, "engine-reachable")
    assert engine["status"] == "ok" and version["Version"] in engine["message"]
    assert [f["status"] for f in of(findings, "agent-running")] == ["ok"]
    assert [f["status"] for f in of(findings, "agent-enforcing")] == ["ok"]
    assert [f["status"] for f in of(findings, "settings-file")] == ["ok"]
    assert [f["status"] for f in of(findings, "engine-tcp")] == ["ok"]
    assert [f["status"] for f in of(findings, "extra-engine-socket")] == ["ok"]
    # The private engine runs plain runc without userns-remap.
    assert [f["status"] for f in of(findings, "sysbox")] == ["warn"]
    assert [f["status"] for f in of(findings, "userns-remap")] == ["warn"]
    sockets = {f["message"].split(" socket ")[0]: f["status"] for f in of(findings, "agent-socket")}
    assert set(sockets.values()) == {"ok"} and len(sockets) == 3
    # Nothing failed except what the private engine's socket itself says (see below).
    failed = [f for f in findings if f["status"] == "fail"]
    assert not failed, failed


@needs_root
def test_a_socket_every_user_can_write(agent: AgentProcess, stack: Any) -> None:
    with changed_mode(stack.engine_socket, 0o666):
        # The stack's own folder (mode 0700) still keeps others out: a warning.
        code, findings = against(agent, stack)
        (finding,) = [f for f in of(findings, "engine-socket") if "every user" in f["message"]]
        assert finding["status"] == "warn" and "0666" in finding["message"]
        assert str(stack.tmpdir) in finding["message"] and finding["fix"]
        with changed_mode(str(stack.tmpdir), 0o711):
            code, findings = against(agent, stack)
            (finding,) = [f for f in of(findings, "engine-socket") if "every user" in f["message"]]
            assert finding["status"] == "fail"
            assert code == 1
    _code, findings = against(agent, stack)
    assert not [f for f in of(findings, "engine-socket") if "every user" in f["message"]]


@needs_root
def test_a_socket_group_with_members(agent: AgentProcess, stack: Any) -> None:
    accounts = Accounts()
    gid, (name, members) = next(
        (g, accounts.members(g)) for g in sorted(accounts.groups) if g and accounts.members(g)[1]
    )
    with changed_mode(stack.engine_socket, 0o660, gid), changed_mode(str(stack.tmpdir), 0o711):
        code, findings = against(agent, stack)
        (finding,) = of(findings, "engine-socket")
        assert finding["status"] == "fail", finding
        assert f"group {name}" in finding["message"] and members[0] in finding["message"]
        assert code == 1


@needs_root
def test_a_settings_file_others_could_change(agent: AgentProcess, stack: Any) -> None:
    folder = Path(tempfile.mkdtemp(prefix="eci-doc-", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        path = folder / "admin-settings.json"
        shutil.copy(agent.settings_path, path)
        os.chmod(path, 0o666)
        code, findings = against(agent, stack, "--settings", str(path))
        (finding,) = of(findings, "settings-file")
        assert finding["status"] == "fail" and "writable by group and others" in finding["message"]
        assert code == 1
        os.chmod(path, 0o644)
        os.chown(path, 65534, -1)
        _code, findings = against(agent, stack, "--settings", str(path))
        (finding,) = of(findings, "settings-file")
        assert finding["status"] == "fail" and "owned by uid 65534" in finding["message"]
        path.write_text("{not json")
        os.chown(path, 0, -1)
        _code, findings = against(agent, stack, "--settings", str(path))
        (finding,) = of(findings, "settings-file")
        assert finding["status"] == "fail" and "refused" in finding["message"]
        _code, findings = against(agent, stack, "--settings", str(folder / "missing.json"))
        assert [f["status"] for f in of(findings, "settings-file")] == ["warn"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@needs_root
def test_the_agents_control_socket_mode(agent: AgentProcess, stack: Any) -> None:
    with changed_mode(agent.control, 0o666):
        _code, findings = against(agent, stack)
        control = [f for f in of(findings, "agent-socket") if "control socket" in f["message"]]
        assert [f["status"] for f in control] == ["warn"]


@needs_root
def test_the_agent_not_running(stack: Any, tmp_path: Path) -> None:
    code, findings, _doc = doctor(
        "--engine", stack.engine_socket, "--control", str(tmp_path / "nothing.sock")
    )
    assert code == 1
    assert [f["status"] for f in of(findings, "agent-running")] == ["fail"]


@needs_root
def test_audit_mode_and_eci_off(agent: AgentProcess, stack: Any) -> None:
    agent.set_settings(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {"value": True, "locked": True},
            "eciAgent": {"auditMode": True},
        }
    )
    _code, findings = against(agent, stack)
    assert [f["status"] for f in of(findings, "agent-enforcing")] == ["warn"]
    agent.set_settings(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {"value": False, "locked": True},
        }
    )
    code, findings = against(agent, stack)
    assert [f["status"] for f in of(findings, "agent-enforcing")] == ["fail"] and code == 1


# -- a second private engine that also listens on TCP and on a second unix socket ------------


@pytest.fixture(scope="module")
def tcp_stack() -> Iterator[tuple[Stack, int, str]]:
    port = free_tcp_port()
    extra_dir = tempfile.mkdtemp(prefix="eci-doc-", dir="/tmp")
    os.chmod(extra_dir, 0o755)
    extra = os.path.join(extra_dir, "extra.sock")
    s = Stack(
        build_images=False,
        dockerd_args=(f"--host=tcp://127.0.0.1:{port}", f"--host=unix://{extra}"),
    )
    try:
        s.start()
        yield s, port, extra
    finally:
        s.stop()
        shutil.rmtree(extra_dir, ignore_errors=True)


@needs_root
def test_an_engine_that_also_listens_on_tcp(tcp_stack: tuple[Stack, int, str]) -> None:
    stack, port, extra = tcp_stack
    code, findings, _doc = doctor("--engine", stack.engine_socket, "--control", "/nonexistent")
    assert code == 1
    tcp = of(findings, "engine-tcp")
    assert [f["status"] for f in tcp] == ["fail"], tcp
    assert f"127.0.0.1:{port}" in tcp[0]["message"]
    assert str(stack.dockerd_pid) in tcp[0]["message"]
    # The second unix socket: dockerd made it root:docker 0660 in an open folder.
    others = of(findings, "extra-engine-socket")
    assert others and all(extra in f["message"] for f in others), others
    assert {f["status"] for f in others} <= {"warn", "fail"}
    with changed_mode(extra, 0o666):
        _code, findings, _doc = doctor("--engine", stack.engine_socket, "--control", "/x")
        (finding,) = [
            f for f in of(findings, "extra-engine-socket") if "every user" in f["message"]
        ]
        assert finding["status"] == "fail"


@needs_root
def test_hard_links_a_user_may_make_to_others_files_are_named(stack: Stack) -> None:
    """With fs.protected_hardlinks off, the doctor warns (and says so no longer once it is
    back on): read off the live kernel setting, which the test turns off and puts back."""
    setting = Path("/proc/sys/fs/protected_hardlinks")
    before = setting.read_text().strip()
    try:
        setting.write_text("0")
        _, findings, _ = doctor("--engine", stack.engine_socket)
        (links,) = [f for f in findings if f["check"] == "protected-links"]
        assert links["status"] == "warn", links
        assert "fs.protected_hardlinks is 0" in links["message"], links
        setting.write_text("1")
        _, findings, _ = doctor("--engine", stack.engine_socket)
        (links,) = [f for f in findings if f["check"] == "protected-links"]
        assert "protected_hardlinks" not in links["message"], links
    finally:
        setting.write_text(before)
