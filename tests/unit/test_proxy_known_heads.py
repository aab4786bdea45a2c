"""`KnownHeads`: request heads a host client sent before, allowed by route alone, forwarded again
without being parsed and judged. Driven by bytes alone, like `test_proxy_connection`.

What must hold: a head is taken from the table only when the bytes are the whole head, byte for
byte; what the engine then gets, and what the client gets back, is what the parsed path gives;
nothing that is not a plain GET/HEAD allowed by route alone is ever remembered; a policy change
forgets everything, and an answer judged under the old policy is not remembered after it.

The engine's response heads to such requests are remembered too (`KnownHeads.answers_*`): what
the client gets, and where the response is taken to end, must be what a parser reading the head
afresh gives, for every framing, and a head is only looked up for the method it was read for.
"""

from __future__ import annotations

import pytest

from agent.policy.decide import ALLOW, ALLOW_BY_ROUTE, Decision
from agent.proxy.connection import (
    KNOWN_ANSWER_MAX,
    KNOWN_ANSWERS_LIMIT,
    KNOWN_HEAD_MAX,
    CloseClient,
    CloseEngine,
    KnownHeads,
    Log,
    Phase,
    ProxyConnection,
    RequestHead,
)
from tests.unit.test_proxy_connection import judges, sent_client, sent_engine


def needs_body(head: RequestHead) -> bool:
    return head.method == "POST" and head.target.split("?")[0].endswith("/containers/create")


def new(known: KnownHeads | None) -> ProxyConnection:
    c = ProxyConnection(needs_body, max_judged_body=1024)
    c.known = known
    return c


PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: t\r\n\r\n"
HEAD_PING = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK"
HEAD_PONG = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\n"


def cycle(c: ProxyConnection, raw: bytes, decision: Decision, response: bytes) -> tuple[int, bytes, bytes]:  # fmt: skip
    """One request and its response: (judges asked, bytes to the engine, bytes to the client)."""
    cmds = c.client_data(raw)
    asked = len(judges(cmds))
    if asked:
        cmds = c.judged(decision)
    to_engine = sent_engine(cmds)
    to_client = sent_client(c.engine_data(response))
    return asked, to_engine, to_client


def test_a_head_allowed_by_route_is_forwarded_again_without_a_judge() -> None:
    known = KnownHeads()
    first = new(known)
    asked, engine1, client1 = cycle(first, PING, ALLOW_BY_ROUTE, PONG)
    assert asked == 1 and len(known.entries) == 1
    again = new(known)  # another connection of a host client
    for _ in range(3):
        asked, engine2, client2 = cycle(again, PING, ALLOW_BY_ROUTE, PONG)
        assert asked == 0
        assert engine2 == engine1 and client2 == client1 == PONG
        assert again.phase is Phase.IDLE
    assert again.requests_seen == 3


def test_head_response_has_no_body_when_remembered() -> None:
    known = KnownHeads()
    cycle(new(known), HEAD_PING, ALLOW_BY_ROUTE, HEAD_PONG)
    c = new(known)
    asked, _, out = cycle(c, HEAD_PING, ALLOW_BY_ROUTE, HEAD_PONG)
    assert asked == 0 and out == HEAD_PONG
    # The exchange is over at the head: the next request is read, not taken for a body.
    asked, _, out = cycle(c, PING, ALLOW_BY_ROUTE, PONG)
    assert asked == 1 and out == PONG


@pytest.mark.parametrize(
    ("raw", "decision", "why"),
    [
        (PING, ALLOW, "an allow that looked at more than the route"),
        (PING, Decision(True, rule="x", by_route=True, target="/v1.41/_ping?x"), "a pinned target"),
        (b"POST /containers/c/kill HTTP/1.1\r\nHost: d\r\n\r\n", ALLOW_BY_ROUTE, "POST"),
        (b"GET /_ping HTTP/1.0\r\nHost: d\r\nConnection: keep-alive\r\n\r\n", ALLOW_BY_ROUTE, "HTTP/1.0"),
        (b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n", ALLOW_BY_ROUTE, "close"),
        (b"GET /_ping HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n", ALLOW_BY_ROUTE, "length"),
        (b"GET /_ping HTTP/1.1\r\nHost: d\r\nProxy-Connection: x\r\n\r\n", ALLOW_BY_ROUTE, "dropped header"),
        (b"GET /a/attach/ws HTTP/1.1\r\nHost: d\r\nUpgrade: websocket\r\nConnection: keep-alive-upgrade\r\n\r\n", ALLOW_BY_ROUTE, "upgrade the engine may take"),
        (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: " + b"a" * KNOWN_HEAD_MAX + b"\r\n\r\n", ALLOW_BY_ROUTE, "too long"),
    ],
)  # fmt: skip
def test_what_is_never_remembered(raw: bytes, decision: Decision, why: str) -> None:
    known = KnownHeads()
    c = new(known)
    c.client_data(raw)
    c.judged(decision)
    assert not known.entries, why


def test_a_head_in_two_pieces_is_not_remembered_but_still_served() -> None:
    known = KnownHeads()
    c = new(known)
    assert c.client_data(PING[:10]) == []
    cmds = c.client_data(PING[10:])
    assert len(judges(cmds)) == 1
    c.judged(ALLOW_BY_ROUTE)
    assert not known.entries
    assert sent_client(c.engine_data(PONG)) == PONG


@pytest.mark.parametrize(
    "variant",
    [
        PING.replace(b"Host", b"host"),  # same meaning, other bytes: judged again
        PING.replace(b"_ping", b"_Ping"),
        PING[:-2] + b"X: y\r\n\r\n",
        b"\r\n" + PING,  # a leading empty line
        PING.replace(b"GET", b"get"),
    ],
)
def test_only_the_same_bytes_match(variant: bytes) -> None:
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    c = new(known)
    cmds = c.client_data(variant)
    engine = sent_engine(cmds)
    assert engine == b"", "forwarded without a judge"
    assert judges(cmds) or any(isinstance(x, CloseClient) for x in cmds)


def test_a_remembered_head_then_a_pipelined_create_is_judged_with_its_body() -> None:
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    c = new(known)
    create = (
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    cmds = c.client_data(PING + create)
    assert judges(cmds) == [] and sent_engine(cmds).startswith(b"GET /v1.41/_ping ")
    assert b"/containers/create" not in sent_engine(cmds)
    cmds = c.engine_data(PONG)
    (judge,) = judges(cmds)
    assert judge.request.head.target == "/containers/create" and judge.request.body == b"{}"


def test_a_remembered_head_is_not_a_prefix_match() -> None:
    """The bytes after a remembered head are the next request, never part of this one: a body
    sent behind a bodiless GET is read as a request (and refused as one)."""
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    c = new(known)
    cmds = c.client_data(PING + b'{"Image":"x"}')
    assert sent_engine(cmds).endswith(b"\r\n\r\n")
    out = c.engine_data(PONG)
    assert sent_client(out).startswith(PONG + b"HTTP/1.1 400 ")
    assert any(isinstance(x, CloseClient) for x in out)


def test_a_policy_change_forgets_and_a_late_answer_is_not_kept() -> None:
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    known.reset()
    assert not known.entries
    c = new(known)
    cmds = c.client_data(PING)
    assert len(judges(cmds)) == 1
    known.reset()  # the policy changes while this request is being judged
    c.judged(ALLOW_BY_ROUTE)
    assert not known.entries


def test_without_a_table_every_request_is_judged() -> None:
    c = new(None)
    for _ in range(2):
        asked, _, _ = cycle(c, PING, ALLOW_BY_ROUTE, PONG)
        assert asked == 1


def test_the_table_is_bounded() -> None:
    known = KnownHeads(limit=4)
    c = new(known)
    for i in range(10):
        raw = b"GET /_ping?i=%d HTTP/1.1\r\nHost: d\r\n\r\n" % i
        cycle(c, raw, ALLOW_BY_ROUTE, PONG)
        assert len(known.entries) <= 4
    assert known.entries


# -- the engine's answers, remembered ------------------------------------------------------------


def outcome(c: ProxyConnection, raw: bytes, pieces: list[bytes]) -> tuple[object, ...]:
    """What one exchange of a remembered request head does, the response arriving in `pieces`:
    the bytes the client gets, the other commands, and where the connection is left."""
    cmds = c.client_data(raw)
    assert not judges(cmds), "the request head is not a remembered one"
    out: list[object] = []
    for piece in pieces:
        out += c.engine_data(piece)
    to_client = sent_client(out)  # type: ignore[arg-type]
    others = [type(x).__name__ for x in out if not hasattr(x, "data")]
    others += [x.message for x in out if isinstance(x, Log)]
    return to_client, others, c.phase, c.engine_reusable()


@pytest.mark.parametrize(
    ("raw", "pieces", "remembered"),
    [
        (PING, [PONG], True),
        (PING, [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], True),
        (PING, [b"HTTP/1.1 204 No Content\r\nApi-Version: 1.41\r\n\r\n"], True),
        (PING, [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"], True),
        (PING, [b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"], True),
        (PING, [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"], True),
        (PING, [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nCONNECTION: Close\r\n\r\nOK"], True),
        (PING, [HEAD_PONG, b"O", b"K"], True),  # the body in later reads
        (PING, [PONG + b"HTTP/1.1 200 OK\r\n"], True),  # the engine says more than it was asked
        (HEAD_PING, [HEAD_PONG], True),
        (HEAD_PING, [HEAD_PONG + b"OK"], True),  # no body after a HEAD: OK is out of turn
        # Never remembered: what needs the parser after the head, or was not read whole.
        (PING, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n"], False),
        (PING, [b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n\r\nuntil the end"], False),
        (PING, [b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nraw"], False),
        (PING, [b"HTTP/1.1 100 Continue\r\n\r\n" + PONG], False),
        (PING, [PONG[:20], PONG[20:]], False),  # a head in two reads
        (PING, [b"HTTP/1.1 200 OK\r\nX: " + b"a" * KNOWN_ANSWER_MAX + b"\r\nContent-Length: 2\r\n\r\nOK"], False),
    ],
)  # fmt: skip
def test_a_remembered_answer_does_what_reading_it_afresh_does(
    raw: bytes, pieces: list[bytes], remembered: bool
) -> None:
    known = KnownHeads()
    cycle(new(known), raw, ALLOW_BY_ROUTE, PONG if raw == PING else HEAD_PONG)
    known.answers_get.clear()
    known.answers_head.clear()
    table = known.answers_head if raw.startswith(b"HEAD") else known.answers_get
    first = outcome(new(known), raw, pieces)  # read by a parser
    assert bool(table) is remembered
    again = outcome(new(known), raw, pieces)  # from the table, if remembered
    assert again == first
    assert bool(table) is remembered and len(table) <= 1


def test_a_head_remembered_for_get_is_not_used_for_head() -> None:
    """The same response head frames a body after a GET and none after a HEAD."""
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    cycle(new(known), HEAD_PING, ALLOW_BY_ROUTE, HEAD_PONG)
    known.answers_get.clear()
    known.answers_head.clear()
    c = new(known)
    for _ in range(2):
        assert outcome(c, PING, [PONG])[0] == PONG  # the GET's answer: remembered
    assert list(known.answers_get) == [HEAD_PONG] and not known.answers_head
    c = new(known)
    for _ in range(3):  # after a HEAD the exchange ends at the head: the next request is read
        to_client, _, phase, _ = outcome(c, HEAD_PING, [HEAD_PONG])
        assert to_client == HEAD_PONG and phase is Phase.IDLE
        to_client, _, phase, _ = outcome(c, PING, [PONG])
        assert to_client == PONG and phase is Phase.IDLE


def test_a_response_to_a_request_not_remembered_is_not_remembered() -> None:
    known = KnownHeads()
    c = new(known)
    post = b"POST /containers/c/kill HTTP/1.1\r\nHost: d\r\n\r\n"
    for raw, decision in ((post, ALLOW_BY_ROUTE), (PING, ALLOW)):
        c.client_data(raw)
        assert sent_client(c.engine_data(sent_engine(c.judged(decision)) and PONG)) == PONG
    assert not known.answers_get and not known.answers_head


def test_a_remembered_answer_with_close_ends_both_connections() -> None:
    known = KnownHeads()
    cycle(new(known), PING, ALLOW_BY_ROUTE, PONG)
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"
    for _ in range(2):
        c = new(known)
        c.client_data(PING)
        out = c.engine_data(closing)
        assert sent_client(out) == closing
        assert any(isinstance(x, CloseClient) for x in out)
        assert any(isinstance(x, CloseEngine) for x in out) or not c.engine_reusable()
    assert known.answers_get[closing[:-2]][3] is True


def test_the_answers_are_bounded() -> None:
    known = KnownHeads()
    c = new(known)
    for i in range(3 * KNOWN_ANSWERS_LIMIT):
        pong = b"HTTP/1.1 200 OK\r\nDate: %d\r\nContent-Length: 2\r\n\r\nOK" % i
        assert cycle(c, PING, ALLOW_BY_ROUTE, pong)[2] == pong
        assert 0 < len(known.answers_get) <= KNOWN_ANSWERS_LIMIT


# -- which answers the gate gives as by route alone --------------------------------------------


def _gate_verdict(method: str, target: str, eci: bool) -> Decision:
    import asyncio
    import json
    import tempfile

    from agent.proxy.connection import Request
    from agent.proxy.gate import Gate, GateConfig
    from agent.proxy.server import Peer
    from agent.settings.model import Effective
    from agent.settings.parse import parse_settings

    doc = {
        "configurationFileVersion": 2,
        "enhancedContainerIsolation": {"value": eci, "locked": True},
    }
    effective = Effective(parse_settings(json.dumps(doc).encode()))

    async def ask() -> Decision:
        with tempfile.TemporaryDirectory() as tmp:
            gate = Gate(
                GateConfig(
                    engine_socket=f"{tmp}/engine.sock",  # nothing there: no engine question
                    listen_sockets=(f"{tmp}/agent.sock",),
                    container_socket=f"{tmp}/c.sock",
                    settings_where=lambda: "test",
                    current=lambda: effective,
                )
            )
            head = RequestHead(method, target, ((b"Host", b"d"),))
            decision, _ = await gate.judge(Request(head), Peer(1, 0, 0, "host"))
            await gate.engine.close()
            return decision

    return asyncio.run(ask())


@pytest.mark.parametrize(
    ("method", "target", "eci", "by_route"),
    [
        ("GET", "/v1.41/_ping", True, True),
        ("HEAD", "/_ping", True, True),
        ("GET", "/containers/json?all=1", True, True),
        ("GET", "/containers/json?all=1&size=1", True, True),
        # docker cp: judged on the container's binds every time (no engine here: refused)
        ("GET", "/containers/abc/archive?path=/x", True, False),
        ("HEAD", "/containers/abc/archive?path=/x", True, False),
        ("GET", "/no/such/route", True, False),  # refused (404)
        ("GET", "/_ping", False, False),  # ECI off: allowed, but not by route
        ("POST", "/containers/create", True, False),  # a body route
        ("POST", "/build", True, False),
    ],
)
def test_the_gate_says_by_route_only_for_route_allows(
    method: str, target: str, eci: bool, by_route: bool
) -> None:
    decision = _gate_verdict(method, target, eci)
    assert decision.by_route is by_route, decision
    if by_route:
        assert decision.allowed and decision.target is None
