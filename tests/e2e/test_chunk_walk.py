"""Chunked uploads through the real agent, whose parser is fed the chunks before the last in
one piece (`_walk` in agent/proxy/connection.py), attacked and checked on the ENGINE.

Each attack is a `PUT .../archive` with a chunked body whose framing or contents try to end
the body early or late, followed on the same connection by a create that binds the engine
socket with `--privileged` (always refused when judged). What counts is what the ENGINE holds
afterwards (the container by name, the file the upload wrote), never the agent's log.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
from typing import Any

import pytest

from tests.e2e.test_review_session3 import _bad_create, _connect, _exists, _read_all, _req

pytestmark = pytest.mark.engine


def _tar(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _put_head(container: str) -> bytes:
    return _req(
        "PUT",
        f"/v1.41/containers/{container}/archive?path=/tmp",
        headers=("Content-Type: application/x-tar", "Transfer-Encoding: chunked"),
    )


def _chunks(data: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = min(sizes[i % len(sizes)], len(data) - pos)
        out.append(b"%x\r\n" % size + data[pos : pos + size] + b"\r\n")
        pos, i = pos + size, i + 1
    return b"".join(out)


def _send(path: str, data: bytes, pieces: list[int] | None = None) -> bytes:
    """Send `data` (in reads of the given sizes, in turn), half-close, read everything."""
    with _connect(path) as s:
        try:
            if pieces is None:
                s.sendall(data)
            else:
                pos, i = 0, 0
                while pos < len(data):
                    n = pieces[i % len(pieces)]
                    s.sendall(data[pos : pos + n])
                    pos, i = pos + n, i + 1
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before taking it all: read the answer
        return _read_all(s, 5.0)


def test_an_upload_in_every_chunk_shape_arrives_whole(agent, direct, stack, box):
    """Random data (an LF every ~256 bytes), big and tiny chunks, reads cut inside size lines:
    the file the engine wrote is the file sent, and the create behind it is judged (refused)."""
    payload = os.urandom(3 << 20)
    tar = _tar("walked.bin", payload)
    victim = box + "-behind"
    cases = [([32768], None), ([65536, 512, 1, 40000], [65536 + 3, 7, 100000]), ([300], [4096])]
    for sizes, pieces in cases:
        body = _chunks(tar, sizes) + b"0\r\n\r\n"
        reply = _send(agent.listen, _put_head(box) + body + _bad_create(stack, victim), pieces)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
        assert b"HTTP/1.1 403 " in reply, reply[-600:]
        assert not _exists(direct, victim)
        got = direct("exec", box, "md5sum", "/tmp/walked.bin", check=True).stdout.split()[0]
        assert got == hashlib.md5(payload).hexdigest(), (sizes, pieces)
        direct("exec", box, "rm", "/tmp/walked.bin", check=True)


def _smuggled(stack: Any, victim: str) -> bytes:
    """A fake end of the body and a socket-mounting create, to hide inside chunk data."""
    return b"0\r\n\r\n" + _bad_create(stack, victim)


@pytest.mark.parametrize(
    "build",
    [
        # a size line Python's int() reads but llhttp refuses, with a request after it
        pytest.param(lambda tar, bad: _chunks(tar, [4096]) + b"0x%x\r\n" % len(bad) + bad + b"\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(lambda tar, bad: _chunks(tar, [4096]) + b"1_0\r\n" + bad[:16] + b"\r\n" + bad[16:], id="underscore"),
        pytest.param(lambda tar, bad: _chunks(tar, [4096]) + b" %x\r\n" % len(bad) + bad + b"\r\n0\r\n\r\n", id="leading-space"),
        pytest.param(lambda tar, bad: _chunks(tar, [4096]) + b"%x \r\n" % len(bad) + bad + b"\r\n0\r\n\r\n", id="trailing-space"),
        pytest.param(lambda tar, bad: _chunks(tar, [4096]) + b"+%x\r\n" % len(bad) + bad + b"\r\n0\r\n\r\n", id="plus"),
        # a size that covers a fake end and the create: they are data, the real end comes after
        pytest.param(lambda tar, bad: _chunks(tar + bad, [len(tar) + len(bad)]) + b"0\r\n\r\n", id="inside-one-chunk"),
        pytest.param(lambda tar, bad: _chunks(tar, [32768]) + _chunks(bad, [1]) + b"0\r\n\r\n", id="after-tiny-chunks"),
        # a size smaller than what follows: the rest is read as the next chunk-size line
        pytest.param(lambda tar, bad: _chunks(tar, [32768]) + b"5\r\n" + bad + b"\r\n0\r\n\r\n", id="short-size"),
        # a bare LF ending a size line
        pytest.param(lambda tar, bad: _chunks(tar, [32768]) + b"%x\n" % len(bad) + bad + b"\r\n0\r\n\r\n", id="bare-lf"),
    ],
)  # fmt: skip
def test_a_create_hidden_in_a_chunked_upload_never_reaches_the_engine(
    build, agent, direct, stack, box
):
    victim = box + "-smuggled"
    body = build(_tar("x.bin", os.urandom(100_000)), _smuggled(stack, victim))
    for pieces in (None, [7, 4096], [65536]):
        reply = _send(agent.listen, _put_head(box) + body, pieces)
        assert not _exists(direct, victim), (pieces, reply[-400:])
        # Anything the agent answered about the create itself is a refusal.
        assert b"HTTP/1.1 201 " not in reply, reply[-400:]
