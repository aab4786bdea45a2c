"""Watch admin-settings.json and deliver every change to it, quickly and without missing any.

Theory of operation
-------------------
Editors and config tools rarely write a file in place: they write a temporary file and rename
it over the original (a new inode), or move the original aside first (vim's `file~`), or delete
and re-create it. A watch on the file's inode goes deaf after the first such save, so the
watcher watches the file's *folder* (with watchdog; inotify on Linux) and reacts only to events
that name the settings file: created, deleted, modified, attributes changed, closed after
writing, or moved away or into place. Other files in the folder (swap files, `4913` probes,
backups) are ignored.

Events come in bursts (a save is several of them), so they are debounced: the file is read
`debounce` seconds after the last event, and never more than `max_wait` after the first, so a
valid change takes effect well within a second. A load whose result equals the last delivered
one (same bytes, same verdict) is not delivered again.

The folder itself may not exist yet, or may be deleted and re-created (`rm -rf`, package
upgrades). Then the nearest existing folder above it is watched for the missing component to
appear, and the watch moves down as soon as it does. Independently, every `poll_interval`
seconds the watcher stats the file and its folders (identity, size, times, owner and mode) and
re-reads the file when anything differs from the last read, and re-aims the watch when the
folder was replaced: no change is missed even if inotify loses events (queue overflow, a
re-created folder reusing the old inode, a file that is a symlink to somewhere else).

`on_result` is called from the watcher's thread (and, for the first load, from `start()`),
one call at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from agent.settings.loader import LoadResult, Refused, load_settings

log = logging.getLogger(__name__)

#: Event types that can change what the file says (opened / closed-without-writing cannot,
#: and must be ignored: our own reads produce them).
_FILE_EVENTS = frozenset(
    {
        EVENT_TYPE_CREATED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_CLOSED,
        EVENT_TYPE_ATTRIB,
    }
)
#: Event types on the watched folder itself that mean the watch must be re-aimed or re-checked.
_FOLDER_EVENTS = frozenset({EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, EVENT_TYPE_ATTRIB})

Signature = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Aim:
    """What is watched: folder `folder` (a real path), for entries named `name` in it.

    `is_parent` says whether `folder` is the settings file's own folder (then `name` is the
    file's name) or an ancestor waiting for the missing component `name` to appear.
    """

    folder: str
    name: str
    is_parent: bool
    identity: tuple[int, int] | None


def _stat_key(path: str, *, follow: bool) -> tuple[int, ...] | None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return (
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


class SettingsWatcher:
    """Deliver `load_settings(path)` to `on_result` at start and after every change."""

    def __init__(
        self,
        path: Path | str,
        on_result: Callable[[LoadResult], None],
        *,
        debounce: float = 0.2,
        strict_modes: bool | None = None,
        poll_interval: float = 1.0,
        max_wait: float | None = None,
    ) -> None:
        self._path = Path(os.path.abspath(path))
        self._on_result = on_result
        self._debounce = debounce
        self._max_wait = max_wait if max_wait is not None else max(debounce, 0.5)
        self._strict_modes = strict_modes
        self._poll_interval = poll_interval

        self._mutex = threading.Lock()  # guards the pending-event fields below
        self._first_event: float | None = None
        self._last_event: float | None = None
        self._reaim = False
        self._wake = threading.Event()
        self._stopping = threading.Event()

        self._deliver_lock = threading.Lock()
        self._last_delivered: LoadResult | None = None
        self._last_signature: Signature | None = None
        self._loads = 0

        self._aim: _Aim | None = None
        self._watch: ObservedWatch | None = None
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._handler = _Handler(self)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def loads(self) -> int:
        """How many times the file was read (delivered or not); for tests and status."""
        return self._loads

    @property
    def watched_folder(self) -> str | None:
        """The folder currently watched (the file's folder, or an ancestor while it is absent)."""
        aim = self._aim
        return aim.folder if aim is not None else None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; loads the file once and delivers the result before returning."""
        if self._thread is not None:
            raise RuntimeError("the settings watcher is already started")
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._reaim_watch()
        self._reload()
        self._thread = threading.Thread(target=self._run, name="eci-settings-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and join the watcher's threads. Safe to call more than once."""
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()

    def __enter__(self) -> SettingsWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def request_reload(self) -> None:
        """Re-read the file soon (e.g. on SIGHUP), even without a file system event."""
        self._note_event(reaim=True)

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        aim = self._aim
        if aim is None or event.event_type not in _FILE_EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for raw in paths:
            if not raw:
                continue
            path = os.fsdecode(raw)
            if path == aim.folder:
                if event.event_type in _FOLDER_EVENTS:
                    self._note_event(reaim=True)
                    return
                continue
            if os.path.dirname(path) == aim.folder and os.path.basename(path) == aim.name:
                self._note_event(reaim=not aim.is_parent)
                return

    def _note_event(self, *, reaim: bool) -> None:
        now = time.monotonic()
        with self._mutex:
            if self._first_event is None:
                self._first_event = now
            self._last_event = now
            self._reaim = self._reaim or reaim
        self._wake.set()

    # -- the worker ---------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if self._first_event is None or self._last_event is None:
            return None
        return min(self._last_event + self._debounce, self._first_event + self._max_wait)

    def _run(self) -> None:
        next_poll = time.monotonic() + self._poll_interval
        while not self._stopping.is_set():
            with self._mutex:
                deadline = self._deadline()
            wake_at = next_poll if deadline is None else min(next_poll, deadline)
            delay = wake_at - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self._poll_interval
                    self._poll()
                self._reload_if_due(time.monotonic())
            except Exception:
                log.exception("settings watcher: unexpected error; carrying on")

    def _reload_if_due(self, now: float) -> None:
        with self._mutex:
            deadline = self._deadline()
            if deadline is None or now < deadline:
                return
            reaim = self._reaim
            self._first_event = self._last_event = None
            self._reaim = False
        if reaim:
            self._reaim_watch()
        self._reload()

    def _poll(self) -> None:
        """The fallback: re-aim the watch if its folder changed; reload if the file changed."""
        moved = self._reaim_watch()
        if moved or self._signature() != self._last_signature:
            self._note_event(reaim=False)

    def _signature(self) -> Signature:
        """Everything about the file and its folders that could change the load's result."""
        keys: list[object] = [_stat_key(str(self._path), follow=True)]
        keys.append(_stat_key(str(self._path), follow=False))
        for folder in self._path.parents:
            key = _stat_key(str(folder), follow=False)
            # A folder's times change with every entry added to it: only who and what count.
            keys.append(None if key is None else key[:5])
        return tuple(keys)

    def _reload(self) -> None:
        signature = self._signature()
        try:
            result = load_settings(self._path, strict_modes=self._strict_modes)
        except Exception as err:  # the loader should not raise; never let it stop the watcher
            log.exception("settings watcher: loading %s failed", self._path)
            result = Refused(str(self._path), f"cannot read {self._path}: {err}")
        self._loads += 1
        self._last_signature = signature
        with self._deliver_lock:
            if self._last_delivered is not None and result == self._last_delivered:
                return
            self._last_delivered = result
            try:
                self._on_result(result)
            except Exception:
                log.exception("settings watcher: on_result failed for %s", self._path)

    # -- where the watch points ---------------------------------------------------------------

    def _target(self) -> tuple[str, str, bool]:
        """The folder to watch, the entry name that matters in it, and whether it is the parent."""
        folder = self._path.parent
        name = self._path.name
        is_parent = True
        while not os.path.isdir(folder) and folder.parent != folder:
            name = folder.name
            folder = folder.parent
            is_parent = False
        return os.path.realpath(folder), name, is_parent

    def _watch_alive(self) -> bool:
        observer, watch = self._observer, self._watch
        if observer is None or watch is None:
            return False
        return any(e.watch == watch and e.is_alive() for e in observer.emitters)

    def _reaim_watch(self) -> bool:
        """Point the watch at the right folder; True when it moved (or was re-established)."""
        observer = self._observer
        if observer is None or self._stopping.is_set():
            return False
        folder, name, is_parent = self._target()
        try:
            st = os.stat(folder)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        aim = _Aim(folder, name, is_parent, identity)
        if aim == self._aim and identity is not None and self._watch_alive():
            return False
        if self._watch is not None:
            try:
                observer.unschedule(self._watch)
            except Exception:  # already gone with its folder
                log.debug("settings watcher: unschedule %s failed", self._watch, exc_info=True)
            self._watch = None
        self._aim = aim
        try:
            self._watch = observer.schedule(self._handler, folder, recursive=False)
        except OSError as err:
            log.warning("settings watcher: cannot watch %s (%s); polling", folder, err)
            self._aim = _Aim(folder, name, is_parent, None)
        else:
            log.debug("settings watcher: watching %s for %r", folder, name)
        return True


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: SettingsWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._on_event(event)
