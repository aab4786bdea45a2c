"""Review session 8: attacks on the pins (agent.pins), each checked on the ENGINE or the host.

A user owns a folder (`nobody`, as in test_pins.py). Each test asks the engine (what the
container saw, its inspect data through the direct socket) or the host's files what happened,
and fails with "BYPASS:" if the attack worked.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from tests.e2e.conftest import NOBODY, user_link
from tests.e2e.test_socket_mount import _raw

pytestmark = pytest.mark.engine


def _binds(direct: Any, name: str) -> list[str]:
    out = direct("inspect", "-f", "{{json .HostConfig.Binds}}", name).stdout
    return list(json.loads(out or "null") or [])


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _logs_until(direct: Any, name: str, words: tuple[str, ...], wait: float = 25.0) -> str:
    deadline = time.monotonic() + wait
    text = ""
    while time.monotonic() < deadline:
        r = direct("logs", name)
        text = r.stdout + r.stderr
        if any(w in text for w in words):
            return text
        time.sleep(0.5)
    return text


# -- 1. a bind volume through a user's link: the pin hides where it leads -------------------------


@pytest.mark.parametrize("use", ["volume", "pin-path-named-directly"])
def test_a_bind_volume_through_a_users_link_never_reaches_inside_etc(
    use, agent, via_agent, direct, stack, name, home, etc_folder
):
    """`docker volume create -o o=bind -o device=<user's link to /etc/x>`: the volume create
    only checks for the socket; the device is held and pinned. A container using the volume is
    then judged on the device, which is the pin path now: not under /etc by name, and not /etc's
    inode. Then a container writes into /etc/x on the host (/etc/cron.d, /etc/sudoers.d)."""
    link = home / "cfg"
    user_link(link, etc_folder)
    vol = name + "-vol"
    r = via_agent("volume", "create", "--driver", "local", "-o", "type=none", "-o", "o=bind",
                  "-o", f"device={link}", vol)  # fmt: skip
    try:
        if r.returncode != 0:
            return  # refused at the volume: held
        device = json.loads(direct("volume", "inspect", vol, check=True).stdout)[0]["Options"][
            "device"
        ]
        source = f"{vol}:/d" if use == "volume" else f"{device}:/d"
        run = via_agent("run", "--rm", "--network", "none", "-v", source, stack.images["busybox"],
                        "sh", "-c", "cat /d/root-only; echo written > /d/written")  # fmt: skip
        written = etc_folder / "written"
        assert not written.exists(), (
            f"BYPASS: volume {vol} (device {device!r}, the pin of {link} -> {etc_folder}); "
            f"`docker run -v {source}` through the agent (exit {run.returncode}, saw "
            f"{run.stdout!r}) wrote {written} on the host"
        )
    finally:
        direct("volume", "rm", "-f", vol)


# -- 2. a user's link in a root-owned sticky folder is not pinned ----------------------------------


@pytest.mark.parametrize("mode", ["world-1777", "group-1770"])
def test_a_users_link_in_a_root_sticky_folder_cannot_be_swapped_for_a_restart(
    mode, via_agent, direct, stack, name, tmp_path
):
    """A folder like /tmp (root's, sticky, writable by others): `only_root_can_change` checks
    the folders on the way but not the last name, and the user owns that entry (a symlink of
    theirs). It leads to a harmless root folder when judged, so it is given to the engine as
    written; the user points it at /etc and the engine's own restart (restart policy) mounts
    /etc. (world-1777 needs fs.protected_symlinks=0, as here; a sticky folder writable by a
    group, group-1770, does not: the kernel only protects world-writable sticky folders.)"""
    os.chmod(tmp_path, 0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    if mode == "world-1777":
        os.chmod(shared, 0o1777)
    else:
        os.chown(shared, 0, NOBODY)
        os.chmod(shared, 0o1770)
    benign = tmp_path / "benign"
    benign.mkdir()
    (benign / "benign-file").write_text("")
    link = shared / "mine"
    user_link(link, benign)
    try:
        r = via_agent("run", "-d", "--name", name, "--network", "none", "--restart", "always",
                      "-v", f"{link}:/d", stack.images["busybox"], "sh", "-c",
                      "ls /d; sleep 2; exit 1")  # fmt: skip
        if r.returncode != 0:
            return
        binds = _binds(direct, name)
        time.sleep(0.5)
        user_link(link, "/etc")
        seen = _logs_until(direct, name, ("passwd", "hostname"))
        assert "passwd" not in seen and "hostname" not in seen, (
            f"BYPASS: `docker run --restart always -v {link}:/d` (a {mode} root folder, the "
            f"link the user's) was given to the engine as {binds}; after the user pointed the "
            f"link at /etc, the engine's restart showed /etc: {seen[-300:]!r}"
        )
    finally:
        direct("rm", "-f", name)


# -- 3. the pins folder itself ----------------------------------------------------------------------


def test_the_pins_folder_cannot_be_bound_to_see_other_users_pins(
    agent, via_agent, direct, stack, name, home, tmp_path
):
    """Another user's folder is pinned for their container; the attacker binds the agent's
    pins folder (its path is in every pinned container's inspect data)."""
    other = tmp_path / "other-home"
    (other / "data").mkdir(parents=True)
    (other / "data" / "secret").write_text("the other user's secret\n")
    os.chmod(other, 0o700)
    for p in (other, other / "data", other / "data" / "secret"):
        os.chown(p, 65533, 65533)
    victim = name + "-victim"
    via_agent("create", "--name", victim, "-v", f"{other / 'data'}:/d", stack.images["busybox"],
              "true", check=True)  # fmt: skip
    try:
        (pin_bind,) = _binds(direct, victim)
        pins = os.path.dirname(pin_bind.split(":", 1)[0])
        assert pins == str(agent.pins_dir), pin_bind
        r = via_agent("run", "--rm", "--name", name, "--network", "none", "-v", f"{pins}:/p",
                      stack.images["busybox"], "sh", "-c", "cat /p/*/secret")  # fmt: skip
        assert "the other user's secret" not in r.stdout, (
            f"BYPASS: `docker run -v {pins}:/p` through the agent (the pins folder) read "
            f"another user's pinned folder: {r.stdout!r}"
        )
    finally:
        direct("rm", "-f", victim, name)


def test_a_pin_path_named_directly_is_judged_as_what_it_holds(
    agent, via_agent, direct, stack, name, home
):
    """A pin of a user's folder, named directly by another create, then the source moved to
    /etc: a start through the agent of the second container must not re-pin /etc."""
    project = home / "project"
    first = name + "-a"
    via_agent("create", "--name", first, "-v", f"{project}:/d", stack.images["busybox"], "true",
              check=True)  # fmt: skip
    try:
        (bind,) = _binds(direct, first)
        pin = bind.split(":", 1)[0]
        r = via_agent("create", "--name", name, "--network", "none", "-v", f"{pin}:/d",
                      stack.images["busybox"], "ls", "/d")  # fmt: skip
        if r.returncode != 0:
            return
        project.rename(project.with_name("project.old"))
        project.symlink_to("/etc")
        via_agent("start", "-a", name)
        seen = direct("start", "-a", first).stdout + direct("start", "-a", name).stdout
        assert "passwd" not in seen and "hostname" not in seen, f"BYPASS: {seen!r}"
    finally:
        direct("rm", "-f", first, name)


# -- 4. a start/cp through the agent after a swap into /etc/x --------------------------------------


@pytest.mark.parametrize("via", ["start", "cp"])
def test_a_source_moved_inside_etc_is_not_repinned(
    via, via_agent, direct, stack, name, home, etc_folder
):
    project = home / "project"
    via_agent("create", "--name", name, "--network", "none", "-v", f"{project}:/d",
              stack.images["busybox"], "sh", "-c", "ls /d; echo w > /d/written",
              check=True)  # fmt: skip
    try:
        project.rename(project.with_name("project.old"))
        user_link(project, etc_folder)
        if via == "start":
            via_agent("start", "-a", name)
        else:
            payload = home.parent / "payload"
            payload.write_text("x\n")
            via_agent("cp", str(payload), f"{name}:/d/copied")
            assert not (etc_folder / "copied").exists(), "BYPASS: docker cp wrote into /etc"
        direct("start", "-a", name)  # the engine's own start
        assert not (etc_folder / "written").exists(), (
            f"BYPASS: after {project} was pointed at {etc_folder}, a {via} through the agent "
            f"re-pinned it: the container wrote into it"
        )
    finally:
        direct("rm", "-f", name)


# -- 5. relative and odd bind sources ---------------------------------------------------------------


@pytest.mark.parametrize("source", ["etc", "./etc", "../../../../../../../../etc"])
def test_a_relative_mount_source_is_not_resolved_elsewhere(agent, direct, stack, name, source):
    body = {
        "Image": stack.images["busybox"],
        "Cmd": ["ls", "/d"],
        "HostConfig": {"Mounts": [{"Type": "bind", "Source": source, "Target": "/d"}],
                       "NetworkMode": "none"},
    }  # fmt: skip
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", json.dumps(body).encode())
    try:
        if _status(reply) != 201:
            return
        seen = direct("start", "-a", name).stdout
        assert "passwd" not in seen, f"BYPASS: Mounts Source {source!r} gave /etc: {seen!r}"
    finally:
        direct("rm", "-f", name)


# -- 6. mounts the agent makes as root: a pin of the pins folder, pins left by refused creates ---


def _mounts_below(folder: str) -> int:
    below = folder.rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.split()[4].startswith(below))


def test_pinning_the_pins_folder_does_not_multiply_mounts(
    agent, via_agent, direct, stack, name, home
):
    """A user's link to the pins folder (a root folder the policy lets anyone bind): each
    create pins it with MS_REC, copying every pin below it, so the host's mount table doubles
    with each create (fs.mount-max is 100000 per namespace: some 17 creates fill it, and then
    no mount on the host succeeds)."""
    link = home / "to-pins"
    user_link(link, agent.pins_dir)
    made: list[str] = []
    before = set(agent.pinned())
    counts = [_mounts_below(str(agent.pins_dir))]
    try:
        for i in range(7):
            ctr = f"{name}-{i}"
            r = via_agent("create", "--name", ctr, "-v", f"{link}:/p", stack.images["busybox"],
                          "true")  # fmt: skip
            if r.returncode != 0:
                break
            made.append(ctr)
            counts.append(_mounts_below(str(agent.pins_dir)))
        grown = counts[-1] - counts[0]
        assert grown <= 2 * len(made) + 2, (
            f"BYPASS: {len(made)} creates through the agent binding {link} (-> the pins folder) "
            f"made the agent (root) add {grown} mounts to the host's table: {counts}"
        )
    finally:
        if made:
            direct("rm", "-f", *made)
        from agent.pins.board import unmount

        for pin in sorted(set(agent.pinned()) - before, key=len):  # the copies go with them
            unmount(pin)


def test_a_create_the_engine_refuses_leaves_no_pins(agent, via_agent, direct, stack, name, home):
    """Pins are made before the engine creates the container; one it refuses (here: the name
    is taken) leaves its pins mounted until the sweep's grace (120 s) runs out. With many
    binds a request, a user fills the host's mount table at no cost."""
    direct("create", "--name", name, stack.images["busybox"], "true", check=True)
    binds = []
    for i in range(50):
        sub = home / f"d{i}"
        sub.mkdir()
        os.chown(sub, NOBODY, NOBODY)
        binds += ["-v", f"{sub}:/d{i}"]
    before = len(agent.pinned())
    try:
        r = via_agent("create", "--name", name, *binds, stack.images["busybox"], "true")
        assert r.returncode != 0 and "already in use" in r.stderr, r.stderr
        deadline = time.monotonic() + 5  # released in the background once the 409 is seen
        while (left := len(agent.pinned()) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == 0, (
            f"BYPASS (resource): a create the engine refused (name taken) left {left} pins "
            "mounted on the host (kept for the sweep's 120 s grace)"
        )
    finally:
        direct("rm", "-f", name)


# -- 7. the sweep ------------------------------------------------------------------------------------


@pytest.mark.parametrize("holder", ["volume", "service", "stopped-container-via-volumes-from"])
def test_the_sweep_keeps_a_pin_in_use(holder, own_agent, swarm, direct, stack, name, home):
    from tests.e2e.conftest import _docker

    own = _docker("unix://" + own_agent.listen, stack)
    project = home / "project"
    try:
        if holder == "volume":
            own("volume", "create", "-o", "type=none", "-o", "o=bind", "-o", f"device={project}",
                name, check=True)  # fmt: skip
        elif holder == "service":
            body = {"Name": name, "TaskTemplate": {"ContainerSpec": {
                "Image": stack.images["busybox"], "Command": ["sleep", "600"],
                "Mounts": [{"Type": "bind", "Source": str(project), "Target": "/d"}]}}}  # fmt: skip
            reply = _raw(own_agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
            assert _status(reply) == 201, reply[:300]
        else:
            own("create", "--name", name + "-a", "-v", f"{project}:/d", stack.images["busybox"],
                "true", check=True)  # fmt: skip
            own("create", "--name", name, "--volumes-from", name + "-a", stack.images["busybox"],
                "ls", "/d", check=True)  # fmt: skip
            direct("rm", name + "-a", check=True)
        pinned = own_agent.pinned()
        assert pinned, "control: pinned"
        time.sleep(5)  # past the grace, a few sweeps
        gone = set(pinned) - set(own_agent.pinned())
        assert not gone, f"BYPASS: the sweep unmounted {gone}, still named by the {holder}"
    finally:
        direct("service", "rm", name)
        direct("rm", "-f", name, name + "-a")
        direct("volume", "rm", "-f", name)


# -- 8. functional: what a user's bind could do before pins ------------------------------------------


@pytest.mark.parametrize("option", ["rslave", "ro", "z"])  # rshared: refused (review 8c)
def test_bind_options_work_on_a_pinned_folder_as_they_do_directly(
    option, via_agent, direct, stack, name, home
):
    """Not an attack: a bind option the engine accepts on the user's folder directly must
    work through the agent on its pin too."""
    project = home / "project"
    args = ("run", "--rm", "--network", "none", "-v", f"{project}:/d:{option}",
            stack.images["busybox"], "ls", "/d")  # fmt: skip
    theirs, ours = direct(*args), via_agent(*args)
    assert (ours.returncode == 0) == (theirs.returncode == 0), (
        f"BROKEN: -v ...:{option} directly: exit {theirs.returncode} {theirs.stderr[-200:]!r}; "
        f"through the agent: exit {ours.returncode} {ours.stderr[-300:]!r}"
    )


# -- 9. a shared pin re-pointed by another container's start -----------------------------------------


def test_a_start_of_another_container_does_not_repin_a_refused_images_pin(
    agent, via_agent, direct, stack, name, home
):
    """Container A (image dockercli, in no image list, restart always) binds the user's file;
    container B (busybox, which the list allows) names A's pin path directly. The user points
    the file at the agent's container-facing socket and starts B through the agent: judged
    for B's image, so allowed, and the pin (A's too) is re-pointed at the socket. The engine's
    next restart of A gives a refused image the socket."""
    from tests.e2e.agent_process import settings_with

    agent.set_settings(settings_with([stack.images["busybox"]]))
    seed = home / "project" / "seed"
    version = direct("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
    a, b = name + "-a", name + "-b"
    ask = (
        'docker -H unix:///s version --format "ENGINE={{.Server.Version}}" 2>&1 | tail -1; sleep 1'
    )
    try:
        via_agent("run", "-d", "--name", a, "--network", "none", "--restart", "always",
                  "-v", f"{seed}:/s", stack.images["dockercli"], "sh", "-c", ask,
                  check=True)  # fmt: skip
        (bind,) = _binds(direct, a)
        pin = bind.split(":", 1)[0]
        r = via_agent("create", "--name", b, "--network", "none", "-v", f"{pin}:/s",
                      stack.images["busybox"], "true")  # fmt: skip
        if r.returncode != 0:
            return
        seed.unlink()
        seed.symlink_to(agent.container_socket)
        via_agent("start", b)
        logs = _logs_until(direct, a, (f"ENGINE={version}",))
        assert f"ENGINE={version}" not in logs, (
            f"BYPASS: B's start through the agent re-pointed the shared pin {pin} at the "
            f"container-facing socket; A (dockercli, in no image list) restarted by the engine "
            f"reached the engine through it: {logs[-200:]!r}"
        )
    finally:
        direct("rm", "-f", a, b)
