"""Review session 8c: attacks on the pins (agent.pins) with exceptions, propagation, the sweep,
HTTP framing. Each test asks the ENGINE (what a container saw, inspect data through the direct
socket) or the host's files what happened, and fails with "BYPASS:" if the attack worked,
"BROKEN:" if a legitimate workflow fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import DEFAULT_SETTINGS, settings_with
from tests.e2e.conftest import NOBODY, _docker
from tests.e2e.test_review_session8b import _inspect
from tests.e2e.test_socket_mount import registry_ref

pytestmark = pytest.mark.engine


def _own(*paths: Path) -> None:
    for p in paths:
        os.chown(p, NOBODY, NOBODY)


@pytest.fixture
def shared_home(tmp_path: Path) -> Iterator[Path]:
    """A user's folder on a *shared* mount, as every folder is on a systemd host (`/` is
    `shared:1` there; this sandbox's `/` is private, so a shared mount is made for the test)."""
    os.chmod(tmp_path, 0o755)
    base = tmp_path / "shared"
    base.mkdir()
    subprocess.run(["mount", "--bind", str(base), str(base)], check=True)
    subprocess.run(["mount", "--make-shared", str(base)], check=True)
    user = base / "home"
    (user / "project").mkdir(parents=True)
    (user / "project" / "seed").write_text("the user's own file\n")
    _own(user, user / "project", user / "project" / "seed")
    try:
        yield user
    finally:
        subprocess.run(["umount", "-R", "-l", str(base)], check=False)


def _with_exceptions(*entries: dict[str, Any], base: dict[str, Any] | None = None) -> dict:
    return {**(base or DEFAULT_SETTINGS), "eciAgent": {"isolationExceptions": list(entries)}}


# -- 1. mount propagation: what the engine mounts below an rshared bind lands in the user's folder --


def test_an_excepted_bind_propagated_into_a_users_folder_reaches_other_images(
    agent, via_agent, direct, stack, name, shared_home, etc_folder
):
    """Image X may bind /etc/<x> (an isolation exception, e.g. certbot and /etc/letsencrypt).
    The user runs X with `-v ~/project:/x:rshared -v /etc/<x>:/x/cfg`: runc's bind at /x/cfg
    propagates back through the shared pin to ~/project/cfg on the host. A container of any
    other image then binds ~/project (a plain user folder, judged by its own path) and gets
    /etc/<x>, which no exception allows it."""
    project = shared_home / "project"
    busybox = registry_ref(stack, "busybox")
    repo = busybox.rsplit(":", 1)[0]
    holder = name + "-x"
    agent.set_settings(
        _with_exceptions({"images": [f"{repo}:*"], "allow": [f"--volume={etc_folder}"]})
    )
    try:
        a = via_agent("run", "-d", "--name", holder, "--network", "none",
                      "-v", f"{project}:/x:rshared", "-v", f"{etc_folder}:/x/cfg",
                      busybox, "sleep", "120")  # fmt: skip
        if a.returncode != 0:  # refused at the start: shared propagation (session 8's fix)
            assert "show up in the host's folder" in a.stderr, a.stderr
            assert direct("inspect", holder).returncode != 0, "refused, and not made"
            return
        time.sleep(1)
        on_host = (project / "cfg" / "root-only").exists()
        r = via_agent("run", "--rm", "--name", name, "--network", "none", "-v", f"{project}:/d",
                      registry_ref(stack, "dockercli"), "sh", "-c",
                      "cat /d/cfg/root-only; echo tampered > /d/cfg/written")  # fmt: skip
        assert "root's configuration" not in r.stdout and not (etc_folder / "written").exists(), (
            f"BYPASS: {holder} (image {busybox}, excepted for --volume={etc_folder}) ran with "
            f"-v {project}:/x:rshared -v {etc_folder}:/x/cfg; the bind propagated to the host "
            f"({project}/cfg/root-only exists: {on_host}); a dockercli container binding "
            f"{project} read {r.stdout!r} and wrote {etc_folder}/written: "
            f"{(etc_folder / 'written').exists()}"
        )
    finally:
        direct("rm", "-f", holder, name)
        agent.set_settings(DEFAULT_SETTINGS)


def test_the_container_socket_propagated_into_a_users_folder_reaches_an_unlisted_image(
    agent, via_agent, direct, stack, name, shared_home
):
    """The dockercli image may mount the socket (it gets the container-facing one). Run it with
    `-v ~/project:/x:rshared -v /var/run/docker.sock:/x/docker.sock`: the container-facing
    socket propagates to ~/project/docker.sock on the host. A busybox container (not listed)
    binding ~/project then gets the container-facing socket."""
    project = shared_home / "project"
    cli = registry_ref(stack, "dockercli")
    holder = name + "-x"
    agent.set_settings(settings_with([cli]))
    try:
        a = via_agent("run", "-d", "--name", holder, "--network", "none",
                      "-v", f"{project}:/x:rshared",
                      "-v", "/var/run/docker.sock:/x/docker.sock", cli, "sleep", "120")  # fmt: skip
        if a.returncode != 0:  # refused at the start: shared propagation (session 8's fix)
            assert "show up in the host's folder" in a.stderr, a.stderr
            assert direct("inspect", holder).returncode != 0, "refused, and not made"
            return
        time.sleep(1)
        on_host = (project / "docker.sock").is_socket()
        r = via_agent("run", "--rm", "--name", name, "--network", "none", "-v", f"{project}:/d",
                      registry_ref(stack, "busybox"), "sh", "-c",
                      "test -S /d/docker.sock && echo SOCKET")  # fmt: skip
        assert "SOCKET" not in r.stdout, (
            f"BYPASS: {holder} (listed image) ran with -v {project}:/x:rshared and the socket at "
            f"/x/docker.sock; it propagated to the host ({project}/docker.sock a socket: "
            f"{on_host}); an unlisted busybox container binding {project} saw a socket at "
            f"/d/docker.sock ({r.stdout!r} {r.stderr[-200:]!r})"
        )
    finally:
        direct("rm", "-f", holder, name)
        agent.set_settings(DEFAULT_SETTINGS)


# -- 2. HTTP framing around the release of a refused request's pins --------------------------------


def _req(method: str, target: str, body: bytes | None = None, version: str = "1.1",
         extra: tuple[str, ...] = ()) -> bytes:  # fmt: skip
    lines = [f"{method} {target} HTTP/{version}", "Host: docker", *extra]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _send(agent: Any, data: bytes, wait: float = 8.0) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(wait)
        s.connect(agent.listen)
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
    return out


@pytest.mark.parametrize("order", ["refused-first", "refused-second", "http10-keepalive",
                                   "expect-continue"])  # fmt: skip
def test_pipelined_requests_release_only_the_refused_ones_pins(
    order, agent, direct, stack, name, home
):
    """Two creates on one connection, each with a new pin: one the engine refuses (409, the
    name is taken), one it makes. The made container's pin must stay mounted: released, the
    engine at its next start makes an empty folder there instead of the user's files (and the
    agent will have unmounted a pin in use)."""
    other = home / "other"
    other.mkdir()
    _own(other)
    direct("create", "--name", name, "--network", "none", stack.images["busybox"], "true",
           check=True)  # fmt: skip
    good = name + "-good"

    def body(src: Path) -> bytes:
        return json.dumps({"Image": stack.images["busybox"], "Cmd": ["ls", "/d"],
                           "HostConfig": {"NetworkMode": "none",
                                          "Binds": [f"{src}:/d"]}}).encode()  # fmt: skip

    bad_req = ("POST", f"/v1.41/containers/create?name={name}", body(other))
    good_req = ("POST", f"/v1.41/containers/create?name={good}", body(home / "project"))
    if order == "refused-first":
        data = _req(*bad_req) + _req(*good_req, extra=("Connection: close",))
    elif order == "refused-second":
        data = _req(*good_req) + _req(*bad_req, extra=("Connection: close",))
    elif order == "http10-keepalive":
        data = _req(*bad_req, version="1.0", extra=("Connection: keep-alive",)) + _req(
            *good_req, version="1.0"
        )
    else:
        data = _req(*bad_req, extra=("Expect: 100-continue",)) + _req(
            *good_req, extra=("Expect: 100-continue", "Connection: close")
        )
    try:
        reply = _send(agent, data)
        info = _inspect(direct, good)
        if info is None:
            return  # not made: nothing to check
        (bind,) = info["HostConfig"]["Binds"]
        pin = bind.split(":", 1)[0]
        time.sleep(1)
        seen = direct("start", "-a", good).stdout
        assert pin in agent.pinned() and "seed" in seen, (
            f"BYPASS (unpin of a pin in use): {order}: the created container's pin {pin} is "
            f"mounted: {pin in agent.pinned()}; it saw {seen!r}; replies {reply[:400]!r}"
        )
    finally:
        direct("rm", "-f", name, good)


# -- 3. the sweep: a pin named as it is, in another spelling ----------------------------------------


@pytest.mark.parametrize("spelling", ["trailing-slash", "double-slash", "dot", "volume-device"])
def test_the_sweep_keeps_a_pin_named_in_another_spelling(
    spelling, own_agent, direct, stack, name, home
):
    """A create names an existing pin as it is (allowed: judged as what it holds) but spelled
    `P/`, `P//.` ...; the sweep compares the engine's strings with the pin path exactly. Once
    the first container is gone, is the pin still kept for the second?"""
    own = _docker("unix://" + own_agent.listen, stack)
    own("create", "--name", name, "--network", "none", "-v", f"{home / 'project'}:/d",
        stack.images["busybox"], "ls", "/d", check=True)  # fmt: skip
    (bind,) = _inspect(direct, name)["HostConfig"]["Binds"]
    pin = bind.split(":", 1)[0]
    token = os.path.basename(pin)
    named = {"trailing-slash": pin + "/", "double-slash": f"{os.path.dirname(pin)}//{token}",
             "dot": pin + "/.", "volume-device": pin + "/"}[spelling]  # fmt: skip
    second, vol = name + "-2", name + "-vol"
    try:
        if spelling == "volume-device":
            r = own("volume", "create", "-o", "type=none", "-o", "o=bind", "-o",
                    f"device={named}", vol)  # fmt: skip
            if r.returncode != 0:
                return
            args = ["-v", f"{vol}:/d"]
        else:
            args = ["--mount", f"type=bind,source={named},target=/d"]
        r = own("create", "--name", second, "--network", "none", *args,
                stack.images["busybox"], "ls", "/d")  # fmt: skip
        if r.returncode != 0:
            return
        direct("rm", "-f", name)
        time.sleep(5)  # sweeps every second, grace 2 s
        seen = direct("start", "-a", second)
        assert pin in own_agent.pinned() and "seed" in seen.stdout, (
            f"BYPASS (unpin of a pin in use): {second} names {named!r}; once {name} was gone "
            f"the sweep released {pin} (mounted: {pin in own_agent.pinned()}); {second} saw "
            f"{seen.stdout!r} {seen.stderr[-200:]!r}"
        )
    finally:
        direct("rm", "-f", name, second)
        direct("volume", "rm", "-f", vol)
