"""The event store: an append-only SQLite file in the state dir, written by one thread.

Durability. The database runs in WAL mode with `synchronous=FULL`. In WAL mode a commit is one
append to the `-wal` file; once `write()` returned, the bytes are in the kernel's page cache,
so a `kill -9` of the agent (or a crash, or a restart) loses nothing that was committed, and
`synchronous=NORMAL` would already be enough for that. FULL adds an fsync of the WAL at every
commit, which also keeps committed events across a power loss or a kernel panic. For an audit
trail that is worth it, and it costs the proxy nothing: commits happen on the writer thread,
one per batch (up to `batch_size` events), never on the event loop.

Never blocking the proxy. `append()` only puts the event in a bounded in-memory queue (a
deque under a lock: a few microseconds, no I/O). If the disk is slow or failing and the queue
is full, the event is dropped and counted; as soon as the writer can write again it records an
`events-dropped` event with the count, so the gap itself is on record. An event is durable once
the writer committed it; `flush()` waits for that (for shutdown and tests).

Ids only grow (AUTOINCREMENT: never reused, even when retention deletes the newest rows), so
clients page with `after_id` and `follow()` can resume where it left off. Retention (age and
row count) is applied by the writer thread at start and every `prune_interval` seconds, in
chunks, so the writer never holds the database for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.events.model import Event, Kind, PeerLike, denial

log = logging.getLogger("eci_agent.events.store")

SCHEMA_VERSION = 1
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500
DEFAULT_PRUNE_INTERVAL = 600.0
MAX_QUERY_LIMIT = 1000
_PRUNE_CHUNK = 5000

_COLUMNS = (
    "time",
    "kind",
    "decision",
    "rule",
    "status",
    "image",
    "digest",
    "commands",
    "method",
    "path",
    "container_id",
    "container_name",
    "uid",
    "pid",
    "gid",
    "listener",
    "settings_sha256",
    "message",
    "extra",
)

_SCHEMA_V1 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    decision TEXT,
    rule TEXT,
    status INTEGER,
    image TEXT,
    digest TEXT,
    commands TEXT,
    method TEXT,
    path TEXT,
    container_id TEXT,
    container_name TEXT,
    uid INTEGER,
    pid INTEGER,
    gid INTEGER,
    listener TEXT,
    settings_sha256 TEXT,
    message TEXT NOT NULL DEFAULT '',
    extra TEXT
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_kind ON events (kind, id);
"""

#: version -> script taking the schema from the version before it to this one.
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}

_INSERT = f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_SELECT = f"SELECT id, {', '.join(_COLUMNS)} FROM events"


class EventStoreError(Exception):
    """The event store cannot be opened (unreadable, or written by a newer eci-agent)."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long events are kept: the older of the two limits wins; None means no limit."""

    max_age_days: float | None = 90.0
    max_rows: int | None = 100_000


def _row(event: Event) -> tuple[Any, ...]:
    return (
        event.time,
        event.kind,
        event.decision,
        event.rule,
        event.status,
        event.image,
        event.digest,
        json.dumps(list(event.commands)) if event.commands else None,
        event.method,
        event.path,
        event.container_id,
        event.container_name,
        event.uid,
        event.pid,
        event.gid,
        event.listener,
        event.settings_sha256,
        event.message,
        json.dumps(dict(event.extra), default=str) if event.extra else None,
    )


def _event(row: Sequence[Any]) -> Event:
    values = dict(zip(("id", *_COLUMNS), row, strict=True))
    commands_json, extra_json = values.pop("commands"), values.pop("extra")
    commands = tuple(json.loads(commands_json)) if commands_json else ()
    extra = json.loads(extra_json) if extra_json else {}
    return Event(commands=commands, extra=extra, **values)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=5.0, isolation_level=None, check_same_thread=False, cached_statements=32
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class EventStore:
    """See the module doc. Thread-safe; `follow()` is for asyncio code."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: Retention | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.retention = retention if retention is not None else Retention()
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.prune_interval = prune_interval
        self.clock = clock
        self._cond = threading.Condition()
        self._pending: deque[Event] = deque()
        self._appended = 0  # events accepted into the queue so far
        self._settled = 0  # of those, how many the writer committed or gave up on
        self._dropped_unrecorded = 0
        self._dropped_total = 0
        self._write_errors = 0
        self._prune_requested = False
        self._prunes = 0  # retention passes done
        self._stopping = False
        self._closed = False
        self._last_id: int | None = None
        self._followers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._followers_lock = threading.Lock()
        self._writer_conn = self._open()
        self._reader_conn = _connect(self.path)
        self._reader_lock = threading.Lock()
        self._last_id = self._max_id(self._writer_conn)
        self._thread = threading.Thread(target=self._run, name="eci-events-writer", daemon=True)
        self._thread.start()

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)  # the file, its -wal and -shm: root only
        try:
            conn = _connect(self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as err:
            raise EventStoreError(f"cannot open the event store {self.path}: {err}") from err
        finally:
            os.umask(old_umask)
        if str(mode).lower() != "wal":
            log.warning("event store %s: WAL mode refused (%s); using %s", self.path, mode, mode)
        conn.execute("PRAGMA synchronous = FULL")
        try:
            self._migrate(conn)
        except sqlite3.Error as err:
            conn.close()
            raise EventStoreError(f"cannot use the event store {self.path}: {err}") from err
        except EventStoreError:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise EventStoreError(
                f"the event store {self.path} has schema version {version}, newer than this "
                f"eci-agent knows ({SCHEMA_VERSION}); use a newer eci-agent or move the file away"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            # Before the first table: lets `PRAGMA incremental_vacuum` return pruned pages.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _max_id(conn: sqlite3.Connection) -> int | None:
        value = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        return int(value) if value is not None else None

    # -- writing ------------------------------------------------------------------------------

    def append(self, event: Event) -> bool:
        """Queue `event` for writing; never blocks on I/O. False when it had to be dropped."""
        with self._cond:
            if self._closed or self._stopping:
                self._dropped_total += 1
                return False
            if len(self._pending) >= self.queue_size:
                self._dropped_unrecorded += 1
                self._dropped_total += 1
                return False
            self._pending.append(event)
            self._appended += 1
            self._cond.notify()
            return True

    def record(self, kind: str, message: str = "", **fields: Any) -> bool:
        """Append an event of `kind` stamped now (fields as in `Event`)."""
        return self.append(Event(kind=str(kind), time=self.clock(), message=message, **fields))

    def record_denial(
        self,
        *,
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
    ) -> bool:
        """The gate's call for a refused request (see `agent.events.model.denial`)."""
        return self.append(
            denial(
                time=self.clock(),
                method=method,
                path=path,
                rule=rule,
                status=status,
                message=message,
                peer=peer,
                settings_sha256=settings_sha256,
                image=image,
                digest=digest,
                container_id=container_id,
                container_name=container_name,
                commands=commands,
                extra=extra,
                decision=decision,
            )
        )

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event appended so far is committed (or given up on); blocking."""
        with self._cond:
            target = self._appended
            return self._cond.wait_for(
                lambda: self._settled >= target or not self._thread.is_alive(), timeout
            )

    def prune_soon(self) -> None:
        """Ask the writer to apply the retention now (it also does so every prune_interval)."""
        with self._cond:
            self._prune_requested = True
            self._cond.notify()

    def prune(self, timeout: float | None = 10.0) -> bool:
        """Apply the retention now and wait until the writer did (blocking)."""
        with self._cond:
            target = self._prunes + 1
            self._prune_requested = True
            self._cond.notify()
            return self._cond.wait_for(
                lambda: self._prunes >= target or not self._thread.is_alive(), timeout
            )

    @property
    def dropped(self) -> int:
        """Events dropped since this store was opened (queue full, write errors, closed)."""
        with self._cond:
            return self._dropped_total

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def last_id(self) -> int | None:
        """The newest committed event's id (None: the store is empty)."""
        with self._cond:
            return self._last_id

    def _run(self) -> None:
        next_prune = time.monotonic()  # once at start
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        bool(self._pending)
                        or self._dropped_unrecorded > 0
                        or self._stopping
                        or self._prune_requested
                    ),
                    timeout=max(0.0, next_prune - time.monotonic()),
                )
                batch = [
                    self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))
                ]
                dropped, self._dropped_unrecorded = self._dropped_unrecorded, 0
                prune = self._prune_requested or time.monotonic() >= next_prune
                self._prune_requested = False
                stop = self._stopping and not self._pending
            if batch or dropped:
                self._write(batch, dropped)
            if prune:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval
                with self._cond:
                    self._prunes += 1
                    self._cond.notify_all()
            if stop:
                return

    def _write(self, batch: list[Event], dropped: int) -> None:
        conn = self._writer_conn
        rows = [_row(e) for e in batch]
        if dropped:
            rows.append(
                _row(
                    Event(
                        kind=Kind.EVENTS_DROPPED.value,
                        time=self.clock(),
                        message=f"{dropped} event(s) could not be recorded (queue full or the "
                        "event store could not be written)",
                        extra={"count": dropped},
                    )
                )
            )
        last_id: int | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
            last_id = self._max_id(conn)
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            with self._cond:
                self._write_errors += 1
                self._dropped_unrecorded += len(batch) + dropped
                self._dropped_total += len(batch)
            log.error("event store %s: cannot write %d event(s): %s", self.path, len(rows), err)
            time.sleep(0.5)  # a failing disk: do not spin
        with self._cond:
            if last_id is not None:
                self._last_id = last_id
            self._settled += len(batch)
            self._cond.notify_all()
        if last_id is not None:
            self._wake_followers()

    def _prune(self) -> None:
        conn = self._writer_conn
        removed = 0
        try:
            if self.retention.max_age_days is not None:
                cutoff = self.clock() - self.retention.max_age_days * 86400.0
                removed += self._delete_chunked(
                    "SELECT id FROM events WHERE time < ? ORDER BY id LIMIT ?", (cutoff,)
                )
            if self.retention.max_rows is not None:
                row = conn.execute(
                    "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?",
                    (self.retention.max_rows,),
                ).fetchone()
                if row is not None:
                    removed += self._delete_chunked(
                        "SELECT id FROM events WHERE id <= ? ORDER BY id LIMIT ?", (row[0],)
                    )
            if removed:
                conn.execute("PRAGMA incremental_vacuum")
                log.info("event store: retention removed %d event(s)", removed)
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("event store %s: retention failed: %s", self.path, err)

    def _delete_chunked(self, select: str, args: tuple[Any, ...]) -> int:
        conn = self._writer_conn
        removed = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(f"DELETE FROM events WHERE id IN ({select})", (*args, _PRUNE_CHUNK))
            conn.execute("COMMIT")
            removed += max(cur.rowcount, 0)
            if cur.rowcount < _PRUNE_CHUNK:
                return removed
            with self._cond:
                if self._pending:
                    # Let the waiting events in between chunks; the rest is pruned next round.
                    self._prune_requested = True
                    return removed

    # -- reading ------------------------------------------------------------------------------

    def query(
        self,
        after_id: int | None = None,
        limit: int = 100,
        kinds: Iterable[str] | None = None,
        since: float | None = None,
        newest: bool = False,
    ) -> list[Event]:
        """Committed events with id > `after_id`, oldest first, at most `limit` (<= 1000).

        Page on with `after_id=` the last id returned; `newest=True` gives the last `limit`
        matching events instead of the first (still oldest first). Blocking (a short indexed
        read): from asyncio, call it in a thread (`asyncio.to_thread`).
        """
        clauses: list[str] = []
        args: list[Any] = []
        if after_id is not None:
            clauses.append("id > ?")
            args.append(int(after_id))
        kind_list = sorted({str(k) for k in kinds}) if kinds is not None else None
        if kind_list is not None:
            if not kind_list:
                return []
            clauses.append(f"kind IN ({', '.join('?' for _ in kind_list)})")
            args.extend(kind_list)
        if since is not None:
            clauses.append("time >= ?")
            args.append(float(since))
        limit = max(0, min(int(limit), MAX_QUERY_LIMIT))
        sql = _SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += " ORDER BY id DESC LIMIT ?" if newest else " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._reader_lock:
            if self._closed:
                raise EventStoreError("the event store is closed")
            rows = self._reader_conn.execute(sql, args).fetchall()
        if newest:
            rows.reverse()
        return [_event(r) for r in rows]

    def iter_all(
        self,
        after_id: int | None = None,
        kinds: Iterable[str] | None = None,
        since: float | None = None,
    ) -> Iterable[Event]:
        """Every matching committed event, page by page (blocking)."""
        kind_list = list(kinds) if kinds is not None else None
        cursor = after_id
        while True:
            page = self.query(cursor, MAX_QUERY_LIMIT, kind_list, since)
            yield from page
            if len(page) < MAX_QUERY_LIMIT:
                return
            cursor = page[-1].id

    def export_jsonl(
        self,
        out: TextIO,
        after_id: int | None = None,
        kinds: Iterable[str] | None = None,
        since: float | None = None,
    ) -> int:
        """Write matching events as JSON lines to `out`; returns how many."""
        count = 0
        for event in self.iter_all(after_id, kinds, since):
            out.write(event.to_json() + "\n")
            count += 1
        return count

    async def follow(
        self, after_id: int | None = None, kinds: Iterable[str] | None = None
    ) -> AsyncIterator[Event]:
        """Committed events after `after_id` (default: from now on), as they are committed.

        Ends when the store is closed. Reads run in a worker thread, never on the loop.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        entry = (loop, wake)
        kind_list = list(kinds) if kinds is not None else None
        with self._followers_lock:
            self._followers.add(entry)
        try:
            cursor = after_id if after_id is not None else (self.last_id or 0)
            while True:
                wake.clear()
                if self._closed:
                    return
                try:
                    page = await asyncio.to_thread(self.query, cursor, MAX_QUERY_LIMIT, kind_list)
                except EventStoreError:
                    return  # closed meanwhile
                for event in page:
                    assert event.id is not None
                    cursor = event.id
                    yield event
                if len(page) == MAX_QUERY_LIMIT:
                    continue
                await wake.wait()
        finally:
            with self._followers_lock:
                self._followers.discard(entry)

    def _wake_followers(self) -> None:
        with self._followers_lock:
            followers = list(self._followers)
        for loop, wake in followers:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(wake.set)

    # -- closing ------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer, close the database (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("event store: the writer did not finish in %.0fs", timeout)
        with self._cond:
            self._closed = True
            lost = len(self._pending)
            self._pending.clear()
            self._dropped_total += lost
        self._wake_followers()
        with self._reader_lock:
            self._reader_conn.close()
        if not self._thread.is_alive():
            self._writer_conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
