"""The asyncio driver against a scripted fake engine on a private unix socket (no dockerd)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.policy.decide import ALLOW, Decision, deny
from agent.proxy import server
from agent.proxy.connection import Request, RequestHead, Verify
from agent.proxy.server import HIGH_WATER, SNDBUF, EnginePool, Peer, ProxyListener

PING = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeGate:
    def __init__(self, delay: float = 0.0, refuse: tuple[str, ...] = ()) -> None:
        self.delay = delay
        self.refuse = refuse
        self.judged: list[str] = []

    def needs_body(self, head: RequestHead) -> bool:
        return False

    async def judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.judged.append(request.head.target)
        if request.head.target in self.refuse:
            return deny(403, "no", "test"), None
        return ALLOW, None

    async def verify(self, verify: Verify, peer: Peer) -> tuple[bool, int, str]:
        return True, 201, ""

    inspection: str | None = None  # what a /grpc stream opened now gets (None: ECI off)

    def is_grpc(self, head: RequestHead) -> bool:
        return head.target.split("?")[0].endswith("/grpc")

    def grpc_inspection(self) -> str | None:
        return self.inspection


class Rig:
    def __init__(self, tmp: Path, handler: Handler, gate: FakeGate) -> None:
        self.engine_path = str(tmp / "engine.sock")
        self.listen = str(tmp / "agent.sock")
        self.handler = handler
        self.gate = gate
        self.engine_conns = 0
        self.engine_closed = asyncio.Event()
        self.pool = EnginePool(self.engine_path, warm=1)
        self.listener = ProxyListener(self.listen, self.pool, gate, mode=0o600)
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.engine_conns += 1
        try:
            await self.handler(r, w)
        finally:
            w.close()
            self.engine_closed.set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=self.engine_path)
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        await self.pool.close()
        assert self.server is not None
        self.server.close()

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.listen)


@contextlib.asynccontextmanager
async def rig(handler: Handler, gate: FakeGate | None = None) -> AsyncIterator[Rig]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        r = Rig(Path(tmp), handler, gate or FakeGate())
        await r.start()
        try:
            yield r
        finally:
            await r.stop()


async def read_head(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)


async def pong_forever(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        try:
            await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        w.write(PONG)
        await w.drain()


LOOPS = ["asyncio"]
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401 - the agent runs on it when installed

    LOOPS.append("uvloop")


@pytest.fixture(params=LOOPS, autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    global _LOOP
    _LOOP = request.param
    return str(request.param)


_LOOP = "asyncio"


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 20)

    if _LOOP == "uvloop":
        import uvloop

        uvloop.run(bounded())
    else:
        asyncio.run(bounded())


def test_kept_alive_requests_and_the_engine_connection_goes_back_to_the_pool() -> None:
    async def main() -> None:
        async with rig(pong_forever) as rg:
            r, w = await rg.client()
            for _ in range(3):
                w.write(PING)
                assert (await read_head(r)).startswith(b"HTTP/1.1 200 ")
                assert await r.readexactly(2) == b"OK"
            w.close()
            await asyncio.sleep(0.1)
            assert not rg.listener._sessions
            assert len(rg.pool._idle) >= 1 and rg.engine_conns <= 2

    run(main())


def test_slow_judge_keeps_pipelined_requests_in_order() -> None:
    async def main() -> None:
        gate = FakeGate(delay=0.02, refuse=("/b",))
        async with rig(pong_forever, gate) as rg:
            r, w = await rg.client()
            w.write(
                b"GET /a HTTP/1.1\r\nHost: d\r\n\r\nGET /b HTTP/1.1\r\nHost: d\r\n\r\n"
                b"GET /c HTTP/1.1\r\nHost: d\r\n\r\n"
            )
            statuses = []
            for _ in range(3):
                head = await read_head(r)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await r.readexactly(length)
                statuses.append(head.split(b" ")[1])
            assert statuses == [b"200", b"403", b"200"]
            assert gate.judged == ["/a", "/b", "/c"]
            w.close()

    run(main())


def test_splice_passes_half_close_both_ways() -> None:
    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhello ")
        data = await r.read()  # until the client's half-close reaches us
        w.write(b"got " + data)
        await w.drain()
        w.write_eof()

    async def main() -> None:
        async with rig(engine) as rg:
            r, w = await rg.client()
            w.write(
                b"POST /containers/x/attach?stream=1 HTTP/1.1\r\nHost: d\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nstdin"
            )
            assert (await read_head(r)).startswith(b"HTTP/1.1 101 ")
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 5) == b"hello got stdin"
            await asyncio.sleep(0.05)
            assert not rg.listener._sessions

    run(main())


def test_client_gone_mid_stream_drops_the_engine_connection() -> None:
    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                w.write(b"5\r\nline\n\r\n")
                await w.drain()
                await asyncio.sleep(0.005)

    async def main() -> None:
        async with rig(engine) as rg:
            r, w = await rg.client()
            w.write(b"GET /containers/x/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
            await read_head(r)
            await r.read(100)
            w.close()
            await asyncio.wait_for(rg.engine_closed.wait(), 5)
            assert not rg.listener._sessions

    run(main())


def test_a_client_that_does_not_read_slows_the_engine_down() -> None:
    sent = 0

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n\r\n")
        block = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024:
                w.write(block)
                await w.drain()
                sent += len(block)

    async def main() -> None:
        async with rig(engine) as rg:
            with socket.socket(socket.AF_UNIX) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.connect(rg.listen)
                s.sendall(b"GET /containers/x/export HTTP/1.1\r\nHost: d\r\n\r\n")
                await asyncio.sleep(0.5)  # the client reads nothing
                # What sits in the agent is bounded by its high-water mark, plus socket buffers.
                assert sent < 8 * HIGH_WATER + 4 * 1024 * 1024, sent

    run(main())


def test_a_client_pipelining_while_a_judge_waits_is_paused_then_served() -> None:
    async def main() -> None:
        gate = FakeGate(delay=0.1)
        async with rig(pong_forever, gate) as rg:
            r, w = await rg.client()
            n = (2 * HIGH_WATER) // len(PING) + 10
            w.write(PING * n)
            await asyncio.sleep(0.05)
            (session,) = rg.listener._sessions
            assert "backlog" in session.holds
            gate.delay = 0
            for _ in range(n):
                await read_head(r)
                await r.readexactly(2)
            assert not session.holds
            w.close()

    run(main())


def test_no_engine_closes_the_client() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            pool = EnginePool(str(Path(tmp) / "missing.sock"), warm=0)
            listener = ProxyListener(str(Path(tmp) / "a.sock"), pool, FakeGate())
            await listener.start()
            try:
                r, w = await asyncio.open_unix_connection(str(Path(tmp) / "a.sock"))
                w.write(PING)
                assert await asyncio.wait_for(r.read(), 5) == b""
            finally:
                await listener.stop()
                await pool.close()

    run(main())


def test_engine_connections_get_the_larger_send_buffer() -> None:
    def sndbuf(transport: asyncio.BaseTransport | None) -> int:
        assert transport is not None
        sock = transport.get_extra_info("socket")
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))

    async def main() -> None:
        async with rig(pong_forever) as rg:
            r, w = await rg.client()
            w.write(PING)
            await read_head(r)
            (session,) = rg.listener._sessions
            assert session.engine is not None
            # The kernel doubles what it is given (and caps it at wmem_max unless forced).
            assert sndbuf(session.engine.transport) >= min(SNDBUF, _wmem_max())
            w.close()

    run(main())


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except OSError:
        return 0


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel-splice", "user-space"])
def test_a_spliced_stream_is_byte_exact_both_ways_with_half_close(
    kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megabytes each way through an upgraded connection, whichever copies them; the stream
    is handed to the kernel (or not) as configured, and the session ends with the stream."""
    monkeypatch.setattr(server, "KERNEL_SPLICE", kernel and server.KERNEL_SPLICE)
    down = bytes(range(256)) * 16 * 1024  # 4 MiB
    up = bytes(reversed(range(256))) * 12 * 1024  # 3 MiB
    seen: list[server._Session] = []

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        assert await r.readexactly(2) == b"{}"
        w.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        await w.drain()
        w.write(down[:1000])  # some before the handoff can have happened
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(down[1000:])
        await w.drain()
        got = await r.read()  # until the client's half-close reaches us
        w.write(len(got).to_bytes(8, "big") + got[:64] + got[-64:])
        await w.drain()
        w.write_eof()

    async def main() -> None:
        async with rig(engine) as rg:
            r, w = await rg.client()
            w.write(
                b"POST /exec/x/start HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n{}"
            )
            assert (await read_head(r)).startswith(b"HTTP/1.1 101 ")
            seen.extend(rg.listener._sessions)
            assert await asyncio.wait_for(r.readexactly(len(down)), 10) == down
            w.write(up)
            await w.drain()
            w.write_eof()
            tail = await asyncio.wait_for(r.read(), 10)
            assert tail == len(up).to_bytes(8, "big") + up[:64] + up[-64:]
            await asyncio.sleep(0.05)
            assert not rg.listener._sessions
            w.close()

    run(main())
    assert len(seen) == 1
    assert (seen[0].kernel is not None) is (kernel and server.KERNEL_SPLICE)


def test_a_client_that_closes_mid_stream_ends_the_spliced_engine_connection() -> None:
    """A client that closes (not half-closes) an attach whose engine side is quiet: the
    engine connection is let go, not kept until the engine writes again."""

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhi")
        await w.drain()
        await r.read()  # the client's end
        # A quiet container: nothing more to say. The agent's side of this connection must
        # be closed outright (POLLHUP), not only half-closed, without the engine writing.
        sock = w.transport.get_extra_info("socket")
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        for _ in range(500):
            if any(ev & select.POLLHUP for _, ev in poller.poll(0)):
                hung_up.set()
                return
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with rig(engine) as rg:
            r, w = await rg.client()
            w.write(
                b"POST /containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            )
            assert (await read_head(r)).startswith(b"HTTP/1.1 101 ")
            assert await r.readexactly(2) == b"hi"
            session = next(iter(rg.listener._sessions))
            for _ in range(100):
                if session.kernel is not None or not server.KERNEL_SPLICE:
                    break
                await asyncio.sleep(0.01)
            assert session.kernel is not None
            w.close()
            await asyncio.wait_for(hung_up.wait(), 6)
            await asyncio.sleep(0.05)
            assert not rg.listener._sessions

    hung_up = asyncio.Event()
    if not server.KERNEL_SPLICE:
        pytest.skip("this kernel or Python cannot splice: the user-space driver waits")
    run(main())


def test_streams_opened_under_a_weaker_policy_are_closed_when_grpc_gets_read() -> None:
    """A /grpc stream opened while ECI was off is copied unread; once /grpc streams are read
    and cut, it is closed (a Solve on it would reach the engine unjudged). Other spliced
    streams (attach) stay; nothing happens while the policy stays weak."""

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        await w.drain()
        await r.read()

    async def main() -> None:
        gate = FakeGate()
        async with rig(engine, gate) as rg:
            streams = {}
            for name, target in (("grpc", "/v1.41/grpc"), ("attach", "/containers/x/attach")):
                r, w = await rg.client()
                w.write(
                    f"POST {target} HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                    "Upgrade: h2c\r\n\r\n".encode()
                )
                assert (await read_head(r)).startswith(b"HTTP/1.1 101 ")
                streams[name] = (r, w)
            await asyncio.sleep(0.05)
            modes = sorted(str(s.grpc_stream) for s in rg.listener._sessions)
            assert modes == ["None", "unread"]
            assert rg.listener.close_weaker_sessions() == 0  # still ECI off
            gate.inspection = "grpc-audit"
            assert rg.listener.close_weaker_sessions() == 0  # read to record: still weaker
            gate.inspection = "grpc"
            assert rg.listener.close_weaker_sessions() == 1
            assert await asyncio.wait_for(streams["grpc"][0].read(), 5) == b""
            assert len(rg.listener._sessions) == 1
            attach_r, attach_w = streams["attach"]
            attach_w.write(b"still here")
            await attach_w.drain()
            assert not attach_r.at_eof()
            for _, w in streams.values():
                w.close()

    run(main())
