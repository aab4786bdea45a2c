"""Review session 7: bypass attempts through the real agent, each checked on the ENGINE.

Attacked (each test says what it asks the engine afterwards):

1. Swarm services (`docker swarm init` on the private engine; it works offline):
   - the deprecated top-level `ServiceSpec.Networks` (moby's `populateNetworkID` falls back to
     it when `TaskTemplate.Networks` is empty): `[{"Target": "host"}]` puts the tasks in the
     host's network namespace on create (on update this engine refuses it itself: swarmkit
     wants networks "migrated to TaskSpec" before a change);
   - the swarm-side ID of the predefined `host` network (and a prefix of it) in
     `TaskTemplate.Networks`: not listed by `GET /networks?filters={"driver":["host"]}`, which
     is all the agent knows of host networks, yet swarmkit resolves it to `host` (the ID is
     `GET /networks/host?scope=swarm`); on create and on update;
   - `POST /services/{id}/update?rollback=previous`: the engine applies the stored
     PreviousSpec, not the (judged) body;
   - controls that hold: inline local-driver bind volume, `/etc` bind.
2. Restart policies and `docker cp`: a container whose bind source is a symlink is judged at
   create and at every start/restart sent through the agent, but the ENGINE restarts it by itself (restart
   policy `always`/`on-failure`, set at create or later with `docker update`, or a swarm task
   replaced by the orchestrator) and resolves the bind source again each time: swapping the
   symlink to the engine socket after the allowed start gives a refused image the raw socket
   with no request through the agent at all. Likewise `docker cp` into or out of a container
   (stopped or running): the engine mounts its binds on the host for the copy (PUT/GET .../archive are
   not judged), so a swapped symlink reaches /etc. And a `--pid=host` container made before
   enforcement, which the agent refuses to start, given `--restart always` through the agent:
   the engine starts it by itself when it restarts.
3. The start check vs. the engine's own mount: a symlink flipped between a benign file and
   the engine socket while `docker start` goes through the agent (a TOCTOU race).
4. Controls that hold: a create right after a refused one on the same connection, header
   folding and odd whitespace, very long header names, HTTP/1.0 keep-alive pipelining, a
   settings file replaced by garbage or removed, and old API versions (/v1.12, /v1.18,
   /v1.23) with HostConfig fields at the top level of a create.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, http_over_unix
from tests.e2e.conftest import _engine_json
from tests.e2e.test_review_session3 import _bad_create, _connect, _exists, _read_all
from tests.e2e.test_socket_mount import _raw

pytestmark = pytest.mark.engine

#: The owner of the folders the bind-swap attacks use: a user other than root (nobody), as
#: only a folder such a user can change lets the attack happen at all. The engine resolves a
#: bind's source again at each mount (a start, a restart it makes by itself, a swarm task,
#: `docker cp`); closed in session 8 by pinning what was judged (agent.pins).
USER_UID = 65534


# -- helpers ---------------------------------------------------------------------------------------


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _service(stack: Any, name: str) -> dict[str, Any] | None:
    found = _engine_json(stack, f"/v1.41/services/{urllib.parse.quote(name)}")
    return found if isinstance(found, dict) and "ID" in found else None


def _host_netns(stack: Any) -> str:
    return os.readlink(f"/proc/{stack.dockerd_pid}/ns/net")


def _task_evidence(stack: Any, direct: Any, service: str, wait: float = 20.0) -> str:
    """What the engine ran for `service`: each task container's NetworkMode and netns."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ids = direct("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
        found = ids.stdout.split()
        if found:
            out = []
            for cid in found:
                mode = direct("inspect", "-f", "{{.HostConfig.NetworkMode}}", cid).stdout.strip()
                ns = direct("exec", cid, "readlink", "/proc/self/ns/net").stdout.strip()
                out.append(f"{cid[:12]} NetworkMode={mode} netns={ns}")
            return "; ".join(out) + f" (host netns {_host_netns(stack)})"
        time.sleep(0.5)
    return "no task container yet"


def _service_body(stack: Any, name: str, **extra: Any) -> dict[str, Any]:
    task = {"ContainerSpec": {"Image": stack.images["busybox"], "Command": ["sleep", "600"]}}
    task.update(extra.pop("task", {}))
    return {"Name": name, "TaskTemplate": task, **extra}


def _spec_networks(svc: dict[str, Any]) -> list[str]:
    spec = svc.get("Spec") or {}
    nets = list(spec.get("Networks") or []) + list(
        (spec.get("TaskTemplate") or {}).get("Networks") or []
    )
    return [str(n.get("Target")) for n in nets]


# -- 1. swarm services ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["Networks", "networks"])
def test_service_with_deprecated_top_level_networks_host_is_refused(
    key, agent, swarm, direct, stack, name
):
    body = _service_body(stack, name, **{key: [{"Target": "host"}]})
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    svc = _service(stack, name)
    try:
        assert svc is None, (
            f"BYPASS: the agent answered {reply[:12]!r} and the engine made service {name} "
            f"with networks {_spec_networks(svc)} (swarm host network is {swarm}); tasks: "
            + _task_evidence(stack, direct, name)
        )
        assert _status(reply) == 403, reply[:400]
    finally:
        direct("service", "rm", name)


@pytest.mark.parametrize("form", ["id", "prefix"])
def test_service_naming_the_swarm_host_network_by_id_is_refused(
    form, agent, swarm, direct, stack, name
):
    target = swarm if form == "id" else swarm[:3]
    body = _service_body(stack, name, task={"Networks": [{"Target": target}]})
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    svc = _service(stack, name)
    try:
        assert svc is None, (
            f"BYPASS: the agent answered {reply[:12]!r} to TaskTemplate.Networks {target!r} "
            f"and the engine made service {name} on networks {_spec_networks(svc)} (the swarm "
            f"host network is {swarm}); tasks: " + _task_evidence(stack, direct, name)
        )
        assert _status(reply) == 403, reply[:400]
    finally:
        direct("service", "rm", name)


@pytest.mark.parametrize("how", ["top-level-host", "task-swarm-host-id"])
def test_service_update_onto_the_host_network_is_refused(how, agent, swarm, direct, stack, name):
    """Moving a harmless service onto the host network with an update. The top-level form is
    refused by this engine itself (swarmkit: "networks must be migrated to TaskSpec before
    being changed"), so only the swarm-side ID in TaskTemplate.Networks is a live attack."""
    reply = _raw(agent, "POST", "/v1.41/services/create",
                 json.dumps(_service_body(stack, name)).encode())  # fmt: skip
    assert _status(reply) == 201, reply[:400]
    try:
        svc = _service(stack, name)
        assert svc is not None
        body = dict(svc["Spec"])
        if how == "top-level-host":
            body["Networks"] = [{"Target": "host"}]
        else:
            body["TaskTemplate"] = {**body["TaskTemplate"], "Networks": [{"Target": swarm}]}
        version = svc["Version"]["Index"]
        reply = _raw(agent, "POST", f"/v1.41/services/{svc['ID']}/update?version={version}",
                     json.dumps(body).encode())  # fmt: skip
        after = _service(stack, name)
        assert after is not None
        assert swarm not in _spec_networks(after), (
            f"BYPASS: the agent answered {reply[:12]!r} and the engine now runs {name} on the "
            f"swarm host network: {_spec_networks(after)}; tasks: "
            + _task_evidence(stack, direct, name)
        )
    finally:
        direct("service", "rm", name)


def test_service_rollback_to_a_host_network_spec_is_refused(agent, swarm, direct, stack, name):
    """A host-network service made before enforcement, then moved off the host network (also
    before): rolling it back through the agent sends the current, harmless spec as the body,
    and the engine restores the previous spec."""
    direct("service", "create", "--detach", "--name", name, "--network", "host",
           stack.images["busybox"], "sleep", "600", check=True)  # fmt: skip
    try:
        direct("service", "update", "--detach", "--network-rm", "host", name, check=True)
        svc = _service(stack, name)
        assert svc is not None and swarm not in _spec_networks(svc), svc
        version = svc["Version"]["Index"]
        reply = _raw(agent, "POST",
                     f"/v1.41/services/{svc['ID']}/update?version={version}&rollback=previous",
                     json.dumps(svc["Spec"]).encode())  # fmt: skip
        after = _service(stack, name)
        assert after is not None
        assert swarm not in _spec_networks(after), (
            f"BYPASS: the agent answered {reply[:12]!r} to a rollback whose body has no host "
            f"network, and the engine restored the previous spec: networks "
            f"{_spec_networks(after)}; tasks: " + _task_evidence(stack, direct, name)
        )
    finally:
        direct("service", "rm", name)


@pytest.mark.parametrize(
    "mount",
    [
        {"Type": "bind", "Source": "/etc", "Target": "/h"},
        {"Type": "volume", "Source": "", "Target": "/h", "VolumeOptions": {"DriverConfig": {
            "Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}},
    ],
    ids=["etc-bind", "inline-local-bind-volume"],
)  # fmt: skip
def test_service_mounts_of_host_folders_are_refused(mount, agent, swarm, direct, stack, name):
    body = _service_body(stack, name)
    body["TaskTemplate"]["ContainerSpec"]["Mounts"] = [mount]
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    try:
        assert _service(stack, name) is None, f"BYPASS: {reply[:200]!r}"
        assert _status(reply) == 403, reply[:400]
    finally:
        direct("service", "rm", name)


# -- 2. restart policies: the engine starts the container again by itself -------------------------


#: Asks the engine for its version through whatever is bound at /s, then exits (so a restart
#: policy starts it again: the engine then mounts /s anew).
_ASK = 'docker -H unix:///s version --format "ENGINE={{.Server.Version}}" 2>&1 | tail -1; sleep 1'


def _benign_link(tmp_path: Path, folder: bool = False) -> tuple[Path, Path]:
    """A harmless file (or folder) and a symlink `link` to it, in a folder the engine can
    read: the bind source the attacks swap later."""
    benign = tmp_path / "benign"
    if folder:
        benign.mkdir()
    else:
        benign.write_text("")
    link = tmp_path / "link"
    link.symlink_to(benign)
    os.chmod(tmp_path, 0o755)
    # The user's own folder (the attack needs one): root swapping the link below stands for
    # that user, and the agent must pin what it judged.
    os.chown(tmp_path, USER_UID, USER_UID)
    return benign, link


def _engine_version(direct: Any) -> str:
    return direct("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()


def _got_socket(direct: Any, name: str, version: str, wait: float = 25.0) -> str | None:
    """The container's log line proving it talked to the engine, if it did within `wait`."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        logs = direct("logs", name)
        for line in (logs.stdout + logs.stderr).splitlines():
            if line.strip() == f"ENGINE={version}":
                return line
        time.sleep(0.5)
    return None


@pytest.mark.parametrize("how", ["run-restart-always", "update-restart-on-failure"])
def test_a_restart_policy_does_not_remount_a_swapped_symlink(
    how, via_agent, direct, stack, name, tmp_path
):
    benign, link = _benign_link(tmp_path)
    refused = stack.images["dockercli"]  # in no image list: may never get the socket
    version = _engine_version(direct)
    try:
        policy = ["--restart", "always"] if how == "run-restart-always" else []
        cmd = _ASK + ("; exit 1" if how != "run-restart-always" else "")
        via_agent("run", "-d", "--name", name, "--network", "none", *policy,
                  "-v", f"{link}:/s", refused, "sh", "-c", cmd, check=True)  # fmt: skip
        if how == "update-restart-on-failure":
            via_agent("update", "--restart", "on-failure", name, check=True)
        time.sleep(0.5)
        link.unlink()
        link.symlink_to(stack.engine_socket)  # what /s leads to from the next mount on
        proof = _got_socket(direct, name, version)
        restarts = direct("inspect", "-f", "{{.RestartCount}}", name).stdout.strip()
        assert proof is None, (
            f"BYPASS: container {name} (image {refused}, in no image list) was restarted by the "
            f"engine ({restarts} restarts) with the swapped bind source and reached the raw "
            f"engine socket: its log says {proof!r}"
        )
    finally:
        direct("rm", "-f", name)


def test_a_swarm_task_replaced_by_the_orchestrator_does_not_remount_a_swapped_symlink(
    agent, swarm, direct, stack, name, tmp_path
):
    benign, link = _benign_link(tmp_path)
    version = _engine_version(direct)
    body = {
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": stack.images["dockercli"],
                "Command": ["sh", "-c", _ASK + "; sleep 2"],
                "Mounts": [{"Type": "bind", "Source": str(link), "Target": "/s"}],
            },
            "RestartPolicy": {"Condition": "any", "Delay": 100_000_000},
        },
    }
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    try:
        if _status(reply) != 201:
            return  # refused outright: nothing to swap
        time.sleep(1)
        link.unlink()
        link.symlink_to(stack.engine_socket)
        deadline = time.monotonic() + 40
        proof = None
        while proof is None and time.monotonic() < deadline:
            logs = direct("service", "logs", "--raw", name)
            for line in (logs.stdout + logs.stderr).splitlines():
                if line.strip().endswith(f"ENGINE={version}"):
                    proof = line
            time.sleep(1)
        assert proof is None, (
            f"BYPASS: a task of service {name} (image dockercli, in no image list), started "
            f"by the orchestrator after the bind source was swapped, reached the raw engine "
            f"socket: {proof!r}"
        )
    finally:
        direct("service", "rm", name)


# -- 2b. docker cp: the engine mounts a stopped container's binds itself --------------------------


@pytest.mark.parametrize("direction", ["into", "out-of", "into-running"])
def test_cp_does_not_follow_a_swapped_bind_symlink_into_etc(
    direction, via_agent, direct, stack, name, tmp_path
):
    """`docker cp` to or from a container (stopped, or running): the engine mounts the
    container's binds again on the host for the copy, resolving each bind source then. A bind made through the agent to a
    symlink leading to a harmless folder, swapped to lead to /etc after the create, lets a user
    who may only use the agent write to (or read) the host's /etc."""
    benign, link = _benign_link(tmp_path, folder=True)
    proof = Path(f"/etc/eci-review7-{name}")
    payload = tmp_path / "payload"
    payload.write_text("written through eci-agent\n")
    running = direction == "into-running"  # its own /h stays the benign folder
    via_agent("run" if running else "create", *(["-d"] if running else []), "--name", name,
              "--network", "none", "-v", f"{link}:/h", stack.images["busybox"],
              *(["sleep", "600"] if running else ["true"]), check=True)  # fmt: skip
    try:
        link.unlink()
        link.symlink_to("/etc")
        if direction.startswith("into"):
            r = via_agent("cp", str(payload), f"{name}:/h/{proof.name}")
            assert not proof.exists(), (
                f"BYPASS: `docker cp` through the agent (exit {r.returncode}) wrote {proof} on "
                f"the host: {proof.read_text()!r}"
            )
        else:
            out = tmp_path / "out"
            r = via_agent("cp", f"{name}:/h/hostname", str(out))
            host = Path("/etc/hostname").read_text() if Path("/etc/hostname").exists() else None
            got = out.read_text() if out.exists() else None
            assert got is None or got != host, (
                f"BYPASS: `docker cp` through the agent (exit {r.returncode}) read the host's "
                f"/etc/hostname: {got!r}"
            )
    finally:
        with contextlib.suppress(OSError):
            proof.unlink()
        direct("rm", "-f", name)


# -- 2c. the engine starts containers by itself when it starts ------------------------------------


@pytest.fixture
def own_stack(direct: Any, stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private engine of this test's own (it is restarted), with busybox loaded, and an agent
    in front of it."""
    from tests.e2e.conftest import _docker
    from tests.env import Stack

    own = Stack(build_images=False).start()
    try:
        image = stack.images["busybox"]
        saved = tmp_path_factory.mktemp("img") / "busybox.tar"
        direct("save", "-o", str(saved), image, check=True)
        own_direct = _docker("unix://" + own.engine_socket, stack)
        own_direct("load", "-i", str(saved), check=True)
        agent = AgentProcess(tmp_path_factory.mktemp("own-agent"), own.engine_socket)
        agent.start({"configurationFileVersion": 2,
                     "enhancedContainerIsolation": {"value": True, "locked": True}})  # fmt: skip
        try:
            yield own, own_direct, _docker("unix://" + agent.listen, stack), image
        finally:
            agent.stop()
    finally:
        own.stop()


def test_a_restart_policy_set_through_the_agent_does_not_start_a_refused_container_at_boot(
    own_stack, name
):
    """A `--pid=host` container made (and run) before enforcement: the agent refuses to start
    it, but lets `docker update --restart always` through; the engine then starts it by itself
    the next time it starts (a reboot, an upgrade)."""
    from tests.env.stack import _stop_pid

    own, own_direct, own_via_agent, image = own_stack
    # It ran once before enforcement and exited (its next runs keep going).
    once = "test -f /ran || { touch /ran; exit 0; }; sleep 600"
    own_direct("run", "--name", name, "--network", "none", "--pid", "host", image,
               "sh", "-c", once, check=True)  # fmt: skip
    r = own_via_agent("start", name)
    assert r.returncode != 0, "control: the agent refuses to start it"
    r = own_via_agent("update", "--restart", "always", name)
    policy = own_direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).stdout
    _stop_pid(own.dockerd_pid, own._dockerd, own.tmpdir, timeout=30.0)
    own._start_dockerd()
    deadline = time.monotonic() + 20
    running = ""
    while time.monotonic() < deadline:
        running = own_direct("inspect", "-f", "{{.State.Running}} {{.HostConfig.PidMode}}",
                             name).stdout.strip()  # fmt: skip
        if running.startswith("true"):
            break
        time.sleep(0.5)
    assert not running.startswith("true"), (
        f"BYPASS: `docker update --restart always` went through the agent (exit "
        f"{r.returncode}, policy now {policy.strip()!r}), and after an engine restart the "
        f"--pid=host container {name} it refuses to start is running: {running!r}"
    )


# -- 3. the start check races the engine's own mount ------------------------------------------------


def test_a_symlink_flipped_during_start_never_gives_the_socket(
    via_agent, direct, stack, name, tmp_path
):
    benign, link = _benign_link(tmp_path)
    refused = stack.images["dockercli"]
    version = _engine_version(direct)
    via_agent("create", "--name", name, "--network", "none", "-v", f"{link}:/s", refused,
              "sh", "-c", 'test -S /s && echo "SOCKET" || true', check=True)  # fmt: skip
    stop = threading.Event()
    to_socket, to_benign = tmp_path / "l-socket", tmp_path / "l-benign"

    def flip() -> None:
        while not stop.is_set():
            for src in (to_socket, to_benign):
                with contextlib.suppress(OSError):
                    src.unlink()
            to_socket.symlink_to(stack.engine_socket)
            to_benign.symlink_to(benign)
            os.replace(to_socket, link)
            time.sleep(0.0005)
            os.replace(to_benign, link)
            time.sleep(0.0005)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    hits = 0
    try:
        deadline = time.monotonic() + 60
        attempts = 0
        while attempts < 80 and time.monotonic() < deadline and not hits:
            attempts += 1
            via_agent("start", "-a", name)
            logs = direct("logs", name)
            hits = logs.stdout.count("SOCKET")
        assert hits == 0, (
            f"BYPASS: after {attempts} starts through the agent while the bind source flipped, "
            f"container {name} (image dockercli, in no image list) found the engine socket at "
            f"/s ({hits} times; engine {version})"
        )
    finally:
        stop.set()
        flipper.join(5)
        direct("rm", "-f", name)


# -- 4. protocol and error-path controls --------------------------------------------------------------


def test_a_create_right_after_a_refused_one_on_the_same_connection_is_judged(
    agent, direct, stack, name
):
    first, second = name + "-a", name + "-b"
    with _connect(agent.listen) as s:
        s.sendall(_bad_create(stack, first))
        time.sleep(0.5)
        s.sendall(_bad_create(stack, second, close=True))
        reply = _read_all(s, 5)
    assert not _exists(direct, first) and not _exists(direct, second), reply[:600]


@pytest.mark.parametrize(
    "head_extra",
    [
        b"X-A: 1\r\n Content-Type: application/json\r\n",  # obs-fold
        b"X-A: 1\r\n\tX-B: 2\r\n",
        b"Content-Type : application/json\r\n",
        b"X-A:\x0b1\r\n",
        b"X-" + b"a" * 60000 + b": 1\r\n",
    ],
    ids=["fold-space", "fold-tab", "space-before-colon", "vtab-value", "long-name"],
)
def test_odd_header_syntax_never_reaches_the_engine_unjudged(
    head_extra, agent, direct, stack, name
):
    body = json.dumps({"Image": stack.images["busybox"], "HostConfig": {"Privileged": True}})
    data = (
        (
            f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        + head_extra
        + b"Connection: close\r\n\r\n"
        + body.encode()
    )
    reply = http_over_unix(agent.listen, data)
    assert not _exists(direct, name), reply[:400]


def test_http10_keep_alive_pipelined_create_is_judged(agent, direct, stack, name):
    ping = b"GET /_ping HTTP/1.0\r\nHost: d\r\nConnection: keep-alive\r\n\r\n"
    bad = _bad_create(stack, name).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    bad = bad.replace(b"Host: docker\r\n", b"Host: docker\r\nConnection: keep-alive\r\n", 1)
    with _connect(agent.listen) as s:
        s.sendall(ping + bad)
        reply = _read_all(s, 4)
    assert not _exists(direct, name), reply[:600]


def test_garbage_settings_keep_the_policy(agent: AgentProcess, direct, stack, name):
    """The settings file replaced by something unreadable (or removed, or empty): the agent
    must keep enforcing, not fall back to a pass-through."""
    good = agent.settings_path.read_bytes()
    try:
        for garbage in (b"{not json", b"", b'{"configurationFileVersion": 2, "x": 1'):
            tmp = agent.settings_dir / ".g"
            tmp.write_bytes(garbage)
            os.replace(tmp, agent.settings_path)
            time.sleep(1.5)
            reply = http_over_unix(agent.listen, _bad_create(stack, name, close=True))
            assert not _exists(direct, name), (garbage, reply[:400])
        agent.settings_path.unlink()
        time.sleep(1.5)
        reply = http_over_unix(agent.listen, _bad_create(stack, name, close=True))
        assert not _exists(direct, name), ("removed", reply[:400])
    finally:
        direct("rm", "-f", name)
        tmp = agent.settings_dir / ".g"
        tmp.write_bytes(good)
        os.replace(tmp, agent.settings_path)
        agent.current_sha = hashlib.sha256(good).hexdigest()  # what the agent kept in force
        time.sleep(1.5)


@pytest.mark.parametrize("version", ["v1.12", "v1.18", "v1.23"])
@pytest.mark.parametrize(
    "fields",
    [
        {"Privileged": True, "HostConfig": None},
        {"Binds": ["/etc:/h"]},
        {"NetworkMode": "host"},
        {"hostconfig": None, "capadd": "SYS_ADMIN"},
    ],
    ids=["privileged", "binds-etc", "network-host", "capadd-lone-string"],
)
def test_old_api_top_level_host_config_fields_are_refused(version, fields, agent, direct, stack,
                                                          name):  # fmt: skip
    body = {"Image": stack.images["busybox"], **fields}
    reply = _raw(agent, "POST", f"/{version}/containers/create?name={name}",
                 json.dumps(body).encode())  # fmt: skip
    try:
        assert not _exists(direct, name), reply[:400]
    finally:
        direct("rm", "-f", name)


# -- controls for the fixes: what must keep working ------------------------------------------------


def test_a_restart_policy_update_of_an_ordinary_container_goes_through(via_agent, direct, stack,
                                                                         name):  # fmt: skip
    """`docker update --restart` is judged as a start now; an ordinary container still gets
    its policy, and a refused one keeps the one it had."""
    via_agent("create", "--name", name, "--network", "none", stack.images["busybox"], "true",
              check=True)  # fmt: skip
    refused = name + "-pid"
    direct("create", "--name", refused, "--network", "none", "--pid", "host",
           stack.images["busybox"], "true", check=True)  # fmt: skip
    try:
        r = via_agent("update", "--restart", "unless-stopped", name)
        assert r.returncode == 0, r.stderr
        policy = direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).stdout
        assert policy.strip() == "unless-stopped"
        r = via_agent("update", "--restart", "always", refused)
        assert r.returncode != 0 and "restart policy" in r.stderr, r.stderr
        policy = direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", refused).stdout
        assert policy.strip() == "no"
        r = via_agent("update", "--memory", "64m", "--memory-swap", "-1", refused)
        assert r.returncode == 0, "a resource update alone is not a start: " + r.stderr
    finally:
        direct("rm", "-f", name, refused)


def test_a_privileged_exec_an_exception_allows_is_made_in_the_judged_container(
    agent, via_agent, direct, stack, name
):
    """An exec judged against its container's image (an isolation exception) is forwarded to
    that container's ID; another image still gets nothing."""
    from tests.e2e.agent_process import DEFAULT_SETTINGS
    from tests.e2e.test_isolation import registry_ref

    busybox = registry_ref(stack, "busybox")
    repo = busybox.rsplit(":", 1)[0]
    other = name + "-other"
    agent.set_settings(
        {**DEFAULT_SETTINGS,
         "eciAgent": {"isolationExceptions": [{"images": [f"{repo}:*"], "allow": ["--privileged"]}]}}
    )  # fmt: skip
    try:
        direct("run", "-d", "--name", name, "--network", "none", busybox, "sleep", "60",
               check=True)  # fmt: skip
        direct("run", "-d", "--name", other, "--network", "none",
               registry_ref(stack, "dockercli"), "sleep", "60", check=True)  # fmt: skip
        since = str(int(time.time()) - 1)
        r = via_agent("exec", "--privileged", name, "true")
        # allowed by the agent (runc may still fail to give a privileged exec its caps here)
        assert "enhanced container isolation" not in r.stdout + r.stderr, r.stdout + r.stderr
        r = via_agent("exec", "--privileged", other, "true")
        assert r.returncode != 0 and "enhanced container isolation" in r.stderr, r.stderr

        def exec_creates(box: str) -> list[str]:
            shown = direct("events", "--since", since, "--until", str(int(time.time()) + 1),
                           "--filter", f"container={box}", "--filter", "event=exec_create",
                           "--format", "{{.Action}}", check=True)  # fmt: skip
            return shown.stdout.splitlines()

        assert len(exec_creates(name)) == 1, exec_creates(name)  # made in the judged container
        assert exec_creates(other) == []
    finally:
        agent.set_settings(DEFAULT_SETTINGS)
        direct("rm", "-f", name, other)
