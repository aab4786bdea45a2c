"""A deliberately tiny HTTP/1.1 client over unix sockets, identical for both targets.

It sends a request as pre-built bytes and reads one response: the head up to the blank line,
then a Content-Length body, a chunked body, or (with ``Connection: close``) until EOF. No
header objects, no validation beyond what is needed to find the end of the response, so the
client's own cost is small and the same whether it talks to the engine or to the proxy.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RECV = 256 * 1024


class HTTPError(Exception):
    pass


def request_bytes(
    method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: docker"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    framed = "Content-Length" in (headers or {}) or "Transfer-Encoding" in (headers or {})
    if (body or method in ("POST", "PUT")) and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, content-length or None, chunked) from a response head."""
    first, _, rest = head.partition(b"\r\n")
    status = int(first[9:12])
    length: int | None = None
    chunked = False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


def _chunked_end(buf: bytes | bytearray, pos: int) -> int:
    """Index just past a complete chunked body starting at `pos`, or -1 if incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # no trailers from the engine
            return -1 if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return -1


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes = b""
    body_len: int = 0
    extra: bytes = b""  # bytes read past this response (an upgraded stream's first bytes)


class Conn:
    """One blocking unix-socket connection; `request()` sends and reads one response."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_head(self) -> tuple[bytes, int, int | None, bool]:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            data = self.sock.recv(RECV)
            if not data:
                raise HTTPError(f"connection closed before a response head ({buf[:80]!r})")
            buf += data
        head = buf[: end + 4]
        self.buf = buf[end + 4 :]
        status, length, chunked = _parse_head(head)
        return head, status, length, chunked

    def request(self, raw: bytes, *, keep_body: bool = True, head_only: bool = False) -> Response:
        self.sock.sendall(raw)
        return self.read_response(keep_body=keep_body, head_only=head_only)

    def read_response(self, *, keep_body: bool = True, head_only: bool = False) -> Response:
        head, status, length, chunked = self.read_head()
        if head_only or status in (101, 204, 304):
            extra, self.buf = self.buf, b""
            return Response(status, head, extra=extra)
        if length is not None:
            return self._read_length(status, head, length, keep_body)
        if chunked:
            return self._read_chunked(status, head, keep_body)
        return self._read_eof(status, head, keep_body)

    def _read_length(self, status: int, head: bytes, length: int, keep: bool) -> Response:
        buf = self.buf
        if len(buf) >= length:
            self.buf = buf[length:]
            return Response(status, head, buf[:length] if keep else b"", length)
        if keep:
            parts = [buf]
            got = len(buf)
            while got < length:
                data = self.sock.recv(min(RECV, length - got))
                if not data:
                    raise HTTPError("connection closed mid-body")
                parts.append(data)
                got += len(data)
            self.buf = b""
            return Response(status, head, b"".join(parts), length)
        got = len(buf)
        scratch = bytearray(RECV)
        view = memoryview(scratch)
        while got < length:
            n = self.sock.recv_into(view, min(RECV, length - got))
            if not n:
                raise HTTPError("connection closed mid-body")
            got += n
        self.buf = b""
        return Response(status, head, b"", length)

    def _read_chunked(self, status: int, head: bytes, keep: bool) -> Response:
        if keep:
            buf = bytearray(self.buf)
            while True:
                end = _chunked_end(buf, 0)
                if end >= 0:
                    break
                data = self.sock.recv(RECV)
                if not data:
                    raise HTTPError("connection closed mid-chunked-body")
                buf += data
            self.buf = bytes(buf[end:])
            return Response(status, head, _dechunk(bytes(buf[:end])), end)
        # Streaming: walk chunk sizes without keeping the data.
        buf = self.buf
        total = 0
        while True:
            while b"\r\n" not in buf:
                data = self.sock.recv(RECV)
                if not data:
                    raise HTTPError("connection closed mid-chunked-body")
                buf += data
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    data = self.sock.recv(RECV)
                    if not data:
                        break
                    buf += data
                self.buf = buf[buf.find(b"\r\n") + 2 :] if buf.startswith(b"\r\n") else b""
                return Response(status, head, b"", total)
            need = size + 2
            total += size
            if len(buf) >= need:
                buf = buf[need:]
                continue
            need -= len(buf)
            buf = b""
            while need > 0:
                data = self.sock.recv(min(RECV, need))
                if not data:
                    raise HTTPError("connection closed mid-chunk")
                need -= len(data)

    def _read_eof(self, status: int, head: bytes, keep: bool) -> Response:
        total = len(self.buf)
        parts = [self.buf] if keep else []
        while True:
            data = self.sock.recv(RECV)
            if not data:
                break
            total += len(data)
            if keep:
                parts.append(data)
        self.buf = b""
        return Response(status, head, b"".join(parts), total)

    def drain_to_eof(self) -> int:
        """Read and discard until the peer closes (an upgraded stream); returns bytes read."""
        total = len(self.buf)
        self.buf = b""
        scratch = bytearray(RECV)
        view = memoryview(scratch)
        while True:
            n = self.sock.recv_into(view)
            if not n:
                return total
            total += n


def _dechunk(raw: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


def once(path: str, raw: bytes, timeout: float = 60.0) -> Response:
    """A request on a fresh connection."""
    with Conn(path, timeout) as c:
        return c.request(raw)


# ----------------------------------------------------------------------- latency loops


def latency_keepalive(path: str, raw: bytes, count: int, budget: float) -> list[int]:
    """Per-request latencies (ns) of up to `count` requests on one connection, for `budget` s."""
    out: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(budget * 1e9)
    with Conn(path) as c:
        c.request(raw)  # connection set up and warm
        for _ in range(count):
            t0 = clock()
            r = c.request(raw)
            t1 = clock()
            if r.status != 200:
                raise HTTPError(f"status {r.status}: {r.head[:200]!r}")
            out.append(t1 - t0)
            if t1 > deadline:
                break
    return out


def latency_fresh(path: str, raw: bytes, count: int, budget: float) -> list[int]:
    """Per-request latencies (ns) with connect + request + close each time."""
    out: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(budget * 1e9)
    for _ in range(count):
        t0 = clock()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        c = Conn.__new__(Conn)
        c.path, c.sock, c.buf = path, s, b""
        r = c.request(raw)
        s.close()
        t1 = clock()
        if r.status != 200:
            raise HTTPError(f"status {r.status}: {r.head[:200]!r}")
        out.append(t1 - t0)
        if t1 > deadline:
            break
    return out


# ------------------------------------------------------------------- concurrent clients


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    connect_errors: int = 0  # refused connect attempts, retries included
    refused_clients: int = 0  # clients refused at least once (each counts as one error)
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds this (client) process used, connects included
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class _LoadProtocol(asyncio.Protocol):
    """One kept-alive client: send, wait for the whole response, send again."""

    def __init__(self, raw: bytes, result: LoadResult, running: Callable[[], bool]) -> None:
        self.raw = raw
        self.result = result
        self.running = running
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.write(self.raw)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            status, length, chunked = _parse_head(buf[: end + 4])
            if length is not None:
                total = end + 4 + length
            elif chunked:
                total = _chunked_end(buf, end + 4)
                if total < 0:
                    break
            else:
                self._fail(f"unframed response {buf[:80]!r}")
                return
            if len(buf) < total:
                break
            buf = buf[total:]
            live = self.running()
            if status != 200:
                self._count_error(f"status {status}")
            elif live:
                self.result.requests += 1
            if not live:
                self.buf = b""
                assert self.transport is not None
                self.transport.close()
                return
            assert self.transport is not None
            self.transport.write(self.raw)
        self.buf = buf

    def _count_error(self, why: str) -> None:
        self.result.errors += 1
        if len(self.result.error_samples) < 5:
            self.result.error_samples.append(why)

    def _fail(self, why: str) -> None:
        self._count_error(why)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.running():
            self._count_error(f"connection lost early: {exc}")
        if not self.done.done():
            self.done.set_result(None)


async def _load(path: str, raw: bytes, clients: int, seconds: float) -> LoadResult:
    loop = asyncio.get_running_loop()
    result = LoadResult()
    stop_at = [float("inf")]

    def running() -> bool:
        return loop.time() < stop_at[0]

    protocols: list[_LoadProtocol] = []

    async def connect() -> None:
        # A refused connect is an error; the client then tries again (as a retrying client
        # would), so the load stays at `clients` connections.
        refused = False
        while running():
            try:
                _, proto = await loop.create_unix_connection(
                    lambda: _LoadProtocol(raw, result, running), path
                )
                protocols.append(proto)
                return
            except OSError as err:
                if not refused:  # one error per client, however often it retries
                    refused = True
                    result.errors += 1
                    result.refused_clients += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(f"connect: {err}")
                result.connect_errors += 1
                await asyncio.sleep(0.02)

    t0 = loop.time()
    stop_at[0] = t0 + seconds
    await asyncio.gather(*(connect() for _ in range(clients)))
    await asyncio.sleep(max(0.0, stop_at[0] - loop.time()))
    # Clients close after their in-flight response; give them a moment.
    waiters = [p.done for p in protocols]
    if waiters:
        _, pending = await asyncio.wait(waiters, timeout=10)
        for p in protocols:
            if not p.done.done() and p.transport is not None:
                p.transport.abort()
        result.errors += len(pending)
    result.seconds = seconds
    return result


def concurrent_load(path: str, raw: bytes, clients: int, seconds: float) -> LoadResult:
    """`clients` kept-alive connections sending `raw` back to back for `seconds`."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is part of the venv
        runner = asyncio.run
    c0 = time.process_time()
    result = runner(_load(path, raw, clients, seconds))
    result.client_cpu = time.process_time() - c0
    return result
