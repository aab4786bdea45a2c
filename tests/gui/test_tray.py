"""The tray, offscreen, fed by a stand-in for the control API (the agent's API is its only input)."""

from __future__ import annotations

from typing import Any

import pytest

from gui.app import Tray
from gui.control_client import AgentUnavailable, ControlClient
from gui.state import Level


class Source:
    def __init__(self) -> None:
        self.answer: dict[str, Any] | Exception = AgentUnavailable("no agent")

    def status(self) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_tray_follows_the_agent_status(qtbot: Any) -> None:
    source = Source()
    tray = Tray(source, interval_ms=60_000)
    assert tray.view.level is Level.UNREACHABLE
    assert "not reachable" in tray.icon.toolTip()

    source.answer = {"enforcing": True, "locked": True}
    with qtbot.waitSignal(tray.changed, timeout=1000):
        tray.refresh()
    assert tray.view.level is Level.ENFORCING
    assert "locked by your administrator" in tray.icon.toolTip()
    assert tray.title_action.text() == "Enhanced Container Isolation: on"

    source.answer = {"enforcing": True, "locked": False, "settingsError": "line 3: trailing comma"}
    tray.refresh()
    assert tray.view.level is Level.ERROR
    assert "trailing comma" in tray.icon.toolTip()

    with qtbot.assertNotEmitted(tray.changed):
        tray.refresh()

    source.answer = {"enforcing": False, "audit": True, "locked": True}
    tray.refresh()
    assert tray.view.level is Level.AUDIT
    assert "NOT PROTECTED" in tray.icon.toolTip()
    assert tray.title_action.text() == "Enhanced Container Isolation: AUDIT ONLY"


def test_control_client_reports_a_missing_agent(tmp_path: Any) -> None:
    client = ControlClient(str(tmp_path / "nothing.sock"))
    with pytest.raises(AgentUnavailable, match="not reachable"):
        client.status()
