"""What the tray computes, without Qt: menus, views, event paging, notices."""

from __future__ import annotations

from typing import Any

import pytest

from gui import state as st
from gui.control_client import AgentNotRunning, NoAccess
from gui.state import Level, view_of

REPULL_ITEM = {
    "image": "docker.io/library/alpine:3",
    "image_id": "sha256:" + "1" * 64,
    "registry_digest": "sha256:" + "2" * 64,
    "fix": "eci-agent repull docker.io/library/alpine:3",
}


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "enforcing": True,
        "audit": False,
        "mode": "enforcing",
        "locked": False,
        "settingsError": None,
        "eci": {"enabled": True, "value": True, "locked": False, "userChoice": None},
        "engine": {"reachable": True},
        "needsRepull": [],
        "events": {"lastId": 7},
    }
    doc.update(over)
    return doc


def keys(entries: tuple[st.Entry, ...]) -> list[str]:
    return [e.key for e in entries if e.key != "-"]


def entry(entries: tuple[st.Entry, ...], key: str) -> st.Entry:
    [found] = [e for e in entries if e.key == key]
    return found


# -- views and menus -----------------------------------------------------------------------------


def test_unlocked_menu_has_the_switch_and_the_windows() -> None:
    doc = status()
    entries = st.menu_entries(doc, view_of(doc))
    assert keys(entries) == ["title", "line:0", "eci-switch", "blocked", "features", "quit"]
    switch = entry(entries, "eci-switch")
    assert switch.enabled and switch.checkable and switch.checked
    assert st.LOCKED_TEXT not in [e.text for e in entries]

    doc = status(enforcing=False, eci={"enabled": False, "value": True, "userChoice": False})
    entries = st.menu_entries(doc, view_of(doc))
    assert not entry(entries, "eci-switch").checked
    assert entry(entries, "eci-follow-admin").enabled  # back to the admin's choice
    assert "your choice: off (the administrator's is on)" in view_of(doc).lines


def test_locked_menu_has_no_switch_only_the_lock_line() -> None:
    doc = status(locked=True, eci={"enabled": True, "value": True, "locked": True})
    entries = st.menu_entries(doc, view_of(doc))
    assert "eci-switch" not in keys(entries) and "eci-follow-admin" not in keys(entries)
    locked = entry(entries, "eci-locked")
    assert locked.text == "Locked by your administrator" and not locked.enabled
    assert "locked by your administrator" in view_of(doc).lines


def test_audit_mode_is_loud_in_title_tooltip_and_menu() -> None:
    doc = status(enforcing=False, audit=True, mode="audit")
    view = view_of(doc)
    assert view.level is Level.AUDIT
    assert view.title == "Enhanced Container Isolation: AUDIT ONLY"
    assert view.lines[0].startswith("NOT PROTECTED")
    entries = st.menu_entries(doc, view)
    assert entries[0].text == view.title
    assert entries[1].text.startswith("NOT PROTECTED")  # first line under the title
    assert "eci-switch" in keys(entries)  # unlocked: still switchable
    assert st.mode_notice(view_of(status()), view) == st.Notice(
        view.title, st.AUDIT_LINE, warning=True
    )
    assert st.mode_notice(view, view) is None


@pytest.mark.parametrize(
    ("error", "title", "hint"),
    [
        (NoAccess("permission denied on /run/x.sock"), "no access", "eci-agent group"),
        (AgentNotRunning("nothing answers"), "not running", "systemctl start eci-agent"),
    ],
)
def test_unreachable_menu_says_what_to_do(error: Exception, title: str, hint: str) -> None:
    view = view_of(None, error)
    assert view.level is Level.UNREACHABLE and title in view.title
    assert str(error) in view.tooltip and hint in view.tooltip
    entries = st.menu_entries(None, view)
    assert keys(entries) == ["title", "line:0", "line:1", "quit"]  # no switch, no windows
    assert hint in entry(entries, "line:1").text and not entry(entries, "line:1").enabled


def test_unreachable_with_a_plain_reason() -> None:
    view = view_of(None, "not asked yet")
    assert view == st.TrayView(Level.UNREACHABLE, "eci-agent: not reachable", ("not asked yet",))
    assert view_of(None, RuntimeError("boom")).lines == ("boom",)


def test_engine_and_settings_problems_are_lines() -> None:
    doc = status(settingsError="line 3: trailing comma", engine={"reachable": False, "error": "x"})
    view = view_of(doc)
    assert view.level is Level.ERROR
    assert "settings problem: line 3: trailing comma" in view.lines
    assert "the Docker engine does not answer: x" in view.lines


# -- re-pull prompts -----------------------------------------------------------------------------


def test_repull_entries_unlocked_locked_and_busy() -> None:
    image = REPULL_ITEM["image"]
    doc = status(needsRepull=[REPULL_ITEM])
    entries = st.menu_entries(doc, view_of(doc))
    assert entry(entries, f"repull:{image}").text == f"Re-pull {image}"
    assert "1 image(s) need a re-pull" in view_of(doc).lines
    busy = st.menu_entries(doc, view_of(doc), busy=[image])
    assert not entry(busy, f"repull-busy:{image}").enabled
    assert f"repull:{image}" not in keys(busy)

    locked = status(locked=True, needsRepull=[REPULL_ITEM])
    entries = st.menu_entries(locked, view_of(locked))
    assert f"repull:{image}" not in keys(entries)
    assert entry(entries, f"repull-locked:{image}").enabled
    assert REPULL_ITEM["fix"] in st.repull_locked_text(REPULL_ITEM)


def test_repull_prompts_once_per_item() -> None:
    prompts = st.RepullPrompts()
    doc = status(needsRepull=[REPULL_ITEM])
    [notice] = prompts.new(doc)
    assert REPULL_ITEM["image"] in notice.title and "Re-pull" in notice.text
    assert prompts.new(doc) == []
    assert prompts.new(status()) == []
    assert prompts.new(doc) == []  # back again, same item: still told once
    other = {**REPULL_ITEM, "image": "docker.io/library/busybox:1"}
    assert [n.title for n in prompts.new(status(needsRepull=[REPULL_ITEM, other]))] == [
        "docker.io/library/busybox:1 needs a re-pull"
    ]
    moved = {**REPULL_ITEM, "registry_digest": "sha256:" + "3" * 64}  # the tag moved again
    assert len(prompts.new(status(needsRepull=[moved]))) == 1


def test_locked_repull_prompt_names_the_admins_command() -> None:
    [notice] = st.RepullPrompts().new(status(locked=True, needsRepull=[REPULL_ITEM]))
    assert notice.text == f"Ask your administrator to run: {REPULL_ITEM['fix']}"


# -- blocked events ------------------------------------------------------------------------------


def event(ident: int, kind: str = "denied", **over: Any) -> dict[str, Any]:
    doc = {
        "id": ident,
        "time": "2024-05-01T12:00:00.000000Z",
        "kind": kind,
        "message": f"enhanced container isolation: refused #{ident}",
        "containerId": "c" * 64,
        "containerName": "web",
        "image": "docker.io/library/alpine:3",
        "method": "POST",
        "path": "/v1.45/containers/create",
    }
    doc.update(over)
    return doc


def test_feed_seeds_with_history_then_pages_after_the_last_id() -> None:
    feed = st.BlockedFeed(keep=3)
    first = feed.query()
    assert (
        first.after is None
        and first.newest
        and first.kinds == ("denied", "would-deny", "denials-suppressed")
    )
    assert feed.take({"events": [event(3), event(5)], "lastId": 5, "more": False}) == []
    assert [r.id for r in feed.rows] == [3, 5]  # history is listed, not new
    assert feed.query() == st.EventsQuery(5, feed.page, newest=False)

    fresh = feed.take(
        {"events": [event(5), event(6, "would-deny"), event(9, "agent-started")], "lastId": 9}
    )
    assert [r.id for r in fresh] == [6]  # 5 was seen; 9 is not a blocked request
    assert fresh[0].would and fresh[0].label == "would deny (audit)"
    assert feed.query().after == 9
    feed.take({"events": [event(10), event(11)], "lastId": 11, "more": True})
    assert feed.more
    assert [r.id for r in feed.rows] == [6, 10, 11]  # keeps the latest `keep`


def test_feed_seed_on_an_empty_store_and_a_store_that_starts_over() -> None:
    feed = st.BlockedFeed()
    feed.take({"events": [], "lastId": 40, "more": False})
    assert feed.query().after == 40
    feed.agent_last_id(41)
    assert feed.query().after == 40
    feed.agent_last_id(2)  # a new event store
    assert feed.query().after is None and feed.query().newest
    feed.take({"events": [event(1)], "lastId": 1})
    assert [r.id for r in feed.rows] == [1]
    feed.agent_last_id(None)  # emptied: also a new store
    assert feed.query().after is None and not feed.rows
    feed.take({"events": [], "lastId": None})
    feed.agent_last_id(None)
    assert feed.query().after == 0  # an empty store, seeded: page on from the start


def test_blocked_row_fields() -> None:
    row = st.blocked_of(event(4))
    assert row is not None
    assert row.container == "web (cccccccccccc)" and row.image == "docker.io/library/alpine:3"
    assert row.request == "POST /v1.45/containers/create" and row.label == "denied"
    assert row.when.startswith("2024-05-0")
    bare = st.blocked_of({"id": 1, "kind": "denied"})
    assert bare is not None and bare.container == "" and bare.message == "(no message)"
    assert st.blocked_of({"id": "1", "kind": "denied"}) is None


def test_throttle_one_notice_per_interval_then_n_more() -> None:
    throttle = st.Throttle(interval=10)
    rows = [r for r in (st.blocked_of(event(i)) for i in range(1, 6)) if r is not None]
    first = throttle.add(rows[:1], now=100.0)
    assert first is not None and first.title == "Refused by ECI" and "#1" in first.text
    assert "(web (cccccccccccc))" in first.text and first.warning
    assert throttle.add(rows[1:4], now=101.0) is None
    assert throttle.due(now=109.9) is None
    later = throttle.due(now=110.0)
    assert later is not None and later.title == "3 requests refused"
    assert "#4" in later.text and "and 2 more" in later.text
    assert throttle.due(now=130.0) is None  # nothing pending
    single = throttle.add(rows[4:], now=130.0)
    assert single is not None and "#5" in single.text and "more" not in single.text


def test_throttle_words_audit_notices_as_would_be() -> None:
    row = st.blocked_of(event(1, "would-deny"))
    assert row is not None
    notice = st.Throttle().add([row], now=0.0)
    assert notice is not None and notice.title == "Would be refused (audit mode)"
    assert not notice.warning


# -- features ------------------------------------------------------------------------------------


FEATURES = {
    "platform": {
        "kind": "docker-engine",
        "name": "Docker Engine - Community",
        "engineVersion": "27.1.0",
        "apiVersion": "1.46",
        "os": "linux",
        "arch": "amd64",
    },
    "isolation": {"level": "none", "summary": "isolation: none - containers run as root\nmore"},
    "mode": "audit",
    "warnings": [
        {"feature": "x", "severity": "warning", "message": "not protected", "path": "a.b"},
        {"feature": "y", "severity": "notice", "message": "good to know", "path": None},
    ],
    "features": [
        {"name": "user-eci-switch", "state": "available", "detail": "POST /v1/eci"},
        {"name": "eci", "title": "Core ECI", "state": "partial", "used": True, "detail": "d"},
    ],
}


def test_features_view() -> None:
    view = st.features_view(FEATURES)
    assert view.platform == "Docker Engine - Community"
    assert view.engine == "engine 27.1.0, API 1.46, linux/amd64"
    assert view.isolation == "none - containers run as root"
    assert st.features_view({"isolation": {"level": "sysbox"}}).isolation == "sysbox"
    assert view.mode == "AUDIT ONLY (not protected)"
    assert view.warnings == ("not protected [a.b]",) and view.notices == ("good to know",)
    assert [(r.title, r.state, r.used) for r in view.rows] == [
        ("user-eci-switch", "available", False),
        ("Core ECI", "partial", True),
    ]
    desktop = st.features_view({"platform": {"dockerDesktopVersion": "4.36.0", "wsl2": True}})
    assert desktop.platform == "Docker Desktop 4.36.0 (WSL 2)" and desktop.mode == "unknown"
    assert st.features_view({}).platform == "unknown (the engine did not answer)"


def test_a_counted_flood_is_one_row_that_says_how_many() -> None:
    row = st.blocked_of(
        {"id": 7, "kind": "denials-suppressed", "time": "2026-11-24T06:00:00Z", "uid": 1000,
         "message": "350 refused request(s) from uid 1000 ... counted", "extra": {"count": 350}}
    )  # fmt: skip
    assert row is not None and row.count == 350 and row.label == "denied x350 (counted)"
    one = st.blocked_of({"id": 8, "kind": "denied", "message": "refused"})
    assert one is not None and one.count == 1
    notice = st.Throttle(interval=10).add([one, row], now=100.0)
    assert notice is not None and notice.title == "351 requests refused", notice
