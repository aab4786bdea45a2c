"""The kernel floor: a hop whose bytes never enter user space, for the streams only.

    python -m bench.kfloor LISTEN ENGINE

Each accepted connection carries ONE request: its head is read, marked `Connection: close`
(so the engine answers it and then closes), and from there both sockets go to the agent's
own `agent.proxy.kernel_splice`, which moves the rest (request body, response) from socket to
pipe to socket with splice(2). Nothing is parsed after the head and nothing is judged, so it
is NOT a proxy one could deploy (a pipelined second request would reach the engine unread if
the engine did not close). The benchmark runs it next to the agent on the streams to show
the least any extra hop costs on this machine: wake-ups and splices, no copies in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

from agent.proxy.kernel_splice import KernelSplice
from bench.floor import run_hop, until_signalled

MAX_HEAD = 64 * 1024


def close_marked(head: bytes) -> bytes:
    """`head` (request line and headers, ending in a blank line) with every Connection header
    replaced by `Connection: close`."""
    lines = head[:-4].split(b"\r\n")
    kept = [ln for ln in lines[1:] if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"


async def _serve_one(client: socket.socket, engine_path: str) -> None:
    loop = asyncio.get_running_loop()
    engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    engine.setblocking(False)
    try:
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = await loop.sock_recv(client, MAX_HEAD)
            if not data or len(buf) > MAX_HEAD:
                return
            buf += data
        await loop.sock_connect(engine, engine_path)
        await loop.sock_sendall(engine, close_marked(buf[: end + 4]) + buf[end + 4 :])
        done = loop.create_future()
        splice = KernelSplice(
            loop, os.dup(client.fileno()), os.dup(engine.fileno()), lambda: done.set_result(None)
        )
        splice.start()
        await done
    except OSError:
        pass
    finally:
        client.close()
        engine.close()


async def serve(listen: str, engine_path: str) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
    os.chmod(listen, 0o666)
    server.listen(4096)
    server.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        while True:
            client, _ = await loop.sock_accept(server)
            client.setblocking(False)
            task = loop.create_task(_serve_one(client, engine_path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = loop.create_task(accept())
    try:
        await until_signalled()
    finally:
        acceptor.cancel()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)


def main(argv: list[str]) -> int:
    return run_hop("bench.kfloor", argv, serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
