"""`KernelSplice` on real unix socket pairs: flow control, half-close, a peer that leaves."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from agent.proxy import kernel_splice
from agent.proxy.kernel_splice import KernelSplice

pytestmark = pytest.mark.skipif(not kernel_splice.available(), reason="no splice(2) here")


def pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """client <-> (agent's client side | agent's engine side) <-> engine."""
    client, agent_c = socket.socketpair()
    agent_e, engine = socket.socketpair()
    for s in (client, engine, agent_c, agent_e):
        s.setblocking(False)
    return client, agent_c, agent_e, engine


async def drain(sock: socket.socket, limit: int | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while limit is None or len(out) < limit:
        data = await loop.sock_recv(sock, 1 << 20)
        if not data:
            break
        out += data
    return bytes(out)


def test_a_reader_that_does_not_read_holds_the_writer_back() -> None:
    """The copy stops reading the engine while the client's socket is full: what the engine
    got rid of stays bounded by the socket and pipe buffers, and nothing is lost."""

    async def main() -> None:
        client, agent_c, agent_e, engine = pairs()
        done = asyncio.Event()
        ks = KernelSplice(
            asyncio.get_running_loop(), os.dup(agent_c.fileno()), os.dup(agent_e.fileno()), done.set
        )
        agent_c.close()
        agent_e.close()
        ks.start()
        payload = os.urandom(32 * 1024 * 1024)
        sent = 0
        for _ in range(200):  # the client reads nothing meanwhile
            try:
                sent += engine.send(payload[sent : sent + (1 << 20)])
            except BlockingIOError:
                await asyncio.sleep(0.005)
        assert 0 < sent < 16 * 1024 * 1024  # socket buffers + one pipe, not the stream
        loop = asyncio.get_running_loop()

        async def rest() -> None:
            await loop.sock_sendall(engine, payload[sent:])
            engine.shutdown(socket.SHUT_WR)

        writer = asyncio.ensure_future(rest())
        got = await drain(client)
        await writer
        assert got == payload
        client.shutdown(socket.SHUT_WR)
        assert await drain(engine) == b""  # the half-close went through
        await asyncio.wait_for(done.wait(), 5)
        assert ks.error is None
        client.close()
        engine.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_peer_that_leaves_ends_both_directions_once() -> None:
    async def main() -> None:
        client, agent_c, agent_e, engine = pairs()
        calls: list[int] = []
        ks = KernelSplice(
            asyncio.get_running_loop(),
            os.dup(agent_c.fileno()),
            os.dup(agent_e.fileno()),
            lambda: calls.append(1),
        )
        agent_c.close()
        agent_e.close()
        ks.start()
        engine.close()  # the engine goes away; the client still sends
        loop = asyncio.get_running_loop()
        for _ in range(200):
            if ks.closed:
                break
            try:
                client.send(b"x" * 65536)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            await asyncio.sleep(0.005)
        assert ks.closed and calls == [1]
        assert isinstance(ks.error, OSError)
        assert await asyncio.wait_for(loop.sock_recv(client, 10), 5) == b""  # client let go
        ks.close()
        assert calls == [1]
        client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_directions_finished_before_the_handoff_stay_finished() -> None:
    """The client had already half-closed when the stream was handed over: the engine's
    answer still reaches it and the copy ends when the engine is done."""

    async def main() -> None:
        client, agent_c, agent_e, engine = pairs()
        agent_e.shutdown(socket.SHUT_WR)  # what the driver did on the client's EOF
        done = asyncio.Event()
        ks = KernelSplice(
            asyncio.get_running_loop(),
            os.dup(agent_c.fileno()),
            os.dup(agent_e.fileno()),
            done.set,
            client_finished=True,
        )
        agent_c.close()
        agent_e.close()
        ks.start()
        assert await drain(engine) == b""
        engine.sendall(b"answer")
        engine.shutdown(socket.SHUT_WR)
        assert await drain(client) == b"answer"
        await asyncio.wait_for(done.wait(), 5)
        client.close()
        engine.close()

    asyncio.run(asyncio.wait_for(main(), 30))
