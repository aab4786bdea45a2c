"""What the tray shows and when it speaks, computed from the control API's answers (no Qt here).

Everything the tray decides lives here, so it can be tested without a display:

- `view_of` / `unreachable_view`: the icon's level, its title and tooltip lines;
- `menu_entries`: which menu entries exist (ECI switch only while unlocked, re-pull prompts,
  the windows, what to do when the agent cannot be asked);
- `BlockedFeed`: `GET /v1/events` paging (`after=`) over `denied` / `would-deny` events, and
  which of them are new;
- `Throttle`: at most one desktop notification per interval, then "N more";
- `RepullPrompts`: one notification per image that needs a re-pull;
- `features_view`: the `GET /v1/features` report as the features window shows it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Level(enum.Enum):
    ENFORCING = "enforcing"
    AUDIT = "audit"
    OFF = "off"
    ERROR = "error"
    UNREACHABLE = "unreachable"


AUDIT_LINE = "NOT PROTECTED: would-be denials are only recorded"
LOCKED_TEXT = "Locked by your administrator"


@dataclass(frozen=True, slots=True)
class TrayView:
    level: Level
    title: str
    lines: tuple[str, ...] = ()

    @property
    def tooltip(self) -> str:
        return "\n".join((self.title, *self.lines))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def unreachable_view(error: BaseException | str) -> TrayView:
    """Why the agent cannot be asked, and what to do about it (the error's `title`/`hint`)."""
    title = "eci-agent: not reachable"
    hint = ""
    if isinstance(error, BaseException):
        title = _text(getattr(error, "title", None)) or title
        hint = _text(getattr(error, "hint", None))
    lines = tuple(line for line in (str(error), hint) if line)
    return TrayView(Level.UNREACHABLE, str(title), lines)


def view_of(status: dict[str, Any] | None, error: BaseException | str | None = None) -> TrayView:
    """The tray's picture of `status` (the control API's answer), or of why there is none."""
    if status is None:
        return unreachable_view(error or "")
    lines: list[str] = []
    locked = bool(status.get("locked"))
    lines.append("locked by your administrator" if locked else "not locked")
    settings_error = status.get("settingsError")
    if settings_error:
        lines.append(f"settings problem: {settings_error}")
    eci = _dict(status.get("eci"))
    choice = eci.get("userChoice")
    if not locked and isinstance(choice, bool):
        admin = "on" if eci.get("value") else "off"
        lines.append(f"your choice: {'on' if choice else 'off'} (the administrator's is {admin})")
    engine = _dict(status.get("engine"))
    if engine.get("reachable") is False:
        lines.append(f"the Docker engine does not answer: {_text(engine.get('error'))}".rstrip())
    waiting = [i for i in status.get("needsRepull") or () if isinstance(i, dict)]
    if waiting:
        lines.append(f"{len(waiting)} image(s) need a re-pull")
    if status.get("audit"):
        lines.insert(0, AUDIT_LINE)
        return TrayView(Level.AUDIT, "Enhanced Container Isolation: AUDIT ONLY", tuple(lines))
    if not status.get("enforcing", False):
        return TrayView(Level.OFF, "Enhanced Container Isolation: off", tuple(lines))
    level = Level.ERROR if settings_error else Level.ENFORCING
    return TrayView(level, "Enhanced Container Isolation: on", tuple(lines))


# -- the menu ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One menu entry: `key` says what it does (the tray maps keys to actions)."""

    key: str
    text: str
    enabled: bool = True
    checkable: bool = False
    checked: bool = False


SEPARATOR = Entry("-", "", enabled=False)
# Entry keys (with `:<image>` for the re-pull ones).
TITLE = "title"
LINE = "line"
ECI_SWITCH = "eci-switch"
ECI_LOCKED = "eci-locked"
ECI_FOLLOW = "eci-follow-admin"
REPULL = "repull"
REPULL_LOCKED = "repull-locked"
REPULL_BUSY = "repull-busy"
BLOCKED = "blocked"
FEATURES = "features"
QUIT = "quit"


def repull_items(status: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """`status.needsRepull` items that name an image."""
    if status is None:
        return []
    items = status.get("needsRepull") or ()
    return [i for i in items if isinstance(i, dict) and _text(i.get("image"))]


def menu_entries(
    status: dict[str, Any] | None,
    view: TrayView,
    busy: Iterable[str] = (),
) -> tuple[Entry, ...]:
    """The context menu for `status` (None: the agent could not be asked, `view` says why).
    `busy`: images whose re-pull is under way."""
    out = [Entry(TITLE, view.title, enabled=False)]
    out.extend(Entry(f"{LINE}:{i}", line, enabled=False) for i, line in enumerate(view.lines))
    out.append(SEPARATOR)
    if status is not None:
        locked = bool(status.get("locked"))
        eci = _dict(status.get("eci"))
        if locked:
            out.append(Entry(ECI_LOCKED, LOCKED_TEXT, enabled=False))
        else:
            enabled = bool(eci.get("enabled", status.get("enforcing") or status.get("audit")))
            out.append(
                Entry(ECI_SWITCH, "Enhanced Container Isolation", checkable=True, checked=enabled)
            )
            if isinstance(eci.get("userChoice"), bool):
                out.append(Entry(ECI_FOLLOW, "Use the administrator's setting"))
        busy_set = set(busy)
        items = repull_items(status)
        if items:
            out.append(SEPARATOR)
        for item in items:
            image = item["image"]
            if image in busy_set:
                out.append(Entry(f"{REPULL_BUSY}:{image}", f"Re-pulling {image}…", enabled=False))
            elif locked:
                out.append(Entry(f"{REPULL_LOCKED}:{image}", f"{image} needs a re-pull…"))
            else:
                out.append(Entry(f"{REPULL}:{image}", f"Re-pull {image}"))
        out.append(SEPARATOR)
        out.append(Entry(BLOCKED, "Blocked requests…"))
        out.append(Entry(FEATURES, "Features…"))
        out.append(SEPARATOR)
    out.append(Entry(QUIT, "Quit"))
    return tuple(out)


def repull_question(image: str) -> str:
    return (
        f"Pull {image} again from its registry? The local copy no longer matches what the "
        "registry serves, so the image list no longer admits it. The pull can take minutes; "
        "the old copy is removed when no container uses it."
    )


def repull_locked_text(item: Mapping[str, Any]) -> str:
    image = _text(item.get("image"))
    fix = _text(item.get("fix")) or f"eci-agent repull {image}"
    return (
        f"The local copy of {image} no longer matches its registry. The settings are locked, "
        f"so ask your administrator to run:\n\n    {fix}"
    )


def repull_outcome(answer: Mapping[str, Any]) -> str:
    message = _text(answer.get("message")) or "re-pulled"
    new_id = _text(answer.get("newId"))
    return f"{message} (new image {new_id[:19]})" if new_id else message


# -- notifications -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    title: str
    text: str
    warning: bool = False


class RepullPrompts:
    """Tells each image needing a re-pull once (again only if its registry digest moves on)."""

    def __init__(self) -> None:
        self._told: set[tuple[str, str]] = set()

    def new(self, status: Mapping[str, Any] | None) -> list[Notice]:
        out: list[Notice] = []
        locked = bool(status.get("locked")) if status is not None else False
        for item in repull_items(status):
            key = (item["image"], _text(item.get("registry_digest")))
            if key in self._told:
                continue
            self._told.add(key)
            image = item["image"]
            if locked:
                fix = _text(item.get("fix")) or f"eci-agent repull {image}"
                text = f"Ask your administrator to run: {fix}"
            else:
                text = f"Choose “Re-pull {image}” in the tray menu."
            out.append(Notice(f"{image} needs a re-pull", text))
        return out


@dataclass(frozen=True, slots=True)
class Blocked:
    """One `denied` or `would-deny` event, as the blocked-requests window lists it."""

    id: int
    time: float | None
    would: bool
    message: str
    container: str
    image: str
    request: str
    #: Refusals this row stands for: more than 1 for a sender's flood the agent counted
    #: instead of recording one by one (`denials-suppressed`).
    count: int = 1

    @property
    def when(self) -> str:
        if self.time is None:
            return "?"
        return datetime.fromtimestamp(self.time).strftime("%Y-%m-%d %H:%M:%S")

    @property
    def label(self) -> str:
        if self.count > 1:
            return f"denied x{self.count} (counted)"
        return "would deny (audit)" if self.would else "denied"


BLOCKED_KINDS = ("denied", "would-deny", "denials-suppressed")


def _time_of(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


def blocked_of(event: Mapping[str, Any]) -> Blocked | None:
    """The event as a row, or None when it is not a blocked request (or has no id)."""
    kind = event.get("kind")
    ident = event.get("id")
    if kind not in BLOCKED_KINDS or not isinstance(ident, int) or isinstance(ident, bool):
        return None
    name = _text(event.get("containerName"))
    cid = _text(event.get("containerId"))[:12]
    container = f"{name} ({cid})" if name and cid else name or cid
    method, path = _text(event.get("method")), _text(event.get("path"))
    count = 1
    if kind == "denials-suppressed":
        extra = event.get("extra")
        found = extra.get("count") if isinstance(extra, Mapping) else None
        count = found if isinstance(found, int) and not isinstance(found, bool) else 2
    return Blocked(
        id=ident,
        time=_time_of(event.get("time")),
        would=kind == "would-deny",
        message=_text(event.get("message")) or "(no message)",
        container=container,
        image=_text(event.get("image")),
        request=f"{method} {path}".strip(),
        count=max(count, 1),
    )


@dataclass(frozen=True, slots=True)
class EventsQuery:
    after: int | None
    limit: int
    newest: bool
    kinds: tuple[str, ...] = BLOCKED_KINDS


class BlockedFeed:
    """Pages through the agent's blocked requests with `after=` and keeps the latest `keep`.

    The first page is the newest `seed` events (already history: not new). Each later page
    starts after the last id seen; `take` returns what is new. If the agent's store starts over
    (its `lastId` falls below ours), the feed starts over too.
    """

    def __init__(self, keep: int = 500, seed: int = 50, page: int = 200) -> None:
        self.keep = keep
        self.seed = seed
        self.page = page
        self.cursor: int | None = None
        self.more = False
        self.rows: deque[Blocked] = deque(maxlen=keep)

    def query(self) -> EventsQuery:
        if self.cursor is None:
            return EventsQuery(None, self.seed, newest=True)
        return EventsQuery(self.cursor, self.page, newest=False)

    def take(self, answer: Mapping[str, Any]) -> list[Blocked]:
        """Files one `GET /v1/events` answer; returns the new blocked requests (oldest first)."""
        seeding = self.cursor is None
        events = answer.get("events")
        fresh: list[Blocked] = []
        for event in events if isinstance(events, list) else ():
            row = blocked_of(event) if isinstance(event, dict) else None
            if row is None or (self.cursor is not None and row.id <= self.cursor):
                continue
            fresh.append(row)
            self.cursor = row.id
        last = answer.get("lastId")
        if isinstance(last, int) and not isinstance(last, bool):
            self.cursor = max(self.cursor or 0, last)
        elif self.cursor is None:
            self.cursor = 0
        self.more = bool(answer.get("more")) and not seeding
        self.rows.extend(fresh)
        return [] if seeding else fresh

    def agent_last_id(self, last_id: Any) -> None:
        """`status.events.lastId` (None: an empty store) below our cursor means a new store:
        start over."""
        if last_id is None:
            last_id = 0
        if isinstance(last_id, int) and self.cursor is not None and last_id < self.cursor:
            self.cursor = None
            self.more = False
            self.rows.clear()


@dataclass
class Throttle:
    """At most one notice per `interval` seconds; what comes meanwhile is summed up after."""

    interval: float = 10.0
    last: float | None = None
    pending: list[Blocked] = field(default_factory=list)

    def add(self, rows: Sequence[Blocked], now: float) -> Notice | None:
        self.pending.extend(rows)
        return self.due(now)

    def due(self, now: float) -> Notice | None:
        """The notice to show now, if any (call it on every tick, too)."""
        if not self.pending or (self.last is not None and now - self.last < self.interval):
            return None
        rows, self.pending = self.pending, []
        self.last = now
        latest = rows[-1]
        where = f" ({latest.container or latest.image})" if latest.container or latest.image else ""
        total = sum(r.count for r in rows)
        if total == 1:
            title = "Would be refused (audit mode)" if latest.would else "Refused by ECI"
            return Notice(title, f"{latest.message}{where}", warning=not latest.would)
        title = (
            f"{total} requests refused"
            if not all(r.would for r in rows)
            else (f"{total} requests would be refused (audit mode)")
        )
        return Notice(
            title,
            f"{latest.message}{where}\n… and {total - 1} more (see Blocked requests)",
            warning=not all(r.would for r in rows),
        )


def mode_notice(before: TrayView | None, after: TrayView) -> Notice | None:
    """Say it when the machine stops being protected (audit mode, or ECI switched off)."""
    if before is None or before.level is after.level:
        return None
    if after.level is Level.AUDIT:
        return Notice(after.title, AUDIT_LINE, warning=True)
    if after.level is Level.OFF and before.level is not Level.UNREACHABLE:
        return Notice(after.title, "Containers are not isolated now.", warning=True)
    return None


# -- the features window -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureLine:
    name: str
    title: str
    state: str
    used: bool
    detail: str


@dataclass(frozen=True, slots=True)
class FeaturesView:
    platform: str
    engine: str
    isolation: str
    mode: str
    warnings: tuple[str, ...]
    notices: tuple[str, ...]
    rows: tuple[FeatureLine, ...]


def _platform_text(platform: Mapping[str, Any]) -> str:
    kind = _text(platform.get("kind"))
    desktop = _text(platform.get("dockerDesktopVersion"))
    if desktop:
        return f"Docker Desktop {desktop}" + (" (WSL 2)" if platform.get("wsl2") else "")
    name = _text(platform.get("name"))
    if name:
        return name
    if kind in ("", "unknown"):
        return "unknown (the engine did not answer)"
    return "Docker Engine"


def features_view(doc: Mapping[str, Any]) -> FeaturesView:
    platform = _dict(doc.get("platform"))
    engine_parts = [
        f"engine {_text(platform.get('engineVersion'))}" if platform.get("engineVersion") else "",
        f"API {_text(platform.get('apiVersion'))}" if platform.get("apiVersion") else "",
        (
            f"{_text(platform.get('os'))}/{_text(platform.get('arch'))}"
            if platform.get("os") and platform.get("arch")
            else ""
        ),
    ]
    isolation = _dict(doc.get("isolation"))
    level = _text(isolation.get("level")) or "unknown"
    summary = _text(isolation.get("summary"))
    warnings: list[str] = []
    notices: list[str] = []
    for w in doc.get("warnings") or ():
        if not isinstance(w, dict):
            continue
        text = _text(w.get("message"))
        if w.get("path"):
            text += f" [{_text(w.get('path'))}]"
        (warnings if w.get("severity") == "warning" else notices).append(text)
    rows = tuple(
        FeatureLine(
            name=_text(r.get("name")),
            title=_text(r.get("title")) or _text(r.get("name")),
            state=_text(r.get("state")) or "?",
            used=bool(r.get("used")),
            detail=_text(r.get("detail")),
        )
        for r in doc.get("features") or ()
        if isinstance(r, dict)
    )
    mode = doc.get("mode")
    return FeaturesView(
        platform=_platform_text(platform),
        engine=", ".join(p for p in engine_parts if p) or "-",
        isolation=summary.splitlines()[0].removeprefix("isolation: ") if summary else level,
        mode="AUDIT ONLY (not protected)" if mode == "audit" else _text(mode) or "unknown",
        warnings=tuple(warnings),
        notices=tuple(notices),
        rows=rows,
    )
