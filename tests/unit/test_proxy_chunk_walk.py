"""Chunked bodies fed to llhttp in one piece up to their last chunk (`_walk` in
agent/proxy/connection.py), both ways: what reaches the engine (a request body, re-chunked) and
the client (a response, raw) must be exactly the body sent, the message must end where llhttp
says, whatever the chunk sizes, the bytes inside the chunks (CRLFCRLFs, fake last chunks, whole
requests) and how the bytes are split into reads; a size line llhttp would refuse is refused.
"""

from __future__ import annotations

import random

import pytest

from agent.policy.decide import ALLOW
from agent.proxy.connection import _LOST, Command, ProxyConnection, RequestHead
from tests.unit.test_proxy_connection import closes, judges, sent_client, sent_engine

PUT = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
CREATE = (
    b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
RNG = random.Random(7)
NASTY = b"0\r\n\r\n" + CREATE + b"\r\n\r\n\r\n0\r\n\r\n"  # a fake end, a request, CRLFCRLFs


def needs_body(head: RequestHead) -> bool:
    return head.target.startswith("/containers/create")


def chunked(payload: bytes, sizes: list[int], *, ext: bytes = b"", upper: bool = False,
            zeros: int = 0, trailers: bytes = b"") -> bytes:  # fmt: skip
    out: list[bytes] = []
    pos = i = 0
    while pos < len(payload):
        size = min(sizes[i % len(sizes)], len(payload) - pos)
        hexa = (b"%X" if upper else b"%x") % size
        out.append(b"0" * zeros + hexa + ext + b"\r\n" + payload[pos : pos + size] + b"\r\n")
        pos += size
        i += 1
    return b"".join(out) + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        if size == 0:
            assert data[end:] == b"\r\n\r\n", data[end:][:50]
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        assert data[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


def reads(data: bytes, cut: int | str) -> list[bytes]:
    if cut == "random":
        out, pos = [], 0
        while pos < len(data):
            n = RNG.choice((1, 2, 3, 5, 7, 64, 1000, 4096, 65536))
            out.append(data[pos : pos + n])
            pos += n
        return out
    assert isinstance(cut, int)
    return [data[i : i + cut] for i in range(0, len(data), cut)]


def uploading() -> ProxyConnection:
    """A connection whose PUT of a chunked body was allowed: the body comes next."""
    c = ProxyConnection(needs_body, max_judged_body=1024)
    c.client_data(PUT)
    c.judged(ALLOW)
    return c


def feed(c: ProxyConnection, data: bytes, cut: int | str) -> tuple[bytes, list[Command]]:
    """`data` from the client in reads cut so: (bytes to the engine, every command), up to the
    first close."""
    return feed_reads(c, reads(data, cut))


def feed_reads(c: ProxyConnection, pieces: list[bytes]) -> tuple[bytes, list[Command]]:
    fwd, out = b"", []
    for piece in pieces:
        cmds = c.client_data(piece)
        out += cmds
        fwd += sent_engine(cmds)
        if closes(cmds):
            break
    return fwd, out


PAYLOADS = {
    "random": RNG.randbytes(150_000),
    "crlf": (NASTY + RNG.randbytes(100)) * 300,
    "zeros": bytes(100_000),
}
BODIES = [
    ("random", [32768]),
    ("random", [32768, 512, 1, 70000]),
    ("crlf", [32768]),
    ("crlf", [5, 3000, 17]),
    ("crlf", [len(NASTY)]),
    ("zeros", [1]),  # many tiny chunks: not followed (budget), still read right
    ("random", [65536]),
]
CUTS: list[int | str] = [1 << 20, 65536, 4093, 61, "random"]


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize(("kind", "sizes"), BODIES)
def test_a_request_body_reaches_the_engine_whole_and_the_next_request_waits(
    kind: str, sizes: list[int], cut: int | str
) -> None:
    payload = PAYLOADS[kind]
    c = ProxyConnection(needs_body, max_judged_body=1024)
    c.client_data(PUT)
    fwd = sent_engine(c.judged(ALLOW))
    body = b""
    for piece in reads(chunked(payload, sizes) + CREATE, cut):
        cmds = c.client_data(piece)
        assert not judges(cmds) and not sent_client(cmds) and not closes(cmds)
        body += sent_engine(cmds)
    assert fwd.endswith(b"\r\n\r\n") and dechunk(body) == payload
    # The create behind the body is a request of its own, judged with its body once answered.
    (judge,) = judges(c.engine_data(PONG))
    assert judge.request.head.target == "/containers/create" and judge.request.body == b"{}"


@pytest.mark.parametrize(
    "variant",
    [
        {"ext": b";name=value"},
        {"ext": b';q="a;b"'},
        {"upper": True},
        {"zeros": 3},  # leading zeros in the size
        {"trailers": b"X-Trailer: a\r\nX-Other: b\r\n"},
    ],
)
@pytest.mark.parametrize("cut", [1 << 20, 3, "random"])
def test_size_line_spellings_llhttp_takes(variant: dict[str, object], cut: int | str) -> None:
    payload = PAYLOADS["crlf"][:50_000]
    c = uploading()
    body = b""
    for piece in reads(chunked(payload, [4096, 100], **variant) + PING, cut):  # type: ignore[arg-type]
        cmds = c.client_data(piece)
        assert not closes(cmds), sent_client(cmds)
        body += sent_engine(cmds)
    assert dechunk(body) == payload
    (judge,) = judges(c.engine_data(PONG))
    assert judge.request.head.target == "/_ping"


@pytest.mark.parametrize(
    "size_line",
    [b"0x10", b"1_0", b"+10", b" 10", b"10 ", b"10\t", b"-10", b"1O", b"", b"ffffffffffffffffff"],
)
@pytest.mark.parametrize("cut", [1 << 20, 1, "random"])
def test_size_lines_llhttp_refuses_are_refused_and_nothing_after_them_forwarded(
    size_line: bytes, cut: int | str
) -> None:
    """Read differently by Python's int() than by llhttp, or not at all: the walk leaves them to
    llhttp, which refuses them; the request hidden in the chunk never reaches the engine."""
    good = chunked(PAYLOADS["random"][:70_000], [32768])[: -len(b"0\r\n\r\n")]
    data = good + size_line + b"\r\n" + NASTY + b"\r\n0\r\n\r\n" + CREATE
    body, out = feed(uploading(), data, cut)
    assert sent_client(out).startswith(b"HTTP/1.1 400 ") and closes(out)
    assert b"/containers/create" not in body and not judges(out)


def test_a_lying_size_line_is_read_as_llhttp_reads_it() -> None:
    """A size that covers a fake last chunk and a whole request makes them chunk data, for the
    walk as for llhttp: the request behind the real end is the next one."""
    inside = b"x" * 10 + b"\r\n0\r\n\r\n" + CREATE + b"\r\n\r\n"
    data = b"%x\r\n" % len(inside) + inside + b"\r\n0\r\n\r\n" + PING
    for cut in (len(data), 5, 1):
        c = uploading()
        fwd, out = feed(c, data, cut)
        assert not judges(out) and not closes(out)
        assert dechunk(fwd) == inside
        (judge,) = judges(c.engine_data(PONG))
        assert judge.request.head.target == "/_ping"


def test_a_walk_that_goes_too_far_is_caught_by_the_parser_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The walk only says where to cut; if it were wrong and took a message end (and the next
    request) for chunk data, llhttp ends the message inside the piece: refused, not forwarded."""
    from agent.proxy import connection

    if not connection.__file__.endswith(".py"):
        pytest.skip("the compiled module's calls cannot be patched")
    monkeypatch.setattr(connection, "_walk", lambda msg, buf, pos: len(buf))
    c = uploading()
    cmds = c.client_data(chunked(b"abc", [3]) + CREATE)
    assert sent_client(cmds).startswith(b"HTTP/1.1 400 ") and closes(cmds)
    assert b"/containers/create" not in sent_engine(cmds) and not judges(cmds)
    # An upgrade behind the end stops llhttp with another exception: refused the same way.
    c = uploading()
    attach = b"POST /containers/x/attach HTTP/1.1\r\nHost: d\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n"
    cmds = c.client_data(chunked(b"abc", [3]) + attach)
    assert sent_client(cmds).startswith(b"HTTP/1.1 400 ") and closes(cmds)
    assert b"/attach" not in sent_engine(cmds) and not judges(cmds)


def test_many_tiny_chunks_are_not_followed() -> None:
    c = uploading()
    c.client_data(chunked(bytes(20_000), [1])[:60_000])
    assert c._req is not None and c._req.walk == _LOST


def test_big_chunks_are_followed_across_reads() -> None:
    c = uploading()
    data = chunked(PAYLOADS["random"], [32768])
    for piece in reads(data[:-200], 65536):
        c.client_data(piece)
        assert c._req is not None and c._req.walk != _LOST


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize(("kind", "sizes"), BODIES)
def test_a_chunked_response_reaches_the_client_raw_and_its_end_is_found(
    kind: str, sizes: list[int], cut: int | str
) -> None:
    payload = PAYLOADS[kind]
    c = ProxyConnection(needs_body, max_judged_body=1024)
    c.client_data(b"GET /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n\r\n" + PING)
    c.judged(ALLOW)
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(payload, sizes)
    got, out = b"", []
    for piece in reads(response, cut):
        cmds = c.engine_data(piece)
        out += cmds
        got += sent_client(cmds)
    assert got == response
    (judge,) = judges(out)  # the pipelined request, once the response ended
    assert judge.request.head.target == "/_ping"


@pytest.mark.parametrize("inside", [1, 2, 3, 4, 5])
def test_a_size_line_split_between_reads_keeps_the_walk(inside: int) -> None:
    """`8000\r\n` cut after `inside` bytes: the walk takes up the line where the read ended."""
    c = uploading()
    payload = PAYLOADS["random"][: 3 * 32768]
    data = chunked(payload, [32768])
    second = 32768 + len(b"8000\r\n") + 2  # where the second size line starts
    body = b""
    pieces = (data[: second + inside], data[second + inside : -100], data[-100:] + PING)
    for i, piece in enumerate(pieces):
        body += sent_engine(c.client_data(piece))
        if i < 2:
            assert c._req is not None and c._req.walk != _LOST
    assert dechunk(body) == payload
