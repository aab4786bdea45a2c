"""BuildKit's API on `/grpc`, through the agent to the real engine (HTTP/2 after an h2c upgrade).

buildx is not packaged here, so the client is ours (the frames of tests/unit/test_grpc_inspect);
the engine is real. A harmless RPC gets the engine's answer through the agent; a Solve that asks
for host networking is cut before the engine has it whole: the same bytes sent straight to the
engine DO get an answer on the stream, through the agent nothing comes back on it, and the
refusal is in the event store.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess
from tests.unit.test_grpc_inspect import CLEAN, Wire, solve

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
UPGRADE = b"POST /v1.41/grpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
SOLVE = "/moby.buildkit.v1.Control/Solve"


def session(path: str, stream: bytes, wait: float = 3.0) -> tuple[bytes, bytes, bool]:
    """Upgrade, send `stream`, read for `wait` s: (the 101 head, what followed, closed?)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(UPGRADE)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        s.sendall(stream)
        deadline = time.monotonic() + wait
        closed = False
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            rest += chunk
        return head, rest, closed


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, stream) of each complete HTTP/2 frame."""
    out = []
    while len(data) >= 9:
        size = int.from_bytes(data[:3], "big")
        if len(data) < 9 + size:
            break
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF))
        data = data[9 + size :]
    return out


def answered(data: bytes, stream: int) -> bool:
    """Did the engine answer on `stream` (HEADERS or DATA or RST_STREAM)?"""
    return any(t in (0, 1, 3) and sid == stream for t, _, sid in frames(data))


def test_harmless_rpcs_pass_and_the_engine_answers(agent: AgentProcess, stack: Any) -> None:
    head, rest, _ = session(agent.listen, Wire().rpc(1, LIST_WORKERS, b"").bytes())
    assert head.startswith(b"HTTP/1.1 101"), head
    assert answered(rest, 1), frames(rest)
    # A clean Solve reaches the engine too (it answers on the stream, whatever it thinks of
    # the made-up session).
    _, rest, _ = session(agent.listen, Wire().rpc(1, SOLVE, CLEAN).bytes())
    assert answered(rest, 1), frames(rest)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(solve(ents=(b"network.host",)), id="allow-network-host"),
        pytest.param(solve(ents=(b"security.insecure",)), id="allow-security-insecure"),
        pytest.param(solve(attrs={b"force-network-mode": b"host"}), id="network-host"),
    ],
)
def test_a_solve_asking_for_host_powers_is_cut(
    agent: AgentProcess, stack: Any, request_: bytes
) -> None:
    stream = Wire().rpc(1, SOLVE, request_).bytes()
    # The engine itself would take it up: it answers on the stream.
    _, direct_rest, _ = session(stack.engine_socket, stream)
    assert answered(direct_rest, 1), frames(direct_rest)

    before = _events(agent)
    _, rest, closed = session(agent.listen, stream)
    assert closed, "the agent cuts the connection"
    assert not answered(rest, 1), frames(rest)
    denials = [e for i, e in _events(agent).items() if i not in before]
    assert [e["rule"] for e in denials] == ["isolation-build"], denials
    assert "/grpc" in denials[0]["path"]


def test_with_eci_off_nothing_is_read(agent: AgentProcess, stack: Any) -> None:
    agent.set_settings(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {"value": False, "locked": True},
        }
    )
    _, rest, _ = session(agent.listen, Wire().rpc(1, SOLVE, solve(ents=(b"network.host",))).bytes())
    assert answered(rest, 1), frames(rest)


# -- A Solve sent as the upgrade request's body ------------------------------------------------
# The engine hijacks /grpc without reading a request body. Its HTTP/1.1 reader takes the first
# 4096 bytes of the connection into a buffer that the hijack throws away; every byte after those
# is read by its HTTP/2 server. A client that put the preface and a Solve at body offset
# 4096 - len(head) got that Solve to the engine while the agent, which reads HTTP/2 only after
# the 101, forwarded it as a plain body (review, 2026-11). A /grpc request with a body is refused.

#: net/http's bufio.Reader size: what the engine reads before it hijacks.
_ENGINE_READ = 4096


def _smuggle(path: str, stream: bytes, wait: float = 2.0) -> tuple[bytes, bytes]:
    """POST /grpc whose body holds `stream` where the engine's HTTP/2 server starts reading:
    (the response head, what followed)."""
    size = 0
    while True:  # the head's length depends on the Content-Length's digits
        head = (
            b"POST /v1.41/grpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        body = b"\0" * (_ENGINE_READ - len(head)) + stream
        if len(body) == size:
            break
        size = len(body)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(head + body)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    got_head, _, rest = data.partition(b"\r\n\r\n")
    return got_head, rest


def test_a_solve_sent_as_the_upgrade_requests_body_never_reaches_the_engine(
    agent: AgentProcess, stack: Any
) -> None:
    stream = Wire().rpc(1, SOLVE, solve(ents=(b"network.host",))).bytes()
    # The engine itself takes the Solve up from the body (its read split is a matter of timing:
    # a few tries).
    for _ in range(5):
        _, direct_rest = _smuggle(stack.engine_socket, stream)
        if answered(direct_rest, 1):
            break
    assert answered(direct_rest, 1), frames(direct_rest)

    for _ in range(5):
        head, rest = _smuggle(agent.listen, stream)
        assert not answered(rest, 1), frames(rest)
        assert head.startswith(b"HTTP/1.1 400"), head


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        pytest.param(b"Content-Length: 0\r\n\r\n", b"101", id="empty-body-upgrades"),
        pytest.param(b"Content-Length: 5\r\n\r\nhello", b"400", id="length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400", id="chunked"),
    ],
)
def test_only_a_bodyless_grpc_upgrade_is_forwarded(
    agent: AgentProcess, stack: Any, framing: bytes, status: bytes
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(agent.listen)
        s.sendall(
            b"POST /v1.41/grpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            + framing
        )
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 " + status), data


def _events(agent: AgentProcess) -> dict[int, dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "events", "--json", "--all", "--kind", "denied",
         "--control", agent.control],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return {e["id"]: e for e in map(json.loads, r.stdout.splitlines())}
