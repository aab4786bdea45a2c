"""DigestService: memory first, lookups when missing or old, offline fallback, refresh, re-pull."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.policy.imageref import parse_image_pattern
from agent.policy.images import RegistryAnswer, RegistryQuery
from agent.registry.cache import CacheEntry, load_cache, save_cache
from agent.registry.client import RegistryAuthError, RegistryError, RegistryUnreachable
from agent.registry.digests import DigestService
from agent.registry.refresh import Schedule
from agent.settings.model import (
    AdminSettings,
    Effective,
    EnhancedContainerIsolation,
    ImageList,
    SocketMountPolicy,
)

D_OLD = "sha256:" + "0" * 64
D_NEW = "sha256:" + "1" * 64
REG = "127.0.0.1:5000"
Q = RegistryQuery(REG, "fixtures/x", "1")
S = Schedule(interval=900.0, jitter=0.0, backoff_base=5.0, backoff_max=60.0, negative_ttl=60.0)


class FakeClient:
    def __init__(self) -> None:
        self.digests: dict[tuple[str, str, str], str | None] = {}
        self.error: RegistryError | None = None
        self.calls: list[tuple[str, str, str]] = []
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def manifest_digest(self, domain: str, path: str, reference: str) -> str | None:
        with self.lock:
            self.calls.append((domain, path, reference))
        if self.gate is not None:
            self.gate.wait(5)
        if self.error is not None:
            raise self.error
        return self.digests.get((domain, path, reference))


class FakeEngine:
    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.listed = images
        self.calls = 0

    async def images(self) -> list[dict[str, Any]]:
        self.calls += 1
        return self.listed


def effective(*entries: str, on: bool = True) -> Effective:
    images = ImageList(tuple(parse_image_pattern(e) for e in entries))
    eci = EnhancedContainerIsolation(value=on, locked=True, socket_mount=SocketMountPolicy(images))
    return Effective(AdminSettings(eci=eci))


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service(client: FakeClient, clock: Clock, **kw: Any) -> DigestService:
    return DigestService(client, schedule=S, clock=clock, rand=lambda: 0.5, **kw)  # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_fresh_answers_come_from_memory() -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    svc = service(client, clock)

    async def go() -> None:
        assert await svc.answers([Q]) == {Q: RegistryAnswer(digest=D_NEW)}
        clock.now += 800
        assert await svc.answers([Q, Q]) == {Q: RegistryAnswer(digest=D_NEW)}
        assert len(client.calls) == 1
        assert svc.cache_age(Q) == 800
        clock.now += S.fresh_for  # too old: asked again
        await svc.answers([Q])
        assert len(client.calls) == 2

    run(go())


def test_no_such_tag_is_believed_briefly() -> None:
    client, clock = FakeClient(), Clock()
    svc = service(client, clock)

    async def go() -> None:
        assert await svc.answers([Q]) == {Q: RegistryAnswer(digest=None)}
        clock.now += 30
        await svc.answers([Q])
        assert len(client.calls) == 1
        clock.now += 31
        await svc.answers([Q])
        assert len(client.calls) == 2

    run(go())


def test_concurrent_askers_share_one_lookup() -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    client.gate = threading.Event()
    svc = service(client, clock)

    async def go() -> None:
        tasks = [asyncio.create_task(svc.answers([Q])) for _ in range(5)]
        await asyncio.sleep(0.1)
        client.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(*tasks)
        assert all(r == {Q: RegistryAnswer(digest=D_NEW)} for r in results)
        assert len(client.calls) == 1

    run(go())


def test_offline_uses_the_cached_digest_whatever_its_age() -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    svc = service(client, clock)

    async def go() -> None:
        await svc.answers([Q])
        clock.now += 10 * 24 * 3600
        client.error = RegistryUnreachable(f"the registry {REG} could not be reached: refused")
        assert await svc.answers([Q]) == {Q: RegistryAnswer(digest=D_NEW)}
        assert svc.cache_age(Q) == 10 * 24 * 3600
        # the registry is now backing off: served from the cache without asking again
        calls = len(client.calls)
        assert await svc.answers([Q]) == {Q: RegistryAnswer(digest=D_NEW)}
        assert len(client.calls) == calls
        status = svc.status()
        assert status["failing_registries"][REG]["failures"] == 1
        assert status["entries"][0]["fresh"] is False

    run(go())


def test_no_digest_known_is_an_error_that_says_why() -> None:
    client, clock = FakeClient(), Clock()
    client.error = RegistryUnreachable(f"the registry {REG} could not be reached: refused")
    svc = service(client, clock)
    answer = run(svc.answers([Q]))[Q]
    assert answer.digest is None and answer.error is not None
    assert "could not be reached" in answer.error and "no digest" in answer.error


def test_cache_persists_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "registry-digests.json"
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW

    async def first() -> None:
        svc = service(client, clock, cache_path=path)
        await svc.start()
        await svc.answers([Q])
        await svc.stop()

    run(first())
    assert load_cache(path).entries == {Q: CacheEntry(D_NEW, clock.now, REG)}

    client.error = RegistryUnreachable("down")

    async def second() -> None:
        svc = service(client, clock, cache_path=path)
        await svc.start()
        assert await svc.answers([Q]) == {Q: RegistryAnswer(digest=D_NEW)}
        await svc.stop()

    run(second())


def test_corrupt_cache_is_moved_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry-digests.json"
    path.write_text("garbage")
    client, clock = FakeClient(), Clock()
    client.error = RegistryUnreachable("down")

    async def go() -> None:
        svc = service(client, clock, cache_path=path)
        await svc.start()
        answer = (await svc.answers([Q]))[Q]
        assert answer.error is not None
        await svc.stop()

    caplog.set_level(logging.INFO)
    run(go())
    (aside,) = tmp_path.glob("registry-digests.json.corrupt-*")
    assert aside.read_text() == "garbage"
    assert "moved it aside" in caplog.text


def test_refresh_looks_up_allowed_tags_and_backs_off_per_registry() -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    client.digests[("other:5000", "a", "2")] = D_OLD
    current = effective(f"{REG}/fixtures/x:1", "other:5000/a:2", f"{REG}/fixtures/y:*")
    svc = service(client, clock, current=lambda: current)

    async def go() -> None:
        assert await svc.refresh_due() == 2
        assert await svc.refresh_due() == 0  # not due yet
        clock.now += 901
        client.error = RegistryUnreachable("down")
        assert await svc.refresh_due() == 0
        calls = len(client.calls)
        assert calls == 4  # one per registry, then each backs off
        clock.now += 1
        await svc.refresh_due()
        assert len(client.calls) == calls  # backing off (5 s * jitter 0.5..1)
        clock.now += 10
        client.error = None
        assert await svc.refresh_due() == 2

    run(go())


def test_refresh_does_nothing_while_eci_is_off() -> None:
    client, clock = FakeClient(), Clock()
    current = effective(f"{REG}/fixtures/x:1", on=False)
    svc = service(client, clock, current=lambda: current)
    assert run(svc.refresh_due()) == 0 and client.calls == []


def test_stale_local_copies_are_flagged_once(caplog: pytest.LogCaptureFixture) -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    engine = FakeEngine(
        [{"Id": "sha256:old", "RepoTags": [f"{REG}/fixtures/x:1"],
          "RepoDigests": [f"{REG}/fixtures/x@{D_OLD}"]}]
    )  # fmt: skip
    current = effective(f"{REG}/fixtures/x:1")
    svc = service(client, clock, current=lambda: current, engine=engine)
    caplog.set_level(logging.INFO, logger="eci_agent.events")

    async def go() -> None:
        await svc.refresh_due()
        (item,) = await svc.check_local_images()
        assert item.reference == f"{REG}/fixtures/x:1" and item.registry_digest == D_NEW
        await svc.check_local_images()
        assert svc.needs_repull() == [item]
        events = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "eci_agent.events"
        ]
        assert len(events) == 1
        assert events[0]["event"] == "needs-repull"
        assert events[0]["fix"] == f"eci-agent repull {REG}/fixtures/x:1"
        engine.listed[0]["RepoDigests"].append(f"{REG}/fixtures/x@{D_NEW}")
        assert await svc.check_local_images() == []

    run(go())


def test_the_background_task_refreshes_then_checks_at_start(tmp_path: Path) -> None:
    client, clock = FakeClient(), Clock()
    client.digests[(REG, "fixtures/x", "1")] = D_NEW
    path = tmp_path / "c.json"
    save_cache(path, {Q: CacheEntry(D_OLD, clock.now - 5, REG)})
    engine = FakeEngine(
        [{"Id": "sha256:old", "RepoTags": [f"{REG}/fixtures/x:1"],
          "RepoDigests": [f"{REG}/fixtures/x@{D_OLD}"]}]
    )  # fmt: skip
    current = effective(f"{REG}/fixtures/x:1")
    svc = service(client, clock, current=lambda: current, engine=engine, cache_path=path)

    async def go() -> None:
        await svc.start()
        for _ in range(100):
            if svc.needs_repull():
                break
            await asyncio.sleep(0.02)
        await svc.stop()

    run(go())
    assert client.calls == [(REG, "fixtures/x", "1")]  # refreshed at start, although cached
    assert [i.image_id for i in svc.needs_repull()] == ["sha256:old"]
    assert load_cache(path).entries[Q].digest == D_NEW


def test_auth_errors_are_reported_not_guessed() -> None:
    client, clock = FakeClient(), Clock()
    client.error = RegistryAuthError(f"the registry {REG} refused to let us read x anonymously")
    answer = run(service(client, clock).answers([Q]))[Q]
    assert answer.error is not None and "refused" in answer.error
