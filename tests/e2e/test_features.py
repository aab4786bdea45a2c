"""`GET /v1/features` and `eci-agent features` from the real agent in front of the private engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, eci_agent, settings_with

pytestmark = pytest.mark.engine


def ask_engine(stack: Any, path: str) -> dict[str, Any]:
    """The engine's own answer, straight from its socket (not through the agent)."""
    r = stack.engine_request("GET", path)
    assert r.status == 200, r
    return dict(r.json())


def features(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    r = eci_agent("features", "--json", "--control", agent.control)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_the_platform_is_what_the_engine_itself_reports(agent: AgentProcess, stack: Any) -> None:
    version = ask_engine(stack, "/version")
    info = ask_engine(stack, "/info")
    _code, doc = features(agent)
    platform = doc["platform"]
    assert platform["name"] == version["Platform"]["Name"]
    assert platform["kind"] == "docker-engine"  # this engine's name is not "Docker Desktop …"
    assert platform["dockerDesktopVersion"] is None
    assert platform["engineVersion"] == version["Version"]
    assert platform["apiVersion"] == version["ApiVersion"]
    assert platform["os"] == version["Os"] and platform["arch"] == version["Arch"]
    assert platform["operatingSystem"] == info["OperatingSystem"]
    assert platform["assumed"] is False
    runtimes = set(info.get("Runtimes") or {})
    options = " ".join(info.get("SecurityOptions") or [])
    expected = (
        "sysbox"
        if "sysbox-runc" in runtimes
        else "userns-remap"
        if "name=userns" in options
        else "rootless"
        if "name=rootless" in options
        else "none"
    )
    assert doc["isolation"]["level"] == expected
    assert doc["mode"] == "enforcing"
    assert doc["dockerDesktopTarget"] is None
    assert doc["settings"]["sha256"] == agent.current_sha
    names = [row["name"] for row in doc["features"]]
    assert {"event-store", "control-api", "image-list-everything", "command-compose"} <= set(names)
    assert len(names) == len(set(names))


def test_the_settings_in_force_decide_what_is_used(agent: AgentProcess) -> None:
    agent.set_settings(
        settings_with(
            dockerSocketMount={
                "imageList": {"images": ["*", "busybox:*"], "allowDerivedImages": True},
                "commandList": {"type": "deny", "commands": ["push", "compose"]},
            },
        )
    )
    code, doc = features(agent)
    rows = {row["name"]: row for row in doc["features"]}
    assert rows["image-list-everything"]["used"] is True
    assert rows["image-list-everything"]["active"] is True
    assert rows["derived-images-wildcard-tags"]["used"] is True
    assert rows["command-compose"]["used"] is True
    assert rows["eciagent-audit-mode"]["used"] is False
    assert doc["minimumDockerDesktop"] == "4.36"
    # A plain engine: the versions are portability notices, nothing fails to apply here.
    assert code == 0
    notices = {w["feature"] for w in doc["warnings"] if w["severity"] == "notice"}
    assert {"image-list-everything", "derived-images-wildcard-tags", "command-compose"} <= notices
    assert not [w for w in doc["warnings"] if w["severity"] == "warning"]

    human = eci_agent("features", "--control", agent.control)
    assert human.returncode == 0, human.stderr
    assert "these settings need 4.36 or later" in human.stdout
    assert "image-list-everything" in human.stdout


def test_eci_switched_off_is_a_warning(agent: AgentProcess) -> None:
    agent.set_settings(settings_with(value=False))
    code, doc = features(agent)
    assert code == 1 and doc["mode"] == "off"
    assert [w["feature"] for w in doc["warnings"] if w["severity"] == "warning"] == ["eci"]
    assert not any(row.get("active") for row in doc["features"])


def test_offline_for_a_docker_desktop_version(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.write_text(json.dumps(settings_with(images=["*"])))
    old = eci_agent("features", "--settings", str(path), "--docker-desktop", "4.35")
    assert old.returncode == 1, old.stderr
    assert "needs Docker Desktop 4.36 or later; on Docker Desktop 4.35" in old.stdout
    new = eci_agent("features", "--settings", str(path), "--docker-desktop", "4.36", "--json")
    assert new.returncode == 0, new.stderr
    doc = json.loads(new.stdout)
    assert doc["platform"]["assumed"] is True and doc["dockerDesktopTarget"] == "4.36"
    rows = {row["name"]: row for row in doc["features"]}
    assert rows["image-list-everything"]["dockerDesktop"]["available"] is True
    missing = eci_agent("features", "--settings", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    bad = eci_agent("features", "--settings", str(path), "--docker-desktop", "four")
    assert bad.returncode == 2 and "4.36" in bad.stderr
