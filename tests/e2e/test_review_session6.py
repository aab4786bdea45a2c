"""Review of session 6's host facts (the protected sockets and the mount table, for a while kept
between judgements) and of the mypyc-compiled policy, attacked through the real agent and
checked on the ENGINE.

Three of these got a refused image the engine socket (or the host's procfs) against the
caches as first written: the socket path turned into a symlink to a new hard link (a stat
found the same file), and a folder holding a mount point renamed (poll(2) on mountinfo reports
no event for that), at create and at start. Both caches were removed: every judgement reads
the mount table and resolves the protected sockets afresh (`agent/proxy/host_paths.py`).

1. Staleness. Each attack first makes an allowed socket create (what would warm a cache),
   then changes the host so that a new path reaches
   the engine socket, and at once asks for a create of a refused image (`dockercli`, which has a
   docker client) binding that path. The ENGINE is then asked whether the container exists;
   when it does, it is started through the agent and its docker client asked for the engine's
   version through the bound socket, as evidence for the failure message.
   - a new hard link to the engine socket in another folder (the link count changes);
   - the engine socket path replaced by a symlink to a new hard link elsewhere (the link count,
     inode and type at the configured path stay the same, only the resolved form moves);
   - the engine socket's folder renamed and a symlink left at its old name;
   - a bind mount of the engine socket's folder made after the cache is warm;
   - a folder holding a bind mount of the engine socket's folder renamed (the mount table's
     text changes, but the kernel reports no mount event: poll(2) stays quiet), at once and
     after 11 s (longer than the 10 s the first cache kept the sockets);
   - a tmpfs mounted over a folder holding a symlink to the socket;
   - `/proc/<dockerd pid>/root/<socket>` and `/proc/self/root/<socket>`.
   These run against an agent of their own (not the session's), started in a temp dir.
2. Odd JSON types against the compiled policy: raw create bodies binding the engine socket for
   a refused image with numbers, floats, huge ints, arrays, objects, null, strings and booleans
   in many top-level and HostConfig fields, case-folded and Kelvin/long-s duplicate keys: each
   must be refused (4xx/5xx) and the ENGINE must have no such container.
3. The rewritten body the engine gets for an allowed socket create is faithful: unicode and
   escaped strings, NUL, big integers, duplicate keys (Go: last wins), nested objects; the
   created container's config (asked of the engine) is what was asked, with the socket bind
   rewritten to the agent's container-facing socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, settings_with
from tests.e2e.conftest import _docker
from tests.e2e.test_socket_mount import _raw, exists, mounts_of

pytestmark = pytest.mark.engine

DENIED = "docker socket mount denied"
#: What the refused image runs: the engine's version, asked through a socket bound at /x or /s.
ASK_ENGINE = ("sh", "-c", "for s in /s /x/docker.sock /x/*/docker.sock /x/*/*/docker.sock; do "
              "[ -S $s ] && docker -H unix://$s version --format '{{.Server.Version}}'; done; "
              "[ -d /x/mnt ] && ls /x/mnt | head -3 | tr '\\n' ' '; true")  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------------


def _new_name() -> str:
    return "eci-r6-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def own(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent of our own (busybox allowed to mount the socket), so the session's is not
    disturbed by the host changes made here."""
    proc = AgentProcess(tmp_path_factory.mktemp("agent6"), stack.engine_socket)
    proc.start(settings_with([stack.images["busybox"]]))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def own_cli(own: AgentProcess, stack: Any) -> Any:
    return _docker("unix://" + own.listen, stack)


@pytest.fixture
def scratch(stack: Any) -> Iterator[Path]:
    """A folder on the engine socket's file system (hard links need the same one)."""
    path = Path(stack.tmpdir) / ("r6-" + uuid.uuid4().hex[:8])
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextlib.contextmanager
def _bind_mount(source: str, target: str) -> Iterator[None]:
    _sh("mount", "--bind", source, target)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


def _warm(cli: Any, direct: Any, stack: Any, agent: AgentProcess) -> None:
    """An allowed socket create: the protected sockets are resolved and kept, the table read."""
    name = _new_name()
    try:
        r = cli("create", "--name", name, "--network", "none",
                "-v", f"{stack.engine_socket}:/s", stack.images["busybox"], "true")  # fmt: skip
        assert r.returncode == 0, r.stderr
        (mount,) = [m for m in mounts_of(direct, name) if m["Destination"] == "/s"]
        assert mount["Source"] == agent.container_socket
    finally:
        direct("rm", "-f", name)


def _attack(cli: Any, direct: Any, stack: Any, name: str, *mount_args: str) -> tuple[Any, str]:
    """A refused image (dockercli) asks for `mount_args`. Returns the CLI's answer and, if the
    engine has the container, evidence of what it reaches (started through the agent)."""
    r = cli("create", "--name", name, "--network", "none", *mount_args,
            stack.images["dockercli"], *ASK_ENGINE)  # fmt: skip
    if not exists(direct, name):
        return r, ""
    started = cli("start", "-a", name, timeout=60)
    evidence = (
        f"BYPASS: the engine created {name} with mounts {mounts_of(direct, name)}; started "
        f"through the agent: rc={started.returncode} stdout={started.stdout!r} "
        f"stderr={started.stderr[-300:]!r}"
    )
    return r, evidence


def _assert_refused(r: Any, evidence: str, direct: Any, name: str) -> None:
    try:
        assert not evidence, evidence
        assert r.returncode != 0, r.stdout
        assert DENIED in r.stderr or "isolation" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        direct("rm", "-f", name)


def _assert_each_refused(cli: Any, direct: Any, stack: Any, *mounts: str) -> None:
    """A refused image asks for each `-v` spec in turn: each is refused, none on the engine."""
    for spec in mounts:
        name = _new_name()
        r, evidence = _attack(cli, direct, stack, name, "-v", spec)
        _assert_refused(r, evidence, direct, name)


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# -- 1. cache staleness ----------------------------------------------------------------------------


def test_new_hard_link_after_warm_cache(own, own_cli, direct, stack, scratch):
    engine = stack.engine_socket
    folder = scratch / "h"
    folder.mkdir()
    hard = folder / "docker.sock"
    _warm(own_cli, direct, stack, own)
    os.link(engine, hard)
    try:
        _assert_each_refused(own_cli, direct, stack, f"{folder}:/x", f"{hard}:/s")
    finally:
        hard.unlink()
    # Legitimate: with the link gone, an unrelated folder of that file system is fine again.
    plain = scratch / "plain"
    plain.mkdir()
    name = _new_name()
    try:
        r = own_cli("create", "--name", name, "-v", f"{plain}:/x", stack.images["dockercli"])
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", name)


def test_socket_path_replaced_by_symlink_to_a_new_hard_link(own, own_cli, direct, stack, scratch):
    """The configured engine path keeps its inode, type and link count (1) when it is swapped
    for a symlink to a hard link in another folder: only its resolved form moved."""
    engine = stack.engine_socket
    folder = scratch / "moved"
    folder.mkdir()
    hard = folder / "docker.sock"
    before = _inode(engine)
    _warm(own_cli, direct, stack, own)
    os.link(engine, hard)
    os.unlink(engine)
    os.symlink(hard, engine)
    try:
        assert _inode(engine) == before and os.stat(engine).st_nlink == 1
        name = _new_name()
        r, evidence = _attack(own_cli, direct, stack, name, "-v", f"{folder}:/x")
        _assert_refused(r, evidence, direct, name)
    finally:
        os.unlink(engine)
        os.link(hard, engine)
        hard.unlink()
    assert _inode(engine) == before


def test_engine_folder_renamed_and_symlinked_back(own, own_cli, direct, stack):
    engine_dir = str(stack.engine_dir)
    moved = engine_dir + "-r6"
    _warm(own_cli, direct, stack, own)
    os.rename(engine_dir, moved)
    os.symlink(moved, engine_dir)
    try:
        _assert_each_refused(own_cli, direct, stack, f"{moved}:/x", f"{moved}/docker.sock:/s")
    finally:
        os.unlink(engine_dir)
        os.rename(moved, engine_dir)


def test_bind_mount_of_engine_folder_after_warm_cache(own, own_cli, direct, stack, scratch):
    target = scratch / "outer" / "mnt"
    target.mkdir(parents=True)
    _warm(own_cli, direct, stack, own)
    with _bind_mount(str(stack.engine_dir), str(target)):
        _assert_each_refused(
            own_cli,
            direct,
            stack,
            f"{target}:/x",
            f"{target}/docker.sock:/s",
            f"{scratch / 'outer'}:/x",
        )


@pytest.mark.parametrize("wait", [0.0, 11.0], ids=["at-once", "after-ttl"])
def test_renamed_folder_holding_a_bind_mount_of_the_engine_folder(
    wait, own, own_cli, direct, stack, scratch
):
    """A rename moves a mount point in the mount table's text, but the kernel reports no mount
    event for it: a table kept until poll(2) says so is stale from then on."""
    first, second = scratch / "a", scratch / "b"
    (first / "mnt").mkdir(parents=True)
    with contextlib.ExitStack() as cleanup:
        _sh("mount", "--bind", str(stack.engine_dir), str(first / "mnt"))
        cleanup.callback(
            lambda: subprocess.run(["umount", "-l", str(second / "mnt")], capture_output=True)
        )
        cleanup.callback(
            lambda: subprocess.run(["umount", "-l", str(first / "mnt")], capture_output=True)
        )
        _warm(own_cli, direct, stack, own)
        # Before the rename the agent sees it (the alias is in the table it read).
        name = _new_name()
        r, evidence = _attack(own_cli, direct, stack, name, "-v", f"{first}:/x")
        _assert_refused(r, evidence, direct, name)
        os.rename(first, second)
        time.sleep(wait)
        assert os.path.exists(second / "mnt" / "docker.sock")
        name = _new_name()
        r, evidence = _attack(own_cli, direct, stack, name, "-v", f"{second}:/x")
        _assert_refused(r, evidence, direct, name)


@pytest.mark.parametrize("held", ["engine-folder", "procfs"])
def test_start_after_renaming_a_folder_holding_a_mount(held, own, own_cli, direct, stack, scratch):
    """The start of a container created (rightly) with a bind of an empty folder, after a
    folder holding a bind mount of the engine socket's folder (or a procfs, whose
    /proc/<pid>/root leads to it) is renamed onto it. The pending mount event of the create is
    consumed first by a refused create (which reads the table and makes no mount), so nothing
    tells the agent that the table's text changed."""
    holder, empty = scratch / "a", scratch / "b"
    (holder / "mnt").mkdir(parents=True)
    empty.mkdir()
    name = _new_name()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: direct("rm", "-f", name))
        if held == "procfs":
            _sh("mount", "-t", "proc", "proc", str(holder / "mnt"))
        else:
            _sh("mount", "--bind", str(stack.engine_dir), str(holder / "mnt"))
        for where in (holder, empty):
            cleanup.callback(
                lambda w=where: subprocess.run(
                    ["umount", "-l", str(w / "mnt")], capture_output=True
                )
            )
        r = own_cli("create", "--name", name, "--network", "none", "-v", f"{empty}:/x",
                    stack.images["dockercli"], *ASK_ENGINE)  # fmt: skip
        assert r.returncode == 0, r.stderr  # legitimate: an empty folder
        other = _new_name()
        r, evidence = _attack(own_cli, direct, stack, other, "-v", f"{holder}:/x")
        _assert_refused(r, evidence, direct, other)  # and the table is read now
        empty.rmdir()
        os.rename(holder, empty)
        assert os.path.exists(empty / "mnt" / ("1" if held == "procfs" else "docker.sock"))
        started = own_cli("start", "-a", name, timeout=60)
        running = direct("inspect", "--format", "{{.State.StartedAt}}", name, check=True).stdout
        assert started.returncode != 0 and running.startswith("0001-"), (
            f"BYPASS: {name} (refused image, bind of {empty}, which now holds the {held}) "
            f"was started through the agent: stdout={started.stdout!r} "
            f"stderr={started.stderr[-300:]!r}"
        )
        assert DENIED in started.stderr, started.stderr


def test_tmpfs_over_a_folder_with_a_symlink_to_the_socket(own, own_cli, direct, stack, scratch):
    folder = scratch / "t"
    folder.mkdir()
    _warm(own_cli, direct, stack, own)
    _sh("mount", "-t", "tmpfs", "tmpfs", str(folder))
    try:
        (folder / "docker.sock").symlink_to(stack.engine_socket)
        (folder / "dir").symlink_to(stack.engine_dir)
        _assert_each_refused(own_cli, direct, stack, f"{folder}/docker.sock:/s", f"{folder}/dir:/x")
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("how", ["dockerd-root-sock", "dockerd-root-folder", "self-root-sock"])
def test_proc_pid_root_paths(how, own, own_cli, direct, stack):
    pid = stack.dockerd_pid
    path = {
        "dockerd-root-sock": f"/proc/{pid}/root{stack.engine_socket}",
        "dockerd-root-folder": f"/proc/{pid}/root{stack.engine_dir}",
        "self-root-sock": f"/proc/self/root{stack.engine_socket}",
    }[how]
    _warm(own_cli, direct, stack, own)
    name = _new_name()
    target = "/s" if path.endswith(".sock") else "/x"
    r, evidence = _attack(own_cli, direct, stack, name, "-v", f"{path}:{target}")
    _assert_refused(r, evidence, direct, name)


# -- 2. odd JSON types against the compiled policy -----------------------------------------------

ODD_VALUES = {
    "int": "1",
    "neg": "-1",
    "float": "1.5",
    "huge-float": "1e400",
    "huge-int": "123456789012345678901234567890",
    "array": "[]",
    "array-mixed": '[1, "x", null, {}, []]',
    "object": "{}",
    "object-nested": '{"a": {"b": [1]}}',
    "null": "null",
    "string": '"x"',
    "true": "true",
}

TOP_FIELDS = [
    "Hostname", "Domainname", "User", "AttachStdin", "Tty", "Env", "Cmd", "Healthcheck",
    "Entrypoint", "Labels", "ExposedPorts", "Volumes", "WorkingDir", "StopSignal", "StopTimeout",
    "Shell", "NetworkDisabled", "MacAddress", "OnBuild", "NetworkingConfig", "Platform",
    "ArgsEscaped", "Image2",
]  # fmt: skip

HC_FIELDS = [
    "Mounts", "VolumesFrom", "NetworkMode", "Privileged", "CapAdd", "CapDrop", "Devices",
    "DeviceRequests", "DeviceCgroupRules", "PortBindings", "LogConfig", "RestartPolicy",
    "Tmpfs", "Sysctls", "SecurityOpt", "Ulimits", "ReadonlyRootfs", "ShmSize", "Isolation",
    "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode", "Cgroup", "CgroupParent",
    "MaskedPaths", "ReadonlyPaths", "Init", "Runtime", "OomScoreAdj", "Memory", "CpuShares",
    "BlkioWeightDevice", "Links", "ExtraHosts", "Dns", "GroupAdd", "Annotations", "AutoRemove",
    "PublishAllPorts", "VolumeDriver", "ConsoleSize", "StorageOpt", "KernelMemory",
]  # fmt: skip


def _refused_body(stack: Any, top: str = "", hc: str = "", hc_first: str = "") -> bytes:
    image = json.dumps(stack.images["busybox"])
    bind = json.dumps(f"{stack.engine_socket}:/s")
    hc_text = "{" + hc_first + '"Binds": [' + bind + '], "NetworkMode": "none"' + hc + "}"
    return ('{"Image": ' + image + ', "HostConfig": ' + hc_text + top + "}").encode()


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _created_with_prefix(direct: Any, prefix: str) -> list[str]:
    out = direct("ps", "-a", "--filter", f"name={prefix}", "--format", "{{.Names}}", check=True)
    return [n for n in out.stdout.split() if n.startswith(prefix)]


def _send_all(agent: AgentProcess, direct: Any, bodies: dict[str, bytes]) -> None:
    prefix = "eci-r6odd-" + uuid.uuid4().hex[:6] + "-"
    answered: dict[str, int] = {}
    try:
        for i, (label, body) in enumerate(bodies.items()):
            reply = _raw(agent, "POST", f"/v1.41/containers/create?name={prefix}{i}", body)
            answered[label] = _status(reply)
        allowed = {k: v for k, v in answered.items() if v < 400}
        created = _created_with_prefix(direct, prefix)
        assert not allowed and not created, (allowed, created)
    finally:
        for n in _created_with_prefix(direct, prefix):
            direct("rm", "-f", n)


@pytest.mark.parametrize("value", list(ODD_VALUES))
def test_odd_types_in_top_level_fields_stay_refused(value, agent, direct, stack):
    odd = ODD_VALUES[value]
    bodies = {f"top.{f}": _refused_body(stack, top=f", {json.dumps(f)}: {odd}") for f in TOP_FIELDS}
    bodies.update(
        {f"hc.{f}": _refused_body(stack, hc=f", {json.dumps(f)}: {odd}") for f in HC_FIELDS}
    )
    # The odd value before the Binds too (a field read before the mounts).
    bodies.update(
        {f"hc-first.{f}": _refused_body(stack, hc_first=f"{json.dumps(f)}: {odd}, ") for f in HC_FIELDS}
    )  # fmt: skip
    _send_all(agent, direct, bodies)


def test_odd_shapes_of_the_mount_fields_stay_refused(agent, direct, stack):
    sock = stack.engine_socket
    bind = json.dumps(f"{sock}:/s")
    image = json.dumps(stack.images["busybox"])
    src = json.dumps(sock)
    mount = '{"Type": "bind", "Source": ' + src + ', "Target": "/s"}'
    hcs = {
        "binds-then-lower-null-elem": '{"Binds": [' + bind + '], "binds": [null]}',
        "lower-then-upper-null": '{"binds": [' + bind + '], "BINDS": null}',
        "long-s": '{"Bind\u017f": [' + bind + "]}",
        "long-s-escaped": '{"Bind\\u017f": [' + bind + "]}",
        "mounts-long-s": '{"Mount\u017f": [' + mount + "]}",
        "mount-fields-kelvin": '{"Mounts": [{"\u0054ype": "bind", "\u017fource": '
        + src
        + ', "Target": "/s"}]}',
        "mounts-merged-elem": '{"Mounts": [{"Type": "bind", "Source": ' + src + "}], "
        '"Mounts": [{"Target": "/s"}]}',
        "mounts-hidden-capacity": '{"Mounts": ['
        + mount
        + ', {"Type": "tmpfs", "Target": "/t"}'
        + '], "Mounts": [{"Type": "tmpfs", "Target": "/u"}]}',
        "binds-with-odd-neighbours": '{"Binds": [' + bind + '], "Memory": 1e400, "CpuShares": '
        '123456789012345678901234567890, "Privileged": null, "CapAdd": {}}',
        "binds-number-then-array": '{"Binds": 1, "Binds": [' + bind + "]}",
        "binds-object-then-array": '{"Binds": {}, "Binds": [' + bind + "]}",
        "binds-array-with-number": '{"Binds": [1, ' + bind + "]}",
        "binds-array-with-object": '{"Binds": [{}, ' + bind + "]}",
        "mounts-source-number": '{"Mounts": [{"Type": "bind", "Source": 1}, ' + mount + "]}",
    }
    bodies: dict[str, bytes] = {}
    for label, hc in hcs.items():
        bodies[label] = ('{"Image": ' + image + ', "HostConfig": ' + hc + "}").encode()
    # Legacy top-level fields with odd neighbours, and HostConfig of odd types next to them.
    for odd_label, odd in ODD_VALUES.items():
        bodies[f"legacy-binds-hc-{odd_label}"] = (
            '{"Image": ' + image + ', "HostConfig": ' + odd + ', "Binds": [' + bind + "]}"
        ).encode()
        bodies[f"volumes-key-hc-{odd_label}"] = (
            '{"Image": ' + image + ', "HostConfig": ' + odd + ', "Volumes": {' + bind + ": {}}}"
        ).encode()
        bodies[f"image-{odd_label}"] = (
            '{"Image": ' + odd + ', "HostConfig": {"Binds": [' + bind + "]}}"
        ).encode()
        bodies[f"hostconfig-again-{odd_label}"] = (
            '{"Image": '
            + image
            + ', "HostConfig": {"Binds": ['
            + bind
            + ']}, "hostconfig": '
            + odd
            + "}"
        ).encode()
        bodies[f"image-dup-{odd_label}"] = (
            '{"Image": '
            + image
            + ', "image": '
            + odd
            + ', "HostConfig": {"Binds": ['
            + bind
            + "]}}"
        ).encode()
    _send_all(agent, direct, bodies)


# -- 3. the rewritten body of an allowed socket create is faithful -------------------------------


def test_rewritten_body_of_an_allowed_socket_create_is_faithful(agent, direct, stack, name):
    agent.set_settings(settings_with([stack.images["busybox"]]))
    image = json.dumps(stack.images["busybox"])
    bind = json.dumps(f"{stack.engine_socket}:/var/run/docker.sock")
    body = (
        "{"
        '"Image": ' + image + ", "
        '"Labels": {"dup": "first", "u": "caf\\u00e9 \\u2028 \\ud83d\\ude00 \u00fc\u4e2d", '
        '"esc": "a\\"b\\\\c\\/d\\n\\t\\u0000e", "dup": "last", "big": "9007199254740993", '
        '"Kelvin\u212a": "key-kept-exactly", "\\u212aey": "escaped-kelvin"}, '
        '"Env": ["A=\\u00e9", "B=x=y", "C=\\ud800"], '
        '"Cmd": ["true"], "StopTimeout": 2147483647, '
        '"Healthcheck": {"Test": ["NONE"], "Interval": 9007199254740993}, '
        '"HostConfig": {"NetworkMode": "none", "Binds": [' + bind + "], "
        '"PidsLimit": 9007199254740993, "CpuShares": 2, "OomScoreAdj": -1000, '
        '"Tmpfs": {"/t": "size=1m"}, "ShmSize": 67108865, "Memory": 0, '
        '"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}, '
        '"LogConfig": {"Config": {"max-file": "2"}}}'
        "}"
    ).encode()
    try:
        reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body)
        assert reply.startswith(b"HTTP/1.1 201"), reply[:400]
        info = json.loads(direct("inspect", name, check=True).stdout)[0]
        labels = info["Config"]["Labels"]
        assert labels["dup"] == "last"
        assert labels["u"] == "caf\u00e9 \u2028 \U0001f600 \u00fc\u4e2d"
        assert labels["esc"] == 'a"b\\c/d\n\t\x00e'
        assert labels["big"] == "9007199254740993"
        assert labels["Kelvin\u212a"] == "key-kept-exactly"
        assert labels["\u212aey"] == "escaped-kelvin"
        assert info["Config"]["Env"][:2] == ["A=\u00e9", "B=x=y"]
        assert info["Config"]["Env"][2] in ("C=\ufffd", "C=\\ud800")
        assert info["Config"]["StopTimeout"] == 2147483647
        assert info["Config"]["Healthcheck"]["Interval"] == 9007199254740993
        hc = info["HostConfig"]
        assert hc["PidsLimit"] == 9007199254740993
        assert hc["CpuShares"] == 2 and hc["OomScoreAdj"] == -1000
        assert hc["ShmSize"] == 67108865
        assert hc["Tmpfs"] == {"/t": "size=1m"}
        # Go merges the second LogConfig into the first (Config is a map: keys merged too).
        assert hc["LogConfig"]["Type"] == "json-file"
        assert hc["LogConfig"]["Config"] == {"max-size": "1m", "max-file": "2"}
        assert hc["Binds"] == [f"{agent.container_socket}:/var/run/docker.sock"]
        (mount,) = [m for m in info["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
        assert mount["Source"] == agent.container_socket
    finally:
        direct("rm", "-f", name)
