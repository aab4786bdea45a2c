"""The systemd contract: which fds are ours, notifications, journald lines."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from agent.service.systemd import (
    ActivationError,
    JournalFormatter,
    Notifier,
    activated_sockets,
    parse_listen_fds,
)

PID = 4242


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, {}),  # for another process
        ({"LISTEN_FDS": "0", "LISTEN_PID": str(PID)}, {}),
        ({"LISTEN_FDS": "1", "LISTEN_PID": str(PID)}, {"host": 3}),
        (
            {"LISTEN_FDS": "3", "LISTEN_PID": str(PID)},
            {"host": 3, "container": 4, "control": 5},
        ),
        (
            {"LISTEN_FDS": "2", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "container:host"},
            {"container": 3, "host": 4},
        ),
        (
            {"LISTEN_FDS": "2", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "control:unknown"},
            {"control": 3, "container": 4},
        ),
    ],
)
def test_which_fds_are_ours(env, expected) -> None:
    assert parse_listen_fds(env, PID) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "x", "LISTEN_PID": str(PID)},
        {"LISTEN_FDS": "2", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "host:host"},
        {"LISTEN_FDS": "4", "LISTEN_PID": str(PID)},  # the fourth has no name
    ],
)
def test_inconsistent_activation_is_an_error(env) -> None:
    with pytest.raises(ActivationError):
        parse_listen_fds(env, PID)


@pytest.mark.parametrize("kind", ["file", "udp", "unlistened"])
def test_a_passed_fd_that_is_not_a_listening_unix_socket_is_refused(
    tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        thing: object = open(tmp_path / "f", "w")  # noqa: SIM115
        fd = thing.fileno()  # type: ignore[attr-defined]
    elif kind == "udp":
        thing = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fd = thing.fileno()  # type: ignore[attr-defined]
    else:
        thing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = thing.fileno()  # type: ignore[attr-defined]
    saved = os.dup(3)  # fd 3 belongs to someone in this process: put it back afterwards
    try:
        os.dup2(fd, 3)
        with pytest.raises(ActivationError, match="fd 3"):
            activated_sockets({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
    finally:
        os.dup2(saved, 3)
        os.close(saved)
        thing.close()  # type: ignore[attr-defined]


def test_notifier_sends_datagrams_to_a_path_and_knows_its_watchdog(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval == 1.5
        assert n.notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_notifier_without_socket_or_for_another_pid() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.address is None and n.watchdog_interval is None and not n.notify("READY=1")
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


def test_journal_lines_carry_priorities() -> None:
    record = logging.LogRecord("eci_agent.gate", logging.ERROR, "f", 1, "a\nb", None, None)
    assert JournalFormatter().format(record) == "<3>eci_agent.gate: a\n<3>b"
    record = logging.LogRecord("x", logging.INFO, "f", 1, "hello", None, None)
    assert JournalFormatter().format(record) == "<6>x: hello"
