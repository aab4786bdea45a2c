"""The per-connection state object, driven by bytes alone (no sockets): a playbook per case."""

from __future__ import annotations

import json

import pytest

from agent.policy.decide import ALLOW, Decision, deny
from agent.proxy.connection import (
    CloseClient,
    CloseEngine,
    Command,
    Judge,
    Phase,
    ProxyConnection,
    RequestHead,
    SendClient,
    SendEngine,
    ShutdownEngine,
    Splice,
    Unpin,
    Verify,
)

BODY_PATHS = ("/containers/create", "/volumes/create")


def needs_body(head: RequestHead) -> bool:
    return head.method == "POST" and head.target.split("?")[0].endswith(BODY_PATHS)


def new() -> ProxyConnection:
    return ProxyConnection(needs_body, max_judged_body=1024)


def sent_client(cmds: list[Command]) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, SendClient))


def sent_engine(cmds: list[Command]) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, SendEngine))


def judges(cmds: list[Command]) -> list[Judge]:
    return [c for c in cmds if isinstance(c, Judge)]


PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.41\r\n\r\nOK"


def test_simple_request_is_judged_forwarded_and_answered() -> None:
    c = new()
    cmds = c.client_data(PING)
    assert [type(x) for x in cmds] == [Judge]
    assert judges(cmds)[0].request.head.target == "/_ping"
    cmds = c.judged(ALLOW)
    assert sent_engine(cmds).startswith(b"GET /_ping HTTP/1.1\r\n")
    cmds = c.engine_data(PONG)
    out = sent_client(cmds)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"OK")
    assert c.phase is Phase.IDLE


def test_pipelined_requests_are_each_judged_in_order() -> None:
    c = new()
    second = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    second += b"Content-Length: 2\r\n\r\n{}"
    cmds = c.client_data(PING + second)
    assert len(judges(cmds)) == 1, "the second request must wait for the first response"
    cmds = c.judged(ALLOW)
    assert b"/containers/create" not in sent_engine(cmds)
    cmds = c.engine_data(PONG)
    js = judges(cmds)
    assert len(js) == 1 and js[0].request.head.target == "/containers/create"
    assert js[0].request.body == b"{}"


def test_chunked_body_reaches_the_policy_whole_and_the_engine_with_a_length() -> None:
    c = new()
    body = b'{"Image":"x"}'
    raw = (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
        b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % len(body[5:]) + body[5:] + b"\r\n0\r\n\r\n"
    )
    cmds = c.client_data(raw)
    (judge,) = judges(cmds)
    assert judge.request.body == body and judge.request.body_complete
    cmds = c.judged(ALLOW)
    fwd = sent_engine(cmds)
    assert b"transfer-encoding" not in fwd.lower()
    assert f"Content-Length: {len(body)}".encode() in fwd and fwd.endswith(body)


def test_rewritten_body_is_what_the_engine_gets() -> None:
    c = new()
    raw = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}"
    c.client_data(raw)
    new_body = b'{"HostConfig":{"Binds":["/ct.sock:/var/run/docker.sock"]}}'
    fwd = sent_engine(c.judged(Decision(True, rule="x"), new_body))
    assert fwd.endswith(new_body)
    assert f"Content-Length: {len(new_body)}".encode() in fwd


def test_pinned_target_is_what_the_engine_gets() -> None:
    c = new()
    c.client_data(b"POST /v1.41/containers/web/start?x=1 HTTP/1.1\r\nHost: d\r\n\r\n")
    fwd = sent_engine(c.judged(Decision(True, rule="x", target="/v1.41/containers/abc/start?x=1")))
    assert fwd.startswith(b"POST /v1.41/containers/abc/start?x=1 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"POST /_ping HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_conflicting_framing_is_refused_and_closed(raw: bytes) -> None:
    c = new()
    cmds = c.client_data(raw)
    assert not judges(cmds)
    assert sent_client(cmds).startswith(b"HTTP/1.1 400 ")
    assert any(isinstance(x, CloseClient) for x in cmds)
    assert not sent_engine(cmds)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /a HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: d\r\nBad Header: x\r\n\r\n",
    ],
)
def test_malformed_requests_never_reach_the_engine(raw: bytes) -> None:
    c = new()
    cmds = c.client_data(raw)
    assert not judges(cmds) and not sent_engine(cmds)
    assert sent_client(cmds).split(b" ")[1][:1] in (b"4", b"5")
    assert any(isinstance(x, CloseClient) for x in cmds)


def test_oversized_judged_body_is_refused_with_413() -> None:
    c = new()
    raw = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2000\r\n\r\n"
    cmds = c.client_data(raw + b" " * 2000)
    assert not judges(cmds)
    assert sent_client(cmds).startswith(b"HTTP/1.1 413 ")
    assert not sent_engine(cmds)


def test_refused_streaming_body_is_discarded_and_the_next_request_judged() -> None:
    c = new()
    put = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n\r\n"
    cmds = c.client_data(put)
    assert len(judges(cmds)) == 1
    cmds = c.judged(deny(403, "no", "test"))
    assert sent_client(cmds).startswith(b"HTTP/1.1 403 ")
    cmds = c.client_data(b"ABCDE" + PING)
    (judge,) = judges(cmds)
    assert judge.request.head.target == "/_ping"
    assert not sent_engine(cmds), "the discarded body must not be forwarded"


def test_denial_is_an_engine_style_json_error() -> None:
    c = new()
    c.client_data(PING)
    out = sent_client(c.judged(deny(403, "docker socket mount denied", "r")))
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"application/json" in head
    assert json.loads(body) == {
        "message": "enhanced container isolation: docker socket mount denied"
    }
    assert c.phase is Phase.IDLE


def test_expect_100_continue_is_answered_before_reading_a_judged_body() -> None:
    c = new()
    raw = (
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    cmds = c.client_data(raw)
    assert sent_client(cmds).startswith(b"HTTP/1.1 100 ")
    cmds = c.client_data(b"{}")
    assert judges(cmds)
    fwd = sent_engine(c.judged(ALLOW))
    assert b"expect" not in fwd.lower()


def test_upgrade_switches_to_a_raw_pipe_with_buffered_bytes_passed_on() -> None:
    c = new()
    attach = (
        b"POST /containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    c.client_data(attach + b"early stdin")
    cmds = c.judged(ALLOW)
    assert b"Upgrade: tcp" in sent_engine(cmds)
    cmds = c.engine_data(
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nearly stdout"
    )
    assert any(isinstance(x, Splice) for x in cmds)
    assert sent_client(cmds).startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    assert sent_client(cmds).endswith(b"early stdout")
    assert sent_engine(cmds) == b"early stdin"
    assert c.client_data(b"raw") == [SendEngine(b"raw")]
    assert c.client_data(b"") == [ShutdownEngine()], "half-close is passed on, not a close"
    assert sent_client(c.engine_data(b"more")) == b"more"


def test_hijack_without_upgrade_headers_becomes_a_raw_pipe_too() -> None:
    c = new()
    start = b"POST /exec/abc/start HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}"
    c.client_data(start + b"stdin-bytes")
    c.judged(ALLOW)
    cmds = c.engine_data(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nout"
    )
    assert any(isinstance(x, Splice) for x in cmds)
    assert sent_client(cmds) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nout"
    )
    assert sent_engine(cmds) == b"stdin-bytes"


def test_allowed_socket_create_is_held_until_verified() -> None:
    c = new()
    raw = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}"
    c.client_data(raw)
    c.judged(Decision(True, rule="socket-mount-allowed", expect_image_id="sha256:" + "a" * 64))
    created = b'{"Id":"abc","Warnings":[]}'
    cmds = c.engine_data(
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(created)
        + created
    )
    verifies = [x for x in cmds if isinstance(x, Verify)]
    assert len(verifies) == 1 and verifies[0].body == created
    assert not sent_client(cmds), "nothing reaches the client before the check"
    ok = sent_client(c.verified(True))
    assert ok.startswith(b"HTTP/1.1 201 ") and ok.endswith(created)


@pytest.mark.parametrize(
    ("answer", "unpinned"),
    [
        (b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"HTTP/1.1 100 Continue\r\n\r\n", False),
    ],
    ids=["conflict", "error", "created", "interim"],
)
def test_pins_of_a_request_the_engine_refuses_are_released(answer, unpinned) -> None:
    c = new()
    c.client_data(b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}")
    c.judged(Decision(True, rule="x", pins=("/run/p/a", "/run/p/b")))
    cmds = c.engine_data(answer)
    released = [x for x in cmds if isinstance(x, Unpin)]
    assert released == ([Unpin(("/run/p/a", "/run/p/b"))] if unpinned else [])
    assert sent_client(cmds) == (answer if not answer.startswith(b"HTTP/1.1 100") else b"")


def test_failed_verification_answers_403_instead() -> None:
    c = new()
    c.client_data(b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}")
    c.judged(Decision(True, rule="x", expect_image_id="sha256:" + "b" * 64))
    c.engine_data(b'HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\n{"Id":1}\n')
    out = sent_client(c.verified(False, 403, "image changed"))
    assert out.startswith(b"HTTP/1.1 403 ") and b"image changed" in out


def test_engine_failure_mid_request_gives_502() -> None:
    c = new()
    c.client_data(PING)
    c.judged(ALLOW)
    cmds = c.engine_data(b"")
    assert sent_client(cmds).startswith(b"HTTP/1.1 502 ")
    assert any(isinstance(x, CloseClient) for x in cmds)


def test_streamed_response_is_passed_on_piece_by_piece() -> None:
    c = new()
    c.client_data(b"GET /containers/x/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\n")
    c.judged(ALLOW)
    cmds = c.engine_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert sent_client(cmds).startswith(b"HTTP/1.1 200 ")
    assert b"line1" in sent_client(c.engine_data(b"5\r\nline1\r\n"))
    assert b"line2" in sent_client(c.engine_data(b"5\r\nline2\r\n"))
    assert sent_client(c.engine_data(b"0\r\n\r\n")).endswith(b"0\r\n\r\n")
    assert c.phase is Phase.IDLE


def test_head_request_gets_no_body() -> None:
    c = new()
    c.client_data(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    c.judged(ALLOW)
    out = sent_client(c.engine_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"))
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\n")
    assert c.phase is Phase.IDLE


def test_client_half_close_after_a_request_still_gets_the_response() -> None:
    c = new()
    c.client_data(PING)
    c.client_data(b"")
    cmds = c.judged(ALLOW)
    cmds = c.engine_data(PONG)
    assert sent_client(cmds).endswith(b"OK")
    assert any(isinstance(x, CloseClient) for x in cmds)


def test_engine_close_is_passed_on_to_the_client() -> None:
    c = new()
    c.client_data(PING)
    c.judged(ALLOW)
    cmds = c.engine_data(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK")
    assert sent_client(cmds).endswith(b"OK")
    assert any(isinstance(x, CloseClient) for x in cmds)


def test_engine_dropping_an_idle_connection_gets_a_new_one_for_the_next_request() -> None:
    c = new()
    c.client_data(PING)
    c.judged(ALLOW)
    c.engine_data(PONG)
    assert c.engine_data(b"") == [CloseEngine()]
    c.client_data(PING)
    cmds = c.judged(ALLOW)
    assert isinstance(cmds[0], CloseEngine)
    assert sent_engine(cmds).startswith(b"GET /_ping HTTP/1.1\r\n")


# -- edge cases of the parsing (llhttp) ------------------------------------------------------


def closes(cmds: list[Command]) -> bool:
    return any(isinstance(x, CloseClient) for x in cmds)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /a HTTP/1.1\r\nHost: d\r\nX-A: a\x00b\r\n\r\n",  # NUL in a value
        b"GET /a HTTP/1.1\r\nHost: d\r\nX-A: a\rb\r\n\r\n",  # bare CR in a value
        b"GET /a HTTP/1.1\r\nHost: d\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold
        b"GET /a HTTP/1.1\r\nHost: d\r\nContent-Length : 5\r\n\r\nhello",  # space before colon
        b"GET /a HTTP/1.1\r\nHost: d\r\n Content-Length: 5\r\n\r\nhello",  # leading space
        b"GET /a HTTP/1.1\nHost: d\n\n",  # bare LF
        b"GET /a HTTP/1.1\r\nHost: d\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /a HTTP/1.1\r\nHost: d\r\nHost: e\r\n\r\n",
        b"GET /a HTTP/2.0\r\nHost: d\r\n\r\n",
        b"GET /a HTTP/0.9\r\nHost: d\r\n\r\n",
        b"GET /a\x01 HTTP/1.1\r\nHost: d\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: d\r\nContent-Length: 2, 2\r\n\r\nab",
        b"POST /a HTTP/1.1\r\nHost: d\r\nContent-Length: +2\r\n\r\nab",
        b"POST /a HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.0\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_ambiguous_or_malformed_heads_are_refused_and_closed(raw: bytes) -> None:
    c = new()
    cmds = c.client_data(raw)
    assert not judges(cmds) and not sent_engine(cmds)
    assert sent_client(cmds).split(b" ")[1][:1] in (b"4", b"5")
    assert closes(cmds) and c.phase is Phase.CLOSED


@pytest.mark.parametrize(
    "chunks",
    [
        b"x\r\nhello\r\n0\r\n\r\n",  # not hex
        b"5 \r\nhello\r\n0\r\n\r\n",  # space after the size
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"ffffffffffffffffff\r\n",  # overflow
    ],
)
def test_bad_chunks_are_refused_and_never_forwarded(chunks: bytes) -> None:
    c = new()
    head = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.client_data(head)
    fwd = sent_engine(c.judged(ALLOW))
    cmds = c.client_data(chunks)
    assert sent_client(cmds).startswith(b"HTTP/1.1 400 ") and closes(cmds)
    assert b"hello" not in fwd + sent_engine(cmds)


def test_judged_chunked_body_with_bad_chunk_is_never_judged() -> None:
    c = new()
    raw = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    cmds = c.client_data(raw + b"2\r\n{}\r\n0\r\n\n")
    assert not judges(cmds) and not sent_engine(cmds) and closes(cmds)


def test_streamed_chunked_body_is_rechunked_without_extensions_or_trailers() -> None:
    c = new()
    head = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.client_data(head)
    fwd = sent_engine(c.judged(ALLOW))
    assert b"Transfer-Encoding: chunked\r\n" in fwd
    fwd = sent_engine(c.client_data(b"5;name=value\r\nhello\r\n3;x\r\nabc\r\n"))
    fwd += sent_engine(c.client_data(b"0;end\r\nX-Trailer: evil\r\n\r\n"))
    assert fwd == b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"


def test_chunked_body_end_split_across_reads_then_a_pipelined_request() -> None:
    c = new()
    head = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.client_data(head)
    c.judged(ALLOW)
    fwd = b""
    for piece in (b"4\r\nab\r\n\r\n0\r", b"\n\r", b"\n" + PING):
        cmds = c.client_data(piece)
        assert not judges(cmds), "the next request waits for the response"
        fwd += sent_engine(cmds)
    assert fwd == b"4\r\nab\r\n\r\n0\r\n\r\n"
    (judge,) = judges(c.engine_data(PONG))
    assert judge.request.head.target == "/_ping"


def test_content_length_body_is_forwarded_as_is_and_the_next_request_waits() -> None:
    c = new()
    put = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n\r\n"
    c.client_data(put + b"AB")
    fwd = sent_engine(c.judged(ALLOW))
    assert fwd.startswith(b"PUT /containers/x/archive?path=/ HTTP/1.1\r\n")
    assert b"Content-Length: 5\r\n" in fwd and fwd.endswith(b"\r\n\r\nAB")
    cmds = c.client_data(b"CDE" + PING)
    assert sent_engine(cmds) == b"CDE" and not judges(cmds)
    assert len(judges(c.engine_data(PONG))) == 1


def test_refused_streamed_chunked_body_is_discarded_then_the_next_request_judged() -> None:
    c = new()
    head = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.client_data(head + b"3\r\nabc\r\n")
    cmds = c.judged(deny(403, "no", "test"))
    assert sent_client(cmds).startswith(b"HTTP/1.1 403 ") and not sent_engine(cmds)
    cmds = c.client_data(b"0\r\n\r\n" + PING)
    (judge,) = judges(cmds)
    assert judge.request.head.target == "/_ping" and not sent_engine(cmds)


def test_http10_request_is_forwarded_as_http11_with_a_host_and_closed_after() -> None:
    c = new()
    cmds = c.client_data(b"GET /_ping HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
    (judge,) = judges(cmds)
    assert judge.request.head.http_version == "1.0"
    fwd = sent_engine(c.judged(ALLOW))
    assert fwd.startswith(b"GET /_ping HTTP/1.1\r\n") and b"\r\nHost: " in fwd
    cmds = c.engine_data(PONG)
    out = sent_client(cmds)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\nOK")
    assert b"Connection: close\r\n" in out and closes(cmds)


def test_http10_keep_alive_stays_open_and_gets_chunked_responses_dechunked() -> None:
    c = new()
    c.client_data(b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    c.judged(ALLOW)
    cmds = c.engine_data(PONG)
    assert b"Connection: keep-alive\r\n" in sent_client(cmds) and not closes(cmds)
    assert c.phase is Phase.IDLE
    c.client_data(b"GET /containers/json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    c.judged(ALLOW)
    cmds = c.engine_data(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\n[1,\r\n"
    )
    cmds += c.engine_data(b"2\r\n2]\r\n0\r\n\r\n")
    out = sent_client(cmds)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"Connection: close" in head
    assert body == b"[1,2]" and closes(cmds)


def test_head_response_with_content_length_ends_at_the_head() -> None:
    c = new()
    c.client_data(b"HEAD /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n\r\n")
    c.judged(ALLOW)
    cmds = c.engine_data(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
    assert sent_client(cmds) == b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
    assert c.phase is Phase.IDLE
    cmds = c.client_data(PING)
    assert len(judges(cmds)) == 1


def test_expect_100_continue_on_a_streamed_body_is_answered_once_allowed() -> None:
    c = new()
    put = (
        b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    cmds = c.client_data(put)
    assert not sent_client(cmds), "nothing is promised before the policy said yes"
    cmds = c.judged(ALLOW)
    assert sent_client(cmds) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in sent_engine(cmds).lower()
    assert sent_engine(c.client_data(b"hello")) == b"hello"
    # The engine's own 100 (it should send none: it never saw Expect) is not passed on.
    cmds = c.engine_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert sent_client(cmds) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert c.phase is Phase.IDLE


def test_refused_expect_100_request_is_closed_not_left_waiting() -> None:
    c = new()
    put = (
        b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    c.client_data(put)
    cmds = c.judged(deny(403, "no", "test"))
    assert sent_client(cmds).startswith(b"HTTP/1.1 403 ") and closes(cmds)


def test_raw_bytes_after_an_upgrade_request_are_not_parsed_before_the_engine_answers() -> None:
    c = new()
    attach = (
        b"POST /containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    cmds = c.client_data(attach + b"\x01\x02 not http at all\r\n\r\n")
    assert len(judges(cmds)) == 1 and not sent_client(cmds)
    c.judged(ALLOW)
    cmds = c.engine_data(b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
    assert sent_engine(cmds) == b"\x01\x02 not http at all\r\n\r\n"


def test_upgrade_request_with_a_body_declined_by_the_engine_goes_on_with_http() -> None:
    c = new()
    start = (
        b"POST /exec/abc/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    cmds = c.client_data(start + PING)
    (judge,) = judges(cmds)
    assert judge.request.head.target == "/exec/abc/start"
    fwd = sent_engine(c.judged(ALLOW))
    assert fwd.endswith(b"\r\n\r\n{}")
    cmds = c.engine_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    assert sent_client(cmds).startswith(b"HTTP/1.1 404 ")
    (judge,) = judges(cmds)
    assert judge.request.head.target == "/_ping"


def test_upgrade_request_with_a_chunked_body() -> None:
    c = new()
    start = (
        b"POST /exec/abc/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nstdin"
    )
    c.client_data(start)
    fwd = sent_engine(c.judged(ALLOW))
    assert fwd.endswith(b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    cmds = c.engine_data(b"HTTP/1.1 101 UPGRADED\r\n\r\n")
    assert sent_engine(cmds) == b"stdin"


def test_response_head_in_pieces_and_a_read_until_close_body_rechunked() -> None:
    """A body that ends when the engine closes is chunked for the client, which stays."""
    c = new()
    c.client_data(b"GET /containers/x/export HTTP/1.1\r\nHost: d\r\n\r\n" + PING)
    c.judged(ALLOW)
    out = b""
    for piece in (b"HTTP/1.1 200 OK\r\nContent-Type: app", b"lication/x-tar\r\n\r", b"\nabc"):
        out += sent_client(c.engine_data(piece))
    out += sent_client(c.engine_data(b"def"))
    cmds = c.engine_data(b"")
    out += sent_client(cmds)
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    )
    assert not closes(cmds) and len(judges(cmds)) == 1
    assert isinstance(c.judged(ALLOW)[0], CloseEngine), "that engine connection is done"


def test_read_until_close_body_with_connection_close_is_passed_raw_then_closed() -> None:
    c = new()
    c.client_data(b"GET /containers/x/export HTTP/1.1\r\nHost: d\r\n\r\n")
    c.judged(ALLOW)
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc"
    assert sent_client(c.engine_data(raw)) == raw
    cmds = c.engine_data(b"")
    assert closes(cmds) and any(isinstance(x, CloseEngine) for x in cmds)


def test_chunked_response_is_passed_on_raw_and_its_end_found() -> None:
    c = new()
    c.client_data(PING + PING)
    c.judged(ALLOW)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n\r\n\r\n\r\n0\r\n\r\n"
    cmds = c.engine_data(raw)
    assert sent_client(cmds) == raw
    assert len(judges(cmds)) == 1 and c.engine_reusable()


def test_response_before_the_request_body_ends_drops_the_rest_and_the_engine_connection() -> None:
    c = new()
    put = b"PUT /containers/nope/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 10\r\n\r\n"
    c.client_data(put + b"abc")
    c.judged(ALLOW)
    cmds = c.engine_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    assert sent_client(cmds).startswith(b"HTTP/1.1 404 ") and c.phase is Phase.REFUSING
    assert not c.engine_reusable()
    cmds = c.client_data(b"defghij" + PING)
    assert not sent_engine(cmds)
    (judge,) = judges(cmds)
    assert isinstance(c.judged(ALLOW)[0], CloseEngine)


def test_verified_response_with_a_chunked_body_gets_a_length() -> None:
    c = new()
    c.client_data(b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}")
    c.judged(Decision(True, rule="x", expect_image_id="sha256:" + "c" * 64))
    cmds = c.engine_data(
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"Id\r\n'
    )
    assert not sent_client(cmds)
    cmds = c.engine_data(b'5\r\n":1}\n\r\n0\r\n\r\n')
    (verify,) = [x for x in cmds if isinstance(x, Verify)]
    assert verify.body == b'{"Id":1}\n' and verify.status == 201
    out = sent_client(c.verified(True))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 Created\r\n") and b"Content-Length: 9" in head
    assert b"transfer-encoding" not in head.lower() and body == b'{"Id":1}\n'
    assert c.phase is Phase.IDLE


def test_oversized_head_is_refused() -> None:
    c = new()
    cmds = c.client_data(b"GET /a HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * (1024 * 1024 + 10))
    assert sent_client(cmds).startswith(b"HTTP/1.1 431 ") and closes(cmds)


def test_header_values_lose_trailing_whitespace_and_keep_their_names() -> None:
    c = new()
    (judge,) = judges(c.client_data(b"GET /_ping HTTP/1.1\r\nhOsT: d  \r\nX-Y:\tv \t\r\n\r\n"))
    assert judge.request.head.headers == ((b"hOsT", b"d"), (b"X-Y", b"v"))
    assert b"\r\nhOsT: d\r\nX-Y: v\r\n\r\n" in sent_engine(c.judged(ALLOW))


def test_leading_empty_lines_before_a_request_are_skipped() -> None:
    c = new()
    (judge,) = judges(c.client_data(b"\r\n\r\n" + PING))
    assert judge.request.head.target == "/_ping"


def _reserialized(head: RequestHead) -> bytes:
    """The request head as the proxy writes it from the parsed parts."""
    fields = b"".join(b"%s: %s\r\n" % h for h in head.headers)
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (head.method.encode(), head.target.encode(), fields)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /_ping HTTP/1.1\r\nHost: d\r\nUser-Agent: Docker-Client/28 (linux)\r\n\r\n",
        b"GET /a?b=c:%20d HTTP/1.1\r\nHost: h:2375\r\nX-A: b:  c\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost:d\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost:  d\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost: d \r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost:\td\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Empty:\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost:d\r\nX-A:  b\r\n\r\n",
        b"\r\nGET /_ping HTTP/1.1\r\nHost: d\r\n\r\n",
    ],
)
def test_the_engine_gets_the_head_written_from_what_was_judged(raw: bytes) -> None:
    c = new()
    (judge,) = judges(c.client_data(raw))
    assert sent_engine(c.judged(ALLOW)) == _reserialized(judge.request.head)


def test_a_head_in_two_reads_or_with_a_dropped_header_is_written_from_its_parts() -> None:
    c = new()
    assert c.client_data(b"GET /_ping HTTP/1.1\r\nHo") == []
    (judge,) = judges(c.client_data(b"st: d\r\n\r\n"))
    assert sent_engine(c.judged(ALLOW)) == _reserialized(judge.request.head)
    c = new()
    raw = b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nExpect: 100-continue\r\n"
    (judge,) = judges(c.client_data(raw + b"Content-Length: 1\r\n\r\n"))
    head = sent_engine(c.judged(ALLOW))
    assert head.startswith(b"PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n")
    assert b"Expect" not in head and b"Content-Length: 1\r\n" in head


def test_a_pinned_target_is_what_the_engine_gets() -> None:
    c = new()
    judges(c.client_data(b"POST /containers/web/start HTTP/1.1\r\nHost: d\r\n\r\n"))
    pinned = Decision(True, 200, "", "", target="/containers/0123abcd/start")
    want = b"POST /containers/0123abcd/start HTTP/1.1\r\nHost: d\r\n\r\n"
    assert sent_engine(c.judged(pinned)) == want


def _drive(pieces: list[bytes], engine: list[bytes]) -> tuple[list[str], bytes, bytes]:
    """Feed client `pieces`, answering every judge with ALLOW and every forwarded request
    with the next engine response (itself fed byte by byte); returns (judged targets, bytes
    sent to the engine, bytes sent to the client)."""
    c = new()
    judged: list[str] = []
    to_engine = b""
    to_client = b""
    answers = list(engine)

    def run(cmds: list[Command]) -> None:
        nonlocal to_engine, to_client
        for cmd in cmds:
            if isinstance(cmd, Judge):
                judged.append(cmd.request.head.target)
                run(c.judged(ALLOW))
            elif isinstance(cmd, SendEngine):
                to_engine += cmd.data
                if to_engine.endswith((b"\r\n\r\n", b"{}")) and answers:
                    for i in range(len(answer := answers.pop(0))):
                        run(c.engine_data(answer[i : i + 1]))
            elif isinstance(cmd, SendClient):
                to_client += cmd.data

    for piece in pieces:
        run(c.client_data(piece))
    return judged, to_engine, to_client


def test_any_cut_of_the_same_bytes_is_read_the_same_way() -> None:
    stream = (
        b"GET /a HTTP/1.1\r\nHost: d\r\n\r\n"
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost:  d\r\n\r\n"
    )
    engine = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
        PONG,
    ]
    want = _drive([stream], engine)
    assert want[0] == ["/a", "/containers/create", "/c"]
    assert want[1].count(b"HTTP/1.1\r\n") == 3 and b"Host: d\r\n\r\n" in want[1]
    assert want[2].count(b"HTTP/1.1 2") == 3
    for cut in range(1, len(stream)):
        assert _drive([stream[:cut], stream[cut:]], engine) == want, cut
    assert _drive([stream[i : i + 1] for i in range(len(stream))], engine) == want


# -- BuildKit's /grpc: read after the upgrade --------------------------------------------------

GRPC_UPGRADE = (
    b"POST /v1.41/grpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
)
H2C_101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def _grpc_stream(bad: bool) -> bytes:
    from tests.unit.test_grpc_inspect import CLEAN, Wire, solve

    message = solve(ents=(b"network.host",)) if bad else CLEAN
    return Wire().rpc(1, "/moby.buildkit.v1.Control/Solve", message).bytes()


@pytest.mark.parametrize("early", [False, True], ids=["after", "with-the-upgrade"])
def test_grpc_solve_with_host_powers_is_cut_before_the_engine_has_it(early: bool) -> None:
    from agent.proxy.connection import StreamRefused

    stream = _grpc_stream(bad=True)
    c = new()
    c.client_data(GRPC_UPGRADE + (stream if early else b""))
    c.judged(Decision(True, rule="grpc-inspected", inspect="grpc"))
    cmds = c.engine_data(H2C_101)
    if not early:
        cmds += c.client_data(stream)
    refused = [x for x in cmds if isinstance(x, StreamRefused)]
    assert len(refused) == 1 and "network" in refused[0].reason
    assert refused[0].head.target == "/v1.41/grpc"
    assert len(sent_engine(cmds)) < len(stream), "the Solve never reached the engine whole"
    assert cmds[-2:] == [CloseEngine(), CloseClient()]
    assert c.client_data(b"more") == []


def test_grpc_clean_stream_passes_whole_and_in_order() -> None:
    stream = _grpc_stream(bad=False)
    c = new()
    c.client_data(GRPC_UPGRADE)
    c.judged(Decision(True, rule="grpc-inspected", inspect="grpc"))
    c.engine_data(H2C_101)
    out = b""
    for i in range(0, len(stream), 7):  # in small pieces, as a slow client sends it
        out += sent_engine(c.client_data(stream[i : i + 7]))
    assert out == stream
    assert c.client_data(b"") == [ShutdownEngine()]


def test_grpc_audit_records_and_lets_the_stream_go_on() -> None:
    from agent.proxy.connection import StreamRefused

    stream = _grpc_stream(bad=True)
    c = new()
    c.client_data(GRPC_UPGRADE)
    c.judged(Decision(True, rule="grpc-inspected", inspect="grpc-audit"))
    c.engine_data(H2C_101)
    cmds = c.client_data(stream)
    assert [x.audited for x in cmds if isinstance(x, StreamRefused)] == [True]
    assert sent_engine(cmds) == stream
    assert c.client_data(b"raw") == [SendEngine(b"raw")]


def test_without_inspection_grpc_is_a_raw_pipe() -> None:
    stream = _grpc_stream(bad=True)
    c = new()
    c.client_data(GRPC_UPGRADE)
    c.judged(ALLOW)  # ECI off
    c.engine_data(H2C_101)
    assert c.client_data(stream) == [SendEngine(stream)]


# -- the response fields that frame it, however the engine spells them ---------------------------

RESPONSE_SPELLINGS = [
    # (head fields, body, whether the client connection ends after it)
    (b"Content-Length: 2\r\n", b"OK", False),
    (b"content-length: 2\r\n", b"OK", False),
    (b"CONTENT-LENGTH:    2\r\n", b"OK", False),
    (b"Content-Length: 2\r\nConnection: close\r\n", b"OK", True),
    (b"Content-Length: 2\r\nCONNECTION: Keep-Alive, Close\r\n", b"OK", True),
    (b"Connection: keep-alive\r\nContent-Length: 2\r\nconnection: close\r\n", b"OK", True),
    (b"Transfer-Encoding: chunked\r\n", b"2\r\nOK\r\n0\r\n\r\n", False),
    (b"TRANSFER-ENCODING:\tChunked\r\n", b"2\r\nOK\r\n0\r\n\r\n", False),
    (b"X-Content-Length: 9\r\nContent-Length: 2\r\n", b"OK", False),
    # Two codings: the last one says chunked, as llhttp reads it.
    (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"2\r\nOK\r\n0\r\n\r\n", False),
]


@pytest.mark.parametrize(("fields", "body", "closes"), RESPONSE_SPELLINGS)
def test_a_response_is_framed_by_its_fields_in_any_case(
    fields: bytes, body: bytes, closes: bool
) -> None:
    c = new()
    c.client_data(PING)
    c.judged(ALLOW)
    response = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n" + body
    cmds = c.engine_data(response[:-1])  # the last byte not there yet: not done
    assert c.phase is Phase.FORWARDING
    cmds += c.engine_data(response[-1:])
    assert sent_client(cmds) == response
    if closes:
        assert any(isinstance(x, CloseClient) for x in cmds)
    else:
        assert c.phase is Phase.IDLE and not any(isinstance(x, CloseClient) for x in cmds)


def test_a_response_without_framing_is_chunked_for_the_client() -> None:
    c = new()
    c.client_data(PING)
    c.judged(ALLOW)
    out = sent_client(c.engine_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nab"))
    assert (
        out
        == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
    )
