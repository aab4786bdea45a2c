"""Session 7c review: bypass attempts outside swarm/restart/cp/query (sessions 7, 7b).

Attacked here, each through the real agent, with the outcome asked of the ENGINE:

1. Plugins: a plugin whose config asks for a fresh procfs (`"type": "proc"` mount) or sysfs:
   the plugin runs as real root, and runc masks/read-only-protects only /proc itself, so a
   second procfs gives a writable /proc/sys (core_pattern: host code execution). This is
   what `--security-opt systempaths=unconfined` gives, which the agent refuses for containers.
2. Command list on the container-facing socket: route aliases/version prefixes, HEAD for a
   GET route, websocket attach, exec start by exec ID, /session, compose labels, and a
   connection handed on by a process that exits (identity read at accept).
3. Volumes: local-driver bind options in odd spellings, a driver named like `local`.
4. POST /build query parameters other than networkmode (cgroupparent naming a container's
   cgroup, the identity the agent reads).
5. Settings: a settings file swapped for a symlink to a user-writable file.

Each test fails if the bypass works.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import http_over_unix, settings_with
from tests.e2e.test_socket_mount import _raw, registry_ref

pytestmark = pytest.mark.engine


def _rootfs(direct: Any, stack: Any, tmp: Path, holder: str) -> Path:
    rootfs = tmp / "plugin" / "rootfs"
    rootfs.mkdir(parents=True)
    direct("create", "--name", holder, registry_ref(stack, "busybox"), "true", check=True)
    try:
        tar_path = tmp / "rootfs.tar"
        direct("export", "-o", str(tar_path), holder, check=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(rootfs, filter="tar")
    finally:
        direct("rm", "-f", holder)
    return rootfs.parent


# -- 1. plugins: a procfs / sysfs of their own ---------------------------------------------------


@pytest.mark.parametrize("fstype", ["proc", "sysfs"])
def test_plugin_with_its_own_procfs_or_sysfs_cannot_be_enabled(
    via_agent, direct, stack, name, tmp_path, fstype
):
    root = _rootfs(direct, stack, tmp_path, name + "-export")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    # Non-destructive proof of write access to a host-global kernel setting: the current value
    # of kernel.core_uses_pid (proc) / the kernel's uevent_helper (sysfs) written back as it is.
    if fstype == "proc":
        probe = 'v=$(cat /hp/sys/kernel/core_uses_pid) && echo "$v" > /hp/sys/kernel/core_uses_pid'
    else:
        probe = "test -w /hp/kernel/uevent_helper && touch /hp/kernel/uevent_helper"
    script = (
        f"if {probe}; then echo WROTE > /out/result; else echo DENIED > /out/result; fi; sleep 60"
    )
    config = {
        "description": "review",
        "documentation": "-",
        "entrypoint": ["/bin/sh", "-c", script],
        # not a volume driver (refused for that alone since): the mount type is what is judged
        "interface": {"types": ["docker.logdriver/1.0"], "socket": "review.sock"},
        "network": {"type": "none"},
        "mounts": [
            {"source": fstype, "destination": "/hp", "type": fstype, "options": ["rw"]},
            {"source": str(out), "destination": "/out", "type": "bind", "options": ["rbind"]},
        ],
    }
    (root / "config.json").write_text(json.dumps(config))
    plugin = f"review7c-{name}"
    try:
        via_agent("plugin", "create", plugin, str(root), check=True)
        r = via_agent("plugin", "enable", "--timeout", "5", plugin)
        time.sleep(2)
        enabled = direct("plugin", "inspect", "--format", "{{.Enabled}}", plugin, check=True)
        result = (out / "result").read_text().strip() if (out / "result").exists() else ""
        assert enabled.stdout.strip() == "false" and result != "WROTE", (
            f"BYPASS: plugin with a {fstype} mount enabled={enabled.stdout.strip()} "
            f"probe={result!r} agent said rc={r.returncode} {r.stderr.strip()}"
        )
    finally:
        direct("plugin", "rm", "-f", plugin)


# -- 2. volumes: local-driver bind options in odd spellings ---------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        # Go decodes a repeated map into the same map: the options merge, the last `o` wins
        '"DriverOpts": {"type": "none", "device": "@DIR@", "o": "ro"}, "DriverOpts": {"o": "bind"}',
        '"driveropts": {"type": "none", "device": "@DIR@", "o": "ro", "o": "rbind"}',
        '"DriverOpts": null, "DRIVEROPTS": {"device": "@DIR@", "o": "nodev,bind,ro"}',
        '"DriverOpts": {"type": "tmpfs", "device": "@DIR@", "o": "bind"}',
    ],
)
def test_volume_bind_option_spellings_reaching_the_socket_folder(agent, direct, stack, name, opts):
    sock_dir = os.path.dirname(stack.engine_socket)
    volume = name + "-v"
    body = '{"Name": "' + volume + '", "Driver": "local", ' + opts.replace("@DIR@", sock_dir) + "}"
    reply = _raw(agent, "POST", "/v1.41/volumes/create", body.encode())
    try:
        made = direct("volume", "inspect", volume).returncode == 0
        assert not made, f"BYPASS: volume binding {sock_dir} made: {reply[:300]!r}"
    finally:
        direct("volume", "rm", "-f", volume)


# -- 3. the command list on the container-facing socket: raw routes ------------------------------


def _http(path: str, method: str, target: str, headers: str = "", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: docker\r\n{headers}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return http_over_unix(path, (head + "Connection: close\r\n\r\n").encode() + body)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def test_allow_ps_only_raw_routes_on_the_container_socket(agent, stack, direct, box):
    """Global list `allow ["ps"]` (a host process on the container socket gets the global list):
    exec start by exec ID, websocket attach, /session, /grpc, HEAD of GET routes, odd version
    prefixes, OPTIONS with a body; none may do anything."""
    doc = settings_with([stack.images["dockercli"]])
    doc["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"] = {
        "type": "allow",
        "commands": ["ps"],
    }
    agent.set_settings(doc)
    sock = agent.container_socket
    marker = "/tmp/ran-" + box
    # An exec created by the host user (not through the container socket), started from it.
    made = http_over_unix(
        stack.engine_socket,
        (
            f"POST /v1.41/containers/{box}/exec HTTP/1.1\r\nHost: d\r\nContent-Type: "
            "application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        ).encode()
        % len(json.dumps({"Cmd": ["touch", marker]}))
        + json.dumps({"Cmd": ["touch", marker]}).encode(),
    )
    exec_id = json.loads(made.partition(b"\r\n\r\n")[2])["Id"]
    tries = [
        ("POST", f"/v1.41/exec/{exec_id}/start", "", b'{"Detach": true}'),
        ("POST", f"/v1.41./exec/{exec_id}/start", "", b'{"Detach": true}'),
        ("POST", f"/exec/{exec_id}/start", "", b'{"Detach": true}'),
        ("POST", f"/v1.41/exec/{exec_id[:12]}/start", "", b'{"Detach": true}'),
        (
            "GET",
            f"/v1.41/containers/{box}/attach/ws?stream=1&stdin=1",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n",
            b"",
        ),
        (
            "POST",
            "/v1.41/session",
            "Upgrade: h2c\r\nConnection: Upgrade\r\nX-Docker-Expose-Session-Uuid: x\r\n",
            b"",
        ),
        ("POST", "/v1.41/grpc", "Upgrade: h2c\r\nConnection: Upgrade\r\n", b""),
        ("HEAD", f"/v1.41/containers/{box}/json", "", b""),
        ("HEAD", f"/v1.41/containers/{box}/archive?path=/etc", "", b""),
        ("OPTIONS", f"/v1.41/exec/{exec_id}/start", "", b'{"Detach": true}'),
        ("POST", f"/v1.41/containers/{box}/kill?signal=0", "", b""),
    ]
    for method, target, headers, body in tries:
        answer = _http(sock, method, target, headers, body)
        status = _status(answer)
        assert status in (0, 200, 400, 403, 404, 405) or method == "OPTIONS", (
            f"{method} {target}: {answer[:200]!r}"
        )
        assert status not in (101, 201, 204) and b"HTTP/1.1 101" not in answer, (
            f"BYPASS {method} {target}: {answer[:200]!r}"
        )
        if method != "OPTIONS" and method != "HEAD":
            assert status != 200, f"BYPASS {method} {target}: {answer[:200]!r}"
    time.sleep(0.5)
    r = direct("exec", box, "test", "-e", marker)
    assert r.returncode != 0, (
        "BYPASS: the exec created by the host ran, started from the container socket"
    )
    state = json.loads(direct("inspect", box, check=True).stdout)[0]["State"]
    assert state["Running"], "the container was killed"


# -- 4. settings: the file swapped for a symlink to a file others may write ----------------------


def test_settings_swapped_for_a_symlink_to_a_user_writable_file(
    agent, stack, direct, name, tmp_path
):
    agent.set_settings(settings_with([]))  # nothing may mount the socket
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    evil = loose / "admin-settings.json"
    evil.write_text(
        json.dumps(
            {
                "configurationFileVersion": 2,
                "enhancedContainerIsolation": {"value": False, "locked": True},
            }
        )
    )
    os.chmod(evil, 0o666)
    path = agent.settings_path
    saved = path.read_bytes()
    tmp = path.with_name("swap.tmp")
    os.symlink(evil, tmp)
    os.replace(tmp, path)
    try:
        time.sleep(3)
        body = json.dumps(
            {
                "Image": stack.images["busybox"],
                "HostConfig": {
                    "Binds": ["/var/run/docker.sock:/var/run/docker.sock"],
                    "Privileged": True,
                },
            }
        )
        reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body.encode())
        made = direct("inspect", name).returncode == 0
        assert not made, (
            f"BYPASS: a user-writable settings file (via symlink) applied: {reply[:200]!r}"
        )
    finally:
        direct("rm", "-f", name)
        path.unlink()
        path.write_bytes(saved)
        os.chmod(path, 0o644)
        time.sleep(2)


# -- 5. POST /build: cgroupparent naming a container's cgroup ------------------------------------


def test_build_cgroupparent_naming_a_container_is_refused_like_a_create(
    agent, stack, direct, box, tmp_path
):
    """The agent tells a client's container by its cgroup path; creates with a CgroupParent named
    like a container's cgroup are refused for that reason. The classic builder runs RUN steps
    in `cgroupparent`: the same rule should hold (informational: no socket reaches a RUN step)."""
    cid = json.loads(direct("inspect", box, check=True).stdout)[0]["Id"]
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"FROM {stack.images['busybox']}\nRUN cat /proc/self/cgroup\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reply = _raw(
        agent,
        "POST",
        f"/v1.41/build?rm=1&forcerm=1&cgroupparent=/{cid}&q=0",
        buf.getvalue(),
        content_type="application/x-tar",
    )
    assert f"/{cid}/".encode() not in reply, (
        f"build RUN step placed in container {cid[:12]}'s cgroup: {reply[-600:]!r}"
    )
