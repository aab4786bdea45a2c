"""Review session 8b: more attacks on the pins (agent.pins), each checked on the ENGINE or the host.

A user owns a folder (`nobody`, as in test_pins.py). Each test asks the engine (what the
container saw, inspect data through the direct socket) or the host's files what happened, and
fails with "BYPASS:" if the attack worked, "BROKEN:" if a legitimate workflow fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NOBODY, swap_to, user_link
from tests.e2e.test_socket_mount import _raw

pytestmark = pytest.mark.engine


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _inspect(direct: Any, what: str, kind: str = "container") -> Any:
    r = direct(kind, "inspect", what)
    return (json.loads(r.stdout) or [None])[0] if r.returncode == 0 else None


# -- 1. the same source twice: a pinnable bind and an inline volume's device -----------------------


def test_an_inline_volume_device_naming_a_held_bind_source_is_not_left_unpinned(
    agent, direct, stack, name, home, etc_folder
):
    """`_hold_all` skips a key already held *before* asking whether the intent can carry a
    pin: a create binding the user's folder in `Binds` and naming the same path as the device
    of an inline local volume (`--mount type=volume,volume-opt=device=...`, refused on its own
    as unpinnable) is allowed; the Binds entry gets the pin, the volume's device stays the
    user's path. After the user points it at /etc/x, the engine's own start (a restart
    policy, a reboot) mounts /etc/x through the volume."""
    project = home / "project"
    vol = name + "-vol"
    body = {
        "Image": stack.images["busybox"],
        "Cmd": ["sh", "-c", "ls /v; echo written > /v/written"],
        "HostConfig": {
            "NetworkMode": "none",
            "Binds": [f"{project}:/b"],
            "Mounts": [{"Type": "volume", "Source": vol, "Target": "/v", "VolumeOptions": {
                "DriverConfig": {"Name": "local", "Options": {
                    "type": "none", "o": "bind", "device": str(project)}}}}],
        },
    }  # fmt: skip
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", json.dumps(body).encode())
    try:
        if _status(reply) != 201:
            return  # refused: held
        device = (_inspect(direct, vol, "volume") or {}).get("Options", {}).get("device")
        swap_to(project, etc_folder)
        seen = direct("start", "-a", name)  # the engine's own start
        written = etc_folder / "written"
        assert not written.exists(), (
            f"BYPASS: a create with Binds [{project}:/b] and an inline volume whose device is "
            f"the same path was allowed; the volume kept device={device!r}; after {project} "
            f"was pointed at {etc_folder}, the engine's own start wrote {written} "
            f"(saw {seen.stdout!r})"
        )
    finally:
        direct("rm", "-f", name)
        direct("volume", "rm", "-f", vol)


def test_a_service_with_an_inline_volume_device_naming_a_held_bind_source(
    agent, swarm, direct, stack, name, home, etc_folder
):
    """The same for a service: a bind Mount (pinned) and a volume Mount with the same path as
    its device (unpinned). Swarm creates the volume in each task with the user's path."""
    project = home / "project"
    vol = name + "-vol"
    body = {"Name": name, "TaskTemplate": {"RestartPolicy": {"Condition": "any", "Delay": 500000000},
            "ContainerSpec": {
        "Image": stack.images["busybox"],
        "Command": ["sh", "-c", "ls /v; echo written > /v/written; sleep 1"],
        "Mounts": [
            {"Type": "bind", "Source": str(project), "Target": "/b"},
            {"Type": "volume", "Source": vol, "Target": "/v", "VolumeOptions": {
                "DriverConfig": {"Name": "local", "Options": {
                    "type": "none", "o": "bind", "device": str(project)}}}},
        ]}}}  # fmt: skip
    try:
        reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
        if _status(reply) != 201:
            return
        time.sleep(3)
        swap_to(project, etc_folder)
        deadline = time.monotonic() + 30
        written = etc_folder / "written"
        while time.monotonic() < deadline and not written.exists():
            time.sleep(0.5)
        assert not written.exists(), (
            f"BYPASS: a service with a bind of {project} and an inline volume whose device is "
            f"the same path: after the user pointed it at {etc_folder}, a swarm task wrote "
            f"{written}"
        )
    finally:
        direct("service", "rm", name)
        time.sleep(2)
        for cid in direct("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={name}"
                          ).stdout.split():  # fmt: skip
            direct("rm", "-f", cid)
        direct("volume", "rm", "-f", vol)


# -- 2. workflows that send back what the engine stored (pin paths) ------------------------------


def test_a_pinned_service_can_be_updated_with_the_cli(agent, swarm, via_agent, direct, stack,
                                                       name, home):  # fmt: skip
    """`docker service update --env-add` (and scale, rollback) sends the whole stored spec
    back, whose bind Source is now the pin path: refused as "names-a-pin"?"""
    project = home / "project"
    try:
        via_agent("service", "create", "--detach", "--name", name, "--mount",
                  f"type=bind,source={project},target=/d", stack.images["busybox"],
                  "sleep", "600", check=True)  # fmt: skip
        upd = via_agent("service", "update", "--detach", "--env-add", "A=1", name)
        assert upd.returncode == 0, (
            f"BROKEN: `docker service update --env-add A=1` of a service created through the "
            f"agent with a pinned bind: {upd.stderr.strip()[-300:]!r}"
        )
        rb = via_agent("service", "rollback", "--detach", name)
        assert rb.returncode == 0, f"BROKEN: `docker service rollback`: {rb.stderr[-300:]!r}"
    finally:
        direct("service", "rm", name)


def test_a_pinned_container_can_be_recreated_from_its_inspect_data(
    agent, via_agent, direct, stack, name, home
):
    """What Watchtower, Portainer's "duplicate/edit", docker-autocompose do: inspect the
    container and create a new one with the same Config and HostConfig. The Binds now name
    the pin."""
    project = home / "project"
    via_agent("create", "--name", name, "--network", "none", "-v", f"{project}:/d",
              stack.images["busybox"], "ls", "/d", check=True)  # fmt: skip
    copy = name + "-copy"
    try:
        info = _inspect(direct, name)
        body = dict(info["Config"])
        host_config = dict(info["HostConfig"])
        if host_config.get("CgroupnsMode") == "host":
            # What a cgroup v1 engine stores by itself; asked for explicitly it is refused on
            # its own (the isolation policy, whatever the pins).
            del host_config["CgroupnsMode"]
        body["HostConfig"] = host_config
        reply = _raw(agent, "POST", f"/v1.41/containers/create?name={copy}",
                     json.dumps(body).encode())  # fmt: skip
        said = reply.split(b"\r\n\r\n", 1)[-1][:300]
        assert _status(reply) == 201, (
            f"BROKEN: re-creating a pinned container from its own inspect data (Watchtower, "
            f"Portainer) is refused: {said!r}"
        )
        assert "seed" in direct("start", "-a", copy).stdout, "the copy sees the user's folder"
        (bind,) = _inspect(direct, copy)["HostConfig"]["Binds"]
        assert bind == info["HostConfig"]["Binds"][0], "the same pin, forwarded as it is"
    finally:
        direct("rm", "-f", name, copy)


# -- 3. other mount namespaces: /proc/<pid>/root and a user's own mount namespace ----------------


def _userns_holder(folder: Path, at: Path) -> subprocess.Popen[bytes]:
    """As `nobody`: a user+mount namespace in which `folder` is bound at `at` (no privilege
    needed where unprivileged user namespaces are allowed)."""
    proc = subprocess.Popen(
        ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
         "unshare", "-Urm", "sh", "-c", f"mount --bind {folder} {at} && echo ok && sleep 120"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ok":
        proc.kill()
        pytest.skip("no unprivileged user namespaces here")
    return proc


def test_a_folder_bound_in_a_users_own_mount_namespace_is_not_judged_by_its_name_there(
    agent, via_agent, direct, stack, name, home, etc_folder
):
    """The agent judges the held fd by readlink(/proc/self/fd/N): for a file reached through
    /proc/<pid>/root of a process in another mount namespace, that is the path in THAT
    namespace. The user binds /etc/x at ~/project in a namespace of their own and links
    ~/via -> /proc/<pid>/root/<home>/project."""
    # a home the user can reach (pytest's own tmp folders are root's, 0700)
    base = Path(f"/tmp/eci-8b-{name}")
    base.mkdir(mode=0o755)
    home = base / "home"
    project = home / "project"
    project.mkdir(parents=True)
    for p in (home, project):
        os.chown(p, NOBODY, NOBODY)
    try:
        holder = _userns_holder(etc_folder, project)
    except BaseException:
        shutil.rmtree(base)
        raise
    try:
        user_link(home / "via", f"/proc/{holder.pid}/root{project}")
        # the sh is the child of unshare; either pid's root works for root
        r = via_agent("run", "--rm", "--name", name, "--network", "none", "-v",
                      f"{home / 'via'}:/d", stack.images["busybox"], "sh", "-c",
                      "ls /d; echo written > /d/written")  # fmt: skip
        assert not (etc_folder / "written").exists(), (
            f"BYPASS: a bind of {home / 'via'} (-> /proc/{holder.pid}/root{project}, /etc/x "
            f"bound there in the user's namespace) wrote into {etc_folder}: {r.stdout!r}"
        )
    finally:
        holder.kill()
        holder.wait()
        direct("rm", "-f", name)
        shutil.rmtree(base, ignore_errors=True)


def test_another_containers_files_are_not_reached_through_proc_pid_root(
    agent, via_agent, direct, stack, name, home
):
    """The engine's data root (every container's files) is sensitive. A user links
    ~/via -> /proc/<victim's pid>/root/secret: the agent opens it as root and judges it as
    "/secret"."""
    victim = name + "-victim"
    direct("run", "-d", "--name", victim, "--network", "none", stack.images["busybox"], "sh",
           "-c", "mkdir /secret && echo victims-secret > /secret/s && sleep 600",
           check=True)  # fmt: skip
    try:
        time.sleep(1)
        pid = direct("inspect", "-f", "{{.State.Pid}}", victim, check=True).stdout.strip()
        user_link(home / "via", f"/proc/{pid}/root/secret")
        r = via_agent("run", "--rm", "--name", name, "--network", "none", "-v",
                      f"{home / 'via'}:/d", stack.images["busybox"], "cat", "/d/s")  # fmt: skip
        assert "victims-secret" not in r.stdout, (
            f"BYPASS: a bind of the user's link to /proc/{pid}/root/secret read another "
            f"container's files: {r.stdout!r}"
        )
    finally:
        direct("rm", "-f", victim, name)


# -- 4. restore trusts (device, inode) alone -------------------------------------------------------


def test_restore_does_not_mount_a_root_file_that_took_a_deleted_sources_inode(
    stack, direct, name, home, tmp_path_factory
):
    """After a reboot the pins are gone; the user's pinned file was deleted in the meantime
    (its inode number is free again). A file root makes later on the same file system may get
    that number (ext4 hands out the lowest free inode of the parent folder's group): here the
    agent's own state folder, where it writes a record for every pin. The user points the
    source at it; `pins restore` compares device and inode only and mounts root's file at the
    pin, for the user's container to read and write (the records restore trusts)."""
    from tests.e2e.agent_process import DEFAULT_SETTINGS, AgentProcess, eci_agent
    from tests.e2e.conftest import _docker

    own_agent = AgentProcess(tmp_path_factory.mktemp("pin-agent-8b"), stack.engine_socket)
    own_agent.start(DEFAULT_SETTINGS)
    own = _docker("unix://" + own_agent.listen, stack)
    seed = home / "project" / "secretfile"
    seed.write_text("mine\n")
    os.chown(seed, NOBODY, NOBODY)
    state = own_agent.workdir / "state"
    try:
        own("create", "--name", name, "--network", "none", "-v", f"{seed}:/d",
            stack.images["busybox"], "sh", "-c", "cat /d; echo tampered >> /d",
            check=True)  # fmt: skip
        inode = seed.stat().st_ino
        own_agent.stop(unpin=True)  # the reboot
        seed.unlink()
        # root writes files in its state folder (a record per pin, events, ...)
        hit = None
        for i in range(64):
            f = state / "pins" / f"zz-later-{i}.json"
            f.write_text('{"root": "the agent\'s own record"}\n')
            os.chmod(f, 0o600)
            if f.stat().st_ino == inode:
                hit = f
                break
        if hit is None:
            pytest.skip("the file system did not reuse the inode number here")
        user_link(seed, hit)
        eci_agent("pins", "restore", "--state-dir", str(state),
                  "--runtime-dir", str(own_agent.runtime_dir))  # fmt: skip
        seen = direct("start", "-a", name).stdout
        assert "the agent's own record" not in seen and "tampered" not in hit.read_text(), (
            f"BYPASS: after the pinned {seed} was deleted and its inode number reused by "
            f"{hit} (the agent's state folder), the user linked {seed} -> {hit}; `eci-agent "
            f"pins restore` mounted it at the pin: the container read {seen!r} and wrote "
            f"{hit.read_text()!r}"
        )
    finally:
        direct("rm", "-f", name)
        own_agent.stop(unpin=True)
