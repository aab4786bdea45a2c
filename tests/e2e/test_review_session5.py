"""Review of the chunk walk (7882e65) and the known answers (0555939), attacked through the real
agent and checked on the ENGINE.

Every attack hides a create that binds the engine socket with `--privileged` (always refused
when judged, `_bad_create`) where only a misread of the framing would make it a request, or
puts one after the real end of the message (then it must be judged: a 403), and then asks the
ENGINE whether a container of that name exists. Uploads also check the file the engine wrote.

1. Chunked `PUT .../archive` bodies whose walked chunks are big (so the walk follows them), with
   size lines in many spellings (leading zeros, upper case, extensions with quotes and
   semicolons), the data holding fake last chunks and whole creates, the bytes sent in three
   TCP sends cut at every offset around a size line and around the last chunk (and its
   trailers), and a create pipelined after the real end.
2. Size lines llhttp refuses but the walk might skip (a quoted CRLF in an extension, a bare CR,
   an over-long extension, a 2^64 size, a size split before a bare LF).
3. The body's end reached while the engine has already answered (PUT to a missing container:
   the engine's 404 comes first and the agent drops the rest of the body); Expect:
   100-continue; HTTP/1.0 with chunked; a half-close right after the last chunk.
4. Known answers: GET and HEAD of many routes (JSON, a 404 the engine answers alike for both,
   a raw log stream, chunked and until-close bodies) interleaved and pipelined on one kept-alive
   connection, compared with the engine's own answers, and a refused create behind them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

import pytest

from tests.e2e.test_chunk_walk import _tar
from tests.e2e.test_known_heads import Reader, _payload, _status, _without_date
from tests.e2e.test_review_session3 import _bad_create, _connect, _exists, _read_all, _req

pytestmark = pytest.mark.engine


def _put(container: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    head = _req(
        "PUT",
        f"/v1.41/containers/{container}/archive?path=/tmp",
        headers=("Content-Type: application/x-tar", "Transfer-Encoding: chunked", *headers),
    )
    return head.replace(b"HTTP/1.1", version.encode(), 1)


def _chunk(data: bytes, size_line: bytes | None = None) -> bytes:
    return (size_line or b"%x" % len(data)) + b"\r\n" + data + b"\r\n"


def _send_cut(path: str, data: bytes, cuts: list[int], wait: float = 4.0) -> bytes:
    """`data` in TCP sends cut at `cuts` (a pause between, so each is a read of its own)."""
    with _connect(path) as s:
        pos = 0
        try:
            for cut in [*cuts, len(data)]:
                if cut > pos:
                    s.sendall(data[pos:cut])
                    time.sleep(0.03)
                    pos = cut
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_all(s, wait)


def _md5_in(direct: Any, box: str, path: str) -> str | None:
    r = direct("exec", box, "md5sum", path)
    return r.stdout.split()[0] if r.returncode == 0 else None


def _victims(direct: Any, *names: str) -> list[str]:
    return [n for n in names if _exists(direct, n)]


# -- 1. size lines and last chunks cut at every offset ------------------------------------------

SPELLINGS = {
    "plain": lambda n: b"%x" % n,
    "upper-zeros": lambda n: b"0000000%X" % n,
    "quoted-ext": lambda n: b'%x;a="b;c=\\"d\\"";e=f' % n,
    "many-zeros": lambda n: b"0" * 60 + b"%x" % n,
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_walked_size_lines_cut_at_every_offset(spelling, agent, direct, stack, box):
    hidden, behind = box + "-hidden", box + "-behind"
    nasty = b"\r\n0\r\n\r\n" + _bad_create(stack, hidden) + b"\r\n\r\n0\r\n\r\n"
    content = os.urandom(50_000) + nasty * 20 + os.urandom(30_000)
    tar = _tar("cut.bin", content)
    size = SPELLINGS[spelling]
    first, second, rest = tar[:40_000], tar[40_000:41_000], tar[41_000:]
    # A fake end and a create as the whole of one chunk's data, before the real second chunk.
    body = _chunk(first, size(len(first)))
    line_at = len(body)
    body += _chunk(second, size(len(second))) + _chunk(rest, size(len(rest)))
    last_at = len(body)
    body += b"0\r\nX-Trailer: a\r\n\r\n"
    head = _put(box)
    data = head + body + _bad_create(stack, behind)
    base = len(head)
    size_len = len(size(len(second))) + 2
    offsets = list(range(line_at - 3, line_at + size_len + 3)) + list(
        range(last_at - 2, len(body) + 1)
    )
    for off in offsets:
        reply = _send_cut(agent.listen, data, [base + 1000, base + off])
        assert _victims(direct, hidden, behind) == [], (spelling, off, reply[-300:])
        assert reply.startswith(b"HTTP/1.1 200 "), (off, reply[:300])
        assert b"HTTP/1.1 403 " in reply, (off, reply[-400:])
        got = _md5_in(direct, box, "/tmp/cut.bin")
        assert got == hashlib.md5(content).hexdigest(), (spelling, off)
        direct("exec", box, "rm", "/tmp/cut.bin", check=True)


# -- 2. size lines llhttp refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size_line",
    [
        pytest.param(lambda n: b'%x;a="\r\n' % n, id="quoted-crlf"),
        pytest.param(lambda n: b"%x\r" % n, id="bare-cr"),  # then the data's own CRLF
        pytest.param(lambda n: b"1%016x" % n, id="over-2^64"),
        pytest.param(lambda n: b"%x;a=b\n" % n, id="ext-bare-lf"),
        pytest.param(lambda n: b"%x\x00" % n, id="nul"),
    ],
)
@pytest.mark.parametrize("cuts", [[], [41_000], [40_003, 40_005]])
def test_refused_size_lines_hide_nothing(size_line, cuts, agent, direct, stack, box):
    hidden, behind = box + "-hidden", box + "-behind"
    smuggled = b"\r\n0\r\n\r\n" + _bad_create(stack, hidden)
    first = _chunk(os.urandom(40_000))
    body = first + size_line(len(smuggled)) + b"\r\n" + smuggled + b"\r\n0\r\n\r\n"
    head = _put(box)
    data = head + body + _bad_create(stack, behind)
    reply = _send_cut(agent.listen, data, [len(head) + c for c in cuts])
    assert _victims(direct, hidden, behind) == [], reply[-400:]
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]


@pytest.mark.parametrize("cuts", [[], [40_003], [40_030, 40_090]])
def test_an_extension_too_long_for_the_walk_is_read_by_llhttp(cuts, agent, direct, stack, box):
    """A size line of 100+ bytes (a valid extension) stops the walk: the CRLFCRLF cut reads it;
    the fake end and the create inside that chunk are data, the create behind is judged."""
    hidden, behind = box + "-hidden", box + "-behind"
    smuggled = b"\r\n0\r\n\r\n" + _bad_create(stack, hidden) + b"\r\n\r\n"
    first = _chunk(os.urandom(40_000))
    body = first + _chunk(smuggled, b"%x;" % len(smuggled) + b"e" * 100) + b"0\r\n\r\n"
    head = _put(box)
    reply = _send_cut(
        agent.listen, head + body + _bad_create(stack, behind), [len(head) + c for c in cuts]
    )
    assert _victims(direct, hidden, behind) == [], reply[-400:]
    # The engine reads random bytes as a tar (500); the request behind is refused.
    assert reply.startswith(b"HTTP/1.1 500 ") and b"HTTP/1.1 403 " in reply, reply[-400:]


# -- 3. early answers, Expect, HTTP/1.0, half-close ---------------------------------------------


def test_a_body_still_coming_after_the_engines_404_is_read_as_llhttp_reads_it(
    agent, direct, stack, name
):
    """PUT to a missing container: the engine answers 404 at once; the agent reads (and drops)
    the rest of the chunked body, whose data holds fake ends and creates, and judges the create
    after its real end."""
    hidden, behind = name + "-hidden", name + "-behind"
    nasty = b"0\r\n\r\n" + _bad_create(stack, hidden) + b"\r\n"
    body = (
        _chunk(os.urandom(70_000))
        + _chunk(nasty * 50)
        + _chunk(os.urandom(70_000), b"0" * 8 + b"%x" % 70_000)
    )
    body += b"0\r\n\r\n"
    head = _put(name + "-missing")
    data = head + body + _bad_create(stack, behind)
    for cuts in ([], [len(head) + 10], [len(head) + 70_010, len(head) + 70_011]):
        reply = _send_cut(agent.listen, data, cuts)
        assert _victims(direct, hidden, behind) == [], reply[-400:]
        assert reply.startswith(b"HTTP/1.1 404 "), reply[:300]
        assert b"HTTP/1.1 403 " in reply, reply[-400:]


def test_expect_continue_http10_and_half_close_with_walked_chunks(agent, direct, stack, box):
    hidden, behind = box + "-hidden", box + "-behind"
    content = os.urandom(100_000) + (b"0\r\n\r\n" + _bad_create(stack, hidden)) * 10
    tar = _tar("e.bin", content)
    body = _chunk(tar[:65536]) + _chunk(tar[65536:]) + b"0\r\n\r\n"
    # Expect: 100-continue, the body sent only after the 100.
    with _connect(agent.listen) as s:
        s.sendall(_put(box, "Expect: 100-continue"))
        s.settimeout(5)
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100 "), first
        s.sendall(body + _bad_create(stack, behind))
        s.shutdown(socket.SHUT_WR)
        reply = first + _read_all(s, 4.0)
    assert _victims(direct, hidden, behind) == [], reply[-300:]
    assert b"HTTP/1.1 200 " in reply and b"HTTP/1.1 403 " in reply, reply[-400:]
    assert _md5_in(direct, box, "/tmp/e.bin") == hashlib.md5(content).hexdigest()
    # HTTP/1.0 may not send chunked: refused, nothing behind it read.
    reply = _send_cut(
        agent.listen, _put(box, version="HTTP/1.0") + body + _bad_create(stack, behind), []
    )
    assert reply.startswith(b"HTTP/1.1 400 ") and _victims(direct, hidden, behind) == []
    # A half-close right after the last chunk: answered, and nothing else.
    reply = _send_cut(agent.listen, _put(box) + body, [])
    assert reply.startswith(b"HTTP/1.1 200 ") and _victims(direct, hidden, behind) == []


# -- 4. known answers ----------------------------------------------------------------------------


def test_known_answers_for_many_routes_get_and_head_stay_in_step(agent, direct, stack, box):
    # A copy is forwarded to the judged container's ID: by ID here, so that the engine's 404
    # names the container as the request did.
    cid = direct("inspect", "-f", "{{.Id}}", box, check=True).stdout.strip()
    routes = [
        "/_ping",
        f"/v1.41/containers/{box}/json",
        f"/v1.41/containers/{cid}/archive?path=/eci-missing",  # the same 404 head for GET/HEAD
        f"/v1.41/containers/{box}/archive?path=/etc/hostname",
        "/v1.41/containers/eci-none-such/json",
        f"/v1.41/containers/{box}/logs?stdout=1&stderr=1",
        "/v1.41/version",
        "/v1.41/images/json",
    ]
    # HEAD only where the engine has a HEAD route (elsewhere the agent's own 404 differs).
    mix = [
        (m, _req(m, r))
        for r in routes
        for m in ("GET", "HEAD")
        if m == "GET" or "/archive" in r or r == "/_ping"
    ]
    behind = box + "-behind"

    def run(path: str) -> list[tuple[bytes, bytes]]:
        out = []
        with _connect(path) as s:
            reader = Reader(s)
            for _ in range(5):
                for method, head in mix:
                    s.sendall(head)
                    out.append(reader.response(method))
            order = mix[::-1] + mix[::3] + mix[1::2]
            for _ in range(3):
                s.sendall(b"".join(h for _, h in order))
                out += [reader.response(m) for m, _ in order]
            s.sendall(_bad_create(stack, behind))
            out.append(reader.response("POST"))
            assert reader.buf == b""
            s.settimeout(0.5)
            try:
                extra = s.recv(100)
            except TimeoutError:
                extra = b""
            assert extra == b"", extra
        return out

    through = run(agent.listen)
    assert not _exists(direct, behind), "the create behind the known answers was not judged"
    try:
        engine = run(stack.engine_socket)
    finally:
        direct("rm", "-f", behind)
    assert len(through) == len(engine)
    for (ah, ab), (dh, db) in zip(through[:-1], engine[:-1], strict=True):
        assert _status(ah) == _status(dh)
        assert _without_date(ah) == _without_date(dh)
        assert _payload(ah, ab) == _payload(dh, db)
    assert _status(through[-1][0]) == 403 and _status(engine[-1][0]) == 201
