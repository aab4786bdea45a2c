"""The command list, enforced on what containers ask through their mounted socket.

The real docker CLI runs INSIDE an allowed container (the dockercli fixture) against its
`/var/run/docker.sock`, which the agent rewrote to its container-facing socket. Every block
is checked twice: the CLI prints the seeds' message, and the ENGINE (asked directly) shows
no effect. The host user, on the host-facing socket, is never restricted by the list.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, http_over_unix, settings_with

pytestmark = pytest.mark.engine

BLOCKED = re.compile(
    r'Error response from daemon: enhanced container isolation: docker command "([^"]+)" is '
    r"blocked; if you wish to allow it, configure the docker socket command list in the admin "
    r"settings file (\S+)"
)


def with_commands(
    images: list[str], kind: str, commands: list[str], **extra: Any
) -> dict[str, Any]:
    doc = settings_with(images)
    doc["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"] = {
        "type": kind,
        "commands": commands,
    }
    doc.update(extra)
    return doc


class Inside:
    """A long-running allowed container with the docker CLI, and a way to run it inside."""

    def __init__(self, direct: Any, via_agent: Any, name: str, image: str) -> None:
        self.direct = direct
        self.name = name
        via_agent(
            "run", "-d", "--name", name, "--network", "none",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", image, "sleep", "600",
            check=True,
        )  # fmt: skip
        info = json.loads(direct("inspect", name, check=True).stdout)[0]
        self.id: str = info["Id"]
        self.image: str = info["Config"]["Image"]

    def docker(self, *args: str, stdin: str | None = None) -> Any:
        flags = ["-i"] if stdin is not None else []
        return self.direct("exec", *flags, self.name, "docker", *args, input=stdin, timeout=120)

    def remove(self) -> None:
        self.direct("rm", "-f", self.name)


@pytest.fixture
def inside(
    agent: AgentProcess, via_agent: Any, direct: Any, stack: Any, name: str
) -> Iterator[Any]:
    """Start (after the test set its settings) a dockercli container that may mount the socket."""
    started: list[Inside] = []

    def start(image: str | None = None, suffix: str = "") -> Inside:
        box = Inside(direct, via_agent, name + suffix, image or stack.images["dockercli"])
        started.append(box)
        return box

    yield start
    for box in started:
        box.remove()


def pushed_cli_image(direct: Any, stack: Any, ref: str) -> None:
    """An image of its own with the docker CLI in it (the dockercli image plus a label), pushed
    as `ref`. Its own digest: per-image command lists go by what an image IS (its digest),
    so the dockercli image itself pushed under another name would be that image too."""
    direct("build", "-t", ref, "-", check=True,
           input=f"FROM {stack.images['dockercli']}\nLABEL eci-test-image={ref}\n")  # fmt: skip
    direct("push", ref, check=True)


def exists(direct: Any, kind: str, name: str) -> bool:
    return direct(kind, "inspect", name).returncode == 0


def registry_has_tag(stack: Any, repo: str, tag: str) -> bool:
    url = f"http://{stack.registry}/v2/{repo}/tags/list"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            tags = json.loads(resp.read()).get("tags") or []
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise
    return tag in tags


def assert_blocked(result: Any, agent: AgentProcess, fragment: str) -> str:
    assert result.returncode != 0, result.stdout
    match = BLOCKED.search(result.stderr)
    assert match, result.stderr
    assert match.group(2) == str(agent.settings_path)
    assert fragment in match.group(1), match.group(1)
    return match.group(1)


def test_deny_push_blocks_push_and_nothing_reaches_the_registry(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["push"]))
    box = inside()
    tag = f"{stack.registry}/fixtures/busybox:pushed-{name}"
    # Tagging is not pushing: it works inside, and the engine shows the new tag.
    r = box.docker("tag", stack.images["busybox"], tag)
    assert r.returncode == 0, r.stderr
    assert exists(direct, "image", tag)
    try:
        r = box.docker("push", tag)
        target = assert_blocked(r, agent, "/images/")
        assert re.fullmatch(
            rf"/v[0-9.]+/images/{re.escape(stack.registry)}/fixtures/busybox/push\?tag=pushed-{name}",
            target,
        ), target
        assert not registry_has_tag(stack, "fixtures/busybox", f"pushed-{name}")
        # ... and everything else still works.
        assert box.docker("ps").returncode == 0
        assert box.docker("images", "-q").returncode == 0
    finally:
        direct("rmi", tag)


def test_deny_build_and_push(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["build", "push"]))
    box = inside()
    built = f"local/built-{name}:1"
    dockerfile = f"FROM {stack.images['busybox']}\nLABEL built=inside\n"
    r = box.docker("build", "-t", built, "-", stdin=dockerfile)
    assert_blocked(r, agent, "/build")
    assert not exists(direct, "image", built)
    r = box.docker("push", stack.images["busybox"])
    assert_blocked(r, agent, "/push")


def test_deny_image_wildcard(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["image*"]))
    box = inside()
    keep = f"local/keep-{name}:1"
    direct("tag", stack.images["busybox"], keep, check=True)
    try:
        assert_blocked(box.docker("images"), agent, "/images/json")
        assert_blocked(box.docker("rmi", keep), agent, "/images/")
        assert exists(direct, "image", keep), "the blocked rmi must not have removed the image"
        assert_blocked(box.docker("pull", stack.images["busybox"]), agent, "/images/create")
        r = box.docker("ps", "-a", "--format", "{{.Names}}")
        assert r.returncode == 0 and box.name in r.stdout.split()
    finally:
        direct("rmi", keep)


def test_deny_container_wildcard(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["container*"]))
    box = inside()
    child = name + "-child"
    assert_blocked(box.docker("ps"), agent, "/containers/json")
    r = box.docker("create", "--name", child, "--network", "none", stack.images["busybox"])
    assert_blocked(r, agent, "/containers/create")
    assert not exists(direct, "container", child)
    assert_blocked(box.docker("stop", box.name), agent, "/stop")
    assert json.loads(direct("inspect", box.name, check=True).stdout)[0]["State"]["Running"]
    volume = name + "-vol"
    try:
        r = box.docker("volume", "create", volume)
        assert r.returncode == 0, r.stderr
        assert exists(direct, "volume", volume)
    finally:
        direct("volume", "rm", volume)


def test_allow_list_ps_and_container_wildcard(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "allow", ["ps", "container*"]))
    box = inside()
    r = box.docker("ps", "--format", "{{.Names}}")
    assert r.returncode == 0 and box.name in r.stdout.split(), r.stderr
    volume = name + "-vol"
    assert_blocked(box.docker("volume", "create", volume), agent, "/volumes/create")
    assert not exists(direct, "volume", volume)
    assert_blocked(box.docker("images"), agent, "/images/json")
    child = name + "-child"
    r = box.docker("create", "--name", child, "--network", "none", stack.images["busybox"])
    assert r.returncode == 0, r.stderr
    assert exists(direct, "container", child)
    r = box.docker("rm", child)
    assert r.returncode == 0, r.stderr
    assert not exists(direct, "container", child)


def test_allow_ps_alone_lets_docker_ps_work(agent, stack, inside):
    agent.set_settings(with_commands([stack.images["dockercli"]], "allow", ["ps"]))
    box = inside()
    r = box.docker("ps")
    assert r.returncode == 0, r.stderr
    assert_blocked(box.docker("version"), agent, "/version")


def test_the_host_user_is_never_restricted(agent, stack, via_agent, direct, name):
    agent.set_settings(
        with_commands([stack.images["dockercli"]], "deny", ["container*", "volume*", "image*"])
    )
    assert via_agent("ps").returncode == 0
    assert via_agent("images").returncode == 0
    volume = name + "-vol"
    try:
        assert via_agent("volume", "create", volume).returncode == 0
        assert exists(direct, "volume", volume)
    finally:
        direct("volume", "rm", volume)


def test_nested_socket_mount_with_an_unlisted_image_is_refused(agent, stack, inside, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", []))
    box = inside()
    child = name + "-nested"
    r = box.docker(
        "create", "--name", child, "--network", "none",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", stack.images["busybox"],
    )  # fmt: skip
    assert r.returncode != 0
    assert "docker socket mount denied for container with image" in r.stderr, r.stderr
    assert not exists(direct, "container", child)
    # The allowed image may be nested (it gets the container-facing socket again).
    r = box.docker(
        "create", "--name", child, "--network", "none",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", stack.images["dockercli"],
    )  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        mounts = json.loads(direct("inspect", "-f", "{{json .Mounts}}", child, check=True).stdout)
        assert [m["Source"] for m in mounts] == [agent.container_socket]
    finally:
        direct("rm", "-f", child)


def test_per_image_list_overrides_the_global_one_only_for_that_image(
    agent, stack, inside, direct, name
):
    other = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, other)
    try:
        doc = with_commands(
            [stack.images["dockercli"], other],
            "deny",
            ["volume*"],
            eciAgent={
                "commandLists": [
                    {"images": [other.rsplit(":", 1)[0] + ":*"], "type": "allow",
                     "commands": ["container ls", "container stop", "container rm"]}
                ]
            },
        )  # fmt: skip
        agent.set_settings(doc)
        plain = inside()
        reaper = inside(other, suffix="-reaper")
        # The reaper: its own allow list, not the global deny list.
        assert reaper.docker("ps").returncode == 0
        assert_blocked(reaper.docker("images"), agent, "/images/json")
        assert_blocked(reaper.docker("network", "ls"), agent, "/networks")
        # Everyone else: the global deny list.
        assert plain.docker("images").returncode == 0
        volume = name + "-vol"
        assert_blocked(plain.docker("volume", "create", volume), agent, "/volumes/create")
        assert not exists(direct, "volume", volume)
        # Reaper may stop and remove what it lists.
        assert reaper.docker("rm", "-f", plain.name).returncode == 0
        assert not exists(direct, "container", plain.name)
    finally:
        direct("rmi", other)


def test_blocked_commands_are_attributed_to_the_container(agent, stack, inside):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["volume*"]))
    box = inside()
    before = len(agent.log())
    assert_blocked(box.docker("volume", "ls"), agent, "/volumes")
    events = [
        json.loads(line[line.index("{") :])
        for line in agent.log()[before:].splitlines()
        if '"command-blocked"' in line
    ]
    assert events, agent.log()[before:]
    details = events[-1]["details"]
    assert details["container"] == box.id
    assert details["container_name"] == box.name
    assert details["image"] == box.image
    assert "volume ls" in details["commands"].split(",")
    assert details["matched"] == "volume*"
    assert re.fullmatch(r"/v[0-9.]+/volumes", events[-1]["path"])
    # ... and the same in the event store, as `eci-agent events` shows it.
    r = subprocess.run(
        [sys.executable, "-m", "agent", "events", "--json", "--kind", "denied",
         "--control", agent.control],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    stored = [json.loads(line) for line in r.stdout.splitlines()]
    blocked = [e for e in stored if e["rule"] == "command-blocked"]
    assert blocked, stored[-3:]
    last = blocked[-1]
    assert last["containerId"] == box.id and last["containerName"] == box.name
    assert last["image"] == box.image
    assert "volume ls" in last["commands"]
    assert last["listener"] == "container"


# -- bypass attempts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1.41/volumes/create",
        "/volumes/create",
        "/v1.41/%76olumes/create",
        "/v1.41/volumes/%63reate",
        "/V1.41/volumes/create",
        "/v1.41//volumes/create",
        "/v1.41/volumes/create/",
        "/v1.41/volumes/./create",
    ],
)
def test_raw_requests_on_the_container_socket_cannot_dodge_the_list(
    agent, stack, direct, target, name
):
    """A process on the container socket (here: a host process, which gets the global list)."""
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["volume*"]))
    volume = name + "-raw"
    body = json.dumps({"Name": volume}).encode()
    request = (
        f"POST {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    answer = http_over_unix(agent.container_socket, request)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 403, 404), answer[:300]
    assert not exists(direct, "volume", volume)


def test_pipelined_second_request_is_judged_too(agent, stack, direct, name):
    agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["volume*"]))
    volume = name + "-pipe"
    body = json.dumps({"Name": volume}).encode()
    request = (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
        + (
            f"POST /v1.41/volumes/create HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )
    answer = http_over_unix(agent.container_socket, request)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"is blocked" in answer
    assert not exists(direct, "volume", volume)


def test_container_reaching_the_host_socket_gets_no_more_than_a_mount(
    agent, stack, via_agent, direct, name, tmp_path
):
    """A hard link to the agent's HOST socket inside a folder a container has bound."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    agent.set_settings(settings_with([]))  # no image may mount the socket
    via_agent(
        "run", "-d", "--name", name, "--network", "none", "-v", f"{shared}:/shared",
        stack.images["dockercli"], "sleep", "600", check=True,
    )  # fmt: skip
    child = name + "-child"
    try:
        os.link(agent.listen, shared / "agent.sock")
        r = direct(
            "exec", name, "docker", "-H", "unix:///shared/agent.sock",
            "run", "--name", child, "--network", "none", stack.images["busybox"], "true",
        )  # fmt: skip
        assert r.returncode != 0
        assert "reached eci-agent's host socket" in r.stderr, r.stderr
        assert not exists(direct, "container", child)
        # With its image allowed, it is served like a socket mount: command list included.
        agent.set_settings(with_commands([stack.images["dockercli"]], "deny", ["container*"]))
        r = direct("exec", name, "docker", "-H", "unix:///shared/agent.sock", "volume", "ls")
        assert r.returncode == 0, r.stderr
        r = direct("exec", name, "docker", "-H", "unix:///shared/agent.sock", "ps")
        assert_blocked(r, agent, "/containers/json")
    finally:
        direct("rm", "-f", name, child)
        (shared / "agent.sock").unlink(missing_ok=True)
