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

Both sides are parsed by h11, a strict HTTP/1.1 parser: the client side as a server, the engine
side as a client. Every request on a connection is parsed and judged, one at a time, in order:
h11 does not read the next pipelined request until the response to the current one is complete,
so nothing can slip past the policy on a kept-alive connection. The engine only ever receives
what this object serialized from parsed events, so it cannot read a request differently from
the way the policy read it.

A connection only becomes a raw pipe when the engine itself stops speaking HTTP on it: a
`101 Switching Protocols`, or the `200` with a raw-stream content type that the engine sends
when it hijacks an attach or exec start asked for without `Upgrade` headers.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from agent.policy.decide import Decision

#: Bodies the policy reads are buffered up to this size; a larger one is refused (413).
DEFAULT_MAX_JUDGED_BODY = 4 * 1024 * 1024
#: h11's bound on one header block; the engine's own bound is 1 MiB.
MAX_HEAD = 1024 * 1024

HIJACK_CONTENT_TYPES = (
    b"application/vnd.docker.raw-stream",
    b"application/vnd.docker.multiplexed-stream",
)


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


@dataclass(frozen=True, slots=True)
class SendClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendEngine:
    data: bytes


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


Command = (
    SendClient
    | SendEngine
    | Judge
    | Verify
    | Splice
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
    REFUSING = "refusing"  # refusal sent, discarding the rest of the request body
    VERIFYING = "verifying"  # waiting for verified()
    SPLICED = "spliced"
    CLOSED = "closed"


def error_body(message: str) -> bytes:
    """The engine's error shape, which the docker CLI prints as `Error response from daemon`."""
    return json.dumps({"message": message}).encode() + b"\n"


@dataclass
class _Exchange:
    head: RequestHead
    needs_body: bool
    body: bytearray = field(default_factory=bytearray)
    body_done: bool = False
    decision: Decision | None = None
    engine_body: bytes | None = None  # the body to forward (maybe rewritten)
    response_status: int | None = None
    response_head: h11.Response | None = None
    verify_buffer: bytearray | None = None


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
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.engine = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.phase = Phase.IDLE
        self._ex: _Exchange | None = None
        self._client_eof = False
        self._engine_dirty = False  # engine connection used and must be replaced
        self._close_after_response = False
        self.requests_seen = 0

    def engine_reusable(self) -> bool:
        """Whether the engine connection sits cleanly between requests (can serve another)."""
        return (
            not self._engine_dirty
            and self.phase is not Phase.SPLICED
            and self.engine.our_state is h11.IDLE
            and self.engine.their_state is h11.IDLE
        )

    # -- inputs from the driver -----------------------------------------------------------

    def client_data(self, data: bytes) -> list[Command]:
        if self.phase is Phase.SPLICED:
            return [SendEngine(data)] if data else [ShutdownEngine()]
        if self.phase is Phase.CLOSED:
            return []
        if not data:
            self._client_eof = True
        try:
            self.client.receive_data(data)
        except h11.RemoteProtocolError as err:  # pragma: no cover - receive_data rarely raises
            return self._client_broken(err)
        return self._pump_client()

    def engine_data(self, data: bytes) -> list[Command]:
        if self.phase is Phase.SPLICED:
            return [SendClient(data)] if data else [ShutdownClient()]
        if self.phase is Phase.CLOSED:
            return []
        if not data and self.phase not in (Phase.FORWARDING, Phase.VERIFYING):
            # The engine dropped an idle kept-alive connection: use a new one next time.
            self._engine_dirty = True
            return [CloseEngine()]
        try:
            self.engine.receive_data(data)
        except h11.RemoteProtocolError as err:  # pragma: no cover
            return self._engine_broken(str(err))
        return self._pump_engine()

    def judged(self, decision: Decision, body: bytes | None = None) -> list[Command]:
        """The policy's answer to the last `Judge`; `body` replaces the request body if given."""
        ex = self._ex
        assert ex is not None and self.phase is Phase.JUDGING
        ex.decision = decision
        if not decision.allowed:
            return self._refuse(decision.status, decision.message)
        ex.engine_body = body if body is not None else (bytes(ex.body) if ex.needs_body else None)
        return self._forward_head()

    def verified(self, ok: bool, status: int = 403, message: str = "") -> list[Command]:
        """The answer to `Verify`: send the held response, or the refusal instead."""
        ex = self._ex
        assert ex is not None and self.phase is Phase.VERIFYING
        assert ex.response_head is not None and ex.verify_buffer is not None
        if not ok:
            out = self._respond(status, error_body(message), keep_alive=True)
        else:
            head = ex.response_head
            body = bytes(ex.verify_buffer)
            headers = [
                (k, v)
                for k, v in head.headers.raw_items()
                if k.lower() not in (b"content-length", b"transfer-encoding")
            ]
            headers.append((b"Content-Length", str(len(body)).encode()))
            out = self._to_client(
                h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
            )
            out += self._to_client(h11.Data(data=body)) if body else []
            out += self._to_client(h11.EndOfMessage())
        return out + self._finish_cycle()

    # -- client side ------------------------------------------------------------------------

    def _pump_client(self) -> list[Command]:
        out: list[Command] = []
        while self.phase not in (Phase.JUDGING, Phase.VERIFYING, Phase.SPLICED, Phase.CLOSED):
            try:
                event = self.client.next_event()
            except h11.RemoteProtocolError as err:
                return out + self._client_broken(err)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self._client_eof and self.phase is Phase.IDLE and event is h11.NEED_DATA:
                    out += self._close_all()
                break
            if isinstance(event, h11.ConnectionClosed):
                if self.phase is Phase.IDLE:
                    out += self._close_all()
                break
            if isinstance(event, h11.Request):
                out += self._on_request(event)
            elif isinstance(event, h11.Data):
                out += self._on_client_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                out += self._on_client_body_end()
        return out

    def _on_request(self, event: h11.Request) -> list[Command]:
        self.requests_seen += 1
        head = RequestHead(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("latin-1"),
            headers=tuple((bytes(k), bytes(v)) for k, v in event.headers.raw_items()),
            http_version=event.http_version.decode("ascii", "replace"),
        )
        has_cl = head.header(b"content-length") is not None
        has_te = head.header(b"transfer-encoding") is not None
        needs = self._needs_body(head)
        self._ex = _Exchange(head, needs)
        if has_cl and has_te:
            return self._refuse(
                400,
                "request has both Content-Length and Transfer-Encoding; refusing an ambiguous body",
                close=True,
            )
        if needs:
            out: list[Command] = []
            if self.client.they_are_waiting_for_100_continue:
                out += self._to_client(h11.InformationalResponse(status_code=100, headers=[]))
            self.phase = Phase.BUFFERING
            return out
        self.phase = Phase.JUDGING
        return [Judge(Request(head))]

    def _on_client_body(self, data: bytes) -> list[Command]:
        ex = self._ex
        assert ex is not None
        if self.phase is Phase.BUFFERING:
            if len(ex.body) + len(data) > self._max_body:
                return self._refuse(
                    413,
                    f"request body larger than {self._max_body} bytes; eci-agent reads bodies "
                    "it judges whole and refuses larger ones",
                    close=True,
                )
            ex.body += data
            return []
        if self.phase is Phase.FORWARDING:
            return self._to_engine(h11.Data(data=data))
        # REFUSING: discard
        return []

    def _on_client_body_end(self) -> list[Command]:
        ex = self._ex
        assert ex is not None
        ex.body_done = True
        if self.phase is Phase.BUFFERING:
            self.phase = Phase.JUDGING
            return [Judge(Request(ex.head, bytes(ex.body), True))]
        if self.phase is Phase.FORWARDING:
            return self._to_engine(h11.EndOfMessage())
        if self.phase is Phase.REFUSING:
            return self._finish_cycle()
        return []

    def _client_broken(self, err: h11.RemoteProtocolError) -> list[Command]:
        out: list[Command] = [Log(f"client protocol error: {err}")]
        if self.client.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = err.error_status_hint if 400 <= err.error_status_hint < 600 else 400
            try:
                body = error_body(f"enhanced container isolation: malformed request: {err}")
                data = self.client.send(
                    h11.Response(
                        status_code=status,
                        headers=[
                            (b"Content-Type", b"application/json"),
                            (b"Content-Length", str(len(body)).encode()),
                            (b"Connection", b"close"),
                        ],
                    )
                )
                data = (data or b"") + (self.client.send(h11.Data(data=body)) or b"")
                data += self.client.send(h11.EndOfMessage()) or b""
                out.append(SendClient(data))
            except h11.LocalProtocolError:
                pass
        return out + self._close_all()

    # -- refusing ----------------------------------------------------------------------------

    def _respond(self, status: int, body: bytes, *, keep_alive: bool) -> list[Command]:
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Api-Version", b"1.41"),
        ]
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        out = self._to_client(h11.Response(status_code=status, headers=headers))
        if self._ex is not None and self._ex.head.method == "HEAD":
            return out + self._to_client(h11.EndOfMessage())
        return out + self._to_client(h11.Data(data=body)) + self._to_client(h11.EndOfMessage())

    def _refuse(self, status: int, message: str, *, close: bool = False) -> list[Command]:
        ex = self._ex
        assert ex is not None
        # An unread body would be taken for the next request: read and drop it, unless told
        # to close (then the connection ends after the refusal).
        keep_alive = not close and not self._client_eof
        out = self._respond(status, error_body(message), keep_alive=keep_alive)
        if not keep_alive:
            return out + self._close_all()
        if self.client.their_state is h11.DONE or ex.body_done:
            return out + self._finish_cycle()
        self.phase = Phase.REFUSING
        return out + self._pump_client()

    # -- engine side ---------------------------------------------------------------------------

    def _forward_head(self) -> list[Command]:
        ex = self._ex
        assert ex is not None
        out: list[Command] = []
        if self._engine_dirty:
            out.append(CloseEngine())
            self.engine = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            self._engine_dirty = False
        drop = {b"expect", b"proxy-connection"}
        if ex.engine_body is not None:
            drop |= {b"content-length", b"transfer-encoding"}
        headers = [(k, v) for k, v in ex.head.headers if k.lower() not in drop]
        if not any(k.lower() == b"host" for k, _ in headers):
            headers.insert(0, (b"Host", b"docker"))
        if ex.engine_body is not None:
            headers.append((b"Content-Length", str(len(ex.engine_body)).encode()))
        target = ex.decision.target if ex.decision and ex.decision.target else ex.head.target
        request = h11.Request(method=ex.head.method, target=target, headers=headers)
        out += self._to_engine(request)
        if ex.engine_body is not None:
            if ex.engine_body:
                out += self._to_engine(h11.Data(data=ex.engine_body))
            out += self._to_engine(h11.EndOfMessage())
            self.phase = Phase.FORWARDING
            return out + self._pump_engine()
        self.phase = Phase.FORWARDING
        if self.client.they_are_waiting_for_100_continue:
            out += self._to_client(h11.InformationalResponse(status_code=100, headers=[]))
        return out + self._pump_client() + self._pump_engine()

    def _pump_engine(self) -> list[Command]:
        out: list[Command] = []
        while self.phase in (Phase.FORWARDING, Phase.VERIFYING):
            try:
                event = self.engine.next_event()
            except h11.RemoteProtocolError as err:
                return out + self._engine_broken(str(err))
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.ConnectionClosed):
                return out + self._engine_broken("the engine closed the connection")
            if isinstance(event, h11.InformationalResponse):
                out += self._on_informational(event)
            elif isinstance(event, h11.Response):
                out += self._on_response(event)
            elif isinstance(event, h11.Data):
                out += self._on_engine_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                out += self._on_engine_end()
        return out

    def _on_informational(self, event: h11.InformationalResponse) -> list[Command]:
        if event.status_code != 101:
            return []  # 100 Continue from the engine: already answered to the client ourselves
        out = self._to_client(
            h11.InformationalResponse(
                status_code=101, headers=list(event.headers.raw_items()), reason=event.reason
            )
        )
        return out + self._splice()

    def _on_response(self, event: h11.Response) -> list[Command]:
        ex = self._ex
        assert ex is not None
        ex.response_status = event.status_code
        ctype = b""
        for k, v in event.headers.raw_items():
            if k.lower() == b"content-type":
                ctype = v.split(b";")[0].strip().lower()
        if (
            event.status_code == 200
            and ctype in HIJACK_CONTENT_TYPES
            and ex.head.method == "POST"
            and _is_hijack_path(ex.head.target)
            and self.engine.their_state is h11.SEND_BODY
            and not _has_framing(event)
        ):
            # The engine hijacked the connection without an Upgrade handshake.
            raw = _raw_response_head(event)
            return [SendClient(raw)] + self._splice(hijacked=True)
        if ex.decision is not None and ex.decision.expect_image_id and event.status_code == 201:
            ex.response_head = event
            ex.verify_buffer = bytearray()
            return []
        headers = list(event.headers.raw_items())
        if ex.head.method == "HEAD":
            return self._to_client(
                h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
            )
        # A read-until-close body from the engine is re-framed (chunked) by h11 for the client.
        return self._to_client(
            h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
        )

    def _on_engine_body(self, data: bytes) -> list[Command]:
        ex = self._ex
        assert ex is not None
        if ex.verify_buffer is not None:
            if len(ex.verify_buffer) + len(data) > self._max_body:
                return self._engine_broken("create response too large to verify")
            ex.verify_buffer += data
            return []
        return self._to_client(h11.Data(data=data))

    def _on_engine_end(self) -> list[Command]:
        ex = self._ex
        assert ex is not None
        if ex.verify_buffer is not None and ex.decision is not None:
            self.phase = Phase.VERIFYING
            return [
                Verify(
                    Request(ex.head, ex.engine_body, True),
                    ex.decision,
                    ex.response_status or 0,
                    bytes(ex.verify_buffer),
                )
            ]
        return self._to_client(h11.EndOfMessage()) + self._finish_cycle()

    def _engine_broken(self, why: str) -> list[Command]:
        out: list[Command] = [Log(f"engine connection failed: {why}")]
        if self.client.our_state is h11.SEND_RESPONSE:
            out += self._respond(
                502,
                error_body(f"enhanced container isolation: the Docker engine failed: {why}"),
                keep_alive=False,
            )
        return out + self._close_all()

    # -- cycles --------------------------------------------------------------------------------

    def _finish_cycle(self) -> list[Command]:
        out: list[Command] = []
        client_ok = self.client.our_state is h11.DONE and self.client.their_state is h11.DONE
        if not client_ok:
            if self.client.their_state is h11.DONE and self.client.our_state is h11.MUST_CLOSE:
                return out + self._close_all()
            if self.client.our_state is h11.DONE and self.client.their_state is not h11.DONE:
                # Response done before the request body was read (refused): drop the rest.
                self.phase = Phase.REFUSING
                return out
            return out + self._close_all()
        if self.engine.our_state is h11.DONE and self.engine.their_state is h11.DONE:
            self.engine.start_next_cycle()
        elif self.engine.our_state is not h11.IDLE or self.engine.their_state is not h11.IDLE:
            self._engine_dirty = True
        self.client.start_next_cycle()
        self._ex = None
        self.phase = Phase.IDLE
        if self._close_after_response:
            return out + self._close_all()
        return out + self._pump_client()

    def _splice(self, *, hijacked: bool = False) -> list[Command]:
        out: list[Command] = [Splice()]
        self.phase = Phase.SPLICED
        engine_rest, engine_closed = self.engine.trailing_data
        client_rest, client_closed = self.client.trailing_data
        if engine_rest:
            out.append(SendClient(bytes(engine_rest)))
        if client_rest:
            out.append(SendEngine(bytes(client_rest)))
        if client_closed or self._client_eof:
            out.append(ShutdownEngine())
        if engine_closed:
            out.append(ShutdownClient())
        return out

    def _close_all(self) -> list[Command]:
        # An engine connection idle between requests outlives its client (the driver pools
        # it); anything else is closed with the client.
        reusable = self.engine_reusable()
        self.phase = Phase.CLOSED
        if reusable:
            return [CloseClient()]
        self._engine_dirty = True
        return [CloseEngine(), CloseClient()]

    # -- serialization helpers -------------------------------------------------------------

    def _to_client(self, event: h11.Event) -> list[Command]:
        data = self.client.send(event)
        return [SendClient(data)] if data else []

    def _to_engine(self, event: h11.Event) -> list[Command]:
        data = self.engine.send(event)
        return [SendEngine(data)] if data else []


def _has_framing(event: h11.Response) -> bool:
    return any(
        k.lower() in (b"content-length", b"transfer-encoding") for k, _ in event.headers.raw_items()
    )


def _is_hijack_path(target: str) -> bool:
    path = target.split("?", 1)[0].rstrip("/")
    return path.endswith(("/attach", "/start")) and ("/containers/" in path or "/exec/" in path)


def _raw_response_head(event: h11.Response) -> bytes:
    reason = bytes(event.reason) if event.reason else b"OK"
    lines = [b"HTTP/1.1 %d %s" % (event.status_code, reason)]
    lines += [k + b": " + v for k, v in event.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"
