"""What the tray shows, computed from the agent's status (no Qt here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Level(enum.Enum):
    ENFORCING = "enforcing"
    AUDIT = "audit"
    OFF = "off"
    ERROR = "error"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class TrayView:
    level: Level
    title: str
    lines: tuple[str, ...] = ()

    @property
    def tooltip(self) -> str:
        return "\n".join((self.title, *self.lines))


def view_of(status: dict[str, Any] | None, error: str | None = None) -> TrayView:
    """The tray's picture of `status` (the control API's answer), or of why there is none."""
    if status is None:
        return TrayView(Level.UNREACHABLE, "eci-agent: not reachable", (error or "",))
    lines: list[str] = []
    locked = bool(status.get("locked"))
    lines.append("locked by your administrator" if locked else "not locked")
    settings_error = status.get("settingsError")
    if settings_error:
        lines.append(f"settings problem: {settings_error}")
    if status.get("audit"):
        lines.insert(0, "NOT PROTECTED: would-be denials are only recorded")
        return TrayView(Level.AUDIT, "Enhanced Container Isolation: AUDIT ONLY", tuple(lines))
    if not status.get("enforcing", False):
        return TrayView(Level.OFF, "Enhanced Container Isolation: off", tuple(lines))
    level = Level.ERROR if settings_error else Level.ENFORCING
    return TrayView(level, "Enhanced Container Isolation: on", tuple(lines))
