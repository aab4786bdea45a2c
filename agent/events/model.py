"""What the agent records: one `Event` per thing an admin may want to audit (pure: no I/O).

An event is a flat, frozen record. Its JSON form (`to_dict`/`from_dict`) is what the control
API serves, what `eci-agent events --json` prints and what the JSON-lines export writes: keys in
camelCase (as the Engine API and the rest of the control API), `time` as RFC 3339 UTC, fields
without a value left out. Unknown keys are kept in `extra` on the way back, so an older reader
loses nothing a newer agent wrote.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

#: What must not reach a terminal or a log line as it is: C0 and C1 controls (newlines,
#: carriage returns, escape sequences) and DEL, and the marks that reorder text on screen
#: (bidirectional overrides and isolates: "Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control or reordering character shown as a `\\xNN`/`\\uNNNN`
    escape: a client's own words (an image name, a path) can then neither forge nor hide
    lines where an admin reads events."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Kind(enum.StrEnum):
    """The kinds the agent writes today; the store accepts any other name too."""

    DENIED = "denied"
    WOULD_DENY = "would-deny"  # audit mode: recorded, then let through
    POLICY_RELOADED = "policy-reloaded"
    SETTINGS_REJECTED = "settings-rejected"
    ECI_SWITCHED = "eci-switched"
    NEEDS_REPULL = "needs-repull"
    REPULL_DONE = "repull-done"
    ENGINE_UNREACHABLE = "engine-unreachable"
    ENGINE_REACHABLE = "engine-reachable"
    EVENTS_DROPPED = "events-dropped"
    DENIALS_SUPPRESSED = "denials-suppressed"  # a sender's refusals over the rate, counted
    AGENT_STARTED = "agent-started"
    AGENT_STOPPED = "agent-stopped"


class PeerLike(Protocol):
    """Who asked (the proxy's `Peer`, as SO_PEERCRED tells it)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def uid(self) -> int | None: ...
    @property
    def gid(self) -> int | None: ...
    @property
    def listener(self) -> str: ...


# (attribute, JSON key) in the order they are written.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("time", "time"),
    ("kind", "kind"),
    ("decision", "decision"),
    ("rule", "rule"),
    ("status", "status"),
    ("image", "image"),
    ("digest", "digest"),
    ("commands", "commands"),
    ("method", "method"),
    ("path", "path"),
    ("container_id", "containerId"),
    ("container_name", "containerName"),
    ("uid", "uid"),
    ("pid", "pid"),
    ("gid", "gid"),
    ("listener", "listener"),
    ("settings_sha256", "settingsSha256"),
    ("message", "message"),
    ("extra", "extra"),
)
_KEY_OF = dict(_FIELDS)
_ATTR_OF = {key: attr for attr, key in _FIELDS}
_INTS = frozenset({"id", "status", "uid", "pid", "gid"})
_STRS = frozenset(
    {
        "decision",
        "rule",
        "image",
        "digest",
        "method",
        "path",
        "container_id",
        "container_name",
        "listener",
        "settings_sha256",
    }
)


class EventFormatError(ValueError):
    """A JSON event that cannot be read back."""


def format_time(seconds: float) -> str:
    """Seconds since the epoch -> RFC 3339 UTC with microseconds (`...T12:00:00.000001Z`)."""
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def parse_time(value: Any) -> float:
    """RFC 3339 (as `format_time` writes it, or with an offset) or a number -> epoch seconds."""
    if isinstance(value, bool):
        raise EventFormatError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise EventFormatError(f"not a time: {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError as err:
            raise EventFormatError(f"not an RFC 3339 time: {value!r}") from err
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    raise EventFormatError(f"not a time: {value!r}")


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded fact. `id` is None until the store assigns it (ids only grow)."""

    kind: str
    time: float
    message: str = ""
    decision: str | None = None  # "denied" (enforced); audit mode will add "would-deny"
    rule: str | None = None  # the policy rule that decided (Decision.rule)
    status: int | None = None  # the HTTP status the client got
    image: str | None = None
    digest: str | None = None
    commands: tuple[str, ...] = ()
    method: str | None = None
    path: str | None = None  # the request target as the client sent it
    container_id: str | None = None
    container_name: str | None = None
    uid: int | None = None
    pid: int | None = None
    gid: int | None = None
    listener: str | None = None  # which agent socket: host, container, control
    settings_sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    id: int | None = None

    def __post_init__(self) -> None:
        # Microsecond precision, as the JSON form carries, so a round trip is exact.
        object.__setattr__(self, "time", round(float(self.time), 6))
        object.__setattr__(self, "commands", tuple(self.commands))

    def with_id(self, event_id: int) -> Event:
        return replace(self, id=event_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, key in _FIELDS:
            value = getattr(self, attr)
            if value is None or (attr in ("commands", "extra") and not value):
                continue
            if attr == "time":
                value = format_time(value)
            elif attr == "commands":
                value = list(value)
            elif attr == "extra":
                value = dict(value)
            out[key] = value
        return out

    def to_json(self) -> str:
        """One line of JSON (no newline inside: strings are escaped)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Event:
        if not isinstance(doc, Mapping):
            raise EventFormatError("an event must be a JSON object")
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in doc.items():
            attr = _ATTR_OF.get(key)
            if attr is None:
                extra[key] = value
            elif value is None:
                continue
            elif attr == "time":
                values["time"] = parse_time(value)
            elif attr == "commands":
                if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                    raise EventFormatError("commands must be a list of strings")
                values["commands"] = tuple(value)
            elif attr == "extra":
                if not isinstance(value, Mapping):
                    raise EventFormatError("extra must be an object")
                extra = {**value, **extra}
            elif attr in _INTS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise EventFormatError(f"{key} must be an integer")
                values[attr] = value
            elif attr in _STRS or attr in ("kind", "message"):
                if not isinstance(value, str):
                    raise EventFormatError(f"{key} must be a string")
                values[attr] = value
        if "kind" not in values or "time" not in values:
            raise EventFormatError("an event needs a kind and a time")
        return cls(extra=extra, **values)

    @classmethod
    def from_json(cls, line: str) -> Event:
        try:
            doc = json.loads(line)
        except ValueError as err:
            raise EventFormatError(f"not JSON: {err}") from err
        return cls.from_dict(doc)


def denial(
    *,
    time: float,
    method: str,
    path: str,
    rule: str,
    status: int,
    message: str,
    peer: PeerLike | None = None,
    settings_sha256: str | None = None,
    image: str | None = None,
    digest: str | None = None,
    container_id: str | None = None,
    container_name: str | None = None,
    commands: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    decision: str = "denied",
) -> Event:
    """The `denied` event for a refused request (what the gate records); in audit mode
    (`decision="would-deny"`) the `would-deny` event for one that was let through."""
    return Event(
        kind=(Kind.WOULD_DENY if decision == "would-deny" else Kind.DENIED).value,
        time=time,
        message=message,
        decision=decision,
        rule=rule,
        status=status,
        image=image,
        digest=digest,
        commands=tuple(commands),
        method=method,
        path=path,
        container_id=container_id,
        container_name=container_name,
        uid=peer.uid if peer is not None else None,
        pid=peer.pid if peer is not None else None,
        gid=peer.gid if peer is not None else None,
        listener=peer.listener if peer is not None else None,
        settings_sha256=settings_sha256,
        extra=dict(extra or {}),
    )


def key_of(attr: str) -> str:
    """The JSON key of an `Event` attribute."""
    return _KEY_OF[attr]
