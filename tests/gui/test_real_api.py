"""The tray against the real control server (agent/control/server.py) on a temp unix socket,
with a small provider in place of the agent's services: proves the GUI's client speaks the API
(routes, query strings, bodies, status codes, JSON shapes) and that the tray follows it."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.control.api import AccessPolicy, Caller, ControlApp
from agent.control.features import evaluate, load_default_table, platform_from
from agent.control.server import ControlServer
from agent.events.store import EventStore
from agent.settings.model import AdminSettings, EnhancedContainerIsolation
from gui.app import Tray
from gui.control_client import ControlClient
from gui.runner import PoolRunner
from gui.state import Level

T = TypeVar("T")
IMAGE = "docker.io/library/alpine:3"


class Provider:
    """The `ControlProvider` the API needs: a real event store, the rest from fields."""

    def __init__(self, store: EventStore) -> None:
        self.events = store
        self.locked = False
        self.enabled = True
        self.needs: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any, int | None]] = []

    def _settings(self) -> AdminSettings:
        return AdminSettings(
            eci=EnhancedContainerIsolation(value=True, locked=self.locked),
            source="/etc/eci-agent/admin-settings.json",
            sha256="ab" * 32,
            configuration_file_version=2,
        )

    @property
    def mode(self) -> str:
        return "enforcing" if self.enabled else "off"

    async def status(self) -> dict[str, Any]:
        return {
            "enforcing": self.enabled,
            "audit": False,
            "mode": self.mode,
            "locked": self.locked,
            "settingsError": None,
            "eci": {"enabled": self.enabled, "value": True, "locked": self.locked},
            "needsRepull": self.needs,
            "events": {"lastId": self.events.last_id},
        }

    async def features(self) -> dict[str, Any]:
        report = evaluate(
            load_default_table(), self._settings(), platform=platform_from(None), mode=self.mode
        )
        return report.to_dict()

    def lock_reason(self) -> str | None:
        return "ECI is locked by the administrator (test)" if self.locked else None

    async def set_eci(self, enabled: bool | None, caller: Caller) -> dict[str, Any]:
        self.calls.append(("eci", enabled, caller.uid))
        self.enabled = True if enabled is None else enabled
        return {"message": f"ECI {'on' if self.enabled else 'off'}", "enforcing": self.enabled}

    async def repull(self, image: str, caller: Caller) -> dict[str, Any]:
        self.calls.append(("repull", image, caller.uid))
        self.needs = []
        return {
            "message": f"pulled {image} again; the old copy was removed",
            "image": image,
            "oldId": "sha256:" + "1" * 64,
            "newId": "sha256:" + "9" * 64,
            "removedOld": True,
        }


class RefuseAll(AccessPolicy):
    def refusal(self, caller: Caller) -> str | None:
        return f"uid {caller.uid} may not use the eci-agent control API (test)"


class Server:
    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "control.sock")
        self.store = EventStore(tmp / "events.db")
        self.provider = Provider(self.store)
        self.app = ControlApp(self.provider, AccessPolicy())
        self.server = ControlServer(self.path, self.app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            self.store.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # unix socket paths must stay short
        s = Server(Path(d))
        try:
            yield s
        finally:
            s.close()


class Dialogs:
    def __init__(self) -> None:
        self.shown: list[tuple[str, str, str]] = []

    def confirm(self, title: str, text: str) -> bool:
        self.shown.append(("confirm", title, text))
        return True

    def inform(self, title: str, text: str) -> None:
        self.shown.append(("inform", title, text))

    def warn(self, title: str, text: str) -> None:
        self.shown.append(("warn", title, text))


def test_the_tray_speaks_the_real_control_api(server: Server, qtbot: Any) -> None:
    store, provider = server.store, server.provider
    store.record("denied", "an old refusal")
    assert store.flush()
    dialogs = Dialogs()
    tray = Tray(ControlClient(server.path, timeout=5), interval_ms=100, dialogs=dialogs)
    seen: list[tuple[str, str]] = []
    tray.notified.connect(lambda title, text: seen.append((title, text)))
    qtbot.waitUntil(lambda: "eci-switch" in tray.actions, timeout=5000)
    assert tray.view.level is Level.ENFORCING
    qtbot.waitUntil(lambda: [r.message for r in tray.feed.rows] == ["an old refusal"])

    # A new denial: listed with its container and image, and notified.
    store.record(
        "denied",
        "enhanced container isolation: mounting the Docker socket is not allowed",
        container_name="web",
        container_id="c" * 64,
        image=IMAGE,
    )
    store.record("policy-reloaded", "not a blocked request")
    assert store.flush()
    page = ControlClient(server.path).events(after=1, limit=5, kinds=("denied", "would-deny"))
    assert [e["id"] for e in page["events"]] == [2] and page["lastId"] == 2
    assert page["more"] is False
    newest = ControlClient(server.path).events(limit=1, kinds=("denied",), newest=True)
    assert [e["id"] for e in newest["events"]] == [2] and newest["more"] is True
    qtbot.waitUntil(lambda: len(seen) == 1, timeout=5000)
    assert seen[0] == (
        "Refused by ECI",
        f"enhanced container isolation: mounting the Docker socket is not allowed "
        f"(web ({'c' * 12}))",
    )
    window = tray.show_blocked()
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: len(window.row_texts()) == 2)
    assert window.row_texts()[0][1:5] == [
        "denied",
        "enhanced container isolation: mounting the Docker socket is not allowed",
        f"web ({'c' * 12})",
        IMAGE,
    ]

    # The switch: POST /v1/eci {"enabled": false}, then the tray shows off.
    tray.actions["eci-switch"].trigger()
    qtbot.waitUntil(lambda: tray.view.level is Level.OFF, timeout=5000)
    assert provider.calls[0][:2] == ("eci", False)
    assert not tray.actions["eci-switch"].isChecked()

    # A re-pull prompt: notified, confirmed, POST /v1/repull (202), outcome shown.
    provider.needs = [{"image": IMAGE, "fix": f"eci-agent repull {IMAGE}"}]
    qtbot.waitUntil(lambda: f"repull:{IMAGE}" in tray.actions, timeout=5000)
    assert (f"{IMAGE} needs a re-pull", f"Choose “Re-pull {IMAGE}” in the tray menu.") in seen
    tray.actions[f"repull:{IMAGE}"].trigger()
    qtbot.waitUntil(lambda: any(t == f"{IMAGE} re-pulled" for t, _ in seen), timeout=5000)
    assert ("repull", IMAGE) == provider.calls[-1][:2]
    assert any("old copy was removed" in text for _, text in seen)

    # The features report, as the agent's evaluator writes it (ECI off: a warning).
    features = tray.show_features()
    qtbot.addWidget(features)
    qtbot.waitUntil(lambda: features.table.rowCount() > 0, timeout=5000)
    assert features.mode.text() == "off"
    assert features.warnings.isVisibleTo(features)
    assert "Enhanced Container Isolation is off" in features.warnings.text()
    assert features.platform.text() == "unknown (the engine did not answer)"

    # Locked: no switch; an action sent anyway is refused with 403 and shown, not raised.
    provider.locked = True
    qtbot.waitUntil(lambda: "eci-locked" in tray.actions, timeout=5000)
    assert "eci-switch" not in tray.actions
    tray.set_eci(True)
    qtbot.waitUntil(lambda: bool(dialogs.shown) and dialogs.shown[-1][0] == "warn", timeout=5000)
    assert dialogs.shown[-1][2] == "ECI is locked by the administrator (test)"

    # Not in the control group (the agent's own check): say what to do, keep retrying.
    server.app.access = RefuseAll()
    qtbot.waitUntil(lambda: tray.view.level is Level.UNREACHABLE, timeout=5000)
    assert tray.view.title == "eci-agent: no access for you"
    # this control socket belongs to group root (no --control-group): the hint says so
    assert os.stat(server.path).st_gid == 0
    assert "gives its control API to no group" in tray.icon.toolTip()
    server.app.access = AccessPolicy()
    qtbot.waitUntil(lambda: tray.view.level is Level.OFF, timeout=5000)

    tray.timer.stop()
    runner = tray.runner
    assert isinstance(runner, PoolRunner)
    qtbot.waitUntil(lambda: not runner.busy(), timeout=5000)
