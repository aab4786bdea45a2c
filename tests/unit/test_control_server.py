"""The control socket for real: the agent's services on a private unix socket, a stand-in engine
answering `/version`, and the admin's commands (`eci-agent status`, `eci-agent events`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent import native
from agent.cli.main import main
from agent.control.client import AgentNotRunning, ControlClient, Refused
from agent.control.wiring import AgentServices, ServicesConfig
from agent.events.store import EventStore
from agent.settings.loader import Loaded
from agent.settings.loader import Refused as SettingsRefused
from agent.settings.model import AdminSettings, EnhancedContainerIsolation
from agent.settings.state import SettingsState

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
ENGINE_VERSION = {"Version": "99.1.0", "ApiVersion": "1.99", "MinAPIVersion": "1.24", "Os": "linux"}


def settings(locked: bool, value: bool = True) -> AdminSettings:
    return AdminSettings(
        eci=EnhancedContainerIsolation(value=value, locked=locked),
        source="/etc/eci-agent/admin-settings.json",
        sha256="ab" * 32,
        configuration_file_version=2,
    )


class Rig:
    """A loop in a thread running the services and a stand-in engine."""

    def __init__(self, tmp: Path, *, engine: bool = True, group: int | None = None) -> None:
        self.tmp = tmp
        self.control = str(tmp / "control.sock")
        self.engine_path = str(tmp / "engine.sock")
        self.engine_up = engine
        self.state = SettingsState()
        self.state.apply(Loaded(settings(locked=True)), 1_700_000_000.0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine_server: asyncio.AbstractServer | None = None
        config = ServicesConfig(
            state_dir=tmp,
            control_path=self.control,
            engine_socket=self.engine_path,
            settings_path=tmp / "admin-settings.json",
            listeners={"host": str(tmp / "agent.sock")},
            control_group=group,
        )
        self.services = AgentServices(config, self.state)
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _engine(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"GET /version HTTP/1.1\r\n"), head
                body = json.dumps(ENGINE_VERSION).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        writer.close()

    async def _start(self) -> None:
        if self.engine_up:
            self.engine_server = await asyncio.start_unix_server(self._engine, self.engine_path)
        await self.services.start()

    async def _stop(self) -> None:
        await self.services.stop()
        if self.engine_server is not None:
            self.engine_server.close()

    def client(self) -> ControlClient:
        return ControlClient(self.control, timeout=5)

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # unix socket paths must stay short
        yield Path(d)


@pytest.fixture
def rig(tmp: Path) -> Iterator[Rig]:
    r = Rig(tmp)
    yield r
    r.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_reports_the_policy_and_what_the_engine_says(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", "--json", "--control", rig.control)
    assert code == 0
    doc = json.loads(out)
    assert doc["enforcing"] is True and doc["locked"] is True and doc["settingsError"] is None
    assert doc["settings"]["sha256"] == "ab" * 32
    assert doc["settings"]["lastReload"] == "2023-11-14T22:13:20.000000Z"
    assert doc["engine"]["reachable"] is True
    assert doc["engine"]["version"] == "99.1.0" and doc["engine"]["apiVersion"] == "1.99"
    assert doc["listeners"] == {"host": str(rig.tmp / "agent.sock"), "control": rig.control}
    assert doc["events"]["path"] == str(rig.tmp / "events.db")
    # which code this process runs: the mypyc build, or pure Python and why (agent/native.py)
    assert doc["agent"]["code"]["summary"] == native.status().describe()
    assert doc["agent"]["code"]["compiled"] is native.status().compiled

    code, out, _ = cli(capsys, "status", "--control", rig.control)
    assert code == 0
    assert "Enhanced Container Isolation: on (locked by the administrator)" in out
    assert "Docker Engine 99.1.0 (API 1.99)" in out


def test_the_gui_reads_the_same_status(rig: Rig) -> None:
    from gui.control_client import ControlClient as GuiClient
    from gui.state import Level, view_of

    view = view_of(GuiClient(rig.control).status())
    assert view.level is Level.ENFORCING and "locked by your administrator" in view.lines


def test_an_unreachable_engine_is_reported_and_recorded_once(tmp: Path) -> None:
    r = Rig(tmp, engine=False)
    try:
        for _ in range(2):
            doc = r.client().get("/v1/status")
            assert doc["engine"]["reachable"] is False and doc["engine"]["error"]
        assert r.services.store.flush()
        down = r.services.store.query(kinds=["engine-unreachable"])
        assert len(down) == 1 and r.engine_path in down[0].message
    finally:
        r.close()


def test_settings_changes_are_recorded(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    services, state = rig.services, rig.state
    services.settings_changed(state.apply(Loaded(settings(locked=False)), 1_700_000_100.0))
    services.settings_changed(state.apply(Loaded(settings(locked=False)), 1_700_000_200.0))
    services.settings_changed(
        state.apply(SettingsRefused("/etc/x.json", "line 3: trailing comma"), 1_700_000_300.0)
    )
    assert services.store.flush()
    code, out, _ = cli(capsys, "events", "--json", "--control", rig.control)
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds == ["agent-started", "policy-reloaded", "settings-rejected"]  # unchanged: none
    assert events[1]["settingsSha256"] == "ab" * 32 and events[1]["extra"]["locked"] is False
    assert "trailing comma" in events[2]["message"]
    assert events[2]["extra"]["error"] == "line 3: trailing comma"
    status = rig.client().get("/v1/status")
    assert status["settingsError"] == "line 3: trailing comma"

    code, out, _ = cli(capsys, "events", "--control", rig.control, "--kind", "settings-rejected")
    assert code == 0 and out.startswith("#3 ") and "settings-rejected" in out


def test_the_eci_switch_is_refused_when_locked_and_recorded_when_not(rig: Rig) -> None:
    client = rig.client()
    with pytest.raises(Refused) as refused:
        client.post("/v1/eci", {"enabled": False})
    assert refused.value.status == 403 and "locked by the administrator" in str(refused.value)
    assert rig.state.current.eci_enabled is True

    rig.state.apply(Loaded(settings(locked=False)), 1_700_000_100.0)
    answer = client.post("/v1/eci", {"enabled": False})
    assert answer["enforcing"] is False and rig.state.current.eci_enabled is False
    assert client.get("/v1/status")["enforcing"] is False
    assert rig.services.store.flush()
    [switched] = rig.services.store.query(kinds=["eci-switched"])
    assert switched.uid == os.geteuid() and switched.pid == os.getpid()
    with pytest.raises(Refused) as refused:
        client.post("/v1/repull", {"image": "alpine:3"})
    assert refused.value.status == 501


def test_follow_streams_events_and_the_server_notices_the_client_leaving(rig: Rig) -> None:
    store = rig.services.store
    assert store.flush()
    seen: list[dict[str, Any]] = []
    started = threading.Event()

    def follow() -> None:
        lines = rig.client().lines(f"/v1/events?follow=1&after={store.last_id}")
        started.set()
        for doc in lines:
            seen.append(doc)
            if len(seen) == 2:
                lines.close()  # type: ignore[attr-defined]
                return

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(follow)
        started.wait(5)
        time.sleep(0.1)
        store.record("denied", "one")
        store.record("denied", "two")
        done.result(10)
    assert [d["message"] for d in seen] == ["one", "two"]
    server = rig.services.server
    assert server is not None
    deadline = time.monotonic() + 5
    while server._tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server._tasks, "the streaming connection outlived its client"


def raw(path: str, data: bytes, timeout: float = 5) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def test_http_keep_alive_caps_and_bad_requests(rig: Rig) -> None:
    get = b"GET /v1/features HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw(rig.control, get + get + last)
    assert reply.count(b"HTTP/1.1 200 ") == 2 and b"HTTP/1.1 404 " in reply
    assert b'"message": "no such endpoint: /v1/nothing"' in reply

    big = b"POST /v1/eci HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
    assert raw(rig.control, big).startswith(b"HTTP/1.1 413 ")
    chunked = b"POST /v1/eci HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"10000\r\n" + b"x" * 0x10000 + b"\r\n" + b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"
    assert raw(rig.control, chunked).startswith(b"HTTP/1.1 413 ")
    assert raw(rig.control, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge_head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n"
    assert raw(rig.control, huge_head).startswith(b"HTTP/1.1 431 ")


def test_socket_modes(tmp: Path) -> None:
    r = Rig(tmp)
    try:
        st = os.stat(r.control)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        r.close()
    assert not os.path.exists(r.control)
    gid = grp.getgrnam("nogroup").gr_gid
    r = Rig(tmp, group=gid)
    try:
        st = os.stat(r.control)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    finally:
        r.close()


NOBODY_CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
from agent.control.client import ControlClient, ControlError, Refused
try:
    ControlClient(sys.argv[2]).get("/v1/status")
except Refused as err:
    print("refused", err.status, err)
except ControlError as err:
    print(type(err).__name__, err)
else:
    print("allowed")
"""


def as_nobody(path: str) -> str:
    def drop() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    proc = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", NOBODY_CLIENT, str(ROOT), path],
        preexec_fn=drop,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_is_refused_by_the_socket_mode_and_by_the_agent(rig: Rig) -> None:
    os.chmod(rig.tmp, 0o755)
    out = as_nobody(rig.control)
    assert out.startswith("AccessDenied permission denied"), out
    os.chmod(rig.control, 0o666)  # past the file mode: the agent's own SO_PEERCRED check
    out = as_nobody(rig.control)
    assert out.startswith("refused 403 uid 65534 may not use the eci-agent control API"), out


def test_the_commands_say_when_the_agent_is_not_running(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp / "none.sock")
    code, out, err = cli(capsys, "status", "--control", path)
    assert code == 3 and out == ""
    assert (
        f"eci-agent status: eci-agent is not running (nothing answers on its control socket {path})"
        in err
    )
    code, _, err = cli(capsys, "events", "--control", path)
    assert code == 3 and "not running" in err
    with pytest.raises(AgentNotRunning):
        ControlClient(path).get("/v1/status")


def test_events_all_pages_through_everything(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    store: EventStore = rig.services.store
    for i in range(1500):
        store.record("denied", str(i))
    assert store.flush()
    code, out, _ = cli(capsys, "events", "--json", "--all", "--control", rig.control)
    assert code == 0
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert ids == list(range(1, 1502))
    code, out, _ = cli(capsys, "events", "--json", "--limit", "3", "--control", rig.control)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1499, 1500, 1501]
