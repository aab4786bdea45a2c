"""Review session 9c: attacks on per-image command lists chosen by identity, policy changes
reaching work in flight, the settings file checks and the registry client.

Each test attempts an attack through the agent and then asks the ENGINE (the `direct` CLI on
the raw engine socket) whether the forbidden thing happened; it fails with "BYPASS:" if the
attack worked, "BROKEN:" if a legitimate workflow fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_command_list import exists, inside, pushed_cli_image, with_commands
from tests.e2e.test_review_session9a import SOCK, _container_exists, _repo

pytestmark = pytest.mark.engine

__all__ = ["inside"]  # a fixture, used by name


def _two_lists(stack: Any, reaper: str, denied: str = "volume*") -> dict[str, Any]:
    """dockercli: the strict global list (`denied`); the reaper: its own looser one."""
    return with_commands(
        [stack.images["dockercli"], _repo(reaper) + ":*"],
        "deny",
        [denied],
        eciAgent={
            "commandLists": [
                {"images": [_repo(reaper) + ":*"], "type": "deny", "commands": ["push"]}
            ]
        },
    )


# -- 1. a child of a looser image reaches its creator's socket through a shared PID namespace --


def test_a_child_of_a_looser_image_cannot_use_its_creators_socket_through_a_shared_pid_namespace(
    agent, stack, inside, direct, name
):
    """The strict container may not give the socket to a child of the reaper's image (another
    list). So it runs the reaper's image WITHOUT the socket but in its own PID namespace
    (`--pid container:<itself>`): the child reaches /proc/1/root/var/run/docker.sock, the
    container-facing socket; the agent sees a container of an image that may mount the socket
    and judges it by that image's (looser) list."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, reaper)
    volume = name + "-vol"
    try:
        agent.set_settings(_two_lists(stack, reaper))
        box = inside()
        r = box.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        r = box.docker(
            "run", "-d", "--name", name + "-child", "--network", "none",
            f"--pid=container:{box.id}", reaper,
            "docker", "-H", f"unix:///proc/1/root{SOCK}", "volume", "create", volume,
        )  # fmt: skip
        # (`run -d`: attaching to the child is refused, it is held to another list)
        direct("wait", name + "-child", timeout=60)
        assert not exists(direct, "volume", volume), (
            "BYPASS: a container held to the strict list ran a child of a looser image without "
            "the socket but in its PID namespace; the child used /proc/1/root/var/run/docker.sock"
            f" under the looser list and created volume {volume}: {r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", name + "-child")
        direct("volume", "rm", "-f", volume)
        direct("rmi", reaper)


@pytest.mark.parametrize("how", ["volumes-from", "volume-bind-device"])
def test_a_child_of_a_looser_image_cannot_get_the_socket_another_way(
    how, agent, stack, inside, direct, name
):
    """The same child given the socket by `--volumes-from <the strict container>` or a local
    volume whose device is the agent's container-facing socket."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, reaper)
    volume, sockvol = name + "-vol", name + "-sockvol"
    try:
        agent.set_settings(_two_lists(stack, reaper, "network*"))
        box = inside()
        if how == "volumes-from":
            args = ["--volumes-from", box.id]
            sock = SOCK
        else:
            src = json.loads(direct("inspect", box.id, check=True).stdout)[0]["Mounts"]
            host_sock = next(m["Source"] for m in src if m["Destination"] == SOCK)
            r = box.docker("volume", "create", "--driver", "local", "--opt", "type=none",
                       "--opt", "o=bind", "--opt", f"device={host_sock}", sockvol)  # fmt: skip
            assert r.returncode != 0, f"the socket volume was made: {r.stdout}{r.stderr}"
            args = ["-v", f"{sockvol}:/s/docker.sock"]
            sock = "/s/docker.sock"
        r = box.docker(
            "run", "-d", "--name", name + "-child", "--network", "none", *args, reaper,
            "docker", "-H", f"unix://{sock}", "network", "create", "--internal", volume,
        )  # fmt: skip
        if r.returncode == 0:
            direct("wait", name + "-child", timeout=60)
        assert not exists(direct, "network", volume), (
            f"BYPASS: a child of a looser image got the socket by {how} and created network "
            f"{volume} under the looser list: {r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", name + "-child")
        direct("network", "rm", volume)
        direct("volume", "rm", "-f", sockvol)
        direct("rmi", reaper)


# -- 2. a shared PID namespace is an exec by other means -------------------------------------

INJECT_C = Path(__file__).parent / "data" / "review9c_inject.c"


def _injector_image(direct: Any, stack: Any, ref: str, tmp: Path) -> None:
    """A local image (never pushed, no socket) with a static program that runs syscalls inside
    another process by ptrace (tests/e2e/data/review9c_inject.c)."""
    ctx = tmp / "inject-ctx"
    ctx.mkdir()
    subprocess.run(["gcc", "-static", "-O1", "-o", str(ctx / "inject"), str(INJECT_C)],
                   check=True, capture_output=True)  # fmt: skip
    (ctx / "Dockerfile").write_text(f"FROM {stack.images['busybox']}\nCOPY inject /inject\n")
    direct("build", "-t", ref, str(ctx), check=True)


def _volume_create_request(volume: str) -> str:
    body = json.dumps({"Name": volume})
    return (
        "POST /v1.41/volumes/create HTTP/1.1\r\nHost: docker\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


def test_a_container_held_to_the_strict_list_cannot_act_as_a_looser_container_through_its_pid_namespace(
    agent, stack, inside, direct, name, tmp_path
):
    """`docker exec` into a container held to a looser list is refused (what runs there is
    judged by its list). A strict container instead runs a child (no socket, an image of no
    list) in the looser container's PID namespace (`--pid container:<reaper>`) and has the
    reaper's own process make the connection (ptrace: a few syscalls injected into its
    `sleep`). The agent names the reaper by SO_PEERCRED and judges by its looser list."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, reaper)
    injector = f"local/inject-{name}:1"
    _injector_image(direct, stack, injector, tmp_path)
    volume = name + "-vol"
    try:
        agent.set_settings(_two_lists(stack, reaper))
        box = inside()
        looser = inside(reaper, suffix="-reaper")
        r = box.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        r = box.docker("exec", looser.name, "docker", "volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        r = box.docker(
            "run", "--rm", "--network", "none", f"--pid=container:{looser.id}", injector,
            "/inject", "1", SOCK, _volume_create_request(volume),
        )  # fmt: skip
        assert not exists(direct, "volume", volume), (
            "BYPASS: a container held to the strict list (volume* denied) joined a looser "
            "container's PID namespace and had its process create volume "
            f"{volume} under the looser list: {r.stdout}{r.stderr}"
        )
    finally:
        direct("volume", "rm", "-f", volume)
        direct("rmi", reaper, injector)


# -- 3. legitimate workflows: a runner with a list of its own, and the ryuk pattern ----------


def test_a_container_with_its_own_list_can_still_run_and_exec_into_plain_containers(
    agent, stack, inside, direct, name
):
    """A CI runner image gets a per-image list of its own (only `volume*` denied); the global
    list is another (`push` denied). The runner holds the socket and runs its jobs the way
    every docker executor does: `docker run --rm <job image> ...` (create, ATTACH, start),
    `docker exec` and `docker cp` into a job container. The job containers hold no socket:
    nothing in them is judged by any command list, so there is no list to borrow."""
    cli = stack.images["dockercli"]
    job = name + "-job"
    try:
        agent.set_settings(
            with_commands(
                [cli],
                "deny",
                ["push"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(cli) + ":*"], "type": "deny", "commands": ["volume*"]}
                    ]
                },
            )  # fmt: skip
        )
        runner = inside()
        r = runner.docker("run", "--rm", "--network", "none", stack.images["busybox"],
                          "echo", "job-output")  # fmt: skip
        assert r.returncode == 0 and "job-output" in r.stdout, (
            f"BROKEN: a runner with its own command list cannot `docker run` (attached) a plain "
            f"container of a job image that holds no socket: {r.stdout}{r.stderr}"
        )
        r = runner.docker("run", "-d", "--name", job, "--network", "none",
                          stack.images["busybox"], "sleep", "600")  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = runner.docker("exec", job, "echo", "exec-output")
        assert r.returncode == 0 and "exec-output" in r.stdout, (
            f"BROKEN: a runner with its own command list cannot `docker exec` into its own job "
            f"container (no socket): {r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", job)


def test_a_test_container_can_start_ryuk_held_to_a_stricter_list(
    agent, stack, inside, direct, name
):
    """COMMAND_LIST.md's own example: ryuk has a STRICT list of its own (only ls/stop/rm);
    the global list (`push`, `build*` denied) applies to the test container (the docker CLI
    image). Testcontainers run inside a container (the socket mounted) starts ryuk with the
    socket. The child is held to a list stricter than its creator's: it gains nothing."""
    ryuk = f"{stack.registry}/testcontainers/ryuk-{name}:0.5.1"
    pushed_cli_image(direct, stack, ryuk)
    reaper = name + "-ryuk"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], _repo(ryuk) + ":*"],
                "deny",
                ["push", "build*"],
                eciAgent={
                    "commandLists": [
                        {
                            "images": [_repo(ryuk) + ":*"],
                            "type": "allow",
                            "commands": [
                                "container ls",
                                "container stop",
                                "container rm",
                                "network ls",
                                "network rm",
                                "volume ls",
                                "volume rm",
                            ],
                        }
                    ]
                },
            )  # fmt: skip
        )
        tests = inside()
        r = tests.docker(
            "run", "-d", "--name", reaper, "--network", "none", "-v", f"{SOCK}:{SOCK}", ryuk,
            "sleep", "600",
        )  # fmt: skip
        assert r.returncode == 0 and _container_exists(direct, reaper), (
            "BROKEN: a test container (global list) cannot start ryuk with the socket although "
            f"ryuk is held to a STRICTER list of its own: {r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", reaper)
        direct("rmi", ryuk)


# -- 4. the settings file: `..` after a symlink -------------------------------------------------


def test_the_settings_walk_follows_dotdot_after_a_symlink_as_the_kernel_does(tmp_path):
    """The kernel resolves `a/../x` AFTER following `a` (physically); `walk_path` starts from
    `os.path.abspath`, which drops `a/..` lexically, so the folders checked are not the ones
    the kernel passes through. `/etc/eci/link/../admin-settings.json` with `link` leading into
    a user's folder reaches the USER's file: `untrusted_reasons` (what `eci-agent doctor`
    shows) finds nothing wrong, and the load is refused only by the inode check, saying the
    file "changed while it was being read" (read again at its next change: never)."""
    from agent.settings.loader import Loaded, load_settings, untrusted_reasons
    from tests.e2e.conftest import NOBODY

    root = tmp_path / "etc"
    user = tmp_path / "home-user"
    (user / "sub").mkdir(parents=True)
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chown(user, NOBODY, NOBODY)
    (user / "admin.json").write_text(json.dumps({
        "configurationFileVersion": 2,
        "enhancedContainerIsolation": {"value": False, "locked": True}}))  # fmt: skip
    os.chown(user / "admin.json", NOBODY, NOBODY)
    (root / "admin.json").write_text(json.dumps({
        "configurationFileVersion": 2,
        "enhancedContainerIsolation": {"value": True, "locked": True}}))  # fmt: skip
    (root / "a").symlink_to(user / "sub")
    path = Path(f"{root}/a/../admin.json")
    assert "false" in path.read_text()  # the kernel reaches the user's file
    result = load_settings(path, strict_modes=True)
    assert not isinstance(result, Loaded), "BYPASS: the user's settings file was loaded"
    reasons = untrusted_reasons(path)
    assert reasons and str(user) in " ".join(reasons), (
        "BROKEN: a path whose `..` comes after a symlink into a user's folder is judged on the "
        f"wrong folders: untrusted_reasons says {reasons!r} (doctor: trusted), and the load "
        f"says {getattr(result, 'reason', result)!r}"
    )
