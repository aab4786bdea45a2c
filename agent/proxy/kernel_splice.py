"""Copy a spliced connection's bytes inside the kernel: splice(2) through a pipe per direction.

After attach, exec start or `/session` the proxy no longer reads what flows: it only copies
bytes both ways until each side has finished. The driver then hands the two sockets over
here (once nothing waits in user space for either side), and the bytes go from one socket
into a pipe and from the pipe into the other socket without being copied into the agent:
on Linux 6.5+ unix sockets take the pipe's pages as they are, so a stream costs the agent a
few syscalls per MiB instead of two copies and a Python callback per read.

Half-close is kept: when one side finishes sending, the other side's write half is shut
down once the pipe is empty, and the other direction goes on. An error on either socket
(a peer that went away) ends both directions, as the user-space driver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
from collections.abc import Callable

SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Bytes moved per splice call; also the pipe size asked for (the kernel's default is 64 KiB).
PIPE_SIZE = 1024 * 1024


def available() -> bool:
    """Whether this Python and OS can splice (Linux, Python 3.10+)."""
    return hasattr(os, "splice") and hasattr(os, "pipe2")


class _Direction:
    """One way of the connection: `src` socket -> pipe -> `dst` socket."""

    def __init__(
        self,
        owner: KernelSplice,
        src: socket.socket,
        dst: socket.socket,
        finished: bool,
        client_side: bool,
    ) -> None:
        self.owner = owner
        self.client_side = client_side  # src is the client's socket
        self.src_sock = src
        self.dst_sock = dst
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.r, self.w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.chunk = PIPE_SIZE
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over /proc/sys/fs/pipe-max-size for an unprivileged agent
            self.chunk = 64 * 1024
        self.pending = 0  # bytes in the pipe, not yet in dst
        self.eof = finished  # src has finished sending
        self.done = finished  # and dst's write half is shut down (or was before the handoff)
        self.reading = False
        self.writing = False

    def start(self) -> None:
        if not self.done:
            self._read_on()

    def _read_on(self) -> None:
        if not self.reading:
            self.owner.loop.add_reader(self.src, self.readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.owner.loop.remove_reader(self.src)
            self.reading = False

    def _write_on(self) -> None:
        if not self.writing:
            self.owner.loop.add_writer(self.dst, self.writable)
            self.writing = True

    def _write_off(self) -> None:
        if self.writing:
            self.owner.loop.remove_writer(self.dst)
            self.writing = False

    def readable(self) -> None:
        try:
            n = os.splice(self.src, self.w, self.chunk, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as err:
            self.owner.fail(err)
            return
        if n == 0:
            self.eof = True
            self._read_off()
        else:
            self.pending += n
        self.writable()

    def writable(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.r, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                # dst is full: stop reading src until it drains (flow control both ways).
                self._read_off()
                self._write_on()
                return
            except OSError as err:
                self.owner.fail(err)
                return
        self._write_off()
        if self.eof:
            if self.client_side and not self.owner.down.done and _hung_up(self.src):
                # Not a half-close: the client closed its socket, so nobody reads what the
                # engine would still send (the user-space driver learns it at its next write;
                # here it is known now, and the engine's side is let go at once).
                self.owner.fail(ConnectionResetError("the client closed the connection"))
                return
            self._finish()
        else:
            self._read_on()

    def _finish(self) -> None:
        self._read_off()
        self._write_off()
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                self.dst_sock.shutdown(socket.SHUT_WR)
        self.owner.check_done()

    def close(self) -> None:
        self._read_off()
        self._write_off()
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.r = self.w = -1


def _hung_up(fd: int) -> bool:
    """After EOF on a unix socket: did the peer close (POLLHUP) rather than shut down writing?
    (Only meaningful while our own write half is open: shutting it down also gives POLLHUP.)"""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


class KernelSplice:
    """Both directions of one connection. Owns `client` and `engine` (file descriptors the
    caller duplicated for it) and closes them when done; `on_done` is called once, after."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: int,
        engine: int,
        on_done: Callable[[], None],
        *,
        client_finished: bool = False,
        engine_finished: bool = False,
    ) -> None:
        self.loop = loop
        self.client = socket.socket(fileno=client)
        self.engine = socket.socket(fileno=engine)
        self.on_done: Callable[[], None] | None = on_done
        self.closed = False
        self.error: OSError | None = None
        try:
            self.up = _Direction(self, self.client, self.engine, client_finished, True)
        except OSError:
            self.client.close()
            self.engine.close()
            raise
        try:
            self.down = _Direction(self, self.engine, self.client, engine_finished, False)
        except OSError:
            self.up.close()
            self.client.close()
            self.engine.close()
            raise

    def start(self) -> None:
        self.up.start()
        self.down.start()
        self.check_done()

    def check_done(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def fail(self, err: OSError) -> None:
        self.error = err
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.close()
        self.down.close()
        for sock in (self.client, self.engine):
            with contextlib.suppress(OSError):
                sock.close()
        done, self.on_done = self.on_done, None
        if done is not None:
            done()
