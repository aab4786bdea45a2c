"""The reference floor: a zero-parsing hop between a unix socket and the engine's.

    python -m bench.floor LISTEN ENGINE

Each accepted connection gets its own new engine connection and bytes are copied both ways
untouched (half-close passed on), with the same event loop (uvloop) and the same kind of
flow control as the agent. It reads no HTTP and judges nothing, so it is NOT a proxy one
could deploy; the benchmark measures it in the same run as the agent to show what any extra
hop in Python costs on this machine (the part of the agent's ratios that no parsing or
policy work can win back). It is a reference, never a target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

HIGH_WATER = 256 * 1024


class _Side(asyncio.Protocol):
    """One end of the pipe; writes what it reads to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # read before the other end was connected
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # A slow reader on one side slows the other down (no unbounded buffering).
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _EngineSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.peer
        assert client is not None and self.transport is not None
        if client.pending:
            self.transport.writelines(client.pending)
            client.pending = []
        if client.eof:
            self.transport.write_eof()


class _ClientSide(_Side):
    engine_path = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        engine = _EngineSide()
        engine.peer = self
        self.peer = engine
        loop = asyncio.get_running_loop()

        def failed(task: asyncio.Task[object]) -> None:
            if (task.cancelled() or task.exception()) and self.transport is not None:
                self.transport.close()

        task = loop.create_task(loop.create_unix_connection(lambda: engine, self.engine_path))
        task.add_done_callback(failed)


async def serve(listen: str, engine: str) -> None:
    _ClientSide.engine_path = engine
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await loop.create_unix_server(_ClientSide, path=listen, backlog=4096)
    os.chmod(listen, 0o666)
    try:
        await until_signalled()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)


async def until_signalled() -> None:
    """Wait for SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_hop(
    prog: str, argv: list[str], serve: Callable[[str, str], Coroutine[Any, Any, None]]
) -> int:
    """`python -m PROG LISTEN ENGINE`: run `serve(LISTEN, ENGINE)` on uvloop until signalled."""
    if len(argv) != 2:
        print(f"usage: python -m {prog} LISTEN ENGINE", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(serve(argv[0], argv[1]))
    except ImportError:  # pragma: no cover - uvloop is part of the venv
        asyncio.run(serve(argv[0], argv[1]))
    return 0


def main(argv: list[str]) -> int:
    return run_hop("bench.floor", argv, serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
