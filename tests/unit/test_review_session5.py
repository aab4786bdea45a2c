"""Review of the chunk walk (7882e65): a differential fuzz of `_walk` + `_feed` against llhttp
fed one byte at a time (where no cut can matter), both for a client's chunked request body
and for the engine's chunked response.

Each case is a chunked body built to disagree with a naive reader: size lines with leading
zeros, upper case, extensions (quoted, with semicolons, a quoted CRLF, over-long), bare CR/LF
endings, spaces, sizes that lie (a chunk that swallows a fake end or stops short), data that
holds fake last chunks, CRLFCRLFs and whole requests, trailers; then a create. The bytes come
in random reads. What must hold: if llhttp ends the message, the engine gets exactly the body
llhttp read (re-chunked), nothing is judged or refused before, and the next request judged is
the one after the real end; if llhttp refuses the body, the agent refuses it (400) and judges
nothing after it. For responses: the client gets exactly the bytes up to llhttp's end and the
pipelined request is judged only then.
"""

from __future__ import annotations

import random

import httptools
import pytest

from agent.policy.decide import ALLOW
from agent.proxy.connection import ProxyConnection
from tests.unit.test_proxy_chunk_walk import (
    CREATE,
    PONG,
    PUT,
    dechunk,
    feed_reads,
    needs_body,
    uploading,
)
from tests.unit.test_proxy_connection import closes, judges, sent_client


class _Ref:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.at: int | None = None
        self.i = 0

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))

    def on_message_complete(self) -> None:
        if self.at is None:
            self.at = self.i


def _reference(head: bytes, body: bytes, response: bool) -> tuple[int | None, bytes]:
    """Where llhttp, fed one byte at a time, ends the message in `body` (None: refused or not
    ended), and the body it read."""
    ev = _Ref()
    parser = httptools.HttpResponseParser(ev) if response else httptools.HttpRequestParser(ev)
    parser.feed_data(head)
    for i in range(len(body)):
        ev.i = i + 1
        try:
            parser.feed_data(body[i : i + 1])
        except httptools.HttpParserError:
            return None, b""
        if ev.at is not None:
            return ev.at, b"".join(ev.body)
    return None, b""


def _size_line(rng: random.Random, n: int) -> bytes:
    digits = (b"%x" if rng.random() < 0.5 else b"%X") % n
    if rng.random() < 0.1:
        digits = b"0" * rng.randint(1, 80) + digits
    if rng.random() < 0.3:
        digits += rng.choice([b";a", b";a=b", b';a="x;y"', b';a="\\"q"', b';a="b\r\nc"', b" ",
                              b"\t", b";", b";a=b;c=d", b"; a=b", b"\r", b"\n", b"x",
                              b';a="' + b"z" * 80 + b'"'])  # fmt: skip
    ending = b"\r\n" if rng.random() < 0.9 else rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])
    return digits + ending


def _body(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randint(0, 8)):
        n = rng.choice([1, 2, 3, 5, 16, 100, 2048, 5000, 40000])
        data = bytearray(rng.randbytes(n))
        if rng.random() < 0.5:
            fake = rng.choice([b"0\r\n\r\n" + CREATE, b"\r\n0\r\n\r\n" + CREATE, b"\r\n\r\n",
                               b"\n0\r\n\r\n"])  # fmt: skip
            k = rng.randint(0, n)
            data[k : k + len(fake)] = fake
            if rng.random() < 0.7:
                data = data[:n]
        size = len(data) + (rng.choice([-2, -1, 1, 2]) if rng.random() < 0.1 else 0)
        out.append(_size_line(rng, max(size, 0)) + bytes(data))
        out.append(b"\r\n" if rng.random() < 0.95 else b"\n")
    last = b"0" * rng.choice([1, 1, 1, 3]) + (b";a=b" if rng.random() < 0.2 else b"") + b"\r\n"
    if rng.random() < 0.2:
        last += b"X-T: 1\r\n"
    return b"".join(out) + last + b"\r\n"


def _reads(rng: random.Random, data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 2, 3, 4, 5, 7, 64, 1000, 2048, 4096, 65536, 1 << 20])
        out.append(data[pos : pos + n])
        pos += n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_request_bodies_are_read_as_llhttp_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    ended = 0
    for _ in range(400):
        body = _body(rng)
        data = body + CREATE
        at, read = _reference(PUT, data, response=False)
        c = uploading()
        fwd, out = feed_reads(c, _reads(rng, data))
        if at is None:
            assert sent_client(out).startswith(b"HTTP/1.1 400 ") and closes(out), data[:200]
            assert not judges(out)
            # What reached the engine is chunk data in our framing, never the end of the body.
            engine = _Ref()
            httptools.HttpRequestParser(engine).feed_data(PUT + fwd)
            assert engine.at is None
            continue
        ended += 1
        assert not judges(out) and not closes(out), (sent_client(out)[:200], data[:200])
        assert dechunk(fwd) == read
        after = judges(c.engine_data(PONG))
        if at == len(body):
            assert [j.request.head.target for j in after] == ["/containers/create"]
    assert ended > 50


@pytest.mark.parametrize("seed", range(6))
def test_chunked_responses_end_where_llhttp_ends_them(seed: int) -> None:
    rng = random.Random(100 + seed)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    ping = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
    for _ in range(300):
        body = _body(rng)
        at, _ = _reference(head, body, response=True)
        c = ProxyConnection(needs_body, max_judged_body=1024)
        c.client_data(b"GET /containers/x/logs HTTP/1.1\r\nHost: d\r\n\r\n" + ping)
        c.judged(ALLOW)
        got, out = b"", []
        for piece in _reads(rng, head + body):
            cmds = c.engine_data(piece)
            out += cmds
            got += sent_client(cmds)
            if judges(cmds) or closes(cmds):
                break
        if at is None:
            assert closes(out) and not judges(out)
            continue
        assert got[: len(head) + at] == head + body[:at]
        if at == len(body):
            assert got == head + body
            assert [j.request.head.target for j in judges(out)] == ["/_ping"]
        else:  # bytes after the end: the engine connection is not reused, nothing is judged
            assert not judges(out) or not c.engine_reusable()
