"""The agent's own questions to the engine (inspect, list, remove), asynchronously.

A handful of kept-alive connections to the engine socket, h11 to read the answers. The policy
asks on the hot path of a create (the image, the created container), so this avoids a worker
thread and an HTTP library stack per question.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import h11

API_VERSION = "1.41"
TIMEOUT = 30.0
READ_SIZE = 256 * 1024


class EngineError(Exception):
    """The engine answered with an error, or could not be asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


class NotFound(EngineError):
    pass


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/:@")


class EngineClient:
    def __init__(self, socket_path: str, *, keep: int = 4, timeout: float = TIMEOUT) -> None:
        self.socket_path = socket_path
        self.keep = keep
        self.timeout = timeout
        self._idle: list[_Conn] = []

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=READ_SIZE)
        return reader, writer, h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, **query: Any) -> tuple[int, bytes]:
        target = f"/v{API_VERSION}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query)
        try:
            return await asyncio.wait_for(self._roundtrip(method, target), self.timeout)
        except (TimeoutError, OSError, h11.ProtocolError) as err:
            raise EngineError(0, f"cannot ask the engine {method} {path}: {err!r}") from err

    async def _roundtrip(self, method: str, target: str) -> tuple[int, bytes]:
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate[0].at_eof() and not candidate[1].is_closing():
                conn = candidate
                break
            candidate[1].close()
        if conn is None:
            conn = await self._open()
        reader, writer, h = conn
        ok = False
        try:
            request = h11.Request(method=method, target=target, headers=[("Host", "docker")])
            writer.write(h.send(request) + (h.send(h11.EndOfMessage()) or b""))
            status, body = 0, bytearray()
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await reader.read(READ_SIZE))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise EngineError(0, "the engine closed the connection")
            ok = h.our_state is h11.DONE and h.their_state is h11.DONE
            return status, bytes(body)
        finally:
            if ok and len(self._idle) < self.keep:
                h.start_next_cycle()
                self._idle.append(conn)
            else:
                writer.close()

    async def get_json(self, path: str, **query: Any) -> Any:
        status, body = await self.request("GET", path, **query)
        return _answer(status, body, path)

    async def delete(self, path: str, **query: Any) -> None:
        status, body = await self.request("DELETE", path, **query)
        if status >= 400:
            _answer(status, body, path)

    async def inspect_container(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/containers/{_quote(name)}/json"))

    async def inspect_image(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/images/{_quote(name)}/json"))

    async def inspect_volume(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/volumes/{_quote(name)}"))

    async def inspect_plugin(self, name: str) -> dict[str, Any]:
        return dict(await self.get_json(f"/plugins/{_quote(name)}/json"))

    async def images(self) -> list[dict[str, Any]]:
        return list(await self.get_json("/images/json"))

    async def version(self) -> dict[str, Any]:
        """`GET /version`, unversioned: answered whatever API versions the engine accepts."""
        try:
            status, body = await asyncio.wait_for(self._roundtrip("GET", "/version"), self.timeout)
        except (TimeoutError, OSError, h11.ProtocolError) as err:
            raise EngineError(0, f"cannot ask the engine GET /version: {err!r}") from err
        return dict(_answer(status, body, "/version"))

    async def remove_container(self, name: str, *, force: bool = True, v: bool = False) -> None:
        await self.delete(f"/containers/{_quote(name)}", force=int(force), v=int(v))

    async def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


def _answer(status: int, body: bytes, path: str) -> Any:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if status == 404:
        message = doc.get("message") if isinstance(doc, dict) else None
        raise NotFound(404, message or f"not found: {path}")
    if status >= 400:
        message = doc.get("message") if isinstance(doc, dict) else body[:200].decode("latin-1")
        raise EngineError(status, str(message))
    return doc
