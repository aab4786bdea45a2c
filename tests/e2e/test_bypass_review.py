"""Bypass attempts from a security review, each run against the real agent and engine.

Every attempt goes through the agent; what happened is then asked of the ENGINE directly (no
such container, never started, plugin not enabled, volume not made).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, http_over_unix, settings_with
from tests.e2e.test_socket_mount import _raw, exists, registry_ref

pytestmark = pytest.mark.engine

NEVER_STARTED = "0001-01-01T00:00:00Z"


def started_at(direct: Any, name: str) -> str:
    return direct("inspect", "--format", "{{.State.StartedAt}}", name, check=True).stdout.strip()


def _create(agent: AgentProcess, name: str, image: str, host_config: str) -> bytes:
    body = '{"Image": ' + json.dumps(image) + ', "HostConfig": ' + host_config + "}"
    return _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body.encode())


# -- the check must hold when the container starts, not only when it is created ------------------


def test_symlink_swapped_after_create_is_refused_at_start(via_agent, direct, stack, name, tmp_path):
    benign = tmp_path / "benign"
    benign.mkdir()
    link = tmp_path / "link"
    link.symlink_to(benign)
    ref = registry_ref(stack, "busybox")
    try:
        via_agent("create", "--name", name, "--network", "none", "-v", f"{link}:/s", ref, "true",
                  check=True)  # fmt: skip
        link.unlink()
        link.symlink_to(stack.engine_socket)  # the bind source now leads to the engine
        r = via_agent("start", name)
        assert r.returncode != 0, "the start must be refused"
        assert "docker socket mount denied" in r.stderr, r.stderr
        assert started_at(direct, name) == NEVER_STARTED
        r = via_agent("restart", name)
        assert r.returncode != 0 and started_at(direct, name) == NEVER_STARTED, r.stderr
    finally:
        direct("rm", "-f", name)


def test_refused_start_removes_an_auto_remove_container_as_the_engine_does(
    via_agent, direct, stack, name, tmp_path
):
    """`docker run --rm` waits for the removal the engine does after a failed start."""
    benign = tmp_path / "benign"
    benign.mkdir()
    link = tmp_path / "link"
    link.symlink_to(benign)
    try:
        via_agent("create", "--rm", "--name", name, "--network", "none", "-v", f"{link}:/s",
                  registry_ref(stack, "busybox"), "true", check=True)  # fmt: skip
        link.unlink()
        link.symlink_to(stack.engine_socket)
        r = via_agent("start", name)
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        direct("rm", "-f", name)


def test_dotdot_after_a_symlink_is_read_as_the_engine_cleans_it(
    via_agent, direct, stack, name, tmp_path
):
    """The engine cleans `/a/link/../x` to `/a/x` before following symlinks; realpath of the
    raw string goes to `<link target>/../x` instead."""
    (tmp_path / "link").symlink_to(os.path.dirname(stack.engine_socket))
    (tmp_path / "x").symlink_to(stack.engine_socket)
    source = f"{tmp_path}/link/../x"
    for args in (["-v", f"{source}:/s"], ["--mount", f"type=bind,source={source},target=/s"]):
        r = via_agent("create", "--name", name, "--network", "none", *args,
                      registry_ref(stack, "busybox"))  # fmt: skip
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)


def test_a_socket_container_made_outside_the_agent_cannot_be_started_through_it(
    agent, via_agent, direct, stack, name
):
    ref = registry_ref(stack, "busybox")
    # Made on the engine directly (before the agent, or while ECI was off).
    direct("create", "--name", name, "--network", "none", "-v", f"{stack.engine_socket}:/s", ref,
           "true", check=True)  # fmt: skip
    try:
        for target in (f"/v1.41/containers/{name}/start", f"/containers/{name}/restart"):
            reply = _raw(agent, "POST", target)
            assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
        assert started_at(direct, name) == NEVER_STARTED
        # Even for an image on the list: the raw engine socket is never handed out.
        agent.set_settings(settings_with(["*"]))
        assert via_agent("start", name).returncode != 0
        assert started_at(direct, name) == NEVER_STARTED
    finally:
        direct("rm", "-f", name)


def test_allowed_container_is_refused_at_start_once_its_image_leaves_the_list(
    agent, via_agent, direct, stack, name
):
    cli = registry_ref(stack, "dockercli")
    agent.set_settings(settings_with([cli]))
    try:
        via_agent("create", "--name", name, "--network", "none",
                  "-v", "/var/run/docker.sock:/var/run/docker.sock", cli, "true", check=True)  # fmt: skip
        agent.set_settings(settings_with([]))
        r = via_agent("start", name)
        assert r.returncode != 0 and "image is not in the allowed list" in r.stderr, r.stderr
        assert started_at(direct, name) == NEVER_STARTED
        agent.set_settings(settings_with([cli]))
        r = via_agent("start", name)
        assert r.returncode == 0, r.stderr
    finally:
        direct("rm", "-f", name)


# -- Go's encoding/json reuses slice elements when a key repeats (golang/go#21092) ---------------


def _slice_reuse_cases(sock: str) -> dict[str, str]:
    mount = '{"Type": "bind", "Source": ' + json.dumps(sock) + ', "Target": "/s"}'
    bind = json.dumps(f"{sock}:/s")
    return {
        "mounts-partial-element": '{"Mounts": [' + mount + '], "Mounts": [{"Target": "/s"}]}',
        "mounts-null-element": '{"Mounts": [' + mount + '], "Mounts": [null]}',
        "binds-null-element": '{"Binds": [' + bind + '], "Binds": [null]}',
        "binds-stale-backing": (
            '{"Binds": ["/usr/share:/a", ' + bind + '], "Binds": ["/usr/share:/a"], '
            '"binds": ["/usr/share:/a", null]}'
        ),
        "split-hostconfig": (
            '{"Mounts": [' + mount + ']}, "Image": null, "HostConfig": {"Mounts": [{}]}'
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["mounts-partial-element", "mounts-null-element", "binds-null-element", "binds-stale-backing",
     "split-hostconfig"],
)  # fmt: skip
def test_repeated_keys_reuse_earlier_array_elements_as_go_does(case, agent, direct, stack, name):
    reply = _create(agent, name, stack.images["busybox"],
                    _slice_reuse_cases(stack.engine_socket)[case])  # fmt: skip
    assert not reply.startswith(b"HTTP/1.1 201"), reply[:300]
    assert not exists(direct, name)


# -- plugins run with the mounts their config asks for ------------------------------------------


def _plugin_dir(direct: Any, stack: Any, tmp: Path, marker: str) -> Path:
    root = tmp / "plugin"
    rootfs = root / "rootfs"
    rootfs.mkdir(parents=True)
    holder = marker + "-export"
    direct("create", "--name", holder, registry_ref(stack, "dockercli"), "true", check=True)
    try:
        tar_path = tmp / "rootfs.tar"
        direct("export", "-o", str(tar_path), holder, check=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(rootfs, filter="tar")
    finally:
        direct("rm", "-f", holder)
    sock_dir = os.path.dirname(stack.engine_socket)
    script = (
        f"docker -H unix:///s/{os.path.basename(stack.engine_socket)} create --name {marker} "
        f"{registry_ref(stack, 'busybox')} true; sleep 30"
    )
    config = {
        "description": "review",
        "documentation": "-",
        "entrypoint": ["/bin/sh", "-c", script],
        "interface": {"types": ["docker.logdriver/1.0"], "socket": "review.sock"},
        "network": {"type": "none"},
        "mounts": [
            {"source": sock_dir, "destination": "/s", "type": "bind", "options": ["rbind"]}
        ],  # fmt: skip
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_plugin_mounting_the_socket_folder_cannot_be_enabled(
    via_agent, direct, stack, name, tmp_path
):
    plugin = f"review-{name}"
    marker = name + "-made-by-plugin"
    src = _plugin_dir(direct, stack, tmp_path, marker)
    try:
        via_agent("plugin", "create", plugin, str(src), check=True)
        r = via_agent("plugin", "enable", "--timeout", "5", plugin)
        assert r.returncode != 0
        assert "enhanced container isolation" in r.stderr, r.stderr
        out = direct("plugin", "inspect", "--format", "{{.Enabled}}", plugin, check=True)
        assert out.stdout.strip() == "false"
        assert not exists(direct, marker), "the plugin's code reached the engine"
    finally:
        direct("plugin", "rm", "-f", plugin)
        direct("rm", "-f", marker)


# -- folders that reach the socket without holding it by name -----------------------------------


def test_folder_holding_a_hard_link_to_the_socket_is_refused(
    via_agent, direct, stack, name, tmp_path
):
    folder = tmp_path / "innocent"
    folder.mkdir()
    os.link(stack.engine_socket, folder / "s")
    try:
        r = via_agent("create", "--name", name, "--network", "none", "-v", f"{folder}:/d",
                      registry_ref(stack, "busybox"))  # fmt: skip
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        (folder / "s").unlink()  # later tests bind folders of the same filesystem


def test_folder_with_the_socket_folder_mounted_below_it_is_refused(
    via_agent, direct, stack, name, tmp_path
):
    """Bind mounts are recursive: a submount that shows the socket comes along."""
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "--bind", os.path.dirname(stack.engine_socket), str(inner)],
                   check=True)  # fmt: skip
    try:
        r = via_agent("create", "--name", name, "--network", "none", "-v", f"{outer}:/d",
                      registry_ref(stack, "busybox"))  # fmt: skip
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        subprocess.run(["umount", str(inner)], check=True)


@pytest.mark.parametrize("source", ["/proc", "/proc/1", "/proc/self"])
def test_procfs_folders_are_refused(source, via_agent, direct, stack, name):
    # /proc/<pid>/root of any host process leads to the host's root, the socket included.
    r = via_agent("create", "--name", name, "--network", "none", "--cap-add", "SYS_PTRACE",
                  "-v", f"{source}:/hp", registry_ref(stack, "busybox"))  # fmt: skip
    assert r.returncode != 0 and "enhanced container isolation" in r.stderr, r.stderr
    assert not exists(direct, name)


def _socket_filesystem(path: str) -> tuple[str, str]:
    """(fstype, source) of the mount that holds `path`, from /proc/self/mountinfo."""
    best: tuple[int, str, str] = (-1, "", "")
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= best[0]:
                best = (len(point), fstype, source)
    return best[1], best[2]


def _volume_variants(stack: Any) -> dict[str, list[str]]:
    fstype, source = _socket_filesystem(stack.engine_socket)
    return {
        # The filesystem that holds the engine socket, mounted again: the same socket inode.
        "same-filesystem": ["--opt", f"type={fstype}", "--opt", f"device={source}"],
        "procfs": ["--opt", "type=proc", "--opt", "device=proc"],
    }


@pytest.mark.parametrize("variant", ["same-filesystem", "procfs"])
def test_local_volumes_the_agent_cannot_judge_are_refused(variant, via_agent, direct, stack, name):
    vol = name + "-vol"
    opts = _volume_variants(stack)[variant]
    try:
        r = via_agent("volume", "create", *opts, vol)
        assert r.returncode != 0 and "enhanced container isolation" in r.stderr, r.stderr
        assert vol not in direct("volume", "ls", "-q", check=True).stdout.split()
        # The same options inline in a create.
        inline = ",".join("volume-opt=" + o for o in opts[1::2])
        r = via_agent("create", "--name", name, "--mount",
                      f"type=volume,source={vol},target=/v,volume-driver=local,{inline}",
                      registry_ref(stack, "busybox"))  # fmt: skip
        assert r.returncode != 0 and not exists(direct, name), r.stderr
        # A volume made on the engine directly is refused when a container asks for it.
        direct("volume", "create", *opts, vol, check=True)
        r = via_agent("create", "--name", name, "-v", f"{vol}:/v", registry_ref(stack, "busybox"))
        assert r.returncode != 0 and not exists(direct, name), r.stderr
    finally:
        direct("rm", "-f", name)
        direct("volume", "rm", "-f", vol)


def test_relative_bind_device_is_refused_whatever_the_agents_directory(
    stack, direct, name, tmp_path
):
    """A relative `device` is resolved against dockerd's working directory, not the agent's."""
    pid = (Path(stack.engine_socket).parent / "dockerd.pid").read_text().strip()
    engine_cwd = os.readlink(f"/proc/{pid}/cwd")
    device = os.path.relpath(os.path.dirname(stack.engine_socket), engine_cwd)
    elsewhere = tmp_path / "agent-cwd"
    elsewhere.mkdir()
    agent = AgentProcess(tmp_path / "agent", stack.engine_socket)
    (tmp_path / "agent").mkdir()
    here = os.getcwd()
    os.chdir(elsewhere)  # the agent inherits it; dockerd's stays where it was
    try:
        agent.start({"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": True}})
    finally:
        os.chdir(here)
    vol = name + "-vol"
    try:
        body = json.dumps(
            {"Name": vol, "DriverOpts": {"type": "none", "o": "bind", "device": device}}
        ).encode()
        reply = _raw(agent, "POST", "/v1.41/volumes/create", body)
        assert not reply.startswith(b"HTTP/1.1 201"), reply[:300]
        assert vol not in direct("volume", "ls", "-q", check=True).stdout.split()
    finally:
        agent.stop()
        direct("volume", "rm", "-f", vol)


# -- held: kept because each covers a distinct class ---------------------------------------------


def test_request_after_a_refused_upgrade_is_still_judged(agent, direct, stack, name):
    """The engine answers an Upgrade attach with 404 (no hijack): HTTP parsing goes on."""
    body = json.dumps(
        {"Image": stack.images["busybox"], "HostConfig": {"Binds": [f"{stack.engine_socket}:/s"]}}
    ).encode()
    first = (
        b"POST /v1.41/containers/no-such-container/attach?stream=1&stdin=1 HTTP/1.1\r\n"
        b"Host: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    second = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    reply = http_over_unix(agent.listen, first + second)
    assert reply.startswith(b"HTTP/1.1 404"), reply[:200]
    assert b"HTTP/1.1 403" in reply, reply
    assert not exists(direct, name)


@pytest.mark.parametrize("framing", ["chunk-extension-and-trailer", "http-1.0", "expect-100"])
def test_framing_variants_are_judged(framing, agent, direct, stack, name):
    body = json.dumps(
        {"Image": stack.images["busybox"], "HostConfig": {"Binds": [f"{stack.engine_socket}:/s"]}}
    ).encode()
    version = "HTTP/1.0" if framing == "http-1.0" else "HTTP/1.1"
    head = (
        f"POST /v1.41/containers/create?name={name} {version}\r\nHost: d\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
    ).encode()
    if framing == "expect-100":
        head += b"Expect: 100-continue\r\n"
    if framing == "http-1.0":
        data = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    else:
        data = head + b"Transfer-Encoding: chunked\r\n\r\n"
        data += b"%x;ext=1\r\n" % len(body) + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    reply = http_over_unix(agent.listen, data)
    assert b"HTTP/1.1 403" in reply, reply[:300]
    assert not exists(direct, name)


def test_commit_with_a_socket_volume_key_gives_only_an_anonymous_volume(
    agent, via_agent, direct, stack, name
):
    """`POST /commit` config `Volumes` keys are container paths: never a bind, however spelled."""
    direct("create", "--name", name, "--network", "none", registry_ref(stack, "busybox"), "true",
           check=True)  # fmt: skip
    image = f"local/committed-{name}:1"
    made = name + "-from-commit"
    try:
        config = json.dumps({"Volumes": {f"{stack.engine_socket}:/s": {}}}).encode()
        reply = _raw(agent, "POST", f"/v1.41/commit?container={name}&repo={image[:-2]}&tag=1",
                     config)  # fmt: skip
        assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
        via_agent("create", "--name", made, "--network", "none", image, check=True)
        out = direct("inspect", "--format", "{{json .Mounts}}", made, check=True)
        assert all(m["Type"] == "volume" for m in json.loads(out.stdout)), out.stdout
    finally:
        direct("rm", "-f", name, made)
        direct("rmi", "-f", image)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "multipart/form-data; boundary=xyz",
    ],
)
def test_query_smuggled_in_a_form_body_is_refused(agent, stack, direct, name, content_type):
    """Go's form parsing reads such a body as query parameters the policy never saw."""
    repo = f"eci-form-{name}"
    if content_type.startswith("multipart"):
        body = (
            f'--xyz\r\nContent-Disposition: form-data; name="fromImage"\r\n\r\n'
            f"{stack.images['busybox']}\r\n--xyz--\r\n"
        ).encode()
    else:
        body = f"fromImage={stack.images['busybox']}".encode()
    raw = (
        f"POST /v1.41/images/create?fromSrc=-&repo={repo} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    reply = http_over_unix(agent.listen, raw)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"form" in reply
    assert direct("image", "inspect", repo).returncode != 0
