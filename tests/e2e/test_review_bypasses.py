"""Bypass attempts against the command list through the client's identity (its cgroup).

Every attempt goes through the real agent; what happened is then asked of the ENGINE directly
(no such volume).
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from tests.e2e.agent_process import AgentProcess
from tests.e2e.test_command_list import (
    assert_blocked,
    exists,
    inside,
    pushed_cli_image,
    with_commands,
)

pytestmark = pytest.mark.engine

__all__ = ["inside"]  # a fixture, used by name


def test_a_cgroup_parent_naming_another_container_does_not_borrow_its_command_list(
    agent: AgentProcess, stack, inside, direct, name
):
    """The identity comes from the client's cgroup path, and `--cgroup-parent` is the
    creator's to choose: a new container placed under a cgroup named like another
    container's ID must still be held to its own image's list."""
    loose = f"{stack.registry}/fixtures/loose-{name}:1"
    pushed_cli_image(direct, stack, loose)
    volume = name + "-vol"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], loose],
                "allow",
                ["ps", "run"],
                eciAgent={
                    "commandLists": [
                        {
                            "images": [loose.rsplit(":", 1)[0] + ":*"],
                            "type": "deny",
                            "commands": ["push"],
                        }
                    ]
                },
            )  # fmt: skip
        )
        borrowed = inside(loose, suffix="-loose")
        strict = inside()
        assert_blocked(strict.docker("volume", "create", volume), agent, "/volumes/create")
        r = strict.docker(
            "run", "--rm", "--network", "none", f"--cgroup-parent=/{borrowed.id}",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", stack.images["dockercli"],
            "docker", "volume", "create", volume,
        )  # fmt: skip
        assert not exists(direct, "volume", volume), r.stdout + r.stderr
    finally:
        direct("volume", "rm", "-f", volume)
        direct("rmi", loose)


def _join_cgroups(pid: int) -> None:
    """Put this process into the cgroups of `pid` (what `runc exec` does for `docker exec`)."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    joined = 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        name = controllers.replace("name=", "") if controllers else "unified"
        for root in (f"/sys/fs/cgroup/{name}", "/sys/fs/cgroup"):
            procs = f"{root}{path}/cgroup.procs"
            if os.path.exists(procs):
                try:
                    with open(procs, "w") as out:
                        out.write(str(os.getpid()))
                    joined += 1
                except OSError:
                    pass
                break
    if not joined:
        raise RuntimeError(f"could not join the cgroups of {pid}")


def test_a_client_whose_process_is_gone_is_not_given_the_global_list(
    agent: AgentProcess, stack, inside, direct, name
):
    """A process in the container connects, hands the connection on (fork) and exits before
    the agent reads its cgroup: the agent cannot tell its container any more. That must not
    fall back to the global command list (looser here than the container's own)."""
    doc = with_commands(
        [stack.images["dockercli"]],
        "deny",
        ["push"],
        eciAgent={
            "commandLists": [
                {"images": [stack.images["dockercli"].rsplit(":", 1)[0] + ":*"],
                 "type": "allow", "commands": ["ps"]}
            ]
        },
    )  # fmt: skip
    agent.set_settings(doc)
    box = inside()
    volume = name + "-vol"
    assert_blocked(box.docker("volume", "create", volume), agent, "/volumes/create")
    box_pid = int(direct("inspect", "--format", "{{.State.Pid}}", box.name, check=True).stdout)
    assert agent.proc is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.proc.send_signal(signal.SIGSTOP)  # the race, won for certain: no accept until later
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            code = 1
            try:
                _join_cgroups(box_pid)
                sock.connect(agent.container_socket)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    body = json.dumps({"Name": volume}).encode()
    sock.sendall(
        b"POST /v1.41/volumes/create HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sock.settimeout(30)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    finally:
        sock.close()
        created = exists(direct, "volume", volume)
        direct("volume", "rm", "-f", volume)
    assert not created, reply[:300]
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
