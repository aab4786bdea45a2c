"""The policy in force, and why: one thread-safe holder fed by the settings watcher.

Rules (fail closed):

- a valid file (`Loaded`) becomes the policy in force and clears any error; the user's own
  ECI switch survives only while the new settings leave ECI unlocked;
- no file (`Missing`) means the built-in default, reported as such, as long as no file was
  ever loaded in this run; once one was, a deleted file keeps that last good policy in force
  and puts the holder in an error state (a deleted file must not loosen the policy);
- a refused file (`Refused`) keeps the last good policy (or the built-in default when nothing
  was ever good) and records the reason as the error.

No clock is read here: callers pass `now` (seconds since the epoch) with every update.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.settings.loader import Loaded, LoadResult, Missing, Refused
from agent.settings.model import (
    BUILTIN_DEFAULT,
    UNREADABLE_FILE_DEFAULT,
    AdminSettings,
    Effective,
)

log = logging.getLogger(__name__)


class ChangeKind(enum.Enum):
    APPLIED = "applied"  # the policy in force or the error state changed to match the input
    KEPT = "kept"  # the input was not used; the previous policy stays in force (error set)
    UNCHANGED = "unchanged"  # nothing changed at all


@dataclass(frozen=True, slots=True)
class Change:
    """What one update did, for logs and events."""

    kind: ChangeKind
    message: str
    effective: Effective
    error: str | None = None

    def __str__(self) -> str:
        return self.message


Listener = Callable[[Change], None]


def _when(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")


def describe(settings: AdminSettings) -> str:
    """A short name for a policy: its file and hash, or the built-in default."""
    if settings.is_builtin_default:
        return "the built-in default policy"
    sha = (settings.sha256 or "")[:12]
    return f"{settings.source} (sha256 {sha})"


def _summary(effective: Effective) -> str:
    eci = effective.settings.eci
    parts = [f"ECI {'on' if effective.eci_enabled else 'off'}"]
    parts.append("locked" if eci.locked else "not locked")
    if effective.user_choice is not None and not eci.locked:
        parts.append(f"user choice: {'on' if effective.user_choice else 'off'}")
    return ", ".join(parts)


class SettingsState:
    """The policy in force (`current`), the last refusal (`error`) and the last input."""

    def __init__(self, initial: Effective | None = None) -> None:
        self._lock = threading.RLock()
        self._current = initial if initial is not None else Effective(BUILTIN_DEFAULT)
        self._error: str | None = None
        self._last_result: LoadResult | None = None
        self._last_reload: float | None = None
        self._last_good_at: float | None = None
        self._listeners: list[Listener] = []

    # -- reading ------------------------------------------------------------------------------

    @property
    def current(self) -> Effective:
        with self._lock:
            return self._current

    @property
    def error(self) -> str | None:
        """Why the latest file is not the one in force; None when it is."""
        with self._lock:
            return self._error

    @property
    def last_result(self) -> LoadResult | None:
        with self._lock:
            return self._last_result

    @property
    def last_reload(self) -> float | None:
        with self._lock:
            return self._last_reload

    @property
    def last_good_at(self) -> float | None:
        """When a settings file was last loaded successfully in this run (None: never)."""
        with self._lock:
            return self._last_good_at

    # -- listeners ----------------------------------------------------------------------------

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback(change)` after every update; returns a function that unsubscribes.

        Callbacks run in the updating thread, one update at a time, in order; keep them short.
        """
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, change: Change) -> None:
        for callback in list(self._listeners):
            try:
                callback(change)
            except Exception:
                log.exception("settings listener %r failed", callback)

    # -- updates ------------------------------------------------------------------------------

    def apply(self, result: LoadResult, now: float) -> Change:
        """Take a load result into account (see the module doc for the rules)."""
        with self._lock:
            change = self._apply(result, now)
            self._last_result = result
            self._last_reload = now
            self._notify(change)
            return change

    def _kept(self, error: str, message: str) -> Change:
        same = error == self._error and self._last_result is not None
        kind = ChangeKind.UNCHANGED if same else ChangeKind.KEPT
        self._error = error
        return Change(kind, message, self._current, error)

    def _keeping(self) -> str:
        settings = self._current.settings
        if settings.is_builtin_default or self._last_good_at is None:
            return "keeping the built-in default policy (ECI on)"
        since = _when(self._last_good_at)
        return f"keeping the last good policy from {since}, {describe(settings)}"

    def _apply(self, result: LoadResult, now: float) -> Change:
        before, error_before = self._current, self._error
        # The first update is always reported, so the log says what is in force from the start.
        quiet = error_before is None and self._last_result is not None
        if isinstance(result, Loaded):
            settings = result.settings
            choice = None if settings.eci.locked else before.user_choice
            after = Effective(settings, choice)
            self._current, self._error, self._last_good_at = after, None, now
            if after == before and quiet:
                return Change(ChangeKind.UNCHANGED, f"{describe(settings)} unchanged", after)
            message = f"applied {describe(settings)}: {_summary(after)}"
            if before.user_choice is not None and choice is None:
                message += (
                    "; the user's choice no longer applies: enhancedContainerIsolation.locked "
                    "is true"
                )
            return Change(ChangeKind.APPLIED, message, after)
        if isinstance(result, Missing):
            if self._last_good_at is None:
                after = Effective(BUILTIN_DEFAULT, before.user_choice)
                self._current, self._error = after, None
                if after == before and quiet:
                    return Change(ChangeKind.UNCHANGED, str(result), after)
                return Change(ChangeKind.APPLIED, str(result), after)
            error = f"settings file {result.path} deleted; {self._keeping()}"
            return self._kept(error, error)
        if isinstance(result, Refused):
            if self._last_good_at is None and self._current.settings.eci.locked is False:
                # Nothing good was ever read: the default stays in force, but locked (the
                # user's own switch, if any, is dropped), until the file can be read.
                self._current = Effective(UNREADABLE_FILE_DEFAULT)
                self._error = result.reason
                return Change(
                    ChangeKind.KEPT,
                    f"{result.reason}\n{self._keeping()}, locked until the file can be read",
                    self._current,
                    result.reason,
                )
            return self._kept(result.reason, f"{result.reason}\n{self._keeping()}")
        raise TypeError(f"not a load result: {result!r}")

    def set_user_choice(self, enabled: bool | None) -> Change:
        """The user's ECI switch (None: follow the file); raises `SettingsLocked` when locked."""
        with self._lock:
            before = self._current
            after = before.with_user_choice(enabled)
            self._current = after
            if after == before:
                change = Change(ChangeKind.UNCHANGED, "user choice unchanged", after, self._error)
            else:
                choice = "follow the settings" if enabled is None else ("on" if enabled else "off")
                change = Change(
                    ChangeKind.APPLIED,
                    f"user set ECI to {choice}: {_summary(after)}",
                    after,
                    self._error,
                )
            self._notify(change)
            return change
