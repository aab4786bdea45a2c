"""Audit mode (`eciAgent.auditMode`): would-be denials are recorded and let through.

Checked on the ENGINE (the container exists, the volume was made), in the event store (a
`would-deny` event each), in status (loudly not protected), and by `eci-agent suggest`, whose
proposal, applied with audit mode off, lets the same work through for real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, eci_agent, http_over_unix, settings_with

pytestmark = pytest.mark.engine


def audited(images: list[str], commands: list[str] | None = None) -> dict[str, Any]:
    doc = settings_with(images)
    if commands is not None:
        doc["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"] = {
            "type": "allow",
            "commands": commands,
        }
    doc["eciAgent"] = {"auditMode": True}
    return doc


def would_deny(agent: AgentProcess, after: int) -> list[dict[str, Any]]:
    r = eci_agent(
        "events",
        "--json",
        "--after",
        str(after),
        "--kind",
        "would-deny",
        "--control",
        agent.control,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def last_id(agent: AgentProcess) -> int:
    r = eci_agent("events", "--json", "--limit", "1", "--control", agent.control)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return int(json.loads(lines[-1])["id"]) if lines else 0


def test_audit_mode_records_lets_through_and_suggest_closes_the_loop(
    agent, via_agent, direct, stack, name
):
    cli = stack.images["dockercli"]
    busybox = stack.images["busybox"]
    agent.set_settings(audited([], commands=["ps"]))
    start = last_id(agent)
    status = json.loads(eci_agent("status", "--json", "--control", agent.control).stdout)
    assert status["mode"] == "audit" and status["audit"] and not status["enforcing"]
    human = eci_agent("status", "--control", agent.control).stdout
    assert "AUDIT MODE: this machine is NOT protected" in human

    volume = name + "-vol"
    debug = name + "-priv"
    try:
        # 1. a socket mount the image list would refuse: created, with the agent's socket
        r = via_agent(
            "run", "-d", "--name", name, "--network", "none",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", cli, "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        mounts = json.loads(direct("inspect", "-f", "{{json .Mounts}}", name, check=True).stdout)
        assert [m["Source"] for m in mounts] == [agent.container_socket]
        # 2. a command the allow list ["ps"] would block, from inside: done on the engine
        r = direct("exec", name, "docker", "volume", "create", volume)
        assert r.returncode == 0, r.stderr
        assert direct("volume", "inspect", volume).returncode == 0
        # 3. an isolation refusal: the privileged container exists
        r = via_agent("create", "--name", debug, "--network", "none", "--privileged", busybox)
        assert r.returncode == 0, r.stderr
        assert direct("inspect", debug).returncode == 0
        # 4. what cannot be forwarded faithfully is still refused
        body = b"fromImage=" + busybox.encode()
        raw = http_over_unix(
            agent.listen,
            b"POST /v1.41/images/create HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        )
        assert raw.startswith(b"HTTP/1.1 400"), raw[:200]

        events = would_deny(agent, start)
        rules = sorted({e["rule"] for e in events})
        assert "socket-mount-image" in rules and "command-blocked" in rules, rules
        assert any(r.startswith("isolation") for r in rules), rules
        blocked = next(e for e in events if e["rule"] == "command-blocked")
        assert blocked["containerName"] == name and "volume create" in blocked["commands"]

        r = eci_agent("suggest", "--json", "--control", agent.control)
        assert r.returncode == 0, r.stderr
        proposal = json.loads(r.stdout)["add"]
        socket = proposal["enhancedContainerIsolation"]["dockerSocketMount"]
        assert cli in socket["imageList"]["images"]
        assert socket["commandList"]["type"] == "allow"
        (exception,) = [
            x for x in proposal["eciAgent"]["isolationExceptions"] if busybox in x["images"]
        ]
        assert "--privileged" in exception["allow"] or "privileged" in str(exception["allow"])
    finally:
        direct("rm", "-f", name, debug)
        direct("volume", "rm", volume)

    # Enforcing again, with the proposal merged in: the same work passes for real.
    enforced = settings_with(socket["imageList"]["images"])
    enforced["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"] = {
        "type": "allow",
        "commands": ["ps", *socket["commandList"]["commands"]],
    }
    enforced["eciAgent"] = {"isolationExceptions": proposal["eciAgent"]["isolationExceptions"]}
    agent.set_settings(enforced)
    try:
        r = via_agent(
            "run", "-d", "--name", name, "--network", "none",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", cli, "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = direct("exec", name, "docker", "volume", "create", volume)
        assert r.returncode == 0, r.stderr
        r = via_agent("create", "--name", debug, "--network", "none", "--privileged", busybox)
        assert r.returncode == 0, r.stderr
        # ... while what the proposal did not name stays refused
        r = direct("exec", name, "docker", "network", "ls")
        assert r.returncode != 0 and "is blocked" in r.stderr, r.stderr
    finally:
        direct("rm", "-f", name, debug)
        direct("volume", "rm", volume)


def test_audit_mode_off_is_enforcing(agent, via_agent, direct, stack, name):
    doc = audited([])
    doc["eciAgent"]["auditMode"] = False
    agent.set_settings(doc)
    r = via_agent("create", "--name", name, "--network", "none", "--privileged",
                  stack.images["busybox"])  # fmt: skip
    assert r.returncode != 0
    assert direct("inspect", name).returncode != 0


def _mount_sources(direct: Any, name: str) -> list[str]:
    out = direct("inspect", "-f", "{{json .Mounts}}", name, check=True).stdout
    return [m["Source"] for m in json.loads(out)]


def test_audit_isolation_refusal_keeps_the_socket_rewrite(agent, via_agent, direct, stack, name):
    """An allowed image's socket mount plus an isolation refusal (--privileged): audit mode
    forwards it, but still with the container-facing socket, never the raw engine socket."""
    cli = stack.images["dockercli"]
    agent.set_settings(audited([cli]))
    try:
        r = via_agent(
            "create", "--name", name, "--network", "none", "--privileged",
            "-v", f"{stack.engine_socket}:/var/run/docker.sock", cli, "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _mount_sources(direct, name) == [agent.container_socket]
    finally:
        direct("rm", "-f", name)


def test_audit_blocked_command_from_a_container_keeps_the_socket_rewrite(
    agent, via_agent, direct, stack, name
):
    """A container whose command list blocks `docker create`: audit mode forwards the create,
    but the socket mount in it still gets the container-facing socket."""
    cli = stack.images["dockercli"]
    agent.set_settings(audited([cli], commands=["ps"]))
    inner = name + "-inner"
    try:
        r = via_agent(
            "run", "-d", "--name", name, "--network", "none",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", cli, "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = direct(
            "exec", name, "docker", "create", "--name", inner, "--network", "none",
            "-v", f"{stack.engine_socket}:/var/run/docker.sock", cli, "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _mount_sources(direct, inner) == [agent.container_socket]
    finally:
        direct("rm", "-f", name, inner)


def test_audit_does_not_forward_an_unrewritable_socket_mount(agent, via_agent, direct, stack, name):
    """A socket reached through a volume cannot be swapped for the container-facing socket:
    audit mode keeps refusing it rather than handing over the raw engine socket."""
    busybox = stack.images["busybox"]
    agent.set_settings(audited([]))
    volume = name + "-vol"
    try:
        r = direct(
            "volume", "create", "-o", "type=none", "-o", "o=bind",
            "-o", f"device={stack.engine_socket}", volume,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = via_agent("create", "--name", name, "--network", "none", "-v", f"{volume}:/x", busybox)
        assert r.returncode != 0, "audit mode created a container holding the raw engine socket"
        assert direct("inspect", name).returncode != 0
    finally:
        direct("rm", "-f", name)
        direct("volume", "rm", volume)
