"""Instructions the agent's user space runs per request: a count, not a time.

    python -m bench.instructions [--requests N] [--path /_ping] [--fresh]

Times on this VM move by 10-30% from minute to minute (see docs/BENCHMARKS.md), so a change
worth 5% cannot be seen in them. Instructions can: one process runs a fake engine (answering
every request with a fixed response), the agent's real `ProxyListener`, `EnginePool` and
`Gate` (ECI on), and a client, all on one uvloop loop, under `valgrind --tool=callgrind`.
The client sends its requests straight to the fake engine, then through the proxy, each run
with two request counts; the difference between the counts cancels start-up, and the
difference between the two routes leaves what the proxy adds per request: the state object,
the driver, the gate, uvloop and CPython working for them (not the kernel, which callgrind
does not see). Compiled modules are used when the build is current (`agent/native.py`), as
in the agent; `ECI_AGENT_NATIVE=0` measures pure Python. Not a test, writes no file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PONG = (
    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nBuilder-Version: 2\r\n"
    b"Cache-Control: no-cache, no-store, must-revalidate\r\nContent-Length: 2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nDocker-Experimental: false\r\n"
    b"Ostype: linux\r\nPragma: no-cache\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n"
    b"Date: Mon, 23 Nov 2026 18:00:00 GMT\r\n\r\nOK"
)


class _Engine(asyncio.Protocol):
    """Answers each request head with PONG (GET requests only: no bodies)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            self.buf = self.buf[end + 4 :]
            self.transport.write(PONG)  # type: ignore[attr-defined]


async def _client(path: str, request: bytes, count: int, fresh: bool) -> None:
    reader = writer = None
    for _ in range(count):
        if writer is None:
            reader, writer = await asyncio.open_unix_connection(path)
        assert reader is not None
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        if fresh:
            writer.close()
            await writer.wait_closed()
            writer = None
    if writer is not None:
        writer.close()
        await writer.wait_closed()


async def _run(route: str, count: int, target: str, fresh: bool) -> None:
    from agent.proxy.gate import Gate, GateConfig
    from agent.proxy.server import EnginePool, ProxyListener
    from agent.settings.model import Effective
    from agent.settings.parse import parse_settings

    tmp = Path(tempfile.mkdtemp(prefix="eci-instr-"))
    try:
        engine_path = str(tmp / "engine.sock")
        server = await asyncio.get_running_loop().create_unix_server(_Engine, engine_path)
        doc = {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {"value": True, "locked": True},
        }
        effective = Effective(parse_settings(json.dumps(doc).encode()))
        listen = str(tmp / "agent.sock")
        gate = Gate(
            GateConfig(
                engine_socket=engine_path,
                listen_sockets=(listen,),
                container_socket=str(tmp / "c.sock"),
                settings_where=lambda: "bench",
                current=lambda: effective,
            )
        )
        pool = EnginePool(engine_path)
        listener = ProxyListener(listen, pool, gate)
        await listener.start()
        request = f"GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: bench\r\n\r\n".encode()
        await _client(engine_path if route == "direct" else listen, request, count, fresh)
        await listener.stop()
        await pool.close()
        await gate.engine.close()
        server.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _child(route: str, count: int, target: str, fresh: bool) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_run(route, count, target, fresh))


def _count(route: str, count: int, target: str, fresh: bool) -> int:
    """Instructions callgrind counts for the whole child process."""
    with tempfile.TemporaryDirectory(prefix="eci-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            route,
            "--requests",
            str(count),
            "--path",
            target,
            *(["--fresh"] if fresh else []),
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench.instructions: the child failed:\n{done.stderr[-2000:]}")
        match = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
        if match is None:
            raise SystemExit("bench.instructions: no instruction count in valgrind's output")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--path", default="/_ping")
    parser.add_argument("--fresh", action="store_true", help="a new connection per request")
    parser.add_argument("--child", choices=("direct", "proxy"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.requests, args.path, args.fresh)
        return 0
    if shutil.which("valgrind") is None:
        print("bench.instructions: needs valgrind", file=sys.stderr)
        return 2
    from agent import native

    print(f"proxy code: {native.status().describe()}", flush=True)
    small, big = args.requests // 4, args.requests
    per: dict[str, float] = {}
    for route in ("direct", "proxy"):
        a = _count(route, small, args.path, args.fresh)
        b = _count(route, big, args.path, args.fresh)
        per[route] = (b - a) / (big - small)
        print(f"{route:6s} {per[route]:10,.0f} instructions/request", flush=True)
    kind = "fresh connection" if args.fresh else "kept-alive"
    added = per["proxy"] - per["direct"]
    print(f"the proxy adds {added:,.0f} instructions per {args.path} ({kind})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts run to run
    sys.exit(main())
