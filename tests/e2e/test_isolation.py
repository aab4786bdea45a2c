"""Container isolation beyond the socket, through the real agent, engine and docker CLI.

Every refusal is checked twice: the client sees an `enhanced container isolation` error, and
the ENGINE (asked directly, not through the agent) has no such container, exec or image.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import DEFAULT_SETTINGS, AgentProcess
from tests.e2e.test_socket_mount import _raw, exists, registry_ref
from tests.env import Stack

pytestmark = pytest.mark.engine

REFUSED = "enhanced container isolation: "
NEVER_STARTED = "0001-01-01T00:00:00Z"

OFF = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {"value": False, "locked": True},
}


def with_exceptions(*entries: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULT_SETTINGS, "eciAgent": {"isolationExceptions": list(entries)}}


def _cli_cases(tmp: Path, stack: Any) -> dict[str, list[str]]:
    link = tmp / "etc-link"
    link.symlink_to("/etc")
    return {
        "privileged": ["--privileged"],
        "pid-host": ["--pid=host"],
        "ipc-host": ["--ipc=host"],
        "uts-host": ["--uts=host"],
        "network-host": ["--network=host"],
        "userns-host": ["--userns=host"],
        "cgroupns-host": ["--cgroupns=host"],
        "cap-sys-admin": ["--cap-add=SYS_ADMIN"],
        "cap-lower-prefixed": ["--cap-add=cap_sys_ptrace"],
        "cap-net-admin": ["--cap-add", "NET_ADMIN"],
        "cap-all": ["--cap-add=all"],
        "cap-sys-module": ["--cap-add=SYS_MODULE"],
        "device": ["--device=/dev/null:/dev/xnull"],
        "device-cgroup-rule": ["--device-cgroup-rule=c 1:3 rwm"],
        "seccomp-unconfined": ["--security-opt", "seccomp=unconfined"],
        "apparmor-unconfined": ["--security-opt", "apparmor=unconfined"],
        "label-disable": ["--security-opt", "label=disable"],
        "label-old-form": ["--security-opt", "label:disable"],
        "systempaths": ["--security-opt", "systempaths=unconfined"],
        "bind-etc": ["-v", "/etc:/x"],
        "bind-root": ["-v", "/:/host:ro"],
        "bind-proc": ["--mount", "type=bind,source=/proc,target=/p"],
        "bind-sys-file": ["-v", "/sys/kernel:/k"],
        "bind-dev": ["-v", "/dev:/d"],
        "bind-data-root": ["-v", f"{stack.data_root}:/d"],
        "bind-data-root-parent": ["-v", f"{stack.tmpdir}:/d"],
        "bind-symlink-to-etc": ["-v", f"{link}:/x"],
    }


CLI_CASES = [
    "privileged", "pid-host", "ipc-host", "uts-host", "network-host", "userns-host",
    "cgroupns-host", "cap-sys-admin", "cap-lower-prefixed", "cap-net-admin", "cap-all",
    "cap-sys-module", "device", "device-cgroup-rule", "seccomp-unconfined",
    "apparmor-unconfined", "label-disable", "label-old-form", "systempaths",
    "bind-etc", "bind-root", "bind-proc", "bind-sys-file", "bind-dev", "bind-data-root",
    "bind-data-root-parent", "bind-symlink-to-etc",
]  # fmt: skip


#: Folders that also hold (or, for /proc, lead to) the engine socket: the socket check answers
#: first.
SOCKET_FIRST = frozenset({"bind-root", "bind-data-root-parent", "bind-proc"})


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_options_are_refused_while_eci_is_on(case, via_agent, direct, stack, name, tmp_path):
    args = _cli_cases(tmp_path, stack)[case]
    r = via_agent("create", "--name", name, *args, registry_ref(stack, "busybox"), "true")
    assert r.returncode != 0, r.stdout
    assert REFUSED in r.stderr, r.stderr
    if case not in SOCKET_FIRST:
        assert "eciAgent.isolationExceptions" in r.stderr, r.stderr
    assert not exists(direct, name)


def test_the_message_names_the_option_as_the_cli_spells_it(agent, via_agent, direct, stack, name):
    before = len(agent.log())
    r = via_agent("run", "--rm", "--name", name, "--pid=host", registry_ref(stack, "busybox"))
    assert "Error response from daemon: enhanced container isolation: container with image" in (
        r.stderr
    )
    assert "`--pid=host` is not allowed while enhanced container isolation is on" in r.stderr
    assert not exists(direct, name)
    events = [line for line in agent.log()[before:].splitlines() if '"event": "denied"' in line]
    assert any('"rule": "isolation"' in e and "--pid=host" in e for e in events), events


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_same_options_pass_when_eci_is_off(case, agent, via_agent, direct, stack, name,
                                                tmp_path):  # fmt: skip
    agent.set_settings(OFF)
    args = _cli_cases(tmp_path, stack)[case]
    try:
        r = via_agent("create", "--name", name, *args, registry_ref(stack, "busybox"), "true")
        assert r.returncode == 0, r.stderr
        assert exists(direct, name)
    finally:
        direct("rm", "-f", name)


def test_harmless_options_pass_while_eci_is_on(via_agent, direct, stack, name, tmp_path):
    try:
        r = via_agent(
            "create", "--name", name, "--network", "none", "--cap-add", "NET_BIND_SERVICE",
            "--cap-drop", "ALL", "--sysctl", "net.ipv4.ip_forward=1", "-v", f"{tmp_path}:/x",
            "-v", "/etc/localtime:/etc/localtime:ro", "--security-opt", "no-new-privileges",
            registry_ref(stack, "busybox"), "true",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = via_agent("start", "-a", name)
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", name)


def _create_raw(agent: AgentProcess, name: str, body: str, version: str = "v1.41") -> bytes:
    return _raw(agent, "POST", f"/{version}/containers/create?name={name}", body.encode())


RAW_CASES = {
    "lowercase-keys": '{"Image": IMG, "hostconfig": {"privileged": true}}',
    "upper-keys": '{"Image": IMG, "HOSTCONFIG": {"PIDMODE": "host"}}',
    "hostconfig-twice": '{"Image": IMG, "HostConfig": {"Privileged": false}, '
    '"hostConfig": {"privileged": true}}',
    "false-then-true": '{"Image": IMG, "HostConfig": {"Privileged": false, "PRIVILEGED": true}}',
    "capadd-lone-string": '{"Image": IMG, "HostConfig": {"capadd": "sys_admin"}}',
    "top-level-old-api": '{"Image": IMG, "Privileged": true}',
    "top-level-pid": '{"Image": IMG, "PidMode": "host"}',
    "top-level-binds": '{"Image": IMG, "Binds": ["/etc:/x"]}',
    "endpoints-host": '{"Image": IMG, "NetworkingConfig": {"EndpointsConfig": {"host": {}}}}',
    "empty-masked-paths": '{"Image": IMG, "HostConfig": {"MaskedPaths": []}}',
    "bare-disable": '{"Image": IMG, "HostConfig": {"SecurityOpt": ["disable"]}}',
    "sysctl-host": '{"Image": IMG, "HostConfig": {"Sysctls": {"kernel.core_pattern": "|/x"}}}',
    "sysctl-slashes": '{"Image": IMG, "HostConfig": {"sysctls": {"kernel/domainname": "x"}}}',
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_raw_api_case_and_duplicate_tricks_are_refused(case, agent, direct, stack, name):
    body = RAW_CASES[case].replace("IMG", json.dumps(registry_ref(stack, "busybox")))
    version = "v1.23" if case.startswith("top-level") else "v1.41"
    reply = _create_raw(agent, name, body, version)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:400]
    assert REFUSED.encode() in reply
    assert not exists(direct, name)


def test_last_duplicate_wins_as_in_go(agent, direct, stack, name):
    """`"Privileged": true` then `"privileged": false` is NOT privileged to the engine."""
    body = '{"Image": IMG, "HostConfig": {"Privileged": true, "privileged": false}}'
    reply = _create_raw(
        agent, name, body.replace("IMG", json.dumps(registry_ref(stack, "busybox")))
    )
    try:
        assert reply.startswith(b"HTTP/1.1 201"), reply[:400]
        out = direct("inspect", "--format", "{{.HostConfig.Privileged}}", name, check=True)
        assert out.stdout.strip() == "false"
    finally:
        direct("rm", "-f", name)


def test_container_namespace_of_a_host_namespaced_container(via_agent, direct, stack, name):
    holder = name + "-host"
    ref = registry_ref(stack, "busybox")
    direct("create", "--name", holder, "--pid=host", "--ipc=host", ref, "sleep", "60", check=True)
    plain = name + "-plain"
    direct("create", "--name", plain, "--network", "none", "--ipc=shareable", ref, "sleep", "60",
           check=True)  # fmt: skip
    try:
        for opt in (f"--pid=container:{holder}", f"--ipc=container:{holder}"):
            r = via_agent("create", "--name", name, "--network", "none", opt, ref, "true")
            assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
            assert f"container {holder}, which shares the host's namespace" in r.stderr
            assert not exists(direct, name)
        r = via_agent("create", "--name", name, "--network", "none", f"--pid=container:{plain}",
                      ref, "true")  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", holder, plain, name)


def test_privileged_exec_is_refused(via_agent, direct, stack, name):
    direct("run", "-d", "--name", name, "--network", "none", registry_ref(stack, "busybox"),
           "sleep", "60", check=True)  # fmt: skip
    try:
        r = via_agent("exec", "--privileged", name, "true")
        assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
        assert "docker exec --privileged" in r.stderr
        ids = direct("inspect", "--format", "{{json .ExecIDs}}", name, check=True).stdout.strip()
        assert ids == "null", ids
        r = via_agent("exec", name, "true")
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", name)


def test_a_privileged_container_made_before_enforcement_is_refused_at_start(
    agent, via_agent, direct, stack, name
):
    ref = registry_ref(stack, "busybox")
    direct("create", "--name", name, "--network", "none", "--privileged", ref, "true", check=True)
    try:
        r = via_agent("start", name)
        assert r.returncode != 0, r.stdout
        assert f"container {name} was created with `--privileged`" in r.stderr, r.stderr
        assert f"docker rm {name}" in r.stderr
        reply = _raw(agent, "POST", f"/v1.41/containers/{name}/restart")
        assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
        started = direct("inspect", "--format", "{{.State.StartedAt}}", name, check=True)
        assert started.stdout.strip() == NEVER_STARTED
    finally:
        direct("rm", "-f", name)


def test_a_plain_container_made_before_enforcement_still_starts(via_agent, direct, stack, name):
    direct("create", "--name", name, "--network", "none", registry_ref(stack, "busybox"), "true",
           check=True)  # fmt: skip
    try:
        r = via_agent("start", "-a", name)
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", name)


def test_build_with_host_network_is_refused(via_agent, direct, stack, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {registry_ref(stack, 'busybox')}\nRUN true\n")
    tag = "eci-isolation-build:host"
    r = via_agent("build", "--network", "host", "-t", tag, str(tmp_path))
    assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
    assert "docker build --network=host" in r.stderr
    assert direct("image", "inspect", tag).returncode != 0


def test_plugin_install_with_privileges_and_services_are_refused(agent):
    privileges = json.dumps(
        [
            {"Name": "network", "Value": ["host"]},
            {"Name": "capabilities", "Value": ["CAP_SYS_ADMIN"]},
        ]
    ).encode()
    reply = _raw(agent, "POST", "/v1.41/plugins/pull?remote=example/plugin:1&name=p", privileges)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:400]
    assert b"plugin capability SYS_ADMIN" in reply and b"plugin network host" in reply
    service = json.dumps(
        {"Name": "s", "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                          "capabilityadd": ["sys_admin"]}}}
    ).encode()  # fmt: skip
    reply = _raw(agent, "POST", "/v1.41/services/create", service)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:400]


def test_update_with_devices_is_refused(agent, direct, stack, name):
    direct("create", "--name", name, "--network", "none", registry_ref(stack, "busybox"), "true",
           check=True)  # fmt: skip
    try:
        body = json.dumps({"devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/x",
                                        "CgroupPermissions": "rwm"}]}).encode()  # fmt: skip
        reply = _raw(agent, "POST", f"/v1.41/containers/{name}/update", body)
        assert reply.startswith(b"HTTP/1.1 403"), reply[:400]
        reply = _raw(agent, "POST", f"/v1.41/containers/{name}/update",
                     json.dumps({"Memory": 64 << 20, "MemorySwap": 128 << 20}).encode())  # fmt: skip
        assert reply.startswith(b"HTTP/1.1 200"), reply[:400]
    finally:
        direct("rm", "-f", name)


# -- exceptions per image ---------------------------------------------------------------------------


def test_an_exception_allows_only_what_it_names_for_the_image_it_names(
    agent, via_agent, direct, stack, name
):
    busybox = registry_ref(stack, "busybox")
    repo = busybox.rsplit(":", 1)[0]
    agent.set_settings(
        with_exceptions({"images": [f"{repo}:*"], "allow": ["SYS_PTRACE", "--pid=host"]})
    )
    try:
        r = via_agent("create", "--name", name, "--pid=host", "--cap-add", "sys_ptrace",
                      busybox, "true")  # fmt: skip
        assert r.returncode == 0, r.stderr
        direct("rm", "-f", name)
        # Not named in the exception.
        r = via_agent("create", "--name", name, "--pid=host", "--privileged", busybox, "true")
        assert r.returncode != 0 and REFUSED in r.stderr and not exists(direct, name)
        # Another image.
        r = via_agent("create", "--name", name, "--pid=host", registry_ref(stack, "dockercli"),
                      "true")  # fmt: skip
        assert r.returncode != 0 and REFUSED in r.stderr and not exists(direct, name)
        # Another image re-tagged to the excepted name: its digest is not the registry's.
        fake = f"{repo}:retagged"
        direct("tag", registry_ref(stack, "dockercli"), fake, check=True)
        try:
            r = via_agent("create", "--name", name, "--pid=host", fake, "true")
            assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
            assert not exists(direct, name)
        finally:
            direct("image", "rm", fake)
    finally:
        direct("rm", "-f", name)


# -- userns-remap ---------------------------------------------------------------------------------


def _getent(db: str, key: str) -> bool:
    return subprocess.run(["getent", db, key], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def remap_stack(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second private dockerd with `--userns-remap=default`.

    dockerd creates the `dockremap` user and its /etc/subuid, /etc/subgid ranges when missing;
    whatever it (or this fixture) added is removed again afterwards.
    """
    if not shutil.which("useradd") and not shutil.which("adduser"):
        pytest.skip("userns-remap=default needs useradd or adduser to create dockremap")
    saved = {p: Path(p).read_bytes() if Path(p).exists() else None
             for p in ("/etc/subuid", "/etc/subgid")}  # fmt: skip
    had_user = _getent("passwd", "dockremap")
    had_group = _getent("group", "dockremap")
    # The remapped root must be able to reach the data root: every folder above it needs o+x.
    where = Path(tempfile.mkdtemp(prefix="eci-remap-", dir="/tmp"))
    os.chmod(where, 0o711)
    remap = Stack(where, build_images=False, install=False, dockerd_args=["--userns-remap=default"])
    try:
        remap.start()
    except Exception as err:  # noqa: BLE001 - reported as the skip reason
        _restore_remap(saved, had_user, had_group)
        pytest.skip(f"a userns-remap engine cannot start in this sandbox: {err}")
    try:
        out = tmp_path_factory.mktemp("remap") / "busybox.tar"
        stack.docker("save", "-o", str(out), registry_ref(stack, "busybox"))
        remap.docker("load", "-i", str(out))
        yield remap
    finally:
        remap.stop()
        _restore_remap(saved, had_user, had_group)


def _restore_remap(saved: dict[str, bytes | None], had_user: bool, had_group: bool) -> None:
    if not had_user and _getent("passwd", "dockremap"):
        subprocess.run(["userdel", "dockremap"], capture_output=True)
    if not had_group and _getent("group", "dockremap"):
        subprocess.run(["groupdel", "dockremap"], capture_output=True)
    for path, data in saved.items():
        if data is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            Path(path).write_bytes(data)


def test_userns_remap_is_detected_and_userns_host_refused(
    remap_stack, stack, tmp_path_factory, name
):
    from agent.policy.isolation import isolation_status
    from agent.proxy.gate import Gate, GateConfig
    from agent.settings.model import BUILTIN_DEFAULT, Effective

    gate = Gate(
        GateConfig(
            remap_stack.engine_socket, (), "/nonexistent/c.sock", lambda: "settings",
            lambda: Effective(BUILTIN_DEFAULT),
        )
    )  # fmt: skip
    engine = asyncio.run(gate.engine_isolation())
    assert engine.userns_remap, engine
    assert "isolation: user namespaces" in isolation_status(engine)

    agent = AgentProcess(tmp_path_factory.mktemp("remap-agent"), remap_stack.engine_socket)
    agent.start(DEFAULT_SETTINGS)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env |= {"DOCKER_HOST": "unix://" + agent.listen,
                "DOCKER_CONFIG": str(remap_stack.docker_config_dir)}  # fmt: skip
        ref = registry_ref(stack, "busybox")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip

        r = cli("create", "--name", name, "--userns=host", ref, "true")
        assert r.returncode != 0 and "`--userns=host`" in r.stderr, r.stderr
        listed = remap_stack.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert name not in listed
        r = cli("run", "--rm", "--network", "none", ref, "cat", "/proc/self/uid_map")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:2] != ["0", "0"], r.stdout  # container root is not host root
    finally:
        agent.stop()


# -- plugins: judged from their config when enabled ---------------------------------------------


def test_a_plugin_asking_for_sys_admin_cannot_be_enabled(via_agent, direct, stack, name, tmp_path):
    root = tmp_path / "plugin"
    rootfs = root / "rootfs"
    rootfs.mkdir(parents=True)
    holder = name + "-export"
    direct("create", "--name", holder, registry_ref(stack, "busybox"), "true", check=True)
    try:
        tar_path = tmp_path / "rootfs.tar"
        direct("export", "-o", str(tar_path), holder, check=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(rootfs, filter="tar")
    finally:
        direct("rm", "-f", holder)
    config = {
        "description": "isolation",
        "documentation": "-",
        "entrypoint": ["/bin/sleep", "60"],
        "interface": {"types": ["docker.logdriver/1.0"], "socket": "iso.sock"},
        "network": {"type": "none"},
        "linux": {"capabilities": ["CAP_SYS_ADMIN"]},
    }
    (root / "config.json").write_text(json.dumps(config))
    plugin = f"iso-{name}"
    try:
        via_agent("plugin", "create", plugin, str(root), check=True)
        r = via_agent("plugin", "enable", "--timeout", "5", plugin)
        assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
        assert "plugin capability SYS_ADMIN" in r.stderr
        out = direct("plugin", "inspect", "--format", "{{.Enabled}}", plugin, check=True)
        assert out.stdout.strip() == "false"
    finally:
        direct("plugin", "rm", "-f", plugin)


# -- an engine with sysbox-runc: every container is created with it ------------------------------


@pytest.fixture(scope="module")
def sysbox_stack(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private dockerd with a runtime registered under the name `sysbox-runc`.

    Sysbox itself is not installed here; the name is given to runc, which is enough to see
    that the agent writes the runtime into every create and refuses any other.
    """
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("no runc binary to register as sysbox-runc")
    s = Stack(build_images=False, install=False, dockerd_args=[f"--add-runtime=sysbox-runc={runc}"])
    s.start()
    try:
        out = tmp_path_factory.mktemp("sysbox") / "busybox.tar"
        stack.docker("save", "-o", str(out), registry_ref(stack, "busybox"))
        s.docker("load", "-i", str(out))
        yield s
    finally:
        s.stop()


def _gate_for(engine_socket: str) -> Any:
    from agent.proxy.gate import Gate, GateConfig
    from agent.settings.model import BUILTIN_DEFAULT, Effective

    return Gate(
        GateConfig(
            engine_socket, (), "/nonexistent/c.sock", lambda: "settings",
            lambda: Effective(BUILTIN_DEFAULT),
        )
    )  # fmt: skip


def test_with_sysbox_every_create_runs_it_and_other_runtimes_are_refused(
    sysbox_stack, stack, tmp_path_factory, name
):
    from agent.policy.isolation import isolation_status

    engine = asyncio.run(_gate_for(sysbox_stack.engine_socket).engine_isolation())
    assert engine.has_sysbox and "isolation: strong" in isolation_status(engine)
    agent = AgentProcess(tmp_path_factory.mktemp("sysbox-agent"), sysbox_stack.engine_socket)
    agent.start(DEFAULT_SETTINGS)
    ref = registry_ref(stack, "busybox")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env |= {"DOCKER_HOST": "unix://" + agent.listen,
                "DOCKER_CONFIG": str(sysbox_stack.docker_config_dir)}  # fmt: skip

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip

        r = cli("create", "--name", name, "--network", "none", ref, "true")
        assert r.returncode == 0, r.stderr
        runtime = sysbox_stack.docker("inspect", "--format", "{{.HostConfig.Runtime}}", name)
        assert runtime.stdout.strip() == "sysbox-runc"
        r = cli("start", "-a", name)
        assert r.returncode == 0, r.stderr
        other = name + "-runc"
        r = cli("create", "--name", other, "--runtime", "runc", ref, "true")
        assert r.returncode != 0 and "`--runtime=runc`" in r.stderr, r.stderr
        listed = sysbox_stack.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert other not in listed
        # A container made with runc straight on the engine is refused at start.
        sysbox_stack.docker("create", "--name", other, "--network", "none", "--runtime", "runc",
                            ref, "true")  # fmt: skip
        r = cli("start", other)
        assert r.returncode != 0 and "was created with `--runtime=runc`" in r.stderr, r.stderr
    finally:
        agent.stop()


def test_preexisting_containers_are_listed(direct, stack, name):
    ref = registry_ref(stack, "busybox")
    direct("create", "--name", name, "--network", "none", "--cap-add", "SYS_ADMIN", ref, "true",
           check=True)  # fmt: skip
    plain = name + "-plain"
    direct("create", "--name", plain, "--network", "none", ref, "true", check=True)
    try:
        found = asyncio.run(_gate_for(stack.engine_socket).preexisting_containers())
        names = {n: [v.token for v in violations] for _, n, _, violations in found}
        assert names.get(name) == ["--cap-add=SYS_ADMIN"], names
        assert plain not in names
    finally:
        direct("rm", "-f", name, plain)


def test_host_network_by_id_and_buildkit_build_query_are_refused(
    agent, via_agent, direct, stack, name
):
    net_id = direct("network", "inspect", "--format", "{{.Id}}", "host", check=True).stdout.strip()
    for value in (net_id, net_id[:12]):
        r = via_agent("create", "--name", name, "--network", value, registry_ref(stack, "busybox"))
        assert r.returncode != 0 and REFUSED in r.stderr, r.stderr
        assert not exists(direct, name)
    reply = _raw(agent, "POST", "/v1.41/build?version=2&networkmode=host&t=eci-iso:bk", b"",
                 content_type="application/x-tar")  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert direct("image", "inspect", "eci-iso:bk").returncode != 0
