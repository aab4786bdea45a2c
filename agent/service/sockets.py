"""Listening unix sockets the agent makes itself (the systemd-activated ones come ready), and
the open-files limit that its connections count against."""

from __future__ import annotations

import contextlib
import os
import resource
import socket

BACKLOG = 4096


def listen_unix(path: str, mode: int, group: int | None = None) -> socket.socket:
    """Bind `path` afresh and listen; never open to others, even for a moment.

    The socket file is made under umask 0177 (owner only), then given its group and mode.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_open_files_limit(cap: int = 1 << 20) -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (at most `cap`), as Go
    programs such as dockerd do at start: every client of the proxy holds two descriptors (its
    own and its engine connection), a stream handed to the kernel four more (two pipes), and
    the usual soft limit of 1024 would refuse clients long before the machine runs out.
    Returns (before, after); nothing changes where the hard limit is the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, want
    return soft, soft
