"""The systemd service contract, without libsystemd: socket activation, sd_notify, journald.

* **Socket activation** (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`): systemd (or anything
  that plays its part) binds the agent's sockets and hands them over as fds 3, 4, ... named by
  `FileDescriptorName=` (`host`, `container`, `control`). The sockets then outlive the agent:
  after a restart (upgrade, crash) the new agent serves the SAME socket inodes, so a container
  whose bind mount holds the container-facing socket keeps working. A socket file the agent
  recreated itself would be a new inode, which existing bind mounts never see.
* **Notifications** (`NOTIFY_SOCKET`): `READY=1` once the listeners serve, `STOPPING=1`, and
  `WATCHDOG=1` every half `WATCHDOG_USEC` while the event loop turns.
* **journald** (`JOURNAL_STREAM`): log lines carry `<N>` priority prefixes, which journald
  reads as PRIORITY; its own timestamps replace ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3
NAMES = ("host", "container", "control")


class ActivationError(Exception):
    """The activation environment is inconsistent; the message says what to fix."""


def parse_listen_fds(env: Mapping[str, str], pid: int) -> dict[str, int]:
    """Names -> fd numbers that were passed to process `pid` (pure: reads only `env`).

    Empty when the environment does not address this process, as sd_listen_fds(3) does.
    Unnamed fds are named by position (`host`, `container`, `control`)."""
    if "LISTEN_FDS" not in env:
        return {}
    if env.get("LISTEN_PID") != str(pid):
        return {}
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={env['LISTEN_FDS']!r} is not a number") from None
    if count <= 0:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    out: dict[str, int] = {}
    for i in range(count):
        name = names[i] if i < len(names) and names[i] not in ("", "unknown") else None
        if name is None:
            if i >= len(NAMES):
                raise ActivationError(f"fd {SD_LISTEN_FDS_START + i} has no name")
            name = NAMES[i]
        if name in out:
            raise ActivationError(f"two sockets named {name!r} were passed (LISTEN_FDNAMES)")
        out[name] = SD_LISTEN_FDS_START + i
    return out


def activated_sockets(env: Mapping[str, str] | None = None) -> dict[str, socket.socket]:
    """The listening unix stream sockets systemd passed, by name; the variables are cleared
    so that children do not inherit them."""
    env = os.environ if env is None else env
    fds = parse_listen_fds(env, os.getpid())
    if env is os.environ:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    out: dict[str, socket.socket] = {}
    for name, fd in fds.items():
        try:
            mode = os.fstat(fd).st_mode
        except OSError as err:
            raise ActivationError(f"passed fd {fd} ({name}) is not open: {err}") from None
        if not stat.S_ISSOCK(mode):
            raise ActivationError(f"passed fd {fd} ({name}) is not a socket")
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ActivationError(f"passed fd {fd} ({name}) is not a unix stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"passed fd {fd} ({name}) is not listening")
        sock.setblocking(False)
        os.set_inheritable(fd, False)
        out[name] = sock
    return out


def socket_path(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, bytes):
        name = name.decode(errors="surrogateescape")
    if not name or name.startswith("\0"):
        raise ActivationError("a passed socket has no path (abstract or unnamed)")
    return str(name)


class Notifier:
    """sd_notify(3): datagrams to `NOTIFY_SOCKET` (a path, or `@abstract`). No-op without it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        usec = env.get("WATCHDOG_USEC", "")
        watch_pid = env.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and watch_pid in (None, str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000
        self._task: asyncio.Task[None] | None = None

    def notify(self, state: str) -> bool:
        if self.address is None:
            return False
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s,
        ):
            s.sendto(state.encode(), self.address)
            return True
        return False

    def start_watchdog(self) -> None:
        if self.watchdog_interval is None or self.address is None:
            return
        interval = self.watchdog_interval

        async def ping() -> None:
            while True:
                self.notify("WATCHDOG=1")
                await asyncio.sleep(interval)

        self._task = asyncio.get_running_loop().create_task(ping())

    async def stop(self) -> None:
        self.notify("STOPPING=1")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message` per line, as journald parses a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def under_journald(env: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is the journal (systemd sets JOURNAL_STREAM to its device:inode)."""
    env = os.environ if env is None else env
    stream = env.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"
