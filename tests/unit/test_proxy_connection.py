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
