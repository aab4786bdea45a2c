"""The asyncio driver: sockets in, `ProxyConnection` commands out. No policy lives here.

For each accepted client connection it keeps one engine connection (taken warm from a small
pool, so a fresh client does not pay for a fresh engine connect), feeds bytes from both sides
into the connection's state object and carries out the commands it returns, in order. Writes
are followed by `drain()`, so a slow reader on one side slows the other (no unbounded
buffering of streams such as `docker cp` or `logs -f`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agent.policy.decide import Decision
from agent.proxy.connection import (
    CloseClient,
    CloseEngine,
    Command,
    Judge,
    Log,
    ProxyConnection,
    Request,
    RequestHead,
    SendClient,
    SendEngine,
    ShutdownClient,
    ShutdownEngine,
    Splice,
    Verify,
)

log = logging.getLogger("eci_agent.proxy")

READ_SIZE = 256 * 1024
#: Pending connections the kernel queues for us (dockerd itself listens with 4096).
BACKLOG = 4096
#: Wait for the peer to read only when this much is buffered for it.
HIGH_WATER = 256 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a unix socket, as the kernel tells it (SO_PEERCRED)."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    listener: str = "host"  # which of the agent's sockets it came through: host or container


def peer_of(writer: asyncio.StreamWriter, listener: str) -> Peer:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer(listener=listener)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return Peer(pid, uid, gid, listener)
    except OSError:
        return Peer(listener=listener)


class Gate(Protocol):
    """The policy seen from the driver: what to read, and the verdicts."""

    def needs_body(self, head: RequestHead) -> bool: ...

    async def judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]: ...

    async def verify(self, verify: Verify, peer: Peer) -> tuple[bool, int, str]: ...


class EnginePool:
    """A few pre-opened connections to the engine socket."""

    def __init__(self, path: str, warm: int = 4, max_idle: int = 32) -> None:
        self.path = path
        self.warm = warm
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._filling: asyncio.Task[None] | None = None

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                self._refill()
                return reader, writer
            writer.close()
        self._refill()
        return await asyncio.open_unix_connection(self.path, limit=READ_SIZE)

    def release(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take back an engine connection that is idle between requests."""
        if len(self._idle) < self.max_idle:
            self._idle.append((reader, writer))
        else:
            writer.close()

    def _refill(self) -> None:
        if self.warm <= 0 or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._idle) < self.warm:
            try:
                pair = await asyncio.open_unix_connection(self.path, limit=READ_SIZE)
            except OSError:
                return
            self._idle.append(pair)

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class _Session:
    """One client connection being served."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pool: EnginePool,
        gate: Gate,
        peer: Peer,
    ) -> None:
        self.creader = reader
        self.cwriter = writer
        self.pool = pool
        self.gate = gate
        self.peer = peer
        self.conn = ProxyConnection(gate.needs_body)
        self.ereader: asyncio.StreamReader | None = None
        self.ewriter: asyncio.StreamWriter | None = None
        self.engine_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.client_done = False
        self.engine_done = False
        self.spliced = False

    async def run(self) -> None:
        client_task: asyncio.Task[None] | None = None
        try:
            self.ereader, self.ewriter = await self.pool.acquire()
            self.engine_task = asyncio.create_task(self._engine_loop(self.ereader))
            client_task = asyncio.create_task(self._client_loop())
            await self.closed.wait()
        except (ConnectionError, OSError) as err:
            log.debug("connection ended: %s", err)
        finally:
            if client_task is not None and client_task is not asyncio.current_task():
                client_task.cancel()
                with contextlib.suppress(BaseException):
                    await client_task
            await self._release_engine()
            self.cwriter.close()
            with contextlib.suppress(Exception):
                await self.cwriter.wait_closed()

    async def _release_engine(self) -> None:
        """Give a cleanly idle engine connection back to the pool; close anything else."""
        if (
            self.ereader is not None
            and self.ewriter is not None
            and not self.spliced
            and self.conn.engine_reusable()
            and not self.ereader.at_eof()
            and not self.ewriter.is_closing()
        ):
            reader, writer, task = self.ereader, self.ewriter, self.engine_task
            self.ereader = self.ewriter = None
            self.engine_task = None
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self.pool.release(reader, writer)
            return
        await self._close_engine()

    async def _client_loop(self) -> None:
        while not self.closed.is_set():
            try:
                data = await self.creader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            await self._run(self.conn.client_data(data))
            if not data:
                self.client_done = True
                if not self.spliced:
                    # No more requests can come; what is in flight still completes.
                    if self.conn.phase.value in ("idle", "closed"):
                        self.closed.set()
                elif self.engine_done:
                    self.closed.set()
                return

    async def _engine_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if reader is not self.ereader:
                return  # this engine connection was replaced
            await self._run(self.conn.engine_data(data))
            if not data:
                self.engine_done = True
                if self.spliced and self.client_done:
                    self.closed.set()
                return

    async def _ensure_engine(self) -> asyncio.StreamWriter:
        if self.ewriter is None or self.ewriter.is_closing():
            self.ereader, self.ewriter = await self.pool.acquire()
            self.engine_done = False
            self.engine_task = asyncio.create_task(self._engine_loop(self.ereader))
        return self.ewriter

    async def _close_engine(self) -> None:
        writer, task = self.ewriter, self.engine_task
        self.ereader = self.ewriter = None
        self.engine_task = None
        if writer is not None:
            writer.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, SendClient):
                self.cwriter.write(command.data)
            elif isinstance(command, SendEngine):
                writer = await self._ensure_engine()
                writer.write(command.data)
            elif isinstance(command, Judge):
                decision, body = await self.gate.judge(command.request, self.peer)
                await self._run(self.conn.judged(decision, body))
            elif isinstance(command, Verify):
                ok, status, message = await self.gate.verify(command, self.peer)
                await self._run(self.conn.verified(ok, status, message))
            elif isinstance(command, Splice):
                self.spliced = True
            elif isinstance(command, ShutdownEngine):
                self.client_done = True
                if self.ewriter is not None and self.ewriter.can_write_eof():
                    await self._drain(force=True)
                    with contextlib.suppress(OSError):
                        self.ewriter.write_eof()
                if self.engine_done:
                    self.closed.set()
            elif isinstance(command, ShutdownClient):
                self.engine_done = True
                if self.cwriter.can_write_eof():
                    await self._drain(force=True)
                    with contextlib.suppress(OSError):
                        self.cwriter.write_eof()
                if self.client_done:
                    self.closed.set()
            elif isinstance(command, CloseEngine):
                await self._drain(force=True)
                await self._close_engine()
            elif isinstance(command, CloseClient):
                await self._drain(force=True)
                self.closed.set()
            elif isinstance(command, Log):
                log.debug("%s", command.message)
            else:  # pragma: no cover - a new command without a handler is a bug
                raise RuntimeError(f"unexpected command {command!r}")
        await self._drain()
        if self.cwriter.is_closing() and not self.closed.is_set():
            # The client is gone (a write failed): stop, whatever the engine still sends.
            self.closed.set()

    async def _drain(self, *, force: bool = False) -> None:
        """Let the peers catch up when much is buffered for them (or always, with `force`)."""
        for writer in (self.cwriter, self.ewriter):
            if writer is None or writer.is_closing():
                continue
            if force or writer.transport.get_write_buffer_size() > HIGH_WATER:
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()


class ProxyListener:
    """A unix socket that serves the proxy; `listener` names it in decisions and events."""

    def __init__(
        self,
        path: str,
        pool: EnginePool,
        gate: Gate,
        *,
        listener: str = "host",
        mode: int = 0o660,
        group: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.pool = pool
        self.gate = gate
        self.listener = listener
        self.mode = mode
        self.group = group
        self._sock = sock
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._sock is not None:
            self._server = await asyncio.start_unix_server(
                self._accept, sock=self._sock, limit=READ_SIZE, backlog=BACKLOG
            )
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, path=self.path, limit=READ_SIZE, backlog=BACKLOG
            )
        finally:
            os.umask(old_umask)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        os.chmod(self.path, self.mode)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await _Session(
                reader, writer, self.pool, self.gate, peer_of(writer, self.listener)
            ).run()
        finally:
            self._sessions.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


Starter = Callable[[], Awaitable[None]]
