"""The control API of the real agent, in front of the private engine, through `eci-agent`."""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.client import ControlClient, Refused
from tests.e2e.agent_process import (
    DEFAULT_SETTINGS,
    AgentProcess,
    eci_agent,
    http_over_unix,
    settings_with,
)

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


def events(agent: AgentProcess, *args: str) -> list[dict[str, Any]]:
    r = eci_agent("events", "--json", "--control", agent.control, *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def engine_version(stack: Any) -> dict[str, Any]:
    raw = http_over_unix(
        stack.engine_socket, b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))


def test_status_reports_what_the_engine_itself_reports(agent: AgentProcess, stack: Any) -> None:
    r = eci_agent("status", "--json", "--control", agent.control)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    engine = engine_version(stack)
    assert doc["engine"]["reachable"] is True
    assert doc["engine"]["version"] == engine["Version"]
    assert doc["engine"]["apiVersion"] == engine["ApiVersion"]
    assert doc["enforcing"] is True and doc["locked"] is True
    assert doc["settings"]["sha256"] == agent.current_sha
    assert doc["listeners"]["host"] == agent.listen
    assert doc["listeners"]["control"] == agent.control

    r = eci_agent("status", "--control", agent.control)
    assert r.returncode == 0, r.stderr
    assert f"Docker Engine {engine['Version']}" in r.stdout
    assert "Enhanced Container Isolation: on (locked by the administrator)" in r.stdout


def test_a_policy_reload_is_an_event(agent: AgentProcess) -> None:
    before = events(agent, "--limit", "1")
    after = before[-1]["id"] if before else 0
    agent.set_settings(settings_with(images=["alpine:3"]))
    sha = agent.current_sha
    reloads = [e for e in events(agent, "--after", str(after)) if e["kind"] == "policy-reloaded"]
    assert [e["settingsSha256"] for e in reloads] == [sha]
    assert sha is not None and sha[:12] in reloads[0]["message"]


def test_a_refused_settings_file_is_an_event(agent: AgentProcess) -> None:
    last = events(agent, "--limit", "1")[-1]["id"]
    agent._write('{"configurationFileVersion": 2, "enhancedContainerIsolation": {,}}')
    agent.current_sha = None
    deadline = time.monotonic() + 10
    rejected: list[dict[str, Any]] = []
    while not rejected and time.monotonic() < deadline:
        rejected = events(agent, "--after", str(last), "--kind", "settings-rejected")
    assert rejected, agent.log()[-2000:]
    status = ControlClient(agent.control).get("/v1/status")
    assert status["settingsError"] and status["settingsError"] in rejected[0]["message"]


def test_a_denied_socket_mount_is_an_event(
    agent: AgentProcess, via_agent: Any, stack: Any, name: str
) -> None:
    last = events(agent, "--limit", "1")[-1]["id"]
    ref = stack.images["busybox"]
    r = via_agent(
        "create", "--name", name, "--network", "none",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", ref, "true",
    )  # fmt: skip
    assert r.returncode != 0
    denied = events(agent, "--after", str(last), "--kind", "denied")
    assert len(denied) == 1, denied
    event = denied[0]
    assert event["rule"].startswith("socket-mount") and event["status"] == 403
    assert event["method"] == "POST" and "/containers/create" in event["path"]
    assert event["uid"] == os.geteuid() and event["listener"] == "host"
    assert event["message"] in r.stderr
    assert event["settingsSha256"] == agent.current_sha


def test_actions_are_refused_while_locked_and_allowed_when_not(
    agent: AgentProcess, via_agent: Any, direct: Any, stack: Any, name: str
) -> None:
    def socket_mount() -> bool:
        r = via_agent("create", "--name", name, "--network", "none",
                      "-v", "/var/run/docker.sock:/s", stack.images["busybox"])  # fmt: skip
        made = direct("inspect", name).returncode == 0  # the engine says, not the agent
        direct("rm", "-f", name)
        assert made == (r.returncode == 0), r.stderr
        return made

    client = ControlClient(agent.control)
    with pytest.raises(Refused) as refused:
        client.post("/v1/eci", {"enabled": False})
    assert refused.value.status == 403
    assert "locked by the administrator" in str(refused.value)
    assert client.get("/v1/status")["enforcing"] is True
    assert not socket_mount()

    agent.set_settings(settings_with(locked=False))
    try:
        assert client.post("/v1/eci", {"enabled": False})["enforcing"] is False
        assert client.get("/v1/status")["enforcing"] is False
        assert socket_mount(), "switched off: at once pure pass-through"
        assert client.post("/v1/eci", {"enabled": True})["enforcing"] is True
        assert not socket_mount()
        assert client.post("/v1/eci", {"enabled": False})["enforcing"] is False
        switched = events(agent, "--kind", "eci-switched", "--limit", "1")
        assert switched[-1]["uid"] == os.geteuid() and switched[-1]["extra"]["userChoice"] is False
    finally:
        agent.set_settings(DEFAULT_SETTINGS)  # locked again: the user's choice no longer applies
    assert client.get("/v1/status")["enforcing"] is True
    assert not socket_mount()


# -- who may ask: a second agent whose control group is `adm` ---------------------------------

NOBODY_CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
from agent.control.client import ControlClient, ControlError, Refused
try:
    doc = ControlClient(sys.argv[2]).get("/v1/status")
except Refused as err:
    print("refused", err.status, err)
except ControlError as err:
    print(type(err).__name__, err)
else:
    print("allowed", doc["enforcing"])
"""


def as_nobody(path: str, groups: list[int]) -> str:
    def drop() -> None:
        os.setgroups(groups)
        os.setgid(65534)
        os.setuid(65534)

    proc = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", NOBODY_CLIENT, str(ROOT), path],
        preexec_fn=drop,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def group_agent(stack: Any) -> Iterator[AgentProcess]:
    # Not under pytest's root-only temp dir: another user must reach the socket's folder, so
    # only the socket's own mode and the agent's check stand in the way.
    workdir = Path(tempfile.mkdtemp(dir="/tmp", prefix="eci-grp-"))
    os.chmod(workdir, 0o755)
    proc = AgentProcess(workdir, stack.engine_socket, extra_args=("--control-group", "adm"))
    try:
        proc.start(DEFAULT_SETTINGS)
        yield proc
        assert proc.stop() == 0, proc.log()[-4000:]
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_only_root_and_the_control_group_may_ask(group_agent: AgentProcess) -> None:
    adm = grp.getgrnam("adm").gr_gid
    st = os.stat(group_agent.control)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, adm)
    assert as_nobody(group_agent.control, [adm]) == "allowed True"
    out = as_nobody(group_agent.control, [])
    assert out.startswith("AccessDenied permission denied"), out
    # Past the file mode (as if a socket were handed over): the agent's own SO_PEERCRED check.
    os.chmod(group_agent.control, 0o666)
    out = as_nobody(group_agent.control, [])
    assert out.startswith("refused 403 uid 65534 may not use the eci-agent control API"), out


def test_status_names_the_isolation_level_and_containers_refused_on_start(
    agent: AgentProcess, stack: Any, direct: Any, name: str
) -> None:
    # Made straight on the engine, as before the agent ran.
    direct("create", "--name", name, "--network", "none", "--privileged",
           stack.images["busybox"], check=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20  # the list is refreshed every 10 s at most
        while True:
            r = eci_agent("status", "--json", "--control", agent.control)
            assert r.returncode == 0, r.stderr
            isolation = json.loads(r.stdout)["isolation"]
            names = [c["name"] for c in isolation["refusedToStart"]]
            if name in names or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert name in names, isolation
        (entry,) = [c for c in isolation["refusedToStart"] if c["name"] == name]
        assert "--privileged" in entry["refused"]
        info = json.loads(direct("info", "--format", "{{json .SecurityOptions}}").stdout)
        remapped = any("name=userns" in o for o in info)
        assert isolation["usernsRemap"] is remapped
        assert isolation["level"] == ("user namespaces" if remapped else "API checks only")
        human = eci_agent("status", "--control", agent.control).stdout
        assert f"made before enforcement, refused on start: {name}" in human
    finally:
        direct("rm", "-f", name)


def test_a_flood_of_refusals_is_counted_not_recorded_one_by_one(own_agent: AgentProcess) -> None:
    """A client that makes the agent refuse as fast as it can must not push older events out
    of the store: past a burst, its refusals are counted, and the count is recorded once it
    goes quiet. The first refusal (the attempt worth keeping) stays, and nothing goes untold."""
    marker = "/v1.41/eci-flood-first"
    http_over_unix(own_agent.listen, f"GET {marker} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
    sent = 400
    one = b"GET /v1.41/eci-flood HTTP/1.1\r\nHost: d\r\n\r\n"
    reply = http_over_unix(
        own_agent.listen, one * (sent - 1) + one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        timeout=60,
    )  # fmt: skip
    assert reply.count(b"HTTP/1.1 404 ") == sent, reply[:300]  # every one refused
    time.sleep(5.5)  # quiet: the count comes due
    denied = events(own_agent, "--all", "--kind", "denied")
    paths = [e.get("path") for e in denied]
    assert marker in paths, paths[:5]
    flood = [p for p in paths if p == "/v1.41/eci-flood"]
    assert 40 <= len(flood) < 120, len(flood)  # the burst (and what the rate refilled), no more
    (summary,) = events(own_agent, "--all", "--kind", "denials-suppressed")
    assert summary["extra"]["count"] == sent - len(flood), summary
    assert (
        summary["uid"] == os.getuid() and "counted, not recorded one by one" in summary["message"]
    )
