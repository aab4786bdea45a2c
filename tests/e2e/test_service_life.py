"""Service life: socket activation, sd_notify, and a restart that containers do not notice.

The test plays systemd's part, as a `.socket` unit does: it binds the agent's three sockets
once, keeps them, and starts `eci-agent run` with them as fds 3-5 (`LISTEN_FDS`,
`LISTEN_PID`, `LISTEN_FDNAMES`) and a `NOTIFY_SOCKET` it reads. Killing the agent with
SIGKILL and starting it again must leave a container that holds the container-facing socket
working, with nothing stored lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, http_over_unix, settings_with

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("host", "container", "control")

# Put the given fds at 3, 4, 5 and become the agent with this pid, as systemd's exec does.
WRAPPER = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "host:container:control"
os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[2:]])
"""


def _listening(path: str, mode: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, mode)
    s.listen(128)
    return s


class ActivatedAgent(AgentProcess):
    def __init__(self, workdir: Path, engine_socket: str) -> None:
        super().__init__(workdir, engine_socket)
        (workdir / "sockets").mkdir(mode=0o755)
        self.listen = str(workdir / "sockets" / "host.sock")
        self.container_socket = str(workdir / "sockets" / "container.sock")
        self.control = str(workdir / "sockets" / "control.sock")
        self.sockets = [
            _listening(self.listen, 0o666),
            _listening(self.container_socket, 0o666),
            _listening(self.control, 0o600),
        ]
        self.notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(20)

    def start(self, settings: dict[str, Any] | str | None = None, **env: str) -> None:
        self.settings_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(self.workdir, 0o755)
        if settings is not None:
            self._write(settings)
            import hashlib

            self.current_sha = hashlib.sha256(self._write(settings)).hexdigest()
        fds = ",".join(str(s.fileno()) for s in self.sockets)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-c", WRAPPER, fds, "run",
                    "--engine", self.engine_socket,
                    "--settings", str(self.settings_path),
                    "--runtime-dir", str(self.runtime_dir),
                    "--state-dir", str(self.workdir / "state"),
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                pass_fds=[s.fileno() for s in self.sockets],
                env={**os.environ, "NOTIFY_SOCKET": self.notify_path, **env},
            )  # fmt: skip

    def wait_notice(self, text: str) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(
                    f"no {text!r} notification; got {seen}\n{self.log()}"
                ) from None
            seen.append(data)
            if text in data.split("\n"):
                return seen

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.notify.close()


@pytest.fixture
def activated(stack: Any, tmp_path: Path) -> Iterator[ActivatedAgent]:
    agent = ActivatedAgent(tmp_path, stack.engine_socket)
    yield agent
    agent.stop()
    agent.close()


def _ping(path: str) -> bytes:
    return http_over_unix(path, b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")


def _events(agent: ActivatedAgent, *args: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "events", "--json", "--control", agent.control, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_socket_activated_agent_survives_a_kill_without_containers_noticing(
    activated, stack, direct, name
):
    cli = stack.images["dockercli"]
    activated.start(settings_with([cli]))
    activated.wait_notice("READY=1")
    assert _ping(activated.listen).startswith(b"HTTP/1.1 200")
    inode = os.stat(activated.container_socket).st_ino

    host = f"unix://{activated.listen}"
    env = {**os.environ, "DOCKER_HOST": host}
    run = subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "none",
         "-v", "/var/run/docker.sock:/var/run/docker.sock", cli, "sleep", "600"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        mounts = json.loads(direct("inspect", "-f", "{{json .Mounts}}", name, check=True).stdout)
        assert [m["Source"] for m in mounts] == [activated.container_socket]
        assert direct("exec", name, "docker", "ps", "-q").returncode == 0

        # A denial, stored before the crash.
        denied = subprocess.run(
            ["docker", "create", "--network", "none", "-v", "/var/run/docker.sock:/s",
             stack.images["busybox"]],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert denied.returncode != 0
        before = [e["id"] for e in _events(activated, "--kind", "denied", "--all")]
        assert before

        assert activated.proc is not None
        activated.proc.send_signal(signal.SIGKILL)
        activated.proc.wait(10)

        # While no agent runs, connections wait in the kept socket's backlog; start it again.
        activated.start()
        activated.wait_notice("READY=1")
        assert os.stat(activated.container_socket).st_ino == inode, "same socket, same inode"
        r = direct("exec", name, "docker", "ps", "--format", "{{.Names}}")
        assert r.returncode == 0, r.stderr
        assert name in r.stdout.split()
        after = [e["id"] for e in _events(activated, "--kind", "denied", "--all")]
        assert set(before) <= set(after), "nothing stored is lost across kill -9"
    finally:
        direct("rm", "-f", name)


def test_stopping_and_watchdog_notifications(activated, stack):
    activated.start(settings_with([]), WATCHDOG_USEC="200000")
    activated.wait_notice("READY=1")
    activated.wait_notice("WATCHDOG=1")
    activated.wait_notice("WATCHDOG=1")
    assert activated.stop() == 0
    activated.wait_notice("STOPPING=1")
    # The activated sockets are systemd's: the agent must leave their files in place.
    for path in (activated.listen, activated.container_socket, activated.control):
        assert os.path.exists(path), path


def test_sockets_passed_for_another_process_are_ignored(activated, stack, tmp_path):
    """LISTEN_PID names someone else: the agent binds its own socket as without activation."""
    own = str(tmp_path / "own.sock")
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(settings_with([])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--engine", stack.engine_socket, "--listen", own,
         "--settings", str(settings), "--runtime-dir", str(tmp_path / "run"),
         "--state-dir", str(tmp_path / "state")],
        env={**os.environ, "LISTEN_FDS": "3", "LISTEN_PID": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(own) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ping(own).startswith(b"HTTP/1.1 200")
    finally:
        proc.terminate()
        proc.wait(10)
