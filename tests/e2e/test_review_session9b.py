"""Review session 9b: attacks on the policy in force: the settings file and its watcher, the
control API, events and audit mode. Each test attempts an attack and asks the ENGINE (the
`direct` socket, or whether the engine answered a stream) or the agent's observable state what
happened, and fails with "BYPASS:" if the attack worked, "BROKEN:" if a legitimate workflow
fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.client import ControlClient
from tests.e2e.agent_process import (
    DEFAULT_SETTINGS,
    AgentProcess,
    eci_agent,
    http_over_unix,
)
from tests.e2e.conftest import NOBODY, _docker
from tests.e2e.test_buildkit_grpc import SOLVE, UPGRADE, answered, frames
from tests.unit.test_grpc_inspect import Wire, solve

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]

ECI_OFF_LOCKED = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {"value": False, "locked": True},
}
AUDIT = {**DEFAULT_SETTINGS, "eciAgent": {"auditMode": True}}


def _workdir(prefix: str) -> Path:
    """A folder in /tmp another user can reach (pytest's own is root-only)."""
    workdir = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    os.chmod(workdir, 0o755)
    return workdir


def _as_nobody(argv: list[str], groups: list[int] = (), **kw: Any) -> subprocess.CompletedProcess:
    def drop() -> None:
        os.setgroups(list(groups))
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(
        argv, preexec_fn=drop, capture_output=True, text=True, timeout=60, cwd="/", **kw
    )


def _socket_mount(run: Any, direct: Any, stack: Any, name: str) -> bool:
    """Create a container bind-mounting the real engine socket through `run`; did the ENGINE
    make it (and does it hold the engine's socket)?"""
    run("create", "--name", name, "--network", "none",
        "-v", f"{stack.engine_socket}:/var/run/docker.sock", stack.images["busybox"])  # fmt: skip
    made = direct("inspect", name).returncode == 0
    direct("rm", "-f", name)
    return made


# == 1. A BuildKit /grpc stream judged under the old, weaker policy, spliced after a tightening ==
#
# `close_weaker_streams` runs once, on the loop, after the policy changed, and closes the
# sessions whose `grpc_stream` says "unread"/"grpc-audit". A session gets that mark only when
# the engine's 101 arrives (`Splice`). A /grpc upgrade judged (and forwarded) under ECI off or
# audit mode whose 101 comes back after the sweep is never swept: it is spliced unread (or read
# to record only) under the enforcing policy. The window is the engine's answer time for the
# upgrade; the relay below stands for a slow (loaded) engine, so the race is made deterministic.


class HoldingRelay:
    """A unix socket relay to the real engine that, when told, holds the engine's `101` answer
    to a /grpc upgrade until `release` is set (a slow engine)."""

    def __init__(self, path: str, engine: str) -> None:
        self.path = path
        self.engine = engine
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()  # a 101 is being held
        #: When set: the engine's answer to the next request naming these bytes is held too.
        self.pattern: bytes | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.release.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(self.engine)
            except OSError:
                client.close()
                continue
            state = {"grpc": False, "hold_next": False}
            threading.Thread(target=self._up, args=(client, engine, state), daemon=True).start()
            threading.Thread(target=self._down, args=(engine, client, state), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := src.recv(65536):
                if b"/grpc " in data and b"POST " in data:
                    state["grpc"] = True
                if self.pattern is not None and self.pattern in data:
                    state["hold_next"] = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, src: socket.socket, dst: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := src.recv(65536):
                if (state["grpc"] and self.hold.is_set() and b" 101 " in data) or state[
                    "hold_next"
                ]:
                    state["hold_next"] = False
                    self.held.set()
                    self.release.wait(30)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture
def relay_agent(stack: Any) -> Iterator[tuple[AgentProcess, HoldingRelay]]:
    workdir = _workdir("eci-9b-relay-")
    relay = HoldingRelay(str(workdir / "engine-relay.sock"), stack.engine_socket)
    proc = AgentProcess(workdir / "agent", relay.path)
    proc.workdir.mkdir()
    try:
        yield proc, relay
    finally:
        relay.release.set()
        proc.stop()
        relay.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "weaker",
    [pytest.param(ECI_OFF_LOCKED, id="eci-off"), pytest.param(AUDIT, id="audit-mode")],
)
@pytest.mark.parametrize(
    "slow_engine",
    # False: the control case (101 before the tightening: the sweep closes the stream).
    [pytest.param(False, id="101-before"), pytest.param(True, id="101-after")],
)
def test_a_grpc_stream_spliced_after_a_tightening_is_still_read_as_before(
    relay_agent: tuple[AgentProcess, HoldingRelay],
    stack: Any,
    weaker: dict[str, Any],
    slow_engine: bool,
) -> None:
    agent, relay = relay_agent
    agent.start(weaker)
    host_solve = Wire().rpc(1, SOLVE, solve(ents=(b"network.host",))).bytes()

    if slow_engine:
        relay.hold.set()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(agent.listen)
        s.sendall(UPGRADE)  # judged now, under the weaker policy, and forwarded
        data = b""
        if slow_engine:
            assert relay.held.wait(10), "the engine's 101 never came"
        else:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
        # The admin tightens the policy (the enforcing default); the agent applies it and
        # sweeps the weaker streams (with a slow engine: while its 101 is still on its way).
        agent.set_settings(DEFAULT_SETTINGS)
        time.sleep(1.0)
        relay.release.set()
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        try:
            s.sendall(host_solve)
        except OSError:
            pass  # cut by the sweep
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            rest += chunk
    assert not answered(rest, 1), (
        "BYPASS: a /grpc upgrade judged under the weaker policy but spliced after the agent "
        "applied the enforcing one was not swept by close_weaker_streams: the engine took up a "
        f"Solve asking for network.host under ECI on (frames {frames(rest)})"
    )


# == 2. A settings file refused at start: the built-in default is NOT locked ===================
#
# "a file that is edited, replaced, deleted or made invalid while the agent runs never loosens
# the policy in force" -- but the agent restarts (Restart=always, reboots, upgrades). A file that
# exists and says `locked: true` but is refused when the agent starts (an admin's typo, a file
# being rewritten in place at boot) gives the built-in default, which is NOT locked: a member of
# the control group (the developer the lock is meant to restrain) switches ECI off.

ECI_CLIENT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from agent.control.client import ControlClient, ControlError
try:
    print(json.dumps(ControlClient(sys.argv[2]).post("/v1/eci", {"enabled": False})))
except ControlError as err:
    print(json.dumps({"refused": str(err)}))
"""


@pytest.fixture
def adm_agent(stack: Any) -> Iterator[AgentProcess]:
    workdir = _workdir("eci-9b-adm-")
    proc = AgentProcess(workdir, stack.engine_socket, extra_args=("--control-group", "adm"))
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "text",
    [
        # A locked file with a trailing comma (Docker Desktop refuses it too).
        pytest.param(
            '{"configurationFileVersion": 2,\n "enhancedContainerIsolation": '
            '{"value": true, "locked": true,}}\n',
            id="trailing-comma",
        ),
        # Half of a locked file, as an in-place rewrite leaves it for a moment.
        pytest.param(
            '{"configurationFileVersion": 2,\n "enhancedContainerIsolation": {"value": tr',
            id="half-written",
        ),
    ],
)
def test_a_locked_file_refused_at_start_does_not_let_the_control_group_switch_eci_off(
    adm_agent: AgentProcess, stack: Any, direct: Any, name: str, text: str
) -> None:
    import grp

    adm = grp.getgrnam("adm").gr_gid
    adm_agent.start(text)
    status = ControlClient(adm_agent.control).get("/v1/status")
    assert status["settingsError"], status  # refused, and said so
    out = _as_nobody(
        ["/usr/bin/python3", "-S", "-c", ECI_CLIENT, str(ROOT), adm_agent.control], [adm]
    )
    assert out.returncode == 0, out.stderr
    via = _docker("unix://" + adm_agent.listen, stack)
    made = _socket_mount(via, direct, stack, name)
    assert not made, (
        "BYPASS: the settings file says locked: true but was refused at start; the built-in "
        "default the agent kept is unlocked, so a control-group member (uid 65534) switched ECI "
        f"off ({out.stdout.strip()}) and the engine then made a container holding its own "
        "socket"
    )


# == 3. Events: a client's own text in a denial forges lines in `eci-agent events` ===============
#
# `format_event` prints the event's message, path and image as they are. A denied create's
# message quotes the image name from the request body, which the client chooses freely: a
# newline forges a whole event line, a carriage return / ANSI erase hides the real denial.

FORGED = "#1 2030-01-01T00:00:00.000000Z policy-reloaded: applied, nothing denied"


def _create_raw(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return http_over_unix(
        path,
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data,
    )


def test_a_denied_clients_text_cannot_forge_or_hide_lines_of_eci_agent_events(
    agent: AgentProcess, stack: Any, direct: Any, tmp_path: Path
) -> None:
    # A user's symlink (any name but "/" and NUL) to the engine socket's folder: binding it is
    # denied, and the denial quotes the source path.
    os.chmod(tmp_path, 0o755)
    link = tmp_path / ("x\r\x1b[2K" + FORGED + "\n" + FORGED)
    link.symlink_to(os.path.dirname(stack.engine_socket))
    reply = _create_raw(
        agent.listen,
        {
            "Image": stack.images["busybox"],
            "HostConfig": {"Mounts": [{"Type": "bind", "Source": str(link), "Target": "/s"}]},
        },
    )
    assert b" 403 " in reply.split(b"\r\n", 1)[0], reply
    r = eci_agent("events", "--limit", "3", "--control", agent.control)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    bad = [ln for ln in lines if "\x1b" in ln or "\r" in ln or ln.startswith(FORGED[:20])]
    assert not bad, (
        "BYPASS: a denied client's own text (a bind source path) reaches the admin's terminal "
        f"raw through `eci-agent events`: forged/hidden lines {bad!r}"
    )


# == 4. The settings path through a symlink whose own folder a user may change ================
#
# `untrusted_reasons` checks the path as given and the fully resolved path. A symlink met
# INSIDE a symlink's target (neither on the given path nor on the resolved one) is never
# looked at, nor is the folder holding it: a user who may change that folder points the chain
# at another root-owned file (an older policy, Docker Desktop's own file, an example).


@pytest.fixture
def chain_agent(stack: Any) -> Iterator[tuple[AgentProcess, Path]]:
    workdir = _workdir("eci-9b-chain-")
    proc = AgentProcess(workdir / "agent", stack.engine_socket)
    (workdir / "agent").mkdir(mode=0o755)
    try:
        yield proc, workdir
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_user_cannot_repoint_a_symlink_inside_the_settings_chain(
    chain_agent: tuple[AgentProcess, Path], stack: Any, direct: Any, name: str
) -> None:
    agent, w = chain_agent
    for folder in ("data/strict", "data/older"):
        (w / folder).mkdir(parents=True, mode=0o755)
    os.chmod(w / "data", 0o755)
    (w / "data/strict/admin-settings.json").write_text(json.dumps(DEFAULT_SETTINGS))
    # A root-owned, valid, weaker file somewhere on the machine (an older policy kept aside).
    (w / "data/older/admin-settings.json").write_text(json.dumps(ECI_OFF_LOCKED))
    srv = w / "srv"
    srv.mkdir(mode=0o755)
    os.chown(srv, NOBODY, NOBODY)  # a folder a user may change, off both checked paths
    (srv / "cfg").symlink_to(w / "data/strict")
    agent.settings_dir.mkdir(mode=0o755)
    agent.settings_path.symlink_to(srv / "cfg" / "admin-settings.json")
    agent.start()
    client = ControlClient(agent.control)
    before = client.get("/v1/status")
    # The chain passes through a folder uid 65534 owns: refused at once, and the policy in
    # force is the locked default (nothing good was ever read).
    assert before["enforcing"] and before["locked"], before
    assert f"{srv}" in (before["settingsError"] or ""), before

    # The user repoints the link in their folder at the weaker root-owned file.
    r = _as_nobody(["sh", "-c", f"ln -s {w}/data/older {srv}/new && mv -T {srv}/new {srv}/cfg"])
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = client.get("/v1/status")
        if not after["enforcing"] or after["settingsError"]:
            break
        time.sleep(0.2)
    via = _docker("unix://" + agent.listen, stack)
    made = _socket_mount(via, direct, stack, name)
    assert not made and after["enforcing"], (
        "BYPASS: uid 65534 repointed a symlink in their own folder, inside the settings file's "
        f"symlink chain ({srv}/cfg), at another root-owned file; the agent applied it "
        f"(enforcing={after['enforcing']}, source {after['settings']['source']}) and the engine "
        "made a container holding its own socket"
    )


# == 5. Held checks ============================================================================


def test_a_container_cannot_reach_the_control_socket_through_a_bind(
    agent: AgentProcess, via_agent: Any, direct: Any, stack: Any, name: str
) -> None:
    """Binding the folder holding control.sock (or one above it) would give a container (root
    inside, uid 0 by SO_PEERCRED) the control API."""
    made = []
    for source in (str(agent.runtime_dir), str(agent.workdir), os.path.dirname(agent.control)):
        n = f"{name}-{len(made)}"
        via_agent("create", "--name", n, "--network", "none", "-v", f"{source}:/r",
                  stack.images["busybox"])  # fmt: skip
        if direct("inspect", n).returncode == 0:
            made.append(source)
        direct("rm", "-f", n)
    assert not made, f"BYPASS: a container may bind {made}, which holds the control socket"


def test_the_container_socket_is_not_the_control_api(agent: AgentProcess) -> None:
    """A container's socket answers the Engine API only: /v1/eci there is the engine's 404, and
    never switches anything."""
    reply = http_over_unix(
        agent.container_socket,
        b"POST /v1/eci HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Type: "
        b'application/json\r\nContent-Length: 18\r\n\r\n{"enabled": false}',
    )
    status = ControlClient(agent.control).get("/v1/status")
    assert status["enforcing"], f"BYPASS: the container socket switched ECI off: {reply[:200]!r}"


# == 6. A create admitted under ECI off whose body comes after the tightening ===================
#
# With ECI off, `needs_body` is False and `judge` says ALLOW from the head alone: the body is
# then streamed to the engine unread. A client that sends the head while ECI is off and holds
# the rest of the body back keeps an admitted create open across the admin's tightening, and
# cashes it in afterwards: the engine creates it under the enforcing policy.


@pytest.mark.parametrize("wait", [1.0, 8.0])
def test_a_create_admitted_under_eci_off_cannot_be_completed_after_eci_is_on(
    agent: AgentProcess, direct: Any, stack: Any, name: str, wait: float
) -> None:
    agent.set_settings(ECI_OFF_LOCKED)
    body = json.dumps(
        {
            "Image": stack.images["busybox"],
            "NetworkDisabled": True,
            "HostConfig": {
                "Binds": [f"{stack.engine_socket}:/var/run/docker.sock"],
                "Privileged": True,
                "PidMode": "host",
            },
        }
    ).encode()
    head = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(agent.listen)
            s.sendall(head + body[:10])
            time.sleep(0.5)
            agent.set_settings(DEFAULT_SETTINGS)  # the admin turns ECI on (locked)
            time.sleep(wait)
            try:
                s.sendall(body[10:])
            except OSError:
                pass  # cut: good
            reply = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                if not chunk:
                    break
                reply += chunk
        made = direct("inspect", name).returncode == 0
    finally:
        direct("rm", "-f", name)
    status_line = reply.split(b"\r\n", 1)[0]
    assert not made, (
        f"BYPASS: a create whose head came while ECI was off and whose body came {wait} s "
        "after ECI was turned on (locked) was forwarded unread: the engine made a privileged, "
        "--pid=host container holding its own socket under the enforcing policy "
        f"({status_line!r})"
    )


# == 7. Audit mode's let-through decided on the policy read before the facts came ===============
#
# `Gate.judge` reads the policy once (`effective`) and then awaits the facts (`_judge`: the
# engine's image inspect, registry digests, volumes, ...). After they come, "audit mode: record
# and let through" is decided on that first reading, even when the admin switched audit mode off
# meanwhile. A create whose facts are slow to come (a loaded engine, a slow registry; here the
# relay holds the engine's answer about the image) is let through under the enforcing policy.


def test_an_audit_let_through_is_not_decided_on_a_policy_replaced_while_judging(
    relay_agent: tuple[AgentProcess, HoldingRelay], stack: Any, direct: Any, name: str
) -> None:
    agent, relay = relay_agent
    agent.start(AUDIT)
    slow = f"eci9b-slow-{name}"
    direct("tag", stack.images["busybox"], f"{slow}:latest", check=True)
    body = json.dumps(
        {
            "Image": f"{slow}:latest",
            "NetworkDisabled": True,
            # The engine socket too: judging it waits for the engine's answer about the
            # image (held below), so the policy can change while the facts are awaited.
            "HostConfig": {
                "Privileged": True,
                "PidMode": "host",
                "Binds": [f"{relay.path}:/var/run/docker.sock"],  # the agent's engine
            },
        }
    ).encode()
    request = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    relay.pattern = slow.encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(agent.listen)
            s.sendall(request)
            assert relay.held.wait(10), "the agent never asked the engine about the image"
            relay.pattern = None
            agent.set_settings(DEFAULT_SETTINGS)  # the admin ends the audit: enforcing now
            time.sleep(1.0)
            relay.release.set()
            reply = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                if not chunk:
                    break
                reply += chunk
        made = direct("inspect", name).returncode == 0
    finally:
        direct("rm", "-f", name)
        direct("rmi", f"{slow}:latest")
    status_line = reply.split(b"\r\n", 1)[0]
    assert not made, (
        "BYPASS: a privileged --pid=host create judged while audit mode was on, whose facts "
        "came after the admin switched to enforcing, was let through as audit mode would: the "
        f"engine made it under the enforcing policy ({status_line!r})"
    )
    # Only the decision given is recorded: a denial, not a would-deny of the first judgement.
    page = ControlClient(agent.control).get("/v1/events?limit=20&newest=1")
    kinds = [e["kind"] for e in page["events"] if name in (e.get("path") or "")]
    assert kinds == ["denied"], kinds
