"""Review session 9d: ways around the 9c fixes (`_shared_pid`, `_judge_crossing` skipping
containers without the socket, `socket-not-mounted`).

Each test attempts an attack through the agent and asks the ENGINE (`direct`) what happened;
it fails with "BYPASS:" if the attack worked, "BROKEN:" if a legitimate workflow broke.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_command_list import exists, inside, pushed_cli_image
from tests.e2e.test_review_session9c import (
    INJECT_C,
    _injector_image,
    _two_lists,
    _volume_create_request,
)

pytestmark = pytest.mark.engine

__all__ = ["inside"]  # a fixture, used by name

SOCK = "/var/run/docker.sock"


def _raw_from(direct: Any, box: Any, tmp: Path, request: str) -> str:
    """Send one raw HTTP request on the agent's container socket AS the box's own process
    (its pid 1, by ptrace: the agent names the box by SO_PEERCRED), return the answer."""
    import subprocess

    binary = tmp / "inject-raw"
    if not binary.exists():
        subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(INJECT_C)],
                       check=True, capture_output=True)  # fmt: skip
        direct("cp", str(binary), f"{box.name}:/inject", check=True)
    r = direct("exec", box.name, "/inject", "1", SOCK, request, timeout=60)
    return r.stdout + r.stderr


def _post(path: str, body: dict[str, Any]) -> str:
    data = json.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: docker\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(data)}\r\n\r\n{data}"
    )


@pytest.fixture
def looser_setup(agent, stack, inside, direct, name, tmp_path):
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, reaper)
    injector = f"local/inject-{name}:1"
    _injector_image(direct, stack, injector, tmp_path)
    volume = name + "-vol"
    agent.set_settings(_two_lists(stack, reaper))
    box = inside()
    looser = inside(reaper, suffix="-reaper")
    r = box.docker("volume", "create", volume)
    assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
    yield box, looser, injector, volume
    direct("rm", "-f", name + "-child", name + "-ghost")
    direct("volume", "rm", "-f", volume)
    direct("rmi", reaper, injector)


def test_a_top_level_pidmode_joins_a_looser_holders_pid_namespace(
    looser_setup, direct, name, tmp_path
):
    """The engine (API < 1.44 wrapper) still reads a HostConfig embedded at the TOP of a create
    body when the body has no `HostConfig` key; `_shared_pid` only reads `HostConfig.PidMode`."""
    box, looser, injector, volume = looser_setup
    body = {
        "Image": injector,
        "Cmd": ["/inject", "1", SOCK, _volume_create_request(volume)],
        "PidMode": f"container:{looser.id}",
        "NetworkMode": "none",
    }
    answer = _raw_from(
        direct, box, tmp_path, _post(f"/v1.41/containers/create?name={name}-child", body)
    )
    created = exists(direct, "container", name + "-child")
    if created:
        box.docker("start", name + "-child")
        direct("wait", name + "-child", timeout=60)
        mode = json.loads(direct("inspect", name + "-child", check=True).stdout)[0]
        mode = mode["HostConfig"]["PidMode"]
    else:
        mode = None
    assert not exists(direct, "volume", volume), (
        "BYPASS: a container held to the strict list created a child with a TOP-LEVEL "
        f"PidMode (engine read it as {mode!r}) joining the looser holder's PID namespace, "
        f"whose process then created volume {volume} under the looser list; create: {answer[:300]}"
    )


def test_a_pid_container_name_is_bound_again_at_start_of_an_existing_child(
    looser_setup, via_agent, direct, name
):
    """Held on engine 20.10 (it refuses a create naming a container that does not exist, and
    the start fails: "cannot join PID of a non running container: <the old ID>"). But a container made by the HOST user with `--pid=container:<name>` keeps the NAME
    (`_shared_pid` pins only a container's creates) and the engine resolves it at every START;
    `docker start` does not look at PidMode. The strict container removes the plain container
    of that name, renames the looser holder to it and starts the child."""
    box, looser, injector, volume = looser_setup
    ghost = name + "-ghost"
    via_agent("run", "-d", "--name", ghost, "--network", "none", injector, "sleep", "600",
              check=True)  # fmt: skip
    via_agent(
        "create", "--name", name + "-child", "--network", "none", f"--pid=container:{ghost}",
        injector, "/inject", "1", SOCK, _volume_create_request(volume), check=True,
    )  # fmt: skip
    r1 = box.docker("rm", "-f", ghost)
    r2 = box.docker("rename", looser.name, ghost)
    assert r1.returncode == 0 and r2.returncode == 0, f"rm/rename refused: {r1.stderr}{r2.stderr}"
    try:
        r3 = box.docker("start", name + "-child")
        if r3.returncode == 0:
            direct("wait", name + "-child", timeout=60)
        assert not exists(direct, "volume", volume), (
            "BYPASS: a child made by the host user with --pid=container:<name> was started by the "
            "strict container after it renamed the looser holder to <name>: the child joined the "
            f"holder's PID namespace and created volume {volume} under the looser list "
            f"({r3.stdout}{r3.stderr})"
        )
    finally:
        direct("rename", ghost, looser.name)


def test_exec_into_a_plain_container_that_shares_a_looser_holders_pid_namespace(
    looser_setup, via_agent, direct, name
):
    """`docker exec` into a container WITHOUT the socket is not asked about. But a container
    without the socket that shares a looser holder's PID namespace (a debugging sidecar the
    host user made: `--pid=container:<holder>`) lets what runs there act as the holder."""
    box, looser, injector, volume = looser_setup
    via_agent("run", "-d", "--name", name + "-child", "--network", "none",
              f"--pid=container:{looser.name}", injector, "sleep", "600", check=True)  # fmt: skip
    r = box.docker("exec", name + "-child", "/inject", "1", SOCK, _volume_create_request(volume))
    assert not exists(direct, "volume", volume), (
        "BYPASS: the strict container exec'd into a plain container (no socket) that shares "
        "the looser holder's PID namespace and had the holder's process create volume "
        f"{volume} under the looser list: {r.stdout}{r.stderr}"
    )


def test_pid_container_of_a_plain_container_already_in_a_looser_holders_namespace(
    looser_setup, via_agent, direct, name
):
    """`_shared_pid` asks only whether the NAMED container mounts the socket. A plain container
    (no socket) already in the looser holder's PID namespace (a sidecar the host user made)
    is a way into the same namespace: `--pid=container:<sidecar>`."""
    box, looser, injector, volume = looser_setup
    sidecar = name + "-ghost"
    via_agent("run", "-d", "--name", sidecar, "--network", "none",
              f"--pid=container:{looser.name}", injector, "sleep", "600", check=True)  # fmt: skip
    r = box.docker(
        "run", "--name", name + "-child", "--network", "none", f"--pid=container:{sidecar}",
        injector, "/inject", "1", SOCK, _volume_create_request(volume),
    )  # fmt: skip
    assert not exists(direct, "volume", volume), (
        "BYPASS: the strict container joined the PID namespace of a plain sidecar that shares "
        "the looser holder's, and had the holder's process create volume "
        f"{volume} under the looser list: {r.stdout}{r.stderr}"
    )
