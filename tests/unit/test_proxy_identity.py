"""Who connected: the cgroup of the peer's pid, trusted only while the pinned process lives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.proxy.identity import HOST, identity_of_pid
from agent.proxy.server import peer_of

CONTAINER = "a" * 64


def test_a_dead_pinned_process_does_not_lend_a_recycled_pids_cgroup(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pidfd = os.pidfd_open(child.pid)
    child.wait()
    try:
        # `os.getpid()` stands for the process that got the pid number afterwards: alive,
        # readable, and a host process. The pinned (dead) one decides.
        identity = identity_of_pid(os.getpid(), pidfd=pidfd)
    finally:
        os.close(pidfd)
    assert identity.container is None
    assert identity.problem is not None and "exited" in identity.problem


def test_a_live_pinned_process_is_read(tmp_path: Path) -> None:
    pidfd = os.pidfd_open(os.getpid())
    try:
        assert identity_of_pid(os.getpid(), pidfd=pidfd) == HOST
    finally:
        os.close(pidfd)


@pytest.mark.parametrize(
    ("text", "container"),
    [
        ("0::/user.slice/session-1.scope\n", None),
        (f"0::/eci-env-x/{CONTAINER}\n", CONTAINER),
        (f"12:memory:/docker/{CONTAINER}\n0::/\n", CONTAINER),
        (f"0::/system.slice/docker-{CONTAINER}.scope\n", CONTAINER),
    ],
)
def test_the_cgroup_file_names_the_container(tmp_path: Path, text: str, container: Any) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(text)
    identity = identity_of_pid(4242, proc=str(tmp_path))
    assert identity.container == container and identity.problem is None


def test_an_unreadable_cgroup_is_a_problem_not_a_host(tmp_path: Path) -> None:
    identity = identity_of_pid(4242, proc=str(tmp_path))
    assert identity != HOST and "cannot read" in (identity.problem or "")


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


def test_a_client_that_connected_and_left_its_connection_to_a_child_is_not_known(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        # The client connects, forks a child that keeps the connection, and exits.
        code = (
            "import os, socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "if os.fork() == 0:\n"
            "    time.sleep(5); os._exit(0)\n"
            "os._exit(0)\n"
        )
        subprocess.run([sys.executable, "-c", code, path], check=True, timeout=30)
        conn, _ = server.accept()
        with conn:
            peer = peer_of(_Transport(conn), "container")
    assert peer.pid is not None
    assert peer.identity.container is None and peer.identity.problem is not None


@pytest.mark.parametrize("filler_lines", [0, 10, 400])  # 400 lines: ~16 KiB, past one read
def test_the_whole_cgroup_file_is_read_however_long(tmp_path: Path, filler_lines: int) -> None:
    """The container's line may come last in a long file (many hierarchies): it is found."""
    lines = [f"{i + 100}:name=filler{i}:/user.slice/session-{i}.scope" for i in range(filler_lines)]
    lines.append(f"0::/system.slice/docker-{CONTAINER}.scope")
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text("\n".join(lines) + "\n")
    identity = identity_of_pid(4242, proc=str(tmp_path))
    assert identity.container == CONTAINER, identity


def test_asking_who_connected_leaves_the_connection_open(tmp_path: Path) -> None:
    """peer_of reads the credentials through a socket object of its own over the transport's
    descriptor: the descriptor must stay open and usable afterwards, every time."""
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        for _ in range(3):
            peer = peer_of(_Transport(a), "host")
            assert peer.pid == os.getpid() and peer.uid == os.getuid()
            assert peer.identity == HOST
        a.sendall(b"still here")
        assert b.recv(100) == b"still here"
        assert a.fileno() >= 0


def test_a_connection_already_gone_is_not_known(tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    b.close()
    a.close()  # fileno() is -1 now
    peer = peer_of(_Transport(a), "host")
    assert peer.pid is None and peer.identity != HOST
    assert peer.identity.problem is not None
