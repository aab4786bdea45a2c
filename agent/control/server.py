"""The control API's socket: HTTP/1.1 over a unix socket, framed by h11, on asyncio streams.

h11 does all the HTTP (no hand parsing); this module only moves bytes, reads the caller's
credentials from the kernel, caps what a client may send, and writes `Reply`/`Stream`
answers from `agent.control.api`. Connections are kept alive; a streamed answer (events
with `follow=1`) ends the connection when the client goes away or the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator

import h11

from agent.control.api import MAX_BODY, Caller, ControlApp, Reply, Request, Stream, error
from agent.service.sockets import listen_unix

log = logging.getLogger("eci_agent.control")

READ_SIZE = 4096  # small reads: h11 applies MAX_HEAD only to an incomplete head
MAX_HEAD = 16 * 1024
IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 64
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59 if sys.platform.startswith("linux") else None)
SERVER_HEADER = ("Server", "eci-agent")


def caller_of(sock: socket.socket | None) -> Caller:
    """The peer's pid/uid/gid (SO_PEERCRED) and supplementary groups (SO_PEERGROUPS)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Caller()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return Caller()
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid, uid, gid, _peer_groups(sock))


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    if SO_PEERGROUPS is None:
        return ()
    size = 64 * 4
    while size <= 65536 * 4:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as err:
            if err.errno == 34:  # ERANGE: more groups than fit
                size *= 4
                continue
            return ()
        count = len(raw) // 4
        return struct.unpack(f"{count}I", raw[: count * 4])
    return ()


async def _next(lines: AsyncIterator[bytes]) -> bytes:
    return await anext(lines)


class _Closed(Exception):
    pass


class ControlServer:
    """Serves `app` on the unix socket `path` (mode/group as given), or on `sock`."""

    def __init__(
        self,
        path: str,
        app: ControlApp,
        *,
        mode: int = 0o600,
        group: int | None = None,
        sock: socket.socket | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self.app = app
        self.mode = mode
        self.group = group
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = self._sock or listen_unix(self.path, self.mode, self.group)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        if self._sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > self.max_connections:
                await _send_reply(
                    writer, h11.Connection(h11.SERVER), error(503, "too many connections")
                )
                return
            await _Session(reader, writer, self.app, self.idle_timeout).run()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


async def _send_reply(writer: asyncio.StreamWriter, conn: h11.Connection, reply: Reply) -> None:
    body = reply.body()
    headers = [
        SERVER_HEADER,
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *reply.headers,
    ]
    if reply.status >= 400 and conn.their_state is not h11.DONE:
        headers.append(("Connection", "close"))  # the rest of the request was not read
    try:
        data = conn.send(h11.Response(status_code=reply.status, headers=headers))
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        # e.g. answering a request h11 could not read: write it plainly and close.
        data = (
            f"HTTP/1.1 {reply.status} \r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
    writer.write(data)
    await writer.drain()


class _Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        app: ControlApp,
        idle_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.app = app
        self.idle_timeout = idle_timeout
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.caller = caller_of(writer.get_extra_info("socket"))

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.idle_timeout)
            except TimeoutError:
                raise _Closed() from None
            self.conn.receive_data(data)

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint if err.error_status_hint >= 400 else 400
                await _send_reply(self.writer, self.conn, error(status, f"bad request: {err}"))
                return
            if request is None:
                return
            if isinstance(request, Reply):
                await _send_reply(self.writer, self.conn, request)
                return
            answer = await self.app.handle(request, self.caller)
            if isinstance(answer, Stream):
                await self._stream(answer)
                return
            await _send_reply(self.writer, self.conn, answer)
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self) -> Request | Reply | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if not isinstance(event, h11.Request):
            return None
        head = event
        length = None
        for name, value in head.headers:
            if name == b"content-length":
                length = int(value)
        if length is not None and length > MAX_BODY:
            return error(413, f"request body too large (at most {MAX_BODY} bytes)")
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    return error(413, f"request body too large (at most {MAX_BODY} bytes)")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None
        method = head.method.decode("ascii", "replace")
        target = head.target.decode("ascii", "replace")
        return Request(method, target, bytes(body))

    async def _stream(self, stream: Stream) -> None:
        headers = [
            SERVER_HEADER,
            ("Content-Type", stream.content_type),
            ("Cache-Control", "no-store"),
            *stream.headers,
        ]
        self.writer.write(self.conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        await self.writer.drain()
        gone = asyncio.ensure_future(self._client_gone())
        lines = stream.lines
        try:
            while True:
                step = asyncio.ensure_future(_next(lines))
                done, _ = await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    return
                try:
                    line = step.result()
                except StopAsyncIteration:
                    break
                self.writer.write(self.conn.send(h11.Data(data=line)) or b"")
                await self.writer.drain()
            self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
            await self.writer.drain()
        finally:
            gone.cancel()
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _client_gone(self) -> None:
        """Returns when the client closed its side (anything it sends meanwhile is ignored)."""
        while await self.reader.read(READ_SIZE):
            pass
