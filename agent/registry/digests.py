"""The digests of allowed images over time: the gate's source of registry answers.

`DigestService.answers` is what the gate asks on the hot path of a socket-mounting create. It
answers from memory while an answer is fresh; otherwise it asks the registry (in a worker
thread; concurrent askers of the same question share one lookup). When the registry cannot be
asked, a digest learned earlier (memory or the on-disk cache) is used, however old, and its
age is available (`cache_age`); with none known at all the answer is an error that says the
registry could not be reached, which the policy reads as "not verified" (never as a yes).

A background task (`start`/`stop`) keeps every allowed `name:tag` of the image list in force
fresh on a schedule (`refresh.Schedule`: interval with jitter, exponential back-off per failing
registry), writes the cache atomically after changes, and after every refresh round (and at
start) compares the allowed images present in the engine with the registry's digests: a local
copy whose tag has moved on is a "needs re-pull" item (`needs_repull`), logged once as a
structured event with the command that fixes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from agent.policy.images import RegistryAnswer, RegistryQuery
from agent.registry.cache import CacheEntry, load_cache, save_cache
from agent.registry.client import RegistryClient, RegistryError, registry_host
from agent.registry.refresh import (
    Schedule,
    backoff_delay,
    is_fresh,
    next_refresh,
    tag_queries,
)
from agent.registry.repull import RepullItem, find_stale
from agent.settings.model import Effective

log = logging.getLogger("eci_agent.registry")
events_log = logging.getLogger("eci_agent.events")

#: How often the refresh task looks at the settings in force (a new image list is refreshed
#: at once, not after the interval).
TICK = 2.0
MAX_ENTRIES = 10_000


class ImageLister(Protocol):
    async def images(self) -> list[dict[str, Any]]: ...


class DigestService:
    """See the module doc. One per agent; all methods run on the agent's event loop."""

    def __init__(
        self,
        client: RegistryClient | None = None,
        *,
        cache_path: Path | None = None,
        current: Callable[[], Effective] | None = None,
        engine: ImageLister | None = None,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        close_engine: bool = False,
    ) -> None:
        self.client = client if client is not None else RegistryClient()
        self.cache_path = cache_path
        self.current = current
        self.engine = engine
        self._close_engine = close_engine
        self.schedule = schedule if schedule is not None else Schedule()
        self._clock = clock
        self._rand = rand
        self._entries: dict[RegistryQuery, CacheEntry] = {}
        self._next: dict[RegistryQuery, float] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._inflight: dict[RegistryQuery, asyncio.Future[CacheEntry]] = {}
        self._repull: dict[tuple[str, str], RepullItem] = {}
        #: Called once for each newly found stale copy (the agent stores it as an event).
        self.on_stale: Callable[[RepullItem], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._dirty = False
        self._saver: asyncio.Task[None] | None = None
        self.rounds = 0  # refresh rounds that asked at least one registry

    @classmethod
    def memory_only(cls) -> DigestService:
        """No disk cache, no background refresh until started: on-demand lookups only."""
        return cls()

    def __repr__(self) -> str:
        return f"DigestService(cache_path={self.cache_path!r}, entries={len(self._entries)})"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the cache and start the refresh task (which refreshes and checks at once)."""
        if self.cache_path is not None:
            loaded = await asyncio.to_thread(load_cache, self.cache_path)
            if loaded.moved_aside is not None:
                log.error(
                    "registry digest cache %s could not be read (%s); moved it aside to %s "
                    "and starting with an empty cache",
                    self.cache_path,
                    loaded.problem,
                    loaded.moved_aside,
                )
            self._entries.update(loaded.entries)
            if loaded.entries:
                log.info("registry digest cache: %d entries loaded", len(loaded.entries))
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="eci-digest-refresh")

    async def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._saver is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
        if self._dirty:
            await self._save()
        close = getattr(self.engine, "close", None)
        if self._close_engine and close is not None:
            await close()

    def poke(self) -> None:
        """Wake the refresh task now (e.g. after a settings change)."""
        if self._wake is not None:
            self._wake.set()

    # -- the gate's question ----------------------------------------------------------------------

    async def answers(
        self, queries: Iterable[RegistryQuery]
    ) -> dict[RegistryQuery, RegistryAnswer]:
        ordered = tuple(dict.fromkeys(queries))
        now = self._clock()
        out: dict[RegistryQuery, RegistryAnswer] = {}
        missing: list[RegistryQuery] = []
        for query in ordered:
            entry = self._entries.get(query)
            if entry is not None and is_fresh(
                entry.fetched_at, entry.digest is not None, now, self.schedule
            ):
                out[query] = RegistryAnswer(digest=entry.digest)
            elif (
                entry is not None
                and entry.digest is not None
                and self._retry_at.get(query.domain, 0.0) > now
            ):
                # The registry failed moments ago: do not make this request wait for it again.
                out[query] = RegistryAnswer(digest=entry.digest)
            else:
                missing.append(query)
        if missing:
            results = await asyncio.gather(
                *(self._lookup(q) for q in missing), return_exceptions=True
            )
            for query, result in zip(missing, results, strict=True):
                if isinstance(result, CacheEntry):
                    out[query] = RegistryAnswer(digest=result.digest)
                elif isinstance(result, RegistryError):
                    out[query] = self._offline_answer(query, result)
                elif isinstance(result, asyncio.CancelledError):  # a shared lookup was stopped
                    out[query] = self._offline_answer(query, RegistryError("lookup cancelled"))
                elif isinstance(result, BaseException):
                    raise result
        return {q: out[q] for q in ordered}

    def _offline_answer(self, query: RegistryQuery, err: RegistryError) -> RegistryAnswer:
        cached = self._entries.get(query)
        if cached is not None and cached.digest is not None:
            log.warning(
                "registry: %s; using the digest of %s learned %.0f s ago",
                err,
                query,
                cached.age(self._clock()),
            )
            return RegistryAnswer(digest=cached.digest)
        return RegistryAnswer(error=f"{err}; no digest of it is known from an earlier lookup")

    def cache_age(self, query: RegistryQuery) -> float | None:
        """Seconds since the registry gave the answer we hold for `query` (None: none held)."""
        entry = self._entries.get(query)
        return entry.age(self._clock()) if entry is not None else None

    def needs_repull(self) -> list[RepullItem]:
        """Local copies of allowed images that no longer match the registry (see module doc)."""
        return sorted(self._repull.values(), key=lambda i: (i.reference, i.image_id))

    def status(self) -> dict[str, Any]:
        """For a status API: per answer its age and source; per failing registry why."""
        now = self._clock()
        return {
            "entries": [
                {
                    "query": str(q),
                    "digest": e.digest,
                    "age": e.age(now),
                    "registry": e.registry,
                    "fresh": is_fresh(e.fetched_at, e.digest is not None, now, self.schedule),
                }
                for q, e in sorted(self._entries.items(), key=lambda kv: str(kv[0]))
            ],
            "failing_registries": {
                d: {
                    "failures": n,
                    "retry_in": max(0.0, self._retry_at.get(d, now) - now),
                    "error": self._last_error.get(d, ""),
                }
                for d, n in self._failures.items()
                if n
            },
            "needs_repull": [i.as_event() for i in self.needs_repull()],
        }

    # -- lookups ----------------------------------------------------------------------------------

    async def _lookup(self, query: RegistryQuery) -> CacheEntry:
        pending = self._inflight.get(query)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CacheEntry] = asyncio.get_running_loop().create_future()
        self._inflight[query] = future
        try:
            digest = await asyncio.to_thread(
                self.client.manifest_digest, query.domain, query.path, query.reference
            )
        except RegistryError as err:
            self._registry_failed(query.domain, err)
            future.set_exception(err)
            future.exception()  # retrieved: sharers re-raise it themselves
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._inflight.pop(query, None)
        entry = CacheEntry(digest, self._clock(), registry_host(query.domain))
        self._registry_ok(query.domain)
        self._store(query, entry)
        future.set_result(entry)
        return entry

    def _registry_ok(self, domain: str) -> None:
        if self._failures.pop(domain, 0):
            log.info("registry %s answers again", domain)
        self._retry_at.pop(domain, None)
        self._last_error.pop(domain, None)

    def _registry_failed(self, domain: str, err: RegistryError) -> None:
        failures = self._failures.get(domain, 0) + 1
        self._failures[domain] = failures
        delay = backoff_delay(failures, self.schedule, self._rand())
        self._retry_at[domain] = self._clock() + delay
        self._last_error[domain] = str(err)
        log.warning(
            "registry %s: %s (failure %d; next try in %.0f s)", domain, err, failures, delay
        )

    def _store(self, query: RegistryQuery, entry: CacheEntry) -> None:
        self._entries[query] = entry
        if len(self._entries) > MAX_ENTRIES:
            oldest = sorted(self._entries.items(), key=lambda kv: kv[1].fetched_at)
            for q, _ in oldest[: len(self._entries) - MAX_ENTRIES]:
                del self._entries[q]
        self._schedule_save()

    # -- persistence ------------------------------------------------------------------------------

    def _schedule_save(self) -> None:
        if self.cache_path is None:
            return
        self._dirty = True
        if self._saver is None or self._saver.done():
            self._saver = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        while self._dirty and self.cache_path is not None:
            self._dirty = False
            snapshot = dict(self._entries)
            try:
                await asyncio.to_thread(save_cache, self.cache_path, snapshot)
            except OSError as err:
                log.error("cannot write the registry digest cache %s: %s", self.cache_path, err)
                return

    # -- the refresh task -------------------------------------------------------------------------

    def _allowed_tags(self) -> tuple[RegistryQuery, ...]:
        if self.current is None:
            return ()
        effective = self.current()
        if not effective.eci_enabled:
            return ()
        return tag_queries(effective.settings.eci.socket_mount.image_list)

    async def refresh_due(self) -> int:
        """Look up every allowed tag whose time has come; returns how many were answered."""
        now = self._clock()
        by_registry: dict[str, list[RegistryQuery]] = {}
        for query in self._allowed_tags():
            if self._next.get(query, 0.0) <= now and self._retry_at.get(query.domain, 0.0) <= now:
                by_registry.setdefault(query.domain, []).append(query)
        if not by_registry:
            return 0
        counts = await asyncio.gather(*(self._refresh_registry(qs) for qs in by_registry.values()))
        self.rounds += 1
        return sum(counts)

    async def _refresh_registry(self, queries: list[RegistryQuery]) -> int:
        answered = 0
        for query in queries:
            try:
                entry = await self._lookup(query)
            except RegistryError:
                return answered  # this registry is failing: back off (set by _lookup)
            answered += 1
            self._next[query] = next_refresh(entry.fetched_at, self.schedule, self._rand())
        return answered

    async def check_local_images(self) -> list[RepullItem]:
        """Compare the allowed images the engine holds with the registry's digests."""
        if self.engine is None:
            return []
        known: dict[RegistryQuery, tuple[str, float]] = {}
        for query in self._allowed_tags():
            entry = self._entries.get(query)
            if entry is not None and entry.digest is not None:
                known[query] = (entry.digest, entry.fetched_at)
        if not known:
            self._repull = {}
            return []
        try:
            summaries = await self.engine.images()
        except Exception as err:  # noqa: BLE001 - the engine may be down; try again next round
            log.warning("cannot list the engine's images to find stale copies: %s", err)
            return self.needs_repull()
        found = {(i.reference, i.image_id): i for i in find_stale(known, summaries)}
        for key in sorted(found.keys() - self._repull.keys()):
            item = found[key]
            events_log.warning(
                "%s",
                json.dumps({"event": "needs-repull", "time": self._clock(), **item.as_event()}),
            )
            if self.on_stale is not None:
                self.on_stale(item)
        for key in sorted(self._repull.keys() - found.keys()):
            log.info("%s (%s) no longer needs a re-pull", key[0], key[1])
        self._repull = found
        return self.needs_repull()

    def _sleep_time(self) -> float:
        now = self._clock()
        soonest = now + TICK
        for query in self._allowed_tags():
            due = max(self._next.get(query, now), self._retry_at.get(query.domain, now))
            soonest = min(soonest, due)
        return min(max(soonest - now, 0.05), TICK)

    async def _run(self) -> None:
        first = True
        while not self._stopping:
            try:
                answered = await self.refresh_due()
                if answered or first:
                    await self.check_local_images()
                first = False
            except Exception:  # noqa: BLE001 - the task must survive anything
                log.exception("registry digest refresh failed")
            assert self._wake is not None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_time())
