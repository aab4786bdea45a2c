"""The control API's routes and access rules, without sockets (a stand-in provider)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.api import (
    AccessPolicy,
    ActionRefused,
    Caller,
    ControlApp,
    NotAvailable,
    Reply,
    Request,
    Stream,
)
from agent.events.store import EventStore

ROOT = Caller(pid=1, uid=0, gid=0)
ADMIN_GROUP = 990
MEMBER = Caller(pid=2, uid=1000, gid=1000, groups=(1000, ADMIN_GROUP))
PRIMARY_MEMBER = Caller(pid=3, uid=1001, gid=ADMIN_GROUP)
STRANGER = Caller(pid=4, uid=65534, gid=65534, groups=(65534,))


class Provider:
    def __init__(self, store: EventStore | None) -> None:
        self._events = store
        self.locked: str | None = None
        self.calls: list[tuple[str, Any, Caller]] = []
        self.refuse: str | None = None

    @property
    def events(self) -> EventStore | None:
        return self._events

    async def status(self) -> dict[str, Any]:
        return {"enforcing": True, "locked": self.locked is not None}

    async def features(self) -> dict[str, Any]:
        return {"features": []}

    def lock_reason(self) -> str | None:
        return self.locked

    async def set_eci(self, enabled: bool | None, caller: Caller) -> dict[str, Any]:
        if self.refuse:
            raise ActionRefused(self.refuse)
        self.calls.append(("eci", enabled, caller))
        return {"enforcing": bool(enabled)}

    async def repull(self, image: str, caller: Caller) -> dict[str, Any]:
        if image == "later":
            raise NotAvailable("not yet")
        self.calls.append(("repull", image, caller))
        return {"image": image}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "e.db")
    yield s
    s.close()


@pytest.fixture
def provider(store: EventStore) -> Provider:
    return Provider(store)


@pytest.fixture
def app(provider: Provider) -> ControlApp:
    return ControlApp(provider, AccessPolicy(owner_uid=0, group=ADMIN_GROUP))


def call(app: ControlApp, method: str, target: str, body: Any = None, who: Caller = ROOT) -> Reply:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    answer = asyncio.run(app.handle(Request(method, target, raw), who))
    assert isinstance(answer, Reply)
    return answer


@pytest.mark.parametrize("who", [ROOT, MEMBER, PRIMARY_MEMBER])
def test_root_and_control_group_members_may_read(app: ControlApp, who: Caller) -> None:
    reply = call(app, "GET", "/v1/status", who=who)
    assert reply.status == 200 and reply.doc["enforcing"] is True


@pytest.mark.parametrize("target", ["/v1/status", "/v1/events", "/v1/features", "/nope"])
def test_others_are_refused_everything(app: ControlApp, target: str) -> None:
    reply = call(app, "GET", target, who=STRANGER)
    assert reply.status == 403
    assert "uid 65534 may not use the eci-agent control API" in reply.doc["message"]


def test_without_a_group_only_root_and_the_owner(provider: Provider) -> None:
    app = ControlApp(provider, AccessPolicy(owner_uid=1234, group=None))
    assert call(app, "GET", "/v1/status", who=MEMBER).status == 403
    assert call(app, "GET", "/v1/status", who=Caller(uid=1234)).status == 200
    assert call(app, "GET", "/v1/status", who=Caller()).status == 403  # no credentials


def test_unknown_routes_and_methods(app: ControlApp) -> None:
    assert call(app, "GET", "/v1/nothing").status == 404
    assert call(app, "GET", "/v2/status").status == 404
    reply = call(app, "DELETE", "/v1/status")
    assert reply.status == 405 and ("Allow", "GET") in reply.headers
    assert call(app, "GET", "/v1/eci").status == 405


def test_actions_are_refused_with_the_reason_when_locked(
    app: ControlApp, provider: Provider
) -> None:
    provider.locked = "locked by the administrator in /etc/x.json"
    for target, body in (("/v1/eci", {"enabled": False}), ("/v1/repull", {"image": "a:1"})):
        reply = call(app, "POST", target, body, who=MEMBER)
        assert reply.status == 403
        assert reply.doc == {"message": "locked by the administrator in /etc/x.json"}
    assert provider.calls == []


def test_actions_when_unlocked(app: ControlApp, provider: Provider) -> None:
    reply = call(app, "POST", "/v1/eci", {"enabled": False}, who=MEMBER)
    assert reply.status == 200 and reply.doc == {"enforcing": False}
    assert call(app, "POST", "/v1/eci", {"enabled": None}).status == 200
    reply = call(app, "POST", "/v1/repull", {"image": " alpine:3 "})
    assert reply.status == 202
    assert provider.calls == [
        ("eci", False, MEMBER),
        ("eci", None, ROOT),
        ("repull", "alpine:3", ROOT),
    ]
    assert call(app, "POST", "/v1/repull", {"image": "later"}).status == 501
    provider.refuse = "became locked"
    reply = call(app, "POST", "/v1/eci", {"enabled": True})
    assert reply.status == 403 and reply.doc["message"] == "became locked"


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/v1/eci", b"not json"),
        ("/v1/eci", []),
        ("/v1/eci", {}),
        ("/v1/eci", {"enabled": "yes"}),
        ("/v1/eci", {"enabled": True, "more": 1}),
        ("/v1/repull", {"image": ""}),
        ("/v1/repull", {"image": 3}),
        ("/v1/repull", {}),
    ],
)
def test_bad_action_bodies(app: ControlApp, target: str, body: Any) -> None:
    reply = call(app, "POST", target, body)
    assert reply.status == 400 and reply.doc["message"]


def test_events_paging_and_filters(app: ControlApp, store: EventStore) -> None:
    for i in range(5):
        store.record("denied" if i % 2 else "policy-reloaded", str(i))
    assert store.flush()
    doc = call(app, "GET", "/v1/events?limit=2").doc
    assert [e["id"] for e in doc["events"]] == [1, 2] and doc["lastId"] == 2 and doc["more"]
    doc = call(app, "GET", "/v1/events?after=2&limit=10").doc
    assert [e["id"] for e in doc["events"]] == [3, 4, 5] and not doc["more"]
    doc = call(app, "GET", "/v1/events?kind=denied").doc
    assert [e["message"] for e in doc["events"]] == ["1", "3"]
    doc = call(app, "GET", "/v1/events?kind=denied,policy-reloaded&limit=2&newest=1").doc
    assert [e["id"] for e in doc["events"]] == [4, 5]
    doc = call(app, "GET", "/v1/events?after=5").doc
    assert doc == {"events": [], "lastId": 5, "more": False}
    assert call(app, "GET", "/v1/events?since=2999-01-01T00:00:00Z").doc["events"] == []
    assert len(call(app, "GET", "/v1/events?since=0").doc["events"]) == 5


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=x", "after=-1", "after=1&after=2", "since=soon", "follow=2"],
)
def test_bad_event_queries(app: ControlApp, query: str) -> None:
    assert call(app, "GET", f"/v1/events?{query}").status == 400


def test_follow_is_a_stream(app: ControlApp) -> None:
    answer = asyncio.run(app.handle(Request("GET", "/v1/events?follow=1"), ROOT))
    assert isinstance(answer, Stream) and answer.content_type == "application/x-ndjson"


def test_no_store_is_a_503(tmp_path: Path) -> None:
    app = ControlApp(Provider(None), AccessPolicy())
    assert call(app, "GET", "/v1/events").status == 503
