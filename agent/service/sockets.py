"""Listening unix sockets the agent makes itself (the systemd-activated ones come ready)."""

from __future__ import annotations

import contextlib
import os
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
