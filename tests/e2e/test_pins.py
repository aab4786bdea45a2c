"""Pins (agent.pins) through the real agent, engine and docker CLI.

A bind source a user other than root can change is opened once, judged as the open file and
given to the engine as a pin (a bind mount of that file at a root-only path). These tests make
such a source (a folder owned by `nobody`), then change the path the way that user could, and
ask the ENGINE (a container's own view, the host's files) what the container got. The attack
forms (restart policies, swarm tasks, a flip during start, docker cp) are in
test_review_session7.py; here: what the user sees, the life of a pin, and the routes in.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, eci_agent
from tests.e2e.conftest import _docker
from tests.e2e.test_socket_mount import _raw

pytestmark = pytest.mark.engine


def _binds(direct: Any, name: str) -> list[str]:
    out = direct("inspect", "-f", "{{json .HostConfig.Binds}}", name, check=True).stdout
    return list(json.loads(out) or [])


def _sees(direct: Any, name: str, path: str = "/d") -> str:
    """What the (stopped) container sees at `path`, by starting it attached."""
    r = direct("start", "-a", name)
    return r.stdout + r.stderr


def _swap(path: Path, to: str | Path) -> None:
    """What the folder's owner can do: move `path` aside and put a link to `to` there."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        path.rename(path.with_name(path.name + ".old"))
    path.symlink_to(to)


# -- what the user sees ----------------------------------------------------------------------------


def test_a_users_folder_is_pinned_and_stays_the_users_folder(
    agent, via_agent, direct, stack, name, home
):
    project = home / "project"
    r = via_agent("run", "--name", name, "--network", "none", "-v", f"{project}:/d",
                  stack.images["busybox"], "sh", "-c", "cat /d/seed; echo made > /d/new",
                  check=True)  # fmt: skip
    try:
        assert r.stdout == "the user's own file\n"
        assert (project / "new").read_text() == "made\n", "written through the pin, on the host"
        (bind,) = _binds(direct, name)
        pin = bind.split(":", 1)[0]
        assert pin.startswith(str(agent.pins_dir) + "/"), bind
        assert pin in agent.pinned(), "the engine was given a mount point of the agent's"
        listed = eci_agent("pins", "list", "--json", "--state-dir", str(agent.workdir / "state"),
                           "--runtime-dir", str(agent.runtime_dir))  # fmt: skip
        records = {r["pin"]: r for r in json.loads(listed.stdout)}
        assert records[pin]["source"] == str(project), listed.stdout
        # docker cp reaches the same folder through the pin
        payload = home.parent / "payload"
        payload.write_text("copied\n")
        via_agent("cp", str(payload), f"{name}:/d/copied", check=True)
        assert (project / "copied").read_text() == "copied\n"
    finally:
        direct("rm", "-f", name)


def test_a_root_held_folder_is_given_as_it_is(via_agent, direct, stack, name, tmp_path):
    """A folder only root can change needs no pin: the engine gets the path as written."""
    os.chmod(tmp_path, 0o755)
    via_agent("create", "--name", name, "-v", f"{tmp_path}:/d", stack.images["busybox"],
              "true", check=True)  # fmt: skip
    try:
        assert _binds(direct, name) == [f"{tmp_path}:/d"]
    finally:
        direct("rm", "-f", name)


# -- the path changed after the create: the pinned file is what every mount gets -----------------


@pytest.mark.parametrize("swap", ["folder-to-etc", "middle-folder-to-root", "file-to-socket"])
def test_a_path_changed_after_create_still_mounts_what_was_judged(
    swap, via_agent, direct, stack, name, home
):
    project = home / "project"
    if swap == "folder-to-etc":
        source, target, look = project, Path("/etc"), "ls /d"
    elif swap == "middle-folder-to-root":
        (project / "etc").mkdir()
        (project / "etc" / "mine").write_text("")
        source, target, look = project / "etc", Path("/"), "ls /d"  # project -> / makes it /etc
    else:
        source, target, look = (
            project / "seed",
            Path(stack.engine_socket),
            "cat /d; test -S /d && echo SOCKET",
        )
    via_agent("create", "--name", name, "--network", "none", "-v", f"{source}:/d",
              stack.images["busybox"], "sh", "-c", look, check=True)  # fmt: skip
    try:
        before = _sees(direct, name)
        _swap(project if swap == "middle-folder-to-root" else source, target)
        after = _sees(direct, name)
        assert "SOCKET" not in after and "passwd" not in after and "hostname" not in after, (
            f"BYPASS: after {source} was changed to lead to {target}, the container saw {after!r}"
        )
        assert after == before, "the restart mounts the very file the create was judged on"
    finally:
        direct("rm", "-f", name)


def test_a_file_the_user_replaced_is_followed_by_a_start_through_the_agent(
    via_agent, direct, stack, name, home
):
    """An editor saves by writing a new file over the old name: a start through the agent
    mounts the new one, as the engine alone would (the pin is pointed at it, judged)."""
    seed = home / "project" / "seed"
    via_agent("create", "--name", name, "--network", "none", "-v", f"{seed}:/d",
              stack.images["busybox"], "cat", "/d", check=True)  # fmt: skip
    try:
        assert via_agent("start", "-a", name, check=True).stdout == "the user's own file\n"
        fresh = seed.with_name("seed.new")
        fresh.write_text("saved again\n")
        os.replace(fresh, seed)
        assert via_agent("start", "-a", name, check=True).stdout == "saved again\n"
        (bind,) = _binds(direct, name)
        assert bind.startswith(str(seed)) is False, "still a pin"
    finally:
        direct("rm", "-f", name)


@pytest.mark.parametrize("via", ["start", "cp"])
def test_a_source_swapped_to_the_socket_is_refused_through_the_agent(
    via, via_agent, direct, stack, name, home
):
    """The same move to the engine socket: judged as what it leads to now, and refused; the
    pin keeps the judged file, so the engine's own restarts get that file too."""
    seed = home / "project" / "seed"
    look = "test -S /d && echo SOCKET; cat /d"
    via_agent("create", "--name", name, "--network", "none", "-v", f"{seed}:/d",
              stack.images["dockercli"], "sh", "-c", look, check=True)  # fmt: skip
    try:
        seed.unlink()
        seed.symlink_to(stack.engine_socket)
        if via == "start":
            r = via_agent("start", "-a", name)
            assert r.returncode != 0 and "never hands out" in r.stderr, r.stdout + r.stderr
        else:
            r = via_agent("cp", f"{name}:/d", str(home.parent / "out"))
            assert r.returncode != 0 and "never hands out" in r.stderr, r.stdout + r.stderr
        logs = direct("logs", name).stdout
        assert "SOCKET" not in logs, f"BYPASS: {logs!r}"
        seen = _sees(direct, name)  # the engine's own start: the pinned file, gone since
        assert "SOCKET" not in seen, f"BYPASS: {seen!r}"
    finally:
        direct("rm", "-f", name)


def test_a_missing_bind_folder_is_made_as_the_engine_makes_it(via_agent, direct, stack, name, home):
    wanted = home / "new" / "sub"
    via_agent("run", "--name", name, "-v", f"{wanted}:/d", stack.images["busybox"],
              "touch", "/d/x", check=True)  # fmt: skip
    try:
        st = wanted.stat()
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o755"), "root's, 0755, as dockerd"
        assert (wanted / "x").exists()
        assert _binds(direct, name)[0].split(":")[0] != str(wanted), "pinned"
    finally:
        direct("rm", "-f", name)


def test_a_missing_folder_is_not_made_in_a_root_folder_through_a_link(
    via_agent, direct, stack, name, home
):
    """A link in the user's folder to /etc, and a bind below it that does not exist: the
    agent would make /etc/<new> as root. It refuses instead; the engine made nothing."""
    (home / "to-etc").symlink_to("/etc")
    made = Path("/etc") / f"eci-pins-{name}"
    r = via_agent("create", "--name", name, "-v", f"{home}/to-etc/{made.name}:/d",
                  stack.images["busybox"], "true")  # fmt: skip
    try:
        assert not made.exists(), f"BYPASS: {made} was made (exit {r.returncode})"
        assert r.returncode != 0
        assert "belongs to root" in r.stderr, r.stderr
        assert direct("inspect", name).returncode != 0
    finally:
        if made.exists():
            made.rmdir()
        direct("rm", "-f", name)


def test_a_missing_mount_source_is_refused_in_the_engines_words(
    via_agent, direct, stack, name, home
):
    missing = home / "nope"
    args = ("create", "--mount", f"type=bind,source={missing},target=/d", stack.images["busybox"])
    ours, theirs = via_agent(*args), direct(*args)
    assert ours.returncode != 0 and theirs.returncode != 0
    phrase = f"bind source path does not exist: {missing}"
    assert phrase in theirs.stderr and phrase in ours.stderr, (ours.stderr, theirs.stderr)


def test_a_legacy_top_level_bind_a_user_can_change_is_refused(agent, direct, stack, name, home):
    body = {"Image": stack.images["busybox"], "Binds": [f"{home / 'project'}:/d"]}
    body = json.dumps(body).encode()
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body)
    try:
        assert direct("inspect", name).returncode != 0, f"made: {reply[:300]!r}"
        assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
        assert b"hold it still" in reply
    finally:
        direct("rm", "-f", name)


# -- volumes -----------------------------------------------------------------------------------------


def test_a_bind_volume_on_a_users_folder_is_made_on_a_pin(via_agent, direct, stack, name, home):
    project = home / "project"
    via_agent("volume", "create", "--driver", "local", "-o", "type=none", "-o", "o=bind",
              "-o", f"device={project}", name, check=True)  # fmt: skip
    try:
        device = json.loads(direct("volume", "inspect", name, check=True).stdout)[0]["Options"][
            "device"
        ]
        assert device != str(project), "made on a pin"
        run = ("run", "--rm", "--network", "none", "-v", f"{name}:/d", stack.images["busybox"],
               "sh", "-c", "ls /d")  # fmt: skip
        assert "seed" in via_agent(*run, check=True).stdout
        _swap(project, "/etc")
        after = direct(*run).stdout
        assert "passwd" not in after and "seed" in after, f"BYPASS: the volume now shows {after!r}"
    finally:
        direct("volume", "rm", "-f", name)


# -- a pin's life: swept when unused, restored after a reboot --------------------------------------


def _records(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    folder = agent.workdir / "state" / "pins"
    return {
        r["pin"]: r
        for r in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
    } if folder.exists() else {}  # fmt: skip


def _until(check: Any, wait: float = 15.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def test_a_pin_is_released_once_its_container_is_gone(own_agent, direct, stack, name, home):
    own = _docker("unix://" + own_agent.listen, stack)
    own("create", "--name", name, "-v", f"{home / 'project'}:/d", stack.images["busybox"],
        "true", check=True)  # fmt: skip
    (bind,) = _binds(direct, name)
    pin = bind.split(":", 1)[0]
    assert pin in own_agent.pinned() and pin in _records(own_agent)
    time.sleep(3)  # older than the grace: kept only because the container names it
    assert pin in own_agent.pinned(), "a pin in use is never swept"
    direct("rm", name, check=True)  # removed by the engine's own client, not through the agent
    assert _until(lambda: pin not in own_agent.pinned() and pin not in _records(own_agent)), (
        f"pin {pin} still mounted or recorded after its container went"
    )
    assert (home / "project" / "seed").exists(), "releasing a pin leaves the user's files"


def test_pins_come_back_after_a_reboot_only_onto_the_same_file(
    own_agent, direct, stack, name, home
):
    """A reboot empties /run: the pins' mounts go, their records stay. At the next start the
    agent mounts each again if its source is still the same file; one the user swapped in the
    meantime is left empty, so the container gets neither its old folder nor the new target."""
    own = _docker("unix://" + own_agent.listen, stack)
    kept, swapped = name + "-kept", name + "-swapped"
    (home / "other").mkdir()
    (home / "other" / "seed2").write_text("")
    for ctr, src in ((kept, home / "project"), (swapped, home / "other")):
        own("create", "--name", ctr, "--network", "none", "-v", f"{src}:/d",
            stack.images["busybox"], "ls", "/d", check=True)  # fmt: skip
    try:
        own_agent.stop(unpin=True)  # the reboot: mounts gone, records kept
        assert own_agent.pinned() == []
        _swap(home / "other", "/etc")
        restore = eci_agent("pins", "restore", "--state-dir", str(own_agent.workdir / "state"),
                            "--runtime-dir", str(own_agent.runtime_dir))  # fmt: skip
        assert restore.returncode == 1, restore.stdout + restore.stderr
        assert "now leads to another file" in restore.stderr
        assert "seed" in _sees(direct, kept)
        seen = _sees(direct, swapped)
        assert "passwd" not in seen and "seed2" not in seen, (
            f"BYPASS or stale: the swapped source's container saw {seen!r}"
        )
        own_agent.stop(unpin=True)
        own_agent.start()  # `run` restores at start as well
        assert _until(lambda: len(own_agent.pinned()) == 1)
    finally:
        direct("rm", "-f", kept, swapped)


@pytest.mark.parametrize("what", ["state", "state/pins", "run/pins"])
def test_the_agents_own_folders_are_never_bound(what, agent, via_agent, direct, stack, name):
    """The state folder (events, registry credentials, the pins' records, which restore
    trusts) and the pins folder (every user's pinned folders) stay the agent's."""
    folder = agent.workdir / what
    r = via_agent("create", "--name", name, "-v", f"{folder}:/x", stack.images["busybox"], "true")
    try:
        assert direct("inspect", name).returncode != 0, f"BYPASS: {name} binds {folder}"
        assert r.returncode != 0 and "eci-agent" in r.stderr, r.stderr
    finally:
        direct("rm", "-f", name)


def test_one_request_may_not_make_more_than_64_pins(agent, via_agent, direct, stack, name, home):
    """Each pin is a mount on the host: a create with 65 binds a user can change is refused
    before anything is mounted, and the engine made nothing."""
    binds = []
    for i in range(65):
        (home / "project" / f"d{i}").mkdir()
        binds += ["-v", f"{home / 'project' / f'd{i}'}:/d{i}"]
    before = agent.pinned()
    r = via_agent("create", "--name", name, *binds, stack.images["busybox"], "true")
    try:
        assert direct("inspect", name).returncode != 0, "BYPASS: made with 65 pins"
        assert r.returncode != 0 and "more than 64" in r.stderr, r.stderr
        assert set(agent.pinned()) <= set(before), "nothing mounted for it"
    finally:
        direct("rm", "-f", name)


def _doctor_finding(agent: Any, stack: Any) -> dict[str, Any]:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--json", "--engine", stack.engine_socket,
         "--control", agent.control, "--settings", str(agent.settings_path)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    (only,) = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "unpinned-binds"]
    return dict(only)


def test_the_doctor_names_containers_whose_user_bind_is_not_pinned(
    agent, via_agent, direct, stack, name, home
):
    """One made on the raw socket (as before eci-agent) keeps the path as written: the
    engine resolves it again at each of its own restarts. One made through the agent has a
    pin, which only root can change."""
    raw, pinned = name + "-raw", name + "-pinned"
    via_agent("create", "--name", pinned, "-v", f"{home / 'project'}:/d", stack.images["busybox"],
              "true", check=True)  # fmt: skip
    try:
        assert pinned not in _doctor_finding(agent, stack)["message"]
        direct("create", "--name", raw, "-v", f"{home / 'project'}:/d", stack.images["busybox"],
               "true", check=True)  # fmt: skip
        seen = _doctor_finding(agent, stack)
        assert seen["status"] == "warn" and raw in seen["message"], seen
        assert f"{home / 'project'}" in seen["message"] and pinned not in seen["message"], seen
    finally:
        direct("rm", "-f", raw, pinned)


def test_the_doctor_names_bind_volumes_and_services_that_are_not_pinned(
    agent, swarm, via_agent, direct, stack, name, home
):
    """A local bind volume and a service keep their source too: every container using the
    volume, and every task of the service, mounts it afresh. Made on the raw socket they are
    named; made through the agent they name a pin and are not."""
    folder = f"{home / 'project'}"
    bind_opts = ["--driver", "local", "--opt", "type=none", "--opt", "o=bind",
                 "--opt", f"device={folder}"]  # fmt: skip
    service_args = ["service", "create", "--detach", "--mount",
                    f"type=bind,source={folder},target=/d", stack.images["busybox"],
                    "sleep", "600"]  # fmt: skip
    try:
        via_agent("volume", "create", *bind_opts, name + "-vp", check=True)
        via_agent(*service_args[:2], "--name", name + "-sp", *service_args[2:], check=True)
        seen = _doctor_finding(agent, stack)
        assert name not in seen["message"], f"made through the agent, yet named: {seen}"
        direct("volume", "create", *bind_opts, name + "-vr", check=True)
        direct(*service_args[:2], "--name", name + "-sr", *service_args[2:], check=True)
        seen = _doctor_finding(agent, stack)
        assert seen["status"] == "warn", seen
        assert f"volume {name}-vr ({folder})" in seen["message"], seen
        assert f"service {name}-sr ({folder})" in seen["message"], seen
        assert f"{name}-vp" not in seen["message"] and f"{name}-sp" not in seen["message"], seen
    finally:
        for sid in (name + "-sp", name + "-sr"):
            direct("service", "rm", sid)
        for vol in (name + "-vp", name + "-vr"):
            direct("volume", "rm", "-f", vol)
