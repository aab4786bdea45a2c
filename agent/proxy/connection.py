"""One client connection through the proxy, as a state object that emits commands.

Theory of operation
-------------------
This object does no I/O (mitmproxy's layering, h11's sans-I/O style). The asyncio driver
(`agent.proxy.server`) feeds it bytes and end-of-file from both sides and carries out the
commands it returns, in order:

- `SendClient(data)` / `SendEngine(data)`: write bytes;
- `Judge(request)`: ask the policy about a request (head, and the body when the policy reads
  it); the driver answers with `judged(...)`;
- `Verify(request, response_body)`: an allowed create must be checked after the fact (the
  container must have the image that was judged); the driver answers with `verified(...)`;
- `Splice()`: from now on copy bytes both ways untouched (attach, exec start, `/session`,
  `/grpc` after the engine switched protocols); `ShutdownEngine`/`ShutdownClient`: half-close;
- `CloseEngine` / `CloseClient`: drop that side.

Both sides are parsed by llhttp (through httptools), a strict HTTP/1.1 parser written in C; no
lenient flag is ever set. Every request on a connection is parsed and judged, one at a time, in
order: client bytes are fed to the parser only up to the end of the current request (a message
can only end right after a CRLFCRLF, so the data is cut there), and the bytes after it wait,
unparsed, until the response to the current request is complete. Nothing can slip past the
policy on a kept-alive connection, and bytes that follow an upgrade or a hijack are never
taken for a request.

The engine only ever receives what this object serialized from the parsed request: method,
target, the headers as parsed (minus `Expect` and `Proxy-Connection`), and the body with
framing of our own (a Content-Length for a body the policy read, our own chunks for a chunked
one; extensions and trailers are dropped). So the engine cannot read a request differently from
the way the policy read it. Requests the parser or our checks find ambiguous (both
Content-Length and Transfer-Encoding, duplicate lengths, a transfer coding other than exactly
`chunked`, bad header syntax) are answered with 400 and the connection is closed.

The engine is trusted: its responses are passed on as the raw bytes it sent, and parsed only to
find where each one ends (Content-Length, chunked, or end of connection; none for `HEAD`, 1xx,
204 and 304), and to see the responses that change the connection: a `101 Switching Protocols`,
or the `200` with a raw-stream content type that the engine sends when it hijacks an attach or
exec start asked for without `Upgrade` headers. Only then does the connection become a raw pipe.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from agent.policy.decide import Decision
from agent.policy.isolation import Violation
from agent.proxy.grpc_inspect import GrpcInspector

#: Bodies the policy reads are buffered up to this size; a larger one is refused (413).
DEFAULT_MAX_JUDGED_BODY = 4 * 1024 * 1024
#: Bound on one header block; the engine's own bound is 1 MiB.
MAX_HEAD = 1024 * 1024

HIJACK_CONTENT_TYPES = (
    b"application/vnd.docker.raw-stream",
    b"application/vnd.docker.multiplexed-stream",
)

_TERM = b"\r\n\r\n"
_TAIL = _TERM[1:]
_CR_LF = (13, 10)
#: Up to this many bytes are searched for a CRLFCRLF in one go (see `_find_end`).
_SHORT = 4096
#: What a header value may never hold once parsed (llhttp already refuses these; checked again
#: because a value is written back to the engine as is).
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_OWS = b" \t"
#: Request headers the proxy reads for itself (their kind below).
_REQUEST_FIELDS = {
    b"content-length": 0,
    b"transfer-encoding": 1,
    b"host": 2,
    b"connection": 3,
    b"expect": 4,
    b"proxy-connection": 4,
}
#: The response headers the proxy reads, searched for in the lower-cased head (llhttp has
#: validated it: each line is `name:value` after a CRLF, the names without whitespace). A
#: `find` per name costs a fifth of a case-insensitive regex over the head.
_CONTENT_LENGTH = b"\r\ncontent-length:"
_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
_CONTENT_TYPE = b"\r\ncontent-type:"
_CONNECTION = b"\r\nconnection:"
#: Request headers never passed to the engine.
_DROP = frozenset((b"expect", b"proxy-connection"))
_DROP_WITH_BODY = _DROP | {b"content-length", b"transfer-encoding"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head: method and target as sent, headers with their original names."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    http_version: str = "1.1"

    def header(self, name: bytes) -> bytes | None:
        """The last value of header `name` (case-insensitive), or None."""
        value = None
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                value = v
        return value

    def header_values(self, name: bytes) -> list[bytes]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def wants_upgrade(self) -> bool:
        connection = b",".join(self.header_values(b"connection")).lower()
        return b"upgrade" in [t.strip() for t in connection.split(b",")] and bool(
            self.header_values(b"upgrade")
        )


@dataclass(frozen=True, slots=True)
class Request:
    """What the policy is asked about: the head, and the whole body when `needs_body` said so."""

    head: RequestHead
    body: bytes | None = None
    body_complete: bool = False


# ---------------------------------------------------------------------------------------------
# Commands


class _Data:
    """A command that carries bytes. The two most frequent commands (two or more per exchange)
    are plain classes, not dataclasses, so that mypyc compiles their `__init__`; treat them as
    immutable all the same."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.data == self.data

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data!r})"


class SendClient(_Data):
    """Write `data` to the client."""

    __slots__ = ()


class SendEngine(_Data):
    """Write `data` to the engine."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Judge:
    request: Request


@dataclass(frozen=True, slots=True)
class Verify:
    request: Request
    decision: Decision
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Unpin:
    """The engine refused a request forwarded with pins: release them."""

    pins: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Splice:
    pass


@dataclass(frozen=True, slots=True)
class ShutdownEngine:
    """Half-close towards the engine (the client finished sending)."""


@dataclass(frozen=True, slots=True)
class ShutdownClient:
    """Half-close towards the client (the engine finished sending)."""


@dataclass(frozen=True, slots=True)
class CloseEngine:
    pass


@dataclass(frozen=True, slots=True)
class CloseClient:
    pass


@dataclass(frozen=True, slots=True)
class Log:
    """Something the driver should log (not an event for the admin's store)."""

    message: str


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """Inside an upgraded stream (BuildKit's /grpc) the policy refused a request: record it.

    The connection itself is cut by the CloseEngine/CloseClient that follow (no HTTP answer
    is possible any more), unless `audited` (then the stream goes on, unread)."""

    head: RequestHead
    reason: str
    violations: tuple[Violation, ...]
    audited: bool = False


Command = (
    SendClient
    | SendEngine
    | Judge
    | Verify
    | Splice
    | StreamRefused
    | Unpin
    | ShutdownEngine
    | ShutdownClient
    | CloseEngine
    | CloseClient
    | Log
)


class Phase(enum.Enum):
    IDLE = "idle"  # waiting for a request head
    BUFFERING = "buffering"  # reading a body the policy must see
    JUDGING = "judging"  # waiting for judged()
    FORWARDING = "forwarding"  # request allowed, body (if any) streaming to the engine
    REFUSING = "refusing"  # response sent, discarding the rest of the request body
    VERIFYING = "verifying"  # waiting for verified()
    SPLICED = "spliced"
    CLOSED = "closed"


def error_body(message: str) -> bytes:
    """The engine's error shape, which the docker CLI prints as `Error response from daemon`."""
    return json.dumps({"message": message}).encode() + b"\n"


class _Malformed(Exception):
    """A request the proxy refuses to read further: answered with `status`, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Parsing: llhttp callbacks, and feeding a parser no further than the end of one message


class _Events:
    """httptools callbacks for one message: where it is (head read, done) and its body."""

    __slots__ = ("head_done", "done", "body", "begun", "chunks", "upgraded")

    def __init__(self) -> None:
        self.head_done = False
        self.done = False
        self.body: list[bytes] = []
        self.begun = 0
        self.chunks = 0
        self.upgraded = False

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_chunk_header(self) -> None:
        self.chunks += 1

    def on_message_complete(self) -> None:
        self.done = True


class _BodyEvents(_Events):
    """... that also collect the (de-chunked) body."""

    __slots__ = ()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class _RequestEvents(_BodyEvents):
    """... and the target and headers (in order, names as sent) of a request."""

    __slots__ = ("url", "headers")

    def __init__(self) -> None:
        super().__init__()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # after the head: a chunked body's trailers, dropped
            self.headers.append((name, value))


class _Msg:
    """One message being read: its parser, its events and what was fed so far."""

    __slots__ = ("parser", "ev", "tail", "fed", "walk", "line")

    def __init__(
        self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, ev: _Events
    ) -> None:
        self.parser = parser
        self.ev = ev
        self.tail = b""  # the last (up to 3) bytes fed: a CRLFCRLF may straddle two reads
        self.fed = 0
        #: In a chunked body (`_walk`): bytes up to the next chunk-size line (0: at one), or
        #: _LOST when the chunks are not followed (not chunked, or gave up).
        self.walk = _LOST
        self.line = b""  # the start of a chunk-size line seen at the end of the last read


def _request_msg() -> _Msg:
    ev = _RequestEvents()
    return _Msg(httptools.HttpRequestParser(ev), ev)


def _response_msg(capture: bool) -> _Msg:
    ev = _BodyEvents() if capture else _Events()  # no headers: read from the head itself
    return _Msg(httptools.HttpResponseParser(ev), ev)


def _chunked_body_msg() -> _Msg:
    """A parser placed at the start of a chunked body, for an Upgrade request that has one
    (llhttp would take such a body for the new protocol's bytes)."""
    msg = _request_msg()
    msg.parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    msg.tail = b"\n\r\n"
    msg.walk = 0
    return msg


#: `_Msg.walk` when the chunks of a body are not followed.
_LOST: Final = -1
#: A chunk-size line longer than this (extensions) is not followed: the cut falls back to
#: CRLFCRLF searches.
_MAX_SIZE_LINE = 80
_HEX = b"0123456789abcdefABCDEF"


def _walk(msg: _Msg, buf: bytes, pos: int) -> int:
    """How far `buf[pos:]` can be fed to the parser of a chunked body in one piece: up to the
    start of its last chunk's size line (`0`), where the message may end, or of a line this
    cannot read; `pos` when there is nothing to skip, and then the caller cuts at CRLFCRLFs.

    Only where the parser is fed is decided here: llhttp still reads every byte, and a message
    that ends inside such a piece is an error (`_feed`). It saves searching chunk data for a
    CRLFCRLF: random bytes (most files) hold an LF every 256 bytes, which made that search
    ~3/4 of the agent's work on a `docker cp`. A body of many small chunks is not followed
    (a budget of one chunk per 2 KiB read), so a client cannot make this cost more."""
    n = len(buf)
    left = msg.walk
    budget = 4 + ((n - pos) >> 11)
    p = pos
    while True:
        if left > 0:  # chunk data and its CRLF: no message ends in there
            if left >= n - p:
                msg.walk = left - (n - p)
                return n
            p += left
            left = 0
        # A chunk-size line starts at p (its start may have ended the last read: msg.line).
        budget -= 1
        begun = msg.line  # only ever at the start of a read (p == pos)
        room = _MAX_SIZE_LINE - len(begun)
        end = buf.find(b"\n", p, p + room)
        if end < 0:
            if n - p < room and budget >= 0:
                msg.line = begun + buf[p:]  # the rest of the line comes with the next read
                msg.walk = 0
                return n
            msg.line = b""
            msg.walk = _LOST
            return p
        line = begun + buf[p : end + 1] if begun else buf[p : end + 1]
        size = line[:-2].split(b";", 1)[0]
        if (
            budget < 0
            or not line.endswith(b"\r\n")
            or not size
            or size.strip(_HEX)
            or int(size, 16) == 0
        ):
            # The last chunk (the message ends after its trailers), or a line to leave to the
            # parser alone: cut before it (or before what is left of it).
            msg.line = b""
            msg.walk = _LOST
            return p
        msg.line = b""
        p = end + 1
        left = int(size, 16) + 2


def _next_end(tail: bytes, buf: bytes, pos: int) -> int:
    """Index just past the first CRLFCRLF that ends in `buf[pos:]` (the `tail` was fed just
    before `buf[pos]`), or -1."""
    # A CRLFCRLF straddling the two must start its part in `buf` with a CR or an LF.
    if tail and buf[pos] in _CR_LF:
        probe = tail + buf[pos : pos + 3]
        i = probe.find(_TERM)
        if i >= 0:
            return pos + i + 4 - len(tail)
    return _find_end(buf, pos)


def _find_end(buf: bytes, pos: int) -> int:
    """Index just past the first CRLFCRLF starting at or after `pos`, or -1.

    A one-byte search is a vectorised memchr, a four-byte one is not (~30x slower over a
    256 KiB read of a tar stream): look at the LFs while they are sparse (binary data, chunk
    framing), then search for the whole (text). A short buffer (a request or response head)
    is searched at once."""
    if len(buf) - pos <= _SHORT:
        i = buf.find(_TERM, pos)
        return i + 4 if i >= 0 else -1
    start = pos
    find = buf.find
    for _ in range(8 + ((len(buf) - pos) >> 11)):  # up to one LF in 2 KiB: chunk framing
        i = find(b"\n", pos)
        if i < 0:
            return -1
        if i - 3 >= start and buf[i - 3 : i + 1] == _TERM:
            return i + 1
        pos = i + 1
    i = find(_TERM, max(start, pos - 3))
    return i + 4 if i >= 0 else -1


def _feed(msg: _Msg, buf: bytes, pos: int, until_head: bool) -> int:
    """Feed `buf[pos:]` to the message's parser, stopping right after its head (`until_head`)
    or right after its end; returns the index of the first byte not fed.

    llhttp is strict about CRLF, so a head (and a chunked body) can only end just after a
    CRLFCRLF: the data is fed in pieces cut there, and the flags looked at after each.
    """
    ev = msg.ev
    parser = msg.parser
    n = len(buf)
    view: memoryview | None = None
    while pos < n:
        if msg.walk != _LOST and not until_head:
            # A chunked body: feed the chunks before the last one in one piece, unsearched.
            stop = _walk(msg, buf, pos)
            if stop > pos:
                try:
                    if pos == 0 and stop == n:
                        parser.feed_data(buf)
                    else:
                        if view is None:
                            view = memoryview(buf)
                        parser.feed_data(view[pos:stop])
                except HttpParserUpgrade:
                    # Only after a message end: never inside chunk data.
                    raise HttpParserError("message end not where it must be") from None
                if ev.done or ev.begun > 1:
                    raise HttpParserError("message end not where it must be")
                msg.tail = (
                    buf[stop - 3 : stop] if stop - pos >= 3 else (msg.tail + buf[pos:stop])[-3:]
                )
                msg.fed += stop - pos
                pos = stop
                continue
        # `_next_end(msg.tail, buf, pos)`, inlined for short data (a head in one piece).
        if n - pos <= _SHORT and not (msg.tail and buf[pos] in _CR_LF):
            end = buf.find(_TERM, pos)
            if end >= 0:
                end += 4
        else:
            end = _next_end(msg.tail, buf, pos)
        at_term = end >= 0
        if not at_term:
            end = n
        if pos == 0 and end == n:
            seg: bytes | memoryview = buf
        else:
            if view is None:
                view = memoryview(buf)
            seg = view[pos:end]
        try:
            parser.feed_data(seg)
        except HttpParserUpgrade as up:
            # llhttp stops after a message that switches protocols (an Upgrade request, a
            # CONNECT, a 101): the rest belongs to the new protocol, or to the next request if
            # the engine declines. It must stop exactly where we cut.
            if up.args[0] != end - pos:
                raise HttpParserError("message ends before the data given") from None
            ev.upgraded = True
        except HttpParserError:
            # A 101 without an Upgrade header: llhttp pauses the same way, but httptools
            # reports it as an error. The message itself was complete.
            if not (ev.done and _is_101(parser)):
                raise
            ev.upgraded = True
        if at_term:
            msg.tail = _TAIL  # the last 3 bytes of a CRLFCRLF
        else:
            msg.tail = buf[end - 3 : end] if end - pos >= 3 else (msg.tail + buf[pos:end])[-3:]
        msg.fed += end - pos
        pos = end
        if ev.done if not until_head else ev.head_done:
            if not at_term or ev.begun > 1:
                raise HttpParserError("message end not where it must be")
            break
    return pos


def _last_field(low: bytes, name: bytes) -> bytes | None:
    """The value of the last `name` line of a lower-cased head (`name` is `\r\nfield:`),
    without its leading whitespace; None when there is none."""
    i = low.rfind(name)
    if i < 0:
        return None
    start = i + len(name)
    return low[start : low.find(b"\r\n", start)].lstrip(_OWS)


def _all_fields(low: bytes, name: bytes) -> list[bytes]:
    """The values of every `name` line of a lower-cased head, in order."""
    out: list[bytes] = []
    i = low.find(name)
    while i >= 0:
        start = i + len(name)
        end = low.find(b"\r\n", start)
        out.append(low[start:end].lstrip(_OWS))
        i = low.find(name, end)
    return out


def _is_101(parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bool:
    return isinstance(parser, httptools.HttpResponseParser) and parser.get_status_code() == 101


def _has_token(values: list[bytes], token: bytes) -> bool:
    return any(t.strip().lower() == token for v in values for t in v.split(b","))


class _Exchange:
    """One request and its answer. A plain class, not a dataclass: mypyc compiles its
    `__init__` (the one `dataclasses` writes runs interpreted, ~2 µs per request)."""

    __slots__ = (
        "head",
        "target",
        "lnames",
        "drop",
        "needs_body",
        "keep_alive",
        "expect",
        "chunked",
        "body_left",
        "body_done",
        "body",
        "decision",
        "engine_body",
        "sent_engine",
        "responded",
        "known_key",
        "known_generation",
        "answers",
    )

    def __init__(
        self,
        head: RequestHead,
        target: bytes,
        lnames: list[bytes],
        drop: bool,
        needs_body: bool,
        keep_alive: bool,
        expect: bool,
        chunked: bool,
        body_left: int,
        body_done: bool,
        decision: Decision | None = None,
        sent_engine: bool = False,
        known_key: bytes | None = None,
        known_generation: int = 0,
    ) -> None:
        self.head = head
        self.target = target  # as sent
        self.lnames = lnames  # the header names, lower case, in order
        self.drop = drop  # some header is not passed on (Expect, Proxy-Connection)
        self.needs_body = needs_body
        self.keep_alive = keep_alive  # the client's wish (its version and Connection header)
        self.expect = expect  # Expect: 100-continue, not answered yet
        self.chunked = chunked
        self.body_left = body_left  # Content-Length bytes still to read
        self.body_done = body_done
        self.body = bytearray()
        self.decision = decision
        self.engine_body: bytes | None = None  # the body to forward (maybe rewritten)
        self.sent_engine = sent_engine  # the whole request reached the engine
        self.responded = False  # response bytes went to the client
        self.known_key = known_key  # the raw head, if it may be remembered (`KnownHeads`)
        self.known_generation = known_generation
        #: Response heads already read for requests like this one (`KnownHeads.answers`).
        self.answers: dict[bytes, _Answer] | None = None


class _Resp:
    """The engine's response being read."""

    __slots__ = (
        "msg",
        "capture",
        "state",
        "mode",
        "left",
        "held",
        "head",
        "head_parts",
        "status",
        "engine_close",
        "client_close",
    )

    # state: where in the response we are
    HEAD: Final = 0
    LENGTH: Final = 1
    CHUNKED: Final = 2
    UNTIL_CLOSE: Final = 3
    # mode: what happens to the body
    PASS: Final = 0
    HOLD: Final = 1
    DECHUNK: Final = 2
    CHUNK: Final = 3

    def __init__(self, capture: bool) -> None:
        self.capture = capture  # the parser hands over the body (to hold it, or de-chunk it)
        self.msg: _Msg | None = None  # the parser, made when the head is not a known one
        self.state = _Resp.HEAD
        self.mode = _Resp.PASS
        self.left = 0
        self.held: list[bytes] = []  # the body held for Verify
        self.head = b""
        self.head_parts: list[bytes] = []
        self.status = 0
        self.engine_close = False  # the engine connection ends after this response
        self.client_close = False  # and so does the client's


# What to do with a response head.
_PASS, _SPLICE, _DROP_1XX, _HOLD, _REWRITE = range(5)


#: The largest HTTP/2 frame the engine's /grpc server reads (x/net/http2's default).
GRPC_MAX_FRAME = 1 << 20


_Known = tuple[RequestHead, bytes, list[bytes], Decision, bytes]
#: What a response head says about the response's framing: status, state (`_Resp.HEAD`: no
#: body, or `_Resp.LENGTH`), Content-Length bytes to pass on, and whether the connection ends.
_Answer = tuple[int, int, int, bool]
#: A request head longer than this is never remembered (see `KnownHeads`); the docker CLI's
#: are ~100 bytes, docker-py's ~180.
KNOWN_HEAD_MAX = 512
#: How many heads a listener remembers (then it starts again): at most ~0.25 MiB in all.
KNOWN_HEADS_LIMIT = 128
#: Methods whose bodiless requests may be remembered.
_KNOWN_METHODS = (b"GET ", b"HEAD ")
#: How many response heads a listener remembers per method (then it starts again). Most
#: differ only in their Date, so a busy second reuses one; ~40 KiB in all.
KNOWN_ANSWERS_LIMIT = 48
#: A response head longer than this is never remembered (the engine's are ~250-400 bytes).
KNOWN_ANSWER_MAX = 1024


class KnownHeads:
    """Request heads already read and allowed by route alone, shared by the connections of
    host clients: the same bytes again are forwarded without being parsed and judged again.

    A head is remembered only when it was read whole from the parser's start, in one piece,
    and asks `GET` or `HEAD` over HTTP/1.1 with no body, no `Expect`, no `Upgrade` header
    (the engine may switch protocols on one llhttp does not take for an upgrade) and no
    `Connection: close`; and only when the policy said `Decision.by_route`, which holds for
    any settings with ECI on. Identical bytes read from the same parser state are read the
    same way, so a match is byte for byte on the whole head, never on a part of it. A policy
    change empties the table (`reset`), and an answer given under the old policy is not
    stored after it. Bounded: at most `limit` heads of at most `KNOWN_HEAD_MAX` bytes.

    The engine's answers to such requests are remembered the same way (`answers_get`,
    `answers_head`): a response head read whole, in one piece, from a new parser's start, that
    was passed on as it came and has no body or a Content-Length one, maps to what it said
    about the framing. The same bytes again, in answer to a request of the same kind, are
    passed on without being parsed. What a head says depends on its bytes and on the request
    (its method; and version, keep-alive and policy, the same for every request here), not on
    the policy, so a policy change leaves these tables alone.
    """

    __slots__ = ("entries", "generation", "limit", "answers_get", "answers_head")

    def __init__(self, limit: int = KNOWN_HEADS_LIMIT) -> None:
        #: raw head -> (the parsed head, its target as sent, its lower-case header names, the
        #: decision, the bytes forwarded to the engine)
        self.entries: dict[bytes, _Known] = {}
        self.generation = 0
        self.limit = limit
        #: response head -> what it says (`_Answer`), for GET and for HEAD requests
        self.answers_get: dict[bytes, _Answer] = {}
        self.answers_head: dict[bytes, _Answer] = {}

    def reset(self) -> None:
        self.generation += 1
        self.entries = {}

    def remember(self, key: bytes, generation: int, known: _Known) -> None:
        # The table first: a `reset` (from the settings thread) after this line replaces it,
        # so a late answer lands in the dropped table, never in the new one.
        entries = self.entries
        if generation != self.generation:
            return  # judged under an earlier policy
        if len(entries) >= self.limit:
            entries.clear()
        entries[key] = known


class ProxyConnection:
    """The per-connection state machine (see the module doc)."""

    def __init__(
        self,
        needs_body: Callable[[RequestHead], bool],
        *,
        max_judged_body: int = DEFAULT_MAX_JUDGED_BODY,
    ) -> None:
        # needs_body(head) -> bool: whether the policy must read this request's body.
        self._needs_body = needs_body
        self._max_body = max_judged_body
        self.phase = Phase.IDLE
        self._ex: _Exchange | None = None
        self._req: _Msg | None = None  # the request parser
        self._cbuf = b""  # client bytes not fed to the parser yet
        self._client_eof = False
        self._grpc: GrpcInspector | None = None  # reading BuildKit's gRPC after the upgrade
        self._grpc_head: RequestHead | None = None
        self._grpc_audit = False
        self._grpc_pending = b""  # client bytes the inspector has not released yet
        self._resp: _Resp | None = None
        self._engine_busy = False  # a request is in flight on the engine connection
        self._engine_dirty = False  # engine connection used and must be replaced
        self.requests_seen = 0
        #: Set by the driver for a host client: heads it may forward as remembered.
        self.known: KnownHeads | None = None
        #: Once spliced: the request that opened the stream, and how its bytes are read.
        self.stream_head: RequestHead | None = None
        self.stream_inspect: str | None = None

    @property
    def backlog(self) -> int:
        """Client bytes waiting (unparsed) for the current exchange to end."""
        return len(self._cbuf)

    @property
    def inspecting(self) -> bool:
        """Whether the bytes of a spliced stream are still read (BuildKit's /grpc)."""
        return self._grpc is not None

    def unread_body_head(self) -> RequestHead | None:
        """The head of the request whose body is passing to the engine unread right now (the
        policy did not ask for it), or None. A policy that now reads such bodies must not let
        the rest through: the driver closes the connection (`close_weaker_sessions`)."""
        ex = self._ex
        if self.phase is Phase.FORWARDING and ex is not None and not ex.needs_body:
            if not ex.body_done:
                return ex.head
        return None

    def engine_reusable(self) -> bool:
        """Whether the engine connection sits cleanly between requests (can serve another)."""
        return not self._engine_dirty and not self._engine_busy and self.phase is not Phase.SPLICED

    # -- inputs from the driver -----------------------------------------------------------

    def client_data(self, data: bytes) -> list[Command]:
        phase = self.phase
        if phase is Phase.SPLICED:
            if self._grpc is not None:
                return self._grpc_feed(data)
            return [SendEngine(data)] if data else [ShutdownEngine()]
        if phase is Phase.CLOSED:
            return []
        if not data:
            self._client_eof = True
        elif self._cbuf:
            self._cbuf += data
        else:
            self._cbuf = data
        if phase is Phase.JUDGING or phase is Phase.VERIFYING:
            return []
        return self._pump_client()

    def engine_data(self, data: bytes) -> list[Command]:
        phase = self.phase
        if phase is Phase.SPLICED:
            return [SendClient(data)] if data else [ShutdownClient()]
        if phase is Phase.CLOSED:
            return []
        resp = self._resp
        if phase is not Phase.FORWARDING or resp is None:
            # Nothing asked: the engine dropped an idle kept-alive connection (or spoke out
            # of turn). Use a new one next time.
            self._engine_dirty = True
            out: list[Command] = [CloseEngine()]
            return out if not data else [Log("engine sent data out of turn"), *out]
        if not data:
            if resp.state is _Resp.UNTIL_CLOSE:
                last: list[Command] = [SendClient(b"0\r\n\r\n")] if resp.mode is _Resp.CHUNK else []
                return self._response_end(resp, last)
            return self._engine_broken("the engine closed the connection")
        try:
            return self._read_engine(resp, data)
        except HttpParserError as err:
            return self._engine_broken(f"malformed response: {err}")

    def judged(self, decision: Decision, body: bytes | None = None) -> list[Command]:
        """The policy's answer to the last `Judge`; `body` replaces the request body if given."""
        ex = self._ex
        assert ex is not None and self.phase is Phase.JUDGING
        ex.decision = decision
        if not decision.allowed:
            return self._refuse(decision.status, decision.message)
        if body is not None:
            ex.engine_body = body
        elif ex.needs_body:
            ex.engine_body = bytes(ex.body)
        return self._forward_head()

    def verified(self, ok: bool, status: int = 403, message: str = "") -> list[Command]:
        """The answer to `Verify`: send the held response, or the refusal instead."""
        ex = self._ex
        resp = self._resp
        assert ex is not None and resp is not None and self.phase is Phase.VERIFYING
        if not ok:
            keep_alive = ex.keep_alive and not resp.client_close
            out = self._respond(status, error_body(message), keep_alive=keep_alive)
        else:
            body = b"".join(resp.held)
            head = _rebuild_head(
                resp.head,
                length=len(body),
                http10=ex.head.http_version == "1.0",
                keep_alive=ex.keep_alive and not resp.client_close,
            )
            ex.responded = True
            out = [SendClient(head + body)]
        return out + self._response_done(resp)

    # -- client side ------------------------------------------------------------------------

    def _pump_client(self) -> list[Command]:
        out: list[Command] = []
        while True:
            phase = self.phase
            if phase is Phase.IDLE:
                if not self._cbuf:
                    if self._client_eof:
                        out += self._close_all()
                    return out
                out += self._read_head()
                if self.phase is Phase.IDLE and not self._cbuf:
                    continue  # head incomplete (or end of file)
            elif phase is Phase.BUFFERING or phase is Phase.FORWARDING or phase is Phase.REFUSING:
                ex = self._ex
                assert ex is not None
                if ex.body_done:
                    return out
                if not self._cbuf:
                    if self._client_eof:
                        out += self._client_broken(400, "the client closed mid-body")
                    return out
                out += self._read_body(ex)
            else:
                return out

    def _read_head(self) -> list[Command]:
        msg = self._req
        buf = self._cbuf
        known = self.known
        fresh = msg is None or msg.fed == 0
        if known is not None and fresh and buf.startswith(_KNOWN_METHODS):
            end = buf.find(_TERM, 0, KNOWN_HEAD_MAX)
            if end >= 0:
                end += 4
                hit = known.entries.get(buf if end == len(buf) else buf[:end])
                if hit is not None:
                    self._cbuf = buf[end:] if end < len(buf) else b""
                    return self._forward_known(hit)
        if msg is None:
            msg = self._req = _request_msg()
        try:
            pos = _feed(msg, buf, 0, True)
        except HttpParserError as err:
            return self._client_broken(400, f"malformed request: {err}")
        self._cbuf = buf[pos:] if pos < len(buf) else b""
        ev = msg.ev
        if not ev.head_done:
            if msg.fed > MAX_HEAD:
                return self._client_broken(431, "request head too large")
            return []
        if ev.body or ev.chunks:
            return self._client_broken(400, "malformed request: body inside the head")
        # The head read whole, in one piece, from the parser's start: it may be remembered.
        raw = None
        if known is not None and fresh and msg.fed == pos and buf.startswith(_KNOWN_METHODS):
            raw = buf if pos == len(buf) else buf[:pos]  # no copy of other methods' heads
        try:
            return self._on_request(msg, raw)
        except _Malformed as err:
            return self._client_broken(err.status, str(err))

    def _forward_known(self, known: _Known) -> list[Command]:
        """A remembered head (`KnownHeads`): the exchange it opened, again, and its bytes."""
        head, target, lnames, decision, forward = known
        self.requests_seen += 1
        ex = self._ex = _Exchange(
            head,
            target,
            lnames,
            False,
            False,
            True,
            False,
            False,
            0,
            True,
            decision=decision,
            sent_engine=True,
        )
        table = self.known
        if table is not None:
            ex.answers = table.answers_head if head.method == "HEAD" else table.answers_get
        out: list[Command] = []
        if self._engine_dirty:
            out.append(CloseEngine())
            self._engine_dirty = False
        self._engine_busy = True
        self._resp = _Resp(capture=False)
        self.phase = Phase.FORWARDING
        out.append(SendEngine(forward))
        return out

    def _on_request(self, msg: _Msg, raw: bytes | None = None) -> list[Command]:
        ev = msg.ev
        parser = msg.parser
        assert isinstance(parser, httptools.HttpRequestParser)
        self.requests_seen += 1
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Malformed(505, f"HTTP/{version} is not supported")
        headers: list[tuple[bytes, bytes]] = []
        lnames: list[bytes] = []
        values: list[bytes] = []
        length: bytes | None = None
        transfer: bytes | None = None
        hosts = 0
        expect = False
        connection: list[bytes] = []
        drop = False
        assert isinstance(ev, _RequestEvents)
        fields = _REQUEST_FIELDS
        for name, value in ev.headers:
            value = value.rstrip(_OWS)
            lname = name.lower()
            kind = fields.get(lname)
            if kind is not None:
                if kind == 0:  # content-length
                    if length is not None:
                        raise _Malformed(400, "malformed request: duplicate Content-Length")
                    length = value
                elif kind == 1:  # transfer-encoding
                    if transfer is not None:
                        raise _Malformed(400, "malformed request: duplicate Transfer-Encoding")
                    transfer = value
                elif kind == 2:
                    hosts += 1
                elif kind == 3:
                    connection.append(value)
                else:  # expect, proxy-connection: not passed on
                    drop = True
                    if lname == b"expect":
                        expect = value.lower() == b"100-continue"
            headers.append((name, value))
            lnames.append(lname)
            values.append(value)
        if _BAD_VALUE.search(b"".join(values)):
            raise _Malformed(400, "malformed request: bad header value")
        if length is not None and transfer is not None:
            raise _Malformed(
                400,
                "request has both Content-Length and Transfer-Encoding; refusing an ambiguous body",
            )
        if transfer is not None and (transfer.lower() != b"chunked" or version == "1.0"):
            raise _Malformed(400, "malformed request: only Transfer-Encoding: chunked is accepted")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise _Malformed(400, "malformed request: exactly one Host header is required")
        if length is not None and not length.isdigit():
            raise _Malformed(400, "malformed request: bad Content-Length")
        body_left = int(length) if length is not None else 0
        chunked = transfer is not None
        body_done = not chunked and body_left == 0
        if version == "1.1":
            keep_alive = not connection or not _has_token(connection, b"close")
        else:
            keep_alive = bool(connection) and _has_token(connection, b"keep-alive")
        url = ev.url
        head = RequestHead(
            method=parser.get_method().decode("ascii"),
            target=url.decode("latin-1"),
            headers=tuple(headers),
            http_version=version,
        )
        if chunked:
            if ev.upgraded:
                self._req = _chunked_body_msg()
            else:
                msg.walk = 0  # the body's first chunk-size line comes next
        elif ev.done and not ev.upgraded:
            # A parser between two messages serves the next one.
            ev.url = b""
            ev.headers = []
            ev.head_done = ev.done = False
            ev.begun = 0
            msg.fed = 0
        else:
            self._req = None  # the body is counted here, not fed to that parser
        needs = self._needs_body(head)
        if (
            raw is not None
            and len(raw) <= KNOWN_HEAD_MAX
            and raw.startswith(_KNOWN_METHODS)
            and version == "1.1"
            and keep_alive
            and length is None
            and transfer is None
            and not drop
            and not ev.upgraded
            and b"upgrade" not in lnames
            and not needs
        ):
            known_key: bytes | None = raw
        else:
            known_key = None
        ex = self._ex = _Exchange(
            head,
            url,
            lnames,
            drop,
            needs,
            keep_alive,
            expect and version == "1.1" and not body_done,
            chunked,
            body_left,
            body_done,
            known_key=known_key,
            known_generation=self.known.generation if self.known is not None else 0,
        )
        if needs:
            if body_left > self._max_body:
                return self._too_large()
            if body_done:
                self.phase = Phase.JUDGING
                return [Judge(Request(head, b"", True))]
            self.phase = Phase.BUFFERING
            if ex.expect:
                ex.expect = False
                return [SendClient(_CONTINUE)]
            return []
        self.phase = Phase.JUDGING
        return [Judge(Request(head))]

    def _too_large(self) -> list[Command]:
        return self._refuse(
            413,
            f"request body larger than {self._max_body} bytes; eci-agent reads bodies "
            "it judges whole and refuses larger ones",
            close=True,
        )

    def _read_body(self, ex: _Exchange) -> list[Command]:
        buf = self._cbuf
        if ex.chunked:
            msg = self._req
            assert msg is not None
            try:
                pos = _feed(msg, buf, 0, False)
            except HttpParserError as err:
                return self._client_broken(400, f"malformed request body: {err}")
            self._cbuf = buf[pos:] if pos < len(buf) else b""
            ev = msg.ev
            pieces = ev.body
            if pieces:
                ev.body = []
            if ev.done:
                self._req = None
                ex.body_done = True
        else:
            left = ex.body_left
            if len(buf) <= left:
                pieces = [buf]
                self._cbuf = b""
            else:
                pieces = [buf[:left]]
                self._cbuf = buf[left:]
            ex.body_left = left - len(pieces[0])
            ex.body_done = ex.body_left == 0
        ex.expect = False  # the client is sending the body
        phase = self.phase
        if phase is Phase.BUFFERING:
            size = len(ex.body) + sum(len(p) for p in pieces)
            if size > self._max_body:
                return self._too_large()
            for p in pieces:
                ex.body += p
            if ex.body_done:
                self.phase = Phase.JUDGING
                return [Judge(Request(ex.head, bytes(ex.body), True))]
            return []
        if phase is Phase.FORWARDING:
            if ex.chunked:
                framed: list[bytes] = []
                for p in pieces:
                    framed += (b"%x\r\n" % len(p), p, b"\r\n")
                if ex.body_done:
                    framed.append(b"0\r\n\r\n")
                data = b"".join(framed)
            else:
                data = pieces[0]
            out: list[Command] = [SendEngine(data)] if data else []
            if ex.body_done:
                ex.sent_engine = True
            return out
        # REFUSING: the response was sent; drop the body, then go on with the next request.
        if ex.body_done:
            return self._next_cycle()
        return []

    def _client_broken(self, status: int, message: str) -> list[Command]:
        out: list[Command] = [Log(f"client protocol error: {message}")]
        ex = self._ex
        if ex is None or not ex.responded:
            out += self._respond(
                status, error_body(f"enhanced container isolation: {message}"), keep_alive=False
            )
        return out + self._close_all()

    # -- refusing ----------------------------------------------------------------------------

    def _respond(self, status: int, body: bytes, *, keep_alive: bool) -> list[Command]:
        ex = self._ex
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            status,
            _REASONS.get(status, b""),
            len(body),
        )
        head += b"Api-Version: 1.41\r\n\r\n" if keep_alive else b"Api-Version: 1.41\r\n"
        if not keep_alive:
            head += b"Connection: close\r\n\r\n"
        if ex is not None:
            ex.responded = True
            if ex.head.method == "HEAD":
                return [SendClient(head)]
        return [SendClient(head + body)]

    def _refuse(self, status: int, message: str, *, close: bool = False) -> list[Command]:
        ex = self._ex
        assert ex is not None
        # An unread body would be taken for the next request: read and drop it, unless told
        # to close (then the connection ends after the refusal). A client still waiting for
        # `100 Continue` may never send its body: close.
        keep_alive = not close and not self._client_eof and ex.keep_alive and not ex.expect
        out = self._respond(status, error_body(message), keep_alive=keep_alive)
        if not keep_alive:
            return out + self._close_all()
        if ex.body_done:
            return out + self._next_cycle()
        self.phase = Phase.REFUSING
        return out + self._pump_client()

    # -- engine side ---------------------------------------------------------------------------

    def _forward_head(self) -> list[Command]:
        ex = self._ex
        assert ex is not None
        out: list[Command] = []
        if self._engine_dirty:
            out.append(CloseEngine())
            self._engine_dirty = False
        head = ex.head
        body = ex.engine_body
        decision = ex.decision
        # Always written from the parsed parts, never passed on as received: forwarding a head
        # that is already byte for byte what we would write was tried and measured (2026-11,
        # see docs/BENCHMARKS.md): proving the equality costs more than writing it.
        target = decision.target.encode("latin-1") if decision and decision.target else ex.target
        if body is None and not ex.drop:
            fields = [b"%s: %s\r\n" % h for h in head.headers]
        else:
            drop = _DROP if body is None else _DROP_WITH_BODY
            fields = [
                b"%s: %s\r\n" % h
                for lname, h in zip(ex.lnames, head.headers, strict=True)
                if lname not in drop
            ]
        if head.http_version == "1.0" and b"host" not in ex.lnames:
            fields.append(b"Host: docker\r\n")
        parts = [b"%s %s HTTP/1.1\r\n" % (head.method.encode("ascii"), target), *fields]
        self._engine_busy = True
        self._resp = _Resp(
            capture=bool(decision and decision.expect_image_id) or head.http_version == "1.0"
        )
        self.phase = Phase.FORWARDING
        if body is not None:
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
            ex.sent_engine = True
            out.append(SendEngine(b"".join(parts)))
            return out
        parts.append(b"\r\n")
        data = b"".join(parts)
        out.append(SendEngine(data))
        known = self.known
        if known is not None and ex.known_key is not None and decision is not None:
            if decision.by_route and decision.target is None:
                known.remember(
                    ex.known_key, ex.known_generation, (head, ex.target, ex.lnames, decision, data)
                )
                ex.answers = known.answers_head if head.method == "HEAD" else known.answers_get
        if ex.body_done:
            ex.sent_engine = True
            return out
        if ex.expect:
            ex.expect = False
            out.append(SendClient(_CONTINUE))
        return out + self._pump_client()

    def _read_engine(self, resp: _Resp, data: bytes) -> list[Command]:
        """Pass the response on as the engine sent it, seeing only where it ends."""
        ex = self._ex
        assert ex is not None
        n = len(data)
        pos = 0
        start = 0  # data[start:pos] is passed on as is
        out: list[Command] = []
        while pos < n:
            state = resp.state
            if state is _Resp.HEAD:
                msg = resp.msg
                answers = ex.answers
                if msg is None:
                    if answers is not None and pos == 0 and not resp.head_parts:
                        # A head already read for a request like this one (`KnownHeads`).
                        end = data.find(_TERM, 0, KNOWN_ANSWER_MAX)
                        if end >= 0:
                            end += 4
                            answer = answers.get(data if end == n else data[:end])
                            if answer is not None:
                                resp.status, resp.state, resp.left, close = answer
                                resp.engine_close = resp.client_close = close
                                ex.responded = True
                                pos = end
                                if resp.state is _Resp.HEAD:  # no body
                                    out = self._flush(out, data, start, pos)
                                    return self._response_end(resp, out, data, pos)
                                continue
                    msg = resp.msg = _response_msg(resp.capture)
                head_start = pos
                pos = _feed(msg, data, pos, True)
                if not msg.ev.head_done:
                    if msg.fed > MAX_HEAD:
                        return self._engine_broken("response head too large")
                    resp.head_parts.append(data[head_start:])
                    return out
                pieces = bool(resp.head_parts)
                if pieces:
                    resp.head = b"".join(resp.head_parts) + data[head_start:pos]
                    resp.head_parts = []
                else:
                    resp.head = data[head_start:pos]
                action = self._on_response_head(resp, ex)
                decision = ex.decision
                if decision is not None and decision.pins and resp.status >= 300:
                    out.append(Unpin(decision.pins))
                if action == _PASS:
                    if pieces:
                        out.append(SendClient(resp.head))
                        start = pos
                    elif (
                        answers is not None
                        and head_start == 0
                        and msg.fed == pos
                        and pos <= KNOWN_ANSWER_MAX
                        and (resp.state is _Resp.HEAD or resp.state is _Resp.LENGTH)
                    ):
                        # Read whole, in one piece, from a new parser's start: remember it.
                        if len(answers) >= KNOWN_ANSWERS_LIMIT:
                            answers.clear()
                        answers[resp.head] = (resp.status, resp.state, resp.left, resp.client_close)
                    ex.responded = True
                elif action == _SPLICE:
                    raw = data if not pieces and head_start == 0 else resp.head + data[pos:]
                    return out + [SendClient(raw)] + self._splice()
                elif action == _DROP_1XX:
                    # An interim response: not passed on (we answered Expect ourselves).
                    start = pos
                    resp.msg = _response_msg(resp.capture)
                    continue
                elif action == _REWRITE:
                    out.append(SendClient(resp.head))
                    ex.responded = True
                    start = pos
                else:  # _HOLD
                    start = pos
                if resp.state is _Resp.HEAD:  # no body: the response is complete
                    return self._response_end(resp, self._flush(out, data, start, pos), data, pos)
            elif state is _Resp.LENGTH:
                take = min(resp.left, n - pos)
                if resp.mode is _Resp.HOLD:
                    resp.held.append(data[pos : pos + take])
                    start = pos + take
                pos += take
                resp.left -= take
                if not resp.left:
                    return self._response_end(resp, self._flush(out, data, start, pos), data, pos)
            elif state is _Resp.CHUNKED:
                msg = resp.msg
                assert msg is not None  # the head was read by it
                pos = _feed(msg, data, pos, False)
                ev = msg.ev
                mode = resp.mode
                if ev.body:
                    if mode is _Resp.HOLD:
                        resp.held += ev.body
                    elif mode is _Resp.DECHUNK:
                        out.append(SendClient(b"".join(ev.body)))
                    ev.body = []
                if mode is not _Resp.PASS:
                    start = pos
                if ev.done:
                    return self._response_end(resp, self._flush(out, data, start, pos), data, pos)
            else:  # UNTIL_CLOSE
                mode = resp.mode
                if mode is _Resp.HOLD:
                    resp.held.append(data[pos:] if pos else data)
                    start = n
                elif mode is _Resp.CHUNK:
                    piece = data[pos:] if pos else data
                    out.append(SendClient(b"".join((b"%x\r\n" % len(piece), piece, b"\r\n"))))
                    start = n
                pos = n
        return self._flush(out, data, start, pos)

    @staticmethod
    def _flush(out: list[Command], data: bytes, start: int, pos: int) -> list[Command]:
        if pos > start:
            out.append(SendClient(data if start == 0 and pos == len(data) else data[start:pos]))
        return out

    def _on_response_head(self, resp: _Resp, ex: _Exchange) -> int:
        msg = resp.msg
        assert msg is not None
        ev = msg.ev
        parser = msg.parser
        assert isinstance(parser, httptools.HttpResponseParser)
        status = resp.status = parser.get_status_code()
        if status == 101 or ev.upgraded:
            return _SPLICE
        if status < 200:
            return _DROP_1XX
        low = resp.head.lower()  # values are read from it too: each is compared lower-cased
        length = _last_field(low, _CONTENT_LENGTH)
        transfer = _last_field(low, _TRANSFER_ENCODING)
        chunked = transfer is not None and transfer.rstrip(_OWS).endswith(b"chunked")
        framed = length is not None or transfer is not None
        connection = _all_fields(low, _CONNECTION)
        head = ex.head
        if (
            status == 200
            and not framed
            and head.method == "POST"
            and _is_hijack_path(head.target)
            and (_last_field(low, _CONTENT_TYPE) or b"").split(b";", 1)[0].strip()
            in HIJACK_CONTENT_TYPES
        ):
            # The engine hijacked the connection without an Upgrade handshake.
            return _SPLICE
        if resp.head.startswith(b"HTTP/1.1 "):
            close = bool(connection) and _has_token(connection, b"close")
        else:
            close = not connection or not _has_token(connection, b"keep-alive")
        # The engine says it closes: pass that on to the client.
        resp.engine_close = resp.client_close = close
        if head.method == "HEAD" or ev.done or status == 204 or status == 304:
            pass  # no body: the state stays HEAD
        elif chunked:
            resp.state = _Resp.CHUNKED
            msg.walk = 0  # the body's first chunk-size line comes next
        elif length is not None:
            resp.state = _Resp.LENGTH
            resp.left = int(length.strip())
        else:
            # The body ends when the engine closes; the client's connection can stay if we
            # frame the body for it (held, or re-chunked).
            resp.state = _Resp.UNTIL_CLOSE
            resp.engine_close = True
        decision = ex.decision
        if status == 201 and decision is not None and decision.expect_image_id:
            resp.mode = _Resp.HOLD
            return _HOLD
        if head.http_version == "1.0":
            # An HTTP/1.0 client knows no chunks, and no kept-alive connection unless told.
            if chunked:
                resp.mode = _Resp.DECHUNK
            if chunked or resp.state is _Resp.UNTIL_CLOSE:
                resp.client_close = True
            resp.head = _rebuild_head(
                resp.head,
                length=None,
                http10=True,
                keep_alive=ex.keep_alive and not resp.client_close,
            )
            return _REWRITE
        if resp.state is _Resp.UNTIL_CLOSE and not resp.client_close:
            resp.mode = _Resp.CHUNK
            resp.head = resp.head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
            return _REWRITE
        return _PASS

    def _response_end(
        self, resp: _Resp, out: list[Command], data: bytes = b"", pos: int = 0
    ) -> list[Command]:
        ex = self._ex
        assert ex is not None
        if pos < len(data):
            # More than one response for one request: the engine connection cannot be trusted
            # to be in step any more.
            out.append(Log("engine sent data after the response"))
            resp.engine_close = True
        self._engine_busy = False
        if not ex.sent_engine:
            # The engine answered before the request body was all sent: that connection is
            # out of step.
            self._engine_dirty = True
        if resp.mode is _Resp.HOLD and ex.decision is not None:
            self.phase = Phase.VERIFYING
            body = b"".join(resp.held)
            resp.held = [body]
            return out + [
                Verify(Request(ex.head, ex.engine_body, True), ex.decision, resp.status, body)
            ]
        return out + self._response_done(resp)

    def _response_done(self, resp: _Resp) -> list[Command]:
        """The whole response reached the client."""
        ex = self._ex
        assert ex is not None
        if resp.engine_close:
            self._engine_dirty = True
        self._resp = None
        if resp.client_close or not ex.keep_alive:
            return self._close_all()
        if not ex.body_done:
            # Response done before the request body was read: drop the rest of the body.
            self.phase = Phase.REFUSING
            return self._pump_client()
        return self._next_cycle()

    def _engine_broken(self, why: str) -> list[Command]:
        out: list[Command] = [Log(f"engine connection failed: {why}")]
        self._engine_dirty = True
        ex = self._ex
        if ex is not None and not ex.responded:
            out += self._respond(
                502,
                error_body(f"enhanced container isolation: the Docker engine failed: {why}"),
                keep_alive=False,
            )
        return out + self._close_all()

    # -- cycles --------------------------------------------------------------------------------

    def _next_cycle(self) -> list[Command]:
        ex = self._ex
        self._ex = None
        self._resp = None
        self.phase = Phase.IDLE
        if ex is not None and not ex.keep_alive:
            return self._close_all()
        return self._pump_client()

    def _splice(self) -> list[Command]:
        out: list[Command] = [Splice()]
        self.phase = Phase.SPLICED
        self._engine_busy = False
        self._engine_dirty = True
        ex = self._ex
        inspect = ex.decision.inspect if ex is not None and ex.decision is not None else None
        self.stream_head = ex.head if ex is not None else None
        self.stream_inspect = inspect
        if inspect in ("grpc", "grpc-audit") and ex is not None:
            # BuildKit's gRPC: what the client sends is read frame by frame, and a Solve that
            # asks for host powers is cut before the engine has it whole.
            self._grpc = GrpcInspector(max_frame_size=GRPC_MAX_FRAME)
            self._grpc_head = ex.head
            self._grpc_audit = inspect == "grpc-audit"
            pending, self._cbuf = self._cbuf, b""
            if pending:
                out.extend(self._grpc_feed(pending))
            if self._client_eof and self.phase is Phase.SPLICED:
                out.extend(self._grpc_feed(b""))
            return out
        if self._cbuf:
            out.append(SendEngine(self._cbuf))
            self._cbuf = b""
        if self._client_eof:
            out.append(ShutdownEngine())
        return out

    def _grpc_feed(self, data: bytes) -> list[Command]:
        inspector = self._grpc
        assert inspector is not None and self._grpc_head is not None
        if not data:
            # The client is done: what was released went on; an unfinished frame does not.
            self._grpc = None
            self._grpc_pending = b""
            return [ShutdownEngine()]
        self._grpc_pending += data
        # Bounded without back-pressure: the inspector holds at most the frame being read
        # (GRPC_MAX_FRAME) and judges a message as soon as its last frame is complete.
        verdict = inspector.feed(data)
        if verdict.cut:
            refused = StreamRefused(
                self._grpc_head, verdict.reason, verdict.violations, audited=self._grpc_audit
            )
            if self._grpc_audit:
                pending, self._grpc_pending = self._grpc_pending, b""
                self._grpc = None
                return [refused, SendEngine(pending)]
            self._grpc = None
            self._grpc_pending = b""
            self.phase = Phase.CLOSED
            return [refused, CloseEngine(), CloseClient()]
        if not verdict.release:
            return []
        release = self._grpc_pending[: verdict.release]
        self._grpc_pending = self._grpc_pending[verdict.release :]
        return [SendEngine(release)]

    def _close_all(self) -> list[Command]:
        # An engine connection idle between requests outlives its client (the driver pools
        # it); anything else is closed with the client.
        reusable = self.engine_reusable()
        self.phase = Phase.CLOSED
        self._cbuf = b""
        if reusable:
            return [CloseClient()]
        self._engine_dirty = True
        return [CloseEngine(), CloseClient()]


def _rebuild_head(
    head: bytes,
    *,
    length: int | None,
    http10: bool,
    keep_alive: bool,
) -> bytes:
    """A response head made again from the engine's: its status line and headers, with a new
    Content-Length (`length`), or for an HTTP/1.0 client without chunked framing, and with a
    Connection header saying what we will do."""
    drop = {b"transfer-encoding"}
    if length is not None:
        drop.add(b"content-length")
    if http10:
        drop.add(b"connection")
    lines = head.split(b"\r\n")  # a head llhttp has validated: no bare CR or LF, no folding
    parts = [lines[0], b"\r\n"]
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        if name.lower() not in drop:
            parts += (name, b": ", value.strip(_OWS), b"\r\n")
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    if http10:
        parts.append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _is_hijack_path(target: str) -> bool:
    path = target.split("?", 1)[0].rstrip("/")
    return path.endswith(("/attach", "/start")) and ("/containers/" in path or "/exec/" in path)
