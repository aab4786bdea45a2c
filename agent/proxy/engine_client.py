"""The agent's own questions to the engine (inspect, list, remove), asynchronously.

A handful of kept-alive connections to the engine socket, each an asyncio protocol whose
answers llhttp reads (httptools, the parser the proxy itself uses). The policy asks on the hot
path of a create (the image, then the created container), so a question costs one write and
one parse: no worker thread, no task per question, no HTTP library stack in Python.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from typing import Any

import httptools

API_VERSION = "1.41"
TIMEOUT = 30.0


class EngineError(Exception):
    """The engine answered with an error, or could not be asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


class NotFound(EngineError):
    pass


class _Lost(Exception):
    """The connection ended before the answer did; `replied`: some of the answer had come."""

    def __init__(self, message: str, replied: bool) -> None:
        super().__init__(message)
        self.replied = replied


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/:@")


def _request_bytes(method: str, target: str) -> bytes:
    """The request head (no body). Refuses what would not be one request line."""
    if not method.isalpha() or not target.startswith("/"):
        raise EngineError(0, f"cannot ask the engine {method} {target!r}: not a request")
    if any(c <= " " or c >= "\x7f" for c in target):
        raise EngineError(0, f"cannot ask the engine {method} {target!r}: unsafe target")
    return f"{method} {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode("ascii")


class _Conn(asyncio.Protocol):
    """One connection to the engine: at most one question at a time, answers read by llhttp."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.body: list[bytes] = []
        self.received = False  # some of the current answer came
        self.begun = 0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # nothing asked: the engine never speaks first
            self._broken(_Lost("the engine sent data unasked", replied=True))
            return
        self.received = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            self._broken(_Lost(f"unreadable answer: {err!r}", replied=True))

    def eof_received(self) -> bool:
        self._broken(_Lost("the engine closed the connection", replied=self.received))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._broken(_Lost(f"the connection was lost: {exc!r}", replied=self.received))

    # -- llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.begun += 1
        if self.begun > 1:
            self._broken(_Lost("the engine sent more than one answer", replied=True))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser, waiter = self.parser, self.waiter
        self.parser = None
        self._stop_timer()
        if parser is None or waiter is None or waiter.done():
            return
        status, keep_alive = parser.get_status_code(), parser.should_keep_alive()
        waiter.set_result((status, b"".join(self.body), keep_alive))

    # -- ours ---------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def ask(self, request: bytes, timeout: float) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Send `request`; the future's result is (status, body, keep-alive). A timer, not
        `asyncio.timeout`: the gate's coroutines start outside any task (`server._start`)."""
        assert self.transport is not None and self.parser is None
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.body = []
        self.received = False
        self.begun = 0
        self.timer = loop.call_later(timeout, self._timed_out)
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        self.parser = None
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._broken(TimeoutError("no answer in time"))

    def _broken(self, err: Exception) -> None:
        waiter = self.waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)


class EngineClient:
    def __init__(self, socket_path: str, *, keep: int = 4, timeout: float = TIMEOUT) -> None:
        self.socket_path = socket_path
        self.keep = keep
        self.timeout = timeout
        self._idle: list[_Conn] = []

    async def _open(self) -> _Conn:
        # A unix socket connects at once or fails at once (EAGAIN: the engine's listen backlog
        # is full), so there is nothing to time out, and no `asyncio.wait_for` (which, in
        # Python 3.11, can swallow a cancellation that comes as the connection is made).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(self.socket_path)
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_unix_connection(_Conn, sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn

    async def request(self, method: str, path: str, **query: Any) -> tuple[int, bytes]:
        target = f"/v{API_VERSION}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query)
        return await self._ask(method, target, path)

    async def _ask(self, method: str, target: str, shown: str) -> tuple[int, bytes]:
        request = _request_bytes(method, target)
        try:
            return await self._roundtrip(request)
        except (TimeoutError, OSError, _Lost) as err:
            raise EngineError(0, f"cannot ask the engine {method} {shown}: {err!r}") from err

    async def _roundtrip(self, request: bytes) -> tuple[int, bytes]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable:
                conn.close()
                continue
            try:
                return await self._on(conn, request)
            except _Lost as err:
                # A kept-alive connection the engine had closed before it read the question
                # (nothing of an answer came): a GET is asked again on another one. Once an
                # answer has begun, or for anything else, never ask twice.
                if err.replied or not request.startswith(b"GET "):
                    raise
        return await self._on(await self._open(), request)

    async def _on(self, conn: _Conn, request: bytes) -> tuple[int, bytes]:
        ok = False
        try:
            status, body, keep_alive = await conn.ask(request, self.timeout)
            ok = keep_alive
            return status, body
        finally:
            conn.waiter = None
            if ok and conn.usable and conn.parser is None and len(self._idle) < self.keep:
                self._idle.append(conn)
            else:
                conn.close()

    async def get_json(self, path: str, **query: Any) -> Any:
        status, body = await self.request("GET", path, **query)
        return _answer(status, body, path)

    async def delete(self, path: str, **query: Any) -> None:
        status, body = await self.request("DELETE", path, **query)
        if not 200 <= status < 300:
            _answer(status, body, path)

    async def inspect_container(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/containers/{_quote(name)}/json"))

    async def inspect_image(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/images/{_quote(name)}/json"))

    async def inspect_volume(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/volumes/{_quote(name)}"))

    async def inspect_plugin(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/plugins/{_quote(name)}/json"))

    async def inspect_service(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/services/{_quote(name)}"))

    async def inspect_network(self, name: str, scope: str = "") -> dict[str, Any]:
        query = {"scope": scope} if scope else {}
        return dict(await self.get_json(f"/networks/{_quote(name)}", **query))

    async def images(self) -> list[dict[str, Any]]:
        return list(await self.get_json("/images/json"))

    async def version(self) -> dict[str, Any]:
        """`GET /version`, unversioned: answered whatever API versions the engine accepts."""
        status, body = await self._ask("GET", "/version", "/version")
        return dict(_answer(status, body, "/version"))

    async def remove_container(self, name: str, *, force: bool = True, v: bool = False) -> None:
        await self.delete(f"/containers/{_quote(name)}", force=int(force), v=int(v))

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _answer(status: int, body: bytes, path: str) -> Any:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if status == 404:
        message = doc.get("message") if isinstance(doc, dict) else None
        raise NotFound(404, message or f"not found: {path}")
    if not 200 <= status < 300:  # an error, or an answer no question of ours expects
        message = doc.get("message") if isinstance(doc, dict) else body[:200].decode("latin-1")
        raise EngineError(status, str(message or f"unexpected answer to {path}"))
    return doc
