"""The tray, offscreen, fed by a stand-in for the control API (the agent's API is its only input).

Most tests run the agent calls inline (`InlineRunner`) so each step is deterministic; one runs
them in the real worker pool with a slow agent, to show the UI thread never waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from gui.app import Tray
from gui.control_client import ActionFailed, AgentUnavailable, ControlClient, NoAccess
from gui.runner import InlineRunner, PoolRunner
from gui.state import Level

IMAGE = "docker.io/library/alpine:3"
REPULL_ITEM = {
    "image": IMAGE,
    "registry_digest": "sha256:" + "2" * 64,
    "fix": f"eci-agent repull {IMAGE}",
}


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "enforcing": True,
        "audit": False,
        "mode": "enforcing",
        "locked": False,
        "settingsError": None,
        "eci": {"enabled": True, "value": True, "locked": False, "userChoice": None},
        "needsRepull": [],
    }
    doc.update(over)
    return doc


class Agent:
    """A stand-in for `ControlClient`: answers from fields, pages events as the store does."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] | Exception = AgentUnavailable("no agent")
        self.events_list: list[dict[str, Any]] = []
        self.features_doc: dict[str, Any] | Exception = {}
        self.eci_error: Exception | None = None
        self.repull_error: Exception | None = None
        self.calls: list[tuple[str, Any]] = []
        self.delay = 0.0
        self.threads: set[str] = set()

    def status(self) -> dict[str, Any]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        last = self.events_list[-1]["id"] if self.events_list else None
        return {**self.answer, "events": {"lastId": last}}  # as the agent's store says

    def record(self, kind: str, message: str, **fields: Any) -> None:
        ident = len(self.events_list) + 1
        self.events_list.append(
            {"id": ident, "time": time.time(), "kind": kind, "message": message, **fields}
        )

    def events(
        self,
        after: int | None = None,
        limit: int = 100,
        kinds: Sequence[str] = (),
        newest: bool = False,
    ) -> dict[str, Any]:
        self.calls.append(("events", (after, limit, tuple(kinds), newest)))
        found = [
            e
            for e in self.events_list
            if (after is None or e["id"] > after) and (not kinds or e["kind"] in kinds)
        ]
        found = found[-limit:] if newest else found[:limit]
        floor = self.events_list[-1]["id"] if self.events_list else 0
        last = found[-1]["id"] if found else (after if after is not None else floor)
        return {"events": found, "lastId": last, "more": len(found) == limit}

    def features(self) -> dict[str, Any]:
        if isinstance(self.features_doc, Exception):
            raise self.features_doc
        return self.features_doc

    def set_eci(self, enabled: bool | None) -> dict[str, Any]:
        self.calls.append(("eci", enabled))
        if self.eci_error is not None:
            raise self.eci_error
        return {"message": f"switched to {enabled}", "enforcing": bool(enabled)}

    def repull(self, image: str) -> dict[str, Any]:
        self.calls.append(("repull", image))
        if self.repull_error is not None:
            raise self.repull_error
        return {"message": f"pulled {image} again", "newId": "sha256:" + "9" * 64}


class Dialogs:
    def __init__(self, yes: bool = True) -> None:
        self.yes = yes
        self.shown: list[tuple[str, str, str]] = []

    def confirm(self, title: str, text: str) -> bool:
        self.shown.append(("confirm", title, text))
        return self.yes

    def inform(self, title: str, text: str) -> None:
        self.shown.append(("inform", title, text))

    def warn(self, title: str, text: str) -> None:
        self.shown.append(("warn", title, text))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(agent: Agent, dialogs: Dialogs | None = None, clock: Clock | None = None) -> Tray:
    return Tray(
        agent,
        interval_ms=60_000,
        runner=InlineRunner(),
        dialogs=dialogs or Dialogs(),
        clock=clock or Clock(),
    )


def texts(tray: Tray) -> list[str]:
    return [a.text() for a in tray.menu.actions() if not a.isSeparator()]


def notices(tray: Tray) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    tray.notified.connect(lambda title, text: seen.append((title, text)))
    return seen


def test_tray_follows_the_agent_status(qtbot: Any) -> None:
    agent = Agent()
    tray = make(agent)
    assert tray.view.level is Level.UNREACHABLE
    assert "not reachable" in tray.icon.toolTip()

    agent.answer = status(locked=True)
    with qtbot.waitSignal(tray.changed, timeout=1000):
        tray.refresh()
    assert tray.view.level is Level.ENFORCING
    assert "locked by your administrator" in tray.icon.toolTip()
    assert tray.title_action.text() == "Enhanced Container Isolation: on"

    agent.answer = status(settingsError="line 3: trailing comma")
    tray.refresh()
    assert tray.view.level is Level.ERROR
    assert "trailing comma" in tray.icon.toolTip()

    with qtbot.assertNotEmitted(tray.changed):
        tray.refresh()

    seen = notices(tray)
    agent.answer = status(enforcing=False, audit=True, mode="audit", locked=True)
    tray.refresh()
    assert tray.view.level is Level.AUDIT
    assert "NOT PROTECTED" in tray.icon.toolTip()
    assert tray.title_action.text() == "Enhanced Container Isolation: AUDIT ONLY"
    assert texts(tray)[1].startswith("NOT PROTECTED")
    assert seen == [("Enhanced Container Isolation: AUDIT ONLY", tray.view.lines[0])]


def test_the_switch_exists_only_while_unlocked_and_posts(qtbot: Any) -> None:
    agent, dialogs = Agent(), Dialogs()
    agent.answer = status(locked=True)
    tray = make(agent, dialogs)
    assert "Locked by your administrator" in texts(tray)
    assert not tray.actions["eci-locked"].isEnabled()
    assert "eci-switch" not in tray.actions

    agent.answer = status()
    with qtbot.waitSignal(tray.menu_changed, timeout=1000):
        tray.refresh()
    assert "Locked by your administrator" not in texts(tray)
    switch = tray.actions["eci-switch"]
    assert switch.isCheckable() and switch.isChecked() and switch.isEnabled()

    agent.answer = status(enforcing=False, eci={"enabled": False, "userChoice": False})
    switch.trigger()  # the agent now says off (as if the switch had worked)
    assert ("eci", False) in agent.calls
    assert not tray.actions["eci-switch"].isChecked()
    tray.actions["eci-follow-admin"].trigger()
    assert [c for c in agent.calls if c[0] == "eci"][-1] == ("eci", None)

    agent.eci_error = ActionFailed(403, "ECI is locked by the administrator")
    agent.calls.clear()
    tray.actions["eci-switch"].trigger()
    assert ("eci", True) in agent.calls
    assert dialogs.shown[-1] == (
        "warn",
        "Enhanced Container Isolation",
        "ECI is locked by the administrator",
    )
    assert not tray.actions["eci-switch"].isChecked()  # the check mark follows the agent


def test_new_denials_are_listed_and_notified_rate_limited(qtbot: Any) -> None:
    agent, clock = Agent(), Clock()
    agent.record("denied", "old refusal from yesterday")
    agent.answer = status()
    tray = make(agent, clock=clock)
    seen = notices(tray)
    assert [r.message for r in tray.feed.rows] == ["old refusal from yesterday"]
    assert seen == []  # history is not news

    agent.record("agent-started", "eci-agent started")
    agent.record(
        "denied",
        "enhanced container isolation: mounting the Docker socket is not allowed",
        containerName="web",
        containerId="a" * 64,
        image="docker.io/library/alpine:3",
    )
    tray.tick()
    assert seen == [
        (
            "Refused by ECI",
            "enhanced container isolation: mounting the Docker socket is not allowed "
            "(web (aaaaaaaaaaaa))",
        )
    ]
    assert agent.calls[-1] == (
        "events",
        (1, 200, ("denied", "would-deny", "denials-suppressed"), False),
    )

    for i in range(3):
        agent.record("denied", f"refusal {i}")
    clock.now += 5
    tray.tick()
    assert len(seen) == 1  # rate-limited
    clock.now += 5
    tray.tick()
    assert seen[-1][0] == "3 requests refused" and "and 2 more" in seen[-1][1], seen

    window = tray.show_blocked()
    qtbot.addWidget(window)
    rows = window.row_texts()
    assert [r[2] for r in rows][:2] == ["refusal 2", "refusal 1"]  # newest first
    socket_row = rows[3]
    assert socket_row[1] == "denied" and socket_row[3] == "web (aaaaaaaaaaaa)"
    assert socket_row[4] == "docker.io/library/alpine:3"
    assert len(rows) == 5

    agent.record("would-deny", "would refuse --privileged")
    tray.tick()
    assert window.row_texts()[0][1:3] == ["would deny (audit)", "would refuse --privileged"]


def test_many_new_events_are_paged_through(qtbot: Any) -> None:
    agent = Agent()
    agent.answer = status()
    tray = make(agent)
    for i in range(450):
        agent.record("denied", f"r{i}")
    tray.tick()
    assert tray.feed.rows[-1].message == "r449" and len(tray.feed.rows) == 450
    pages = [c for c in agent.calls if c[0] == "events"]
    assert [p[1][0] for p in pages] == [None, 0, 200, 400]  # seed, then after= each last id


def test_a_new_event_store_is_read_from_its_start(qtbot: Any) -> None:
    agent, clock = Agent(), Clock()
    agent.answer = status()
    for i in range(5):
        agent.record("denied", f"before {i}")
    tray = make(agent, clock=clock)
    seen = notices(tray)
    assert tray.feed.cursor == 5
    agent.events_list.clear()  # the agent came back with a fresh store: ids start over
    agent.record("denied", "after the restart")
    tray.tick()
    assert [r.message for r in tray.feed.rows] == ["after the restart"]
    agent.record("denied", "the next one")
    clock.now += 60
    tray.tick()
    assert seen == [("Refused by ECI", "the next one")]


def test_repull_prompts_confirm_and_outcome(qtbot: Any) -> None:
    agent, dialogs = Agent(), Dialogs(yes=False)
    agent.answer = status(needsRepull=[REPULL_ITEM])
    tray = make(agent, dialogs)
    seen = notices(tray)
    tray.refresh()
    tray.refresh()
    assert tray.prompts.new(agent.answer) == []  # already told
    action = tray.actions[f"repull:{IMAGE}"]
    assert action.text() == f"Re-pull {IMAGE}"

    action.trigger()
    assert dialogs.shown[-1][0] == "confirm" and ("repull", IMAGE) not in agent.calls

    dialogs.yes = True
    agent.answer = status()  # after the pull the agent lists nothing
    tray.actions[f"repull:{IMAGE}"].trigger()
    assert ("repull", IMAGE) in agent.calls
    assert seen[-1][0] == f"{IMAGE} re-pulled" and f"pulled {IMAGE} again" in seen[-1][1]
    assert f"repull:{IMAGE}" not in tray.actions

    agent.answer = status(needsRepull=[REPULL_ITEM])
    agent.repull_error = ActionFailed(403, "re-pull of alpine failed: unauthorized")
    tray.refresh()
    tray.actions[f"repull:{IMAGE}"].trigger()
    assert dialogs.shown[-1] == ("warn", f"Re-pull of {IMAGE} failed", agent.repull_error.args[0])


def test_repull_prompt_is_notified_once(qtbot: Any) -> None:
    agent = Agent()
    agent.answer = status()
    tray = make(agent)
    seen = notices(tray)
    agent.answer = status(needsRepull=[REPULL_ITEM])
    for _ in range(3):
        tray.refresh()
    assert seen == [(f"{IMAGE} needs a re-pull", f"Choose “Re-pull {IMAGE}” in the tray menu.")]


def test_locked_repull_tells_the_admins_command(qtbot: Any) -> None:
    agent, dialogs = Agent(), Dialogs()
    agent.answer = status(locked=True)
    tray = make(agent, dialogs)
    seen = notices(tray)
    agent.answer = status(locked=True, needsRepull=[REPULL_ITEM])
    tray.refresh()
    assert seen == [
        (f"{IMAGE} needs a re-pull", f"Ask your administrator to run: {REPULL_ITEM['fix']}")
    ]
    assert f"repull:{IMAGE}" not in tray.actions
    tray.actions[f"repull-locked:{IMAGE}"].trigger()
    kind, _, text = dialogs.shown[-1]
    assert kind == "inform" and REPULL_ITEM["fix"] in text
    assert ("repull", IMAGE) not in agent.calls


def test_features_window(qtbot: Any) -> None:
    agent = Agent()
    agent.answer = status()
    agent.features_doc = {
        "platform": {"kind": "docker-engine", "name": "Docker Engine - Community"},
        "isolation": {"level": "userns-remap", "summary": "isolation: userns-remap"},
        "mode": "enforcing",
        "warnings": [{"severity": "warning", "message": '"*" allows no image before 4.36'}],
        "features": [{"name": "eci", "title": "Core ECI", "state": "partial", "used": True}],
    }
    tray = make(agent)
    tray.actions["features"].trigger()
    window = tray.features_window
    assert window is not None
    qtbot.addWidget(window)
    assert window.isVisible()
    assert window.platform.text() == "Docker Engine - Community"
    assert window.mode.text() == "enforcing"
    assert window.isolation.text().startswith("userns-remap")
    assert window.warnings.isVisibleTo(window) and "allows no image" in window.warnings.text()
    assert window.table.rowCount() == 1 and window.table.item(0, 1).text() == "partial"

    agent.features_doc = AgentUnavailable("eci-agent answered 500")
    window.refresh_button.click()
    assert "answered 500" in window.error.text()


def test_no_access_and_recovery(qtbot: Any) -> None:
    agent = Agent()
    agent.answer = NoAccess("uid 1000 may not use the eci-agent control API")
    tray = make(agent)
    assert tray.view.title == "eci-agent: no access for you"
    tip = tray.icon.toolTip()
    assert "uid 1000 may not use" in tip and "add you to the eci-agent group" in tip
    assert any("eci-agent group" in t for t in texts(tray))
    assert "Blocked requests…" not in texts(tray) and "eci-switch" not in tray.actions
    agent.answer = RuntimeError("a bug in the stand-in")  # anything: shown, no crash
    tray.tick()
    assert "a bug in the stand-in" in tray.icon.toolTip()
    agent.answer = status()
    tray.tick()  # the timer keeps retrying
    assert tray.view.level is Level.ENFORCING and "Blocked requests…" in texts(tray)


def test_the_ui_thread_does_not_wait_for_a_slow_agent(qtbot: Any) -> None:
    agent = Agent()
    agent.answer = status()
    agent.delay = 0.5
    tray = Tray(agent, interval_ms=60_000, dialogs=Dialogs())
    assert isinstance(tray.runner, PoolRunner)
    started = time.monotonic()
    tray.refresh()  # one is under way already: not asked twice
    assert time.monotonic() - started < 0.2
    assert tray.view.level is Level.UNREACHABLE  # not answered yet
    with qtbot.waitSignal(tray.changed, timeout=5000):
        pass
    assert tray.view.level is Level.ENFORCING
    assert threading.main_thread().name not in agent.threads
    runner = tray.runner
    assert isinstance(runner, PoolRunner)
    qtbot.waitUntil(lambda: not runner.busy(), timeout=5000)


def test_control_client_reports_a_missing_agent(tmp_path: Any) -> None:
    client = ControlClient(str(tmp_path / "nothing.sock"))
    with pytest.raises(AgentUnavailable, match="nothing answers") as err:
        client.status()
    assert "systemctl start eci-agent" in err.value.hint
    assert isinstance(client._unavailable(PermissionError(13, "denied")), NoAccess)


def test_no_access_hint_names_the_control_sockets_own_group(tmp_path: Any) -> None:
    """The agent chowns its control socket to `--control-group`: the hint names that group,
    whatever the site chose, and says so when only root may use the socket."""
    import grp
    import os
    import socket as socketlib

    path = str(tmp_path / "control.sock")
    srv = socketlib.socket(socketlib.AF_UNIX)
    srv.bind(path)
    try:
        group = grp.getgrnam("daemon")
        os.chown(path, -1, group.gr_gid)
        err = ControlClient(path)._unavailable(PermissionError(13, "denied"))
        assert isinstance(err, NoAccess)
        assert "add you to the daemon group" in err.hint
        os.chown(path, -1, 0)
        err = ControlClient(path)._unavailable(PermissionError(13, "denied"))
        assert "--control-group" in err.hint and "daemon" not in err.hint
    finally:
        srv.close()


def test_a_clients_words_show_as_written_in_the_blocked_window(qtbot: Any) -> None:
    """A denial quotes a client's own path or image name: Qt would read HTML in a tooltip (a
    link, an image, hidden text), so the window shows it escaped, exactly as written."""
    from PySide6 import QtGui

    agent = Agent()
    agent.answer = status()
    tray = make(agent)
    words = "bind of /home/u/<a href='x'>click</a> & <img src='/etc/x.png'> refused"
    agent.record("denied", words)
    tray.tick()
    window = tray.show_blocked()
    qtbot.addWidget(window)
    item = window.table.item(0, 2)
    assert item.text() == words
    shown = QtGui.QTextDocument()
    shown.setHtml(item.toolTip())
    assert shown.toPlainText() == words, item.toolTip()
