"""Which container a client of the agent's sockets runs in: `/proc/<pid>/cgroup` at accept.

The kernel gives the pid of the process that connected (SO_PEERCRED, translated into the
agent's pid namespace); its cgroup path names the container (see `agent.policy.peers`).
This is read once per connection, while the client is connected, so the answer describes
the process that opened the connection. An unreadable cgroup file (the process already left,
or /proc is not the host's) is reported as such: callers fail closed on it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from agent.policy.peers import container_of_cgroup, may_name_container

PROC = "/proc"
_FIRST_READ = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    """`container` is the 64-hex ID, None for a host process; `problem` when unknown."""

    container: str | None = None
    problem: str | None = None


HOST = Identity()


def identity_of_pid(pid: int | None, proc: str = PROC, pidfd: int | None = None) -> Identity:
    """`pidfd` (SO_PEERPIDFD, Linux 6.5+) pins the very process that connected: when it is
    given, the answer is trusted only if that process is still alive after the read, so a
    recycled pid cannot lend its cgroup to a client that has gone."""
    if pid is None or pid <= 0:
        return Identity(problem="the kernel did not say which process connected")
    identity = _read_identity(pid, proc)
    if pidfd is not None and identity.problem is None:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            return Identity(problem=f"process {pid} exited before its container could be checked")
        except OSError:
            pass  # not allowed to signal it (cannot happen as root): keep the pid's answer
    return identity


def _read_identity(pid: int, proc: str) -> Identity:
    try:
        # os.open/os.read: a third of the cost of open() in text mode, once per connection;
        # and a small first read (asking /proc for 64 KiB at once costs ~5 µs more).
        fd = os.open(f"{proc}/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.read(fd, _FIRST_READ)
            if len(raw) == _FIRST_READ:  # a long file (many hierarchies): read it all
                parts = [raw]
                while part := os.read(fd, 65536):
                    parts.append(part)
                raw = b"".join(parts)
        finally:
            os.close(fd)
    except OSError as err:
        return Identity(problem=f"cannot read the cgroup of process {pid}: {err.strerror}")
    if not may_name_container(raw):
        return HOST
    container = container_of_cgroup(raw.decode("utf-8", "replace"))
    return HOST if container is None else Identity(container=container)
