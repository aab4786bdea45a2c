"""The SQLite event store: paging, retention, overflow, live follow, and kill -9 durability."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events.model import Event
from agent.events.store import SCHEMA_VERSION, EventStore, EventStoreError, Retention

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "events.db")
    yield s
    s.close()


def fill(store: EventStore, n: int, kind: str = "denied", **fields: object) -> None:
    for i in range(n):
        assert store.record(kind, f"{kind} {i}", **fields)
    assert store.flush()


def test_schema_wal_and_full_sync(store: EventStore, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "events.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: the writer's is the one that matters.
    assert store._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (tmp_path / "events.db").stat().st_mode & 0o777 == 0o600


def test_append_query_and_page_by_id(store: EventStore) -> None:
    fill(store, 5, "denied", uid=1000, rule="r")
    fill(store, 3, "policy-reloaded")
    first = store.query(limit=3)
    assert [e.id for e in first] == [1, 2, 3]
    assert first[0].message == "denied 0" and first[0].uid == 1000 and first[0].rule == "r"
    assert [e.id for e in store.query(after_id=3, limit=100)] == [4, 5, 6, 7, 8]
    assert [e.id for e in store.query(kinds=["policy-reloaded"])] == [6, 7, 8]
    assert store.query(kinds=[]) == []
    assert [e.id for e in store.query(limit=2, newest=True)] == [7, 8]
    assert len(store.query(limit=10**9)) == 8  # capped, not refused
    assert store.last_id == 8


def test_since_filters_by_time(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    with EventStore(tmp_path / "e.db", clock=clock) as s:
        s.record("a")
        clock.now = 2000.0
        s.record("b")
        assert s.flush()
        assert [e.kind for e in s.query(since=1500.0)] == ["b"]


def test_ids_are_never_reused_after_retention_emptied_the_store(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "e.db"
    with EventStore(path, clock=clock, retention=Retention(max_age_days=1, max_rows=None)) as s:
        fill(s, 3)
        clock.now += 2 * 86400
        assert s.prune()
        assert s.query() == []
    with EventStore(path, clock=clock) as s:
        fill(s, 1)
        assert [e.id for e in s.query()] == [4]


def test_retention_by_rows_keeps_the_newest(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", retention=Retention(max_age_days=None, max_rows=4)) as s:
        fill(s, 10)
        assert s.prune()
        assert [e.id for e in s.query()] == [7, 8, 9, 10]


def test_retention_runs_in_the_background(tmp_path: Path) -> None:
    clock = Clock()
    retention = Retention(max_age_days=1, max_rows=None)
    with EventStore(tmp_path / "e.db", clock=clock, retention=retention, prune_interval=0.05) as s:
        fill(s, 2)
        clock.now += 86400 * 3
        deadline = time.monotonic() + 5
        while s.query() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.query() == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(EventStoreError, match="newer"):
        EventStore(path)


def test_a_slow_disk_never_blocks_append_and_drops_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventStore(path, queue_size=50) as s:
        fill(s, 1)
        blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
        blocker.execute(
            "BEGIN EXCLUSIVE"
        )  # the writer now waits (busy_timeout), as on a stuck disk
        try:
            accepted = sum(s.record("denied", str(i)) for i in range(500))
            # Still inside the lock: a blocking append could not have returned with drops.
            dropped_while_locked = s.dropped
        finally:
            time.sleep(0.2)
            blocker.execute("ROLLBACK")
            blocker.close()
        # The queue holds 50; the writer may have taken one batch before it got stuck.
        assert accepted < 500 and dropped_while_locked == 500 - accepted > 0
        assert s.dropped == 500 - accepted
        assert s.flush()
        deadline = time.monotonic() + 5
        while not s.query(kinds=["events-dropped"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        dropped = s.query(kinds=["events-dropped"])
        assert sum(e.extra["count"] for e in dropped) == 500 - accepted
        assert len(s.query(kinds=["denied"], limit=1000)) == 1 + accepted


def test_follow_streams_new_events_and_ends_on_close(tmp_path: Path) -> None:
    s = EventStore(tmp_path / "e.db")
    fill(s, 2, "old")

    async def main() -> list[Event]:
        seen: list[Event] = []

        async def consume() -> None:
            async for event in s.follow(kinds=["new"]):
                seen.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        s.record("other")
        for i in range(3):
            s.record("new", str(i))
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(s.close)
        await asyncio.wait_for(task, 5)  # ends by itself once the store is closed
        return seen

    seen = asyncio.run(main())
    assert [e.message for e in seen] == ["0", "1", "2"]
    assert [e.id for e in seen] == [4, 5, 6]


def test_follow_from_an_id_replays_the_backlog_first(store: EventStore) -> None:
    fill(store, 3)

    async def main() -> list[int | None]:
        out: list[int | None] = []
        async for event in store.follow(after_id=1):
            out.append(event.id)
            if len(out) == 2:
                break
        return out

    assert asyncio.run(main()) == [2, 3]


def test_export_jsonl(store: EventStore) -> None:
    fill(store, 3, uid=0)
    out = io.StringIO()
    assert store.export_jsonl(out, after_id=1) == 2
    lines = out.getvalue().splitlines()
    assert [Event.from_json(line).id for line in lines] == [2, 3]


def test_concurrent_appends_from_threads_all_land(store: EventStore) -> None:
    def worker(n: int) -> None:
        for i in range(200):
            store.record("t", f"{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.flush()
    assert len(list(store.iter_all())) == 800
    assert store.dropped == 0


CHILD = textwrap.dedent(
    """
    import sys
    from agent.events.store import EventStore
    store = EventStore(sys.argv[1])
    n = 0
    while True:
        for _ in range(37):
            n += 1
            store.record("denied", f"event {n}", uid=n)
        store.flush()
        print(n, flush=True)  # everything up to n is committed
    """
)


def test_committed_events_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    committed = 0
    for line in child.stdout:
        committed = int(line)
        if committed >= 37 * 40:
            break
    # More appends are in flight (queued, maybe mid-commit) when the process dies.
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert committed >= 37 * 40

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with EventStore(path) as s:
        events = list(s.iter_all())
    assert len(events) >= committed
    assert [e.uid for e in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert [e.id for e in events] == list(range(1, len(events) + 1))
