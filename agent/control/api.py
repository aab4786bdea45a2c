"""The control API's routes and rules, apart from sockets and HTTP framing.

`ControlApp.handle(request, caller)` turns one parsed request into a `Reply` (a JSON document)
or a `Stream` (JSON lines). Who may do what:

- read endpoints (`GET /v1/status`, `/v1/events`, `/v1/features`): root, the agent's own user,
  and members of the admin's control group (`--control-group`);
- action endpoints (`POST /v1/eci`, `POST /v1/repull`): the same callers, and only while the
  settings in force leave Enhanced Container Isolation unlocked (`locked: false`); otherwise
  403 with the reason.

Errors are engine-style JSON: `{"message": "..."}`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.events.model import EventFormatError, parse_time
from agent.events.store import MAX_QUERY_LIMIT, EventStore

API_PREFIX = "/v1"
MAX_BODY = 64 * 1024
DEFAULT_EVENTS_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Caller:
    """The client process, as the kernel tells it (SO_PEERCRED, SO_PEERGROUPS)."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    listener: str = "control"


class Access(enum.Enum):
    READ = "read"
    ACTION = "action"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may use the control socket: root, `owner_uid` and members of `group`."""

    owner_uid: int = 0
    group: int | None = None

    def refusal(self, caller: Caller) -> str | None:
        """None when `caller` may read; otherwise why not."""
        if caller.uid is not None and caller.uid in (0, self.owner_uid):
            return None
        if self.group is not None and (caller.gid == self.group or self.group in caller.groups):
            return None
        if caller.uid is None:
            return "the caller's identity could not be read (SO_PEERCRED)"
        who = f"uid {caller.uid}"
        if self.group is None:
            return f"{who} may not use the eci-agent control API (root only)"
        return (
            f"{who} may not use the eci-agent control API (root and members of the control "
            "group only)"
        )


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


class ActionRefused(Exception):
    """The provider refuses an action (e.g. the settings became locked meanwhile): 403."""


class NotAvailable(Exception):
    """The provider cannot do this yet (e.g. re-pull before it is wired): 501."""


class ControlProvider(Protocol):
    """What the API needs from the agent; `agent.control.wiring` has the real one."""

    @property
    def events(self) -> EventStore | None: ...

    async def status(self) -> dict[str, Any]: ...

    async def features(self) -> dict[str, Any]: ...

    def lock_reason(self) -> str | None:
        """None when ECI is unlocked (actions allowed); otherwise the reason they are not."""
        ...

    async def set_eci(self, enabled: bool | None, caller: Caller) -> dict[str, Any]: ...

    async def repull(self, image: str, caller: Caller) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    body: bytes = b""

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        query = urllib.parse.urlsplit(self.target).query
        try:
            return urllib.parse.parse_qs(
                query, keep_blank_values=True, strict_parsing=False, max_num_fields=64
            )
        except ValueError as err:
            raise HTTPError(400, f"bad query string: {err}") from err


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    doc: Any
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return json.dumps(self.doc, ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Stream:
    """A 200 whose body is JSON lines, written as `lines` yields them (chunked)."""

    lines: AsyncIterator[bytes]
    content_type: str = "application/x-ndjson"
    headers: tuple[tuple[str, str], ...] = field(default=())


def error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return Reply(status, {"message": message}, tuple(headers))


Handler = Callable[[Request, Caller], Awaitable[Reply | Stream]]


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"{name} given more than once")
    return values[0]


def _int(query: Mapping[str, list[str]], name: str, low: int, high: int) -> int | None:
    text = _one(query, name)
    if text is None or text == "":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise HTTPError(400, f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}")
    return value


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    text = _one(query, name)
    if text is None:
        return False
    if text.lower() in ("1", "true", "yes", ""):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise HTTPError(400, f"{name} must be 1 or 0, not {text!r}")


def _json_body(request: Request) -> dict[str, Any]:
    try:
        doc = json.loads(request.body or b"null")
    except ValueError as err:
        raise HTTPError(400, f"the request body is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return doc


class ControlApp:
    """Routes requests to handlers after the access checks (see the module doc)."""

    def __init__(self, provider: ControlProvider, access: AccessPolicy) -> None:
        self.provider = provider
        self.access = access
        self.routes: dict[str, dict[str, tuple[Access, Handler]]] = {
            f"{API_PREFIX}/status": {"GET": (Access.READ, self._status)},
            f"{API_PREFIX}/events": {"GET": (Access.READ, self._events)},
            f"{API_PREFIX}/features": {"GET": (Access.READ, self._features)},
            f"{API_PREFIX}/eci": {"POST": (Access.ACTION, self._eci)},
            f"{API_PREFIX}/repull": {"POST": (Access.ACTION, self._repull)},
        }

    async def handle(self, request: Request, caller: Caller) -> Reply | Stream:
        try:
            return await self._handle(request, caller)
        except HTTPError as err:
            return error(err.status, err.message, err.headers)

    async def _handle(self, request: Request, caller: Caller) -> Reply | Stream:
        refusal = self.access.refusal(caller)
        if refusal is not None:
            return error(403, refusal)
        methods = self.routes.get(request.path)
        if methods is None:
            return error(404, f"no such endpoint: {request.path}")
        entry = methods.get(request.method)
        if entry is None:
            allow = ", ".join(sorted(methods))
            return error(
                405, f"{request.method} is not allowed on {request.path}", [("Allow", allow)]
            )
        access, handler = entry
        if access is Access.ACTION:
            reason = self.provider.lock_reason()
            if reason is not None:
                return error(403, reason)
        return await handler(request, caller)

    async def _status(self, request: Request, caller: Caller) -> Reply:
        return Reply(200, await self.provider.status())

    async def _features(self, request: Request, caller: Caller) -> Reply:
        return Reply(200, await self.provider.features())

    async def _events(self, request: Request, caller: Caller) -> Reply | Stream:
        store = self.provider.events
        if store is None:
            raise HTTPError(503, "the event store is not open")
        query = request.query
        after = _int(query, "after", 0, 2**63 - 1)
        limit = _int(query, "limit", 1, MAX_QUERY_LIMIT) or DEFAULT_EVENTS_LIMIT
        kinds: list[str] | None = None
        if "kind" in query:
            kinds = [k for v in query["kind"] for k in v.split(",") if k]
        since_text = _one(query, "since")
        since: float | None = None
        if since_text:
            try:
                since = parse_time(float(since_text) if _numeric(since_text) else since_text)
            except (EventFormatError, OverflowError, OSError):
                raise HTTPError(
                    400, f"since must be an RFC 3339 time or epoch seconds, not {since_text!r}"
                ) from None
        newest = _flag(query, "newest")
        if _flag(query, "follow"):
            return Stream(_follow_lines(store, after, kinds))
        floor = store.last_id  # read before the query: paging on from it skips nothing
        events = await asyncio.to_thread(store.query, after, limit, kinds, since, newest)
        last = events[-1].id if events else (after if after is not None else floor)
        return Reply(
            200,
            {
                "events": [e.to_dict() for e in events],
                "lastId": last,
                "more": len(events) == limit,
            },
        )

    async def _eci(self, request: Request, caller: Caller) -> Reply:
        doc = _json_body(request)
        if set(doc) != {"enabled"}:
            raise HTTPError(400, 'the body must be {"enabled": true}, false or null')
        enabled = doc["enabled"]
        if enabled is not None and not isinstance(enabled, bool):
            raise HTTPError(400, "enabled must be true, false or null (follow the settings)")
        try:
            return Reply(200, await self.provider.set_eci(enabled, caller))
        except ActionRefused as err:
            raise HTTPError(403, str(err)) from err

    async def _repull(self, request: Request, caller: Caller) -> Reply:
        doc = _json_body(request)
        image = doc.get("image")
        if set(doc) != {"image"} or not isinstance(image, str) or not image.strip():
            raise HTTPError(400, 'the body must be {"image": "name[:tag]"}')
        try:
            return Reply(202, await self.provider.repull(image.strip(), caller))
        except ActionRefused as err:
            raise HTTPError(403, str(err)) from err
        except NotAvailable as err:
            raise HTTPError(501, str(err)) from err


def _numeric(text: str | None) -> bool:
    if text is None:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


async def _follow_lines(
    store: EventStore, after: int | None, kinds: list[str] | None
) -> AsyncIterator[bytes]:
    async for event in store.follow(after, kinds):
        yield event.to_json().encode() + b"\n"
