"""Review of session 3's changes, attacked through the real agent and checked on the ENGINE.

- Streams handed to the kernel (`kernel_splice`): requests pipelined behind an upgrade, upgrades
  the engine declines or answers without hijacking, /grpc spellings that must stay inspected
  (not spliced), byte-exactness with a slow reader and half-close.
- The image a create's `Image` was found to be, reused for 10 s (`Gate._resolved`): a tag
  flipped between an allowed and a refused image under concurrent creates and starts; isolation
  exceptions, derived images and a settings change inside the window.
- The gate's engine client: image names that are paths, percent-encodings, spaces, CR/LF.
- A /grpc stream opened while ECI is off (or in audit mode) was never inspected, even after ECI
  was turned on (enforcing): its Solve with `network.host` reached the engine. Found in this
  review (older than the kernel splice); such streams are now closed when the policy changes
  (`ProxyListener.close_weaker_sessions`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
from typing import Any

import pytest

from tests.e2e.agent_process import DEFAULT_SETTINGS, AgentProcess, settings_with
from tests.e2e.test_buildkit_grpc import answered
from tests.unit.test_grpc_inspect import Wire, solve

pytestmark = pytest.mark.engine

SOLVE = "/moby.buildkit.v1.Control/Solve"
UPGRADE_TCP = ("Upgrade: tcp", "Connection: Upgrade")


# -- helpers -----------------------------------------------------------------------------------


def _req(method: str, target: str, body: Any = None, headers: tuple[str, ...] = (),
         close: bool = False) -> bytes:  # fmt: skip
    lines = [f"{method} {target} HTTP/1.1", "Host: docker"]
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    lines += list(headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def _read_all(s: socket.socket, wait: float = 3.0) -> bytes:
    s.settimeout(wait)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def _exchange(path: str, data: bytes, wait: float = 3.0) -> bytes:
    with _connect(path) as s:
        s.sendall(data)
        return _read_all(s, wait)


def _json_body(reply: bytes) -> Any:
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return json.loads(body)


def _bad_create(stack: Any, name: str, close: bool = False) -> bytes:
    """A create the agent must refuse: the raw engine socket AND --privileged."""
    body = {
        "Image": stack.images["busybox"],
        "Cmd": ["true"],
        "HostConfig": {"Binds": [f"{stack.engine_socket}:/s"], "Privileged": True,
                       "NetworkMode": "none"},
    }  # fmt: skip
    return _req("POST", f"/v1.41/containers/create?name={name}", body, close=close)


def _exists(direct: Any, name: str) -> bool:
    return direct("inspect", "--type", "container", name).returncode == 0


def _image_id(direct: Any, ref: str) -> str:
    return str(direct("image", "inspect", "--format", "{{.Id}}", ref, check=True).stdout.strip())


def _kernel_pipes(agent: AgentProcess) -> int:
    assert agent.proc is not None
    fds = f"/proc/{agent.proc.pid}/fd"
    n = 0
    for fd in os.listdir(fds):
        try:
            n += os.readlink(f"{fds}/{fd}").startswith("pipe:")
        except OSError:
            pass
    return n


def _exec(agent: AgentProcess, container: str, cmd: list[str]) -> str:
    body = {"Cmd": cmd, "AttachStdin": True, "AttachStdout": True, "AttachStderr": True}
    reply = _exchange(agent.listen, _req("POST", f"/v1.41/containers/{container}/exec", body,
                                         close=True))  # fmt: skip
    return str(_json_body(reply)["Id"])


def _stdout(stream: bytes) -> bytes:
    """The stdout frames of a multiplexed (non-TTY) attach stream."""
    out = bytearray()
    i = 0
    while i + 8 <= len(stream):
        size = struct.unpack(">I", stream[i + 4 : i + 8])[0]
        if stream[i] == 1:
            out += stream[i + 8 : i + 8 + size]
        i += 8 + size
    return bytes(out)


@pytest.fixture
def sleeper(direct: Any, stack: Any, name: str) -> Any:
    direct("run", "-d", "-i", "--name", name, "--network", "none", stack.images["busybox"],
           "sleep", "600", check=True)  # fmt: skip
    yield name
    direct("rm", "-f", name)


# -- 1. streams handed to the kernel -----------------------------------------------------------


@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "hijack-without-upgrade"])
def test_a_create_pipelined_behind_an_attach_is_stdin_not_a_request(
    upgrade, agent, direct, stack, name
):
    cat = name + "-cat"
    direct("run", "-d", "-i", "--name", cat, "--network", "none", stack.images["busybox"], "cat",
           check=True)  # fmt: skip
    try:
        attach = _req("POST", f"/v1.41/containers/{cat}/attach?stream=1&stdin=1&stdout=1",
                      headers=UPGRADE_TCP if upgrade else ())  # fmt: skip
        before = _kernel_pipes(agent)
        with _connect(agent.listen) as s:
            s.sendall(attach + _bad_create(stack, name))
            time.sleep(0.5)
            handed = _kernel_pipes(agent) - before
            out = _read_all(s, 1.5)
        assert out.split(b"\r\n", 1)[0] in (b"HTTP/1.1 101 UPGRADED", b"HTTP/1.1 200 OK"), out[:200]
        assert f"create?name={name}".encode() in _stdout(out.partition(b"\r\n\r\n")[2])  # echoed
        assert handed >= 4, "the stream was not handed to the kernel (two pipes)"
        assert not _exists(direct, name)
    finally:
        direct("rm", "-f", cat)


def test_a_create_pipelined_behind_an_upgrade_the_engine_declines_is_judged(
    agent, direct, stack, sleeper, name
):
    missing = "0" * 64
    declined = {
        "exec-detached": _req(
            "POST",
            f"/v1.41/exec/{_exec(agent, sleeper, ['true'])}/start",
            {"Detach": True},
            UPGRADE_TCP,
        ),  # fmt: skip
        "exec-missing": _req(
            "POST", f"/v1.41/exec/{missing}/start", {"Detach": False}, UPGRADE_TCP
        ),  # fmt: skip
        "exec-bad-json": _req(
            "POST", f"/v1.41/exec/{_exec(agent, sleeper, ['true'])}/start", b"{", UPGRADE_TCP
        ),  # fmt: skip
        "attach-missing": _req(
            "POST", f"/v1.41/containers/{missing}/attach?stream=1&stdin=1", headers=UPGRADE_TCP
        ),  # fmt: skip
        "grpc-without-upgrade": _req("POST", "/grpc"),
    }
    for case, first in declined.items():
        bad = f"{name}-{case}"
        out = _exchange(agent.listen, first + _bad_create(stack, bad), 2.0)
        assert not out.startswith(b"HTTP/1.1 101"), (case, out[:200])
        assert b"HTTP/1.1 403 Forbidden" in out, (case, out[:600])
        assert not _exists(direct, bad), case


@pytest.mark.parametrize("slow", [False, True], ids=["fast-reader", "slow-reader"])
def test_a_spliced_exec_stream_is_byte_exact(slow, agent, direct, stack, sleeper):
    data = os.urandom(6 << 20)
    eid = _exec(agent, sleeper, ["cat"])
    got = bytearray()
    with _connect(agent.listen, 30) as s:
        # The first bytes are pipelined right behind the upgrade request (held until the 101).
        s.sendall(_req("POST", f"/v1.41/exec/{eid}/start", {"Detach": False, "Tty": False},
                       UPGRADE_TCP) + data[:1000])  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

        def reader() -> None:
            while True:
                try:
                    chunk = s.recv(1500 if slow else 65536)
                except OSError:
                    return
                if not chunk:
                    return
                got.extend(chunk)
                if slow and len(got) % 97 == 0:
                    time.sleep(0.01)

        t = threading.Thread(target=reader)
        t.start()
        for i in range(1000, len(data), 100_000):
            s.sendall(data[i : i + 100_000])
        s.shutdown(socket.SHUT_WR)  # half-close: cat ends, the engine ends the stream
        t.join(60)
    assert _stdout(bytes(got)) == data


def test_a_half_close_before_the_101_is_passed_on(agent, direct, stack, sleeper):
    data = os.urandom(300_000)
    eid = _exec(agent, sleeper, ["sha256sum"])
    with _connect(agent.listen) as s:
        s.sendall(_req("POST", f"/v1.41/exec/{eid}/start", {"Detach": False}, UPGRADE_TCP) + data)
        s.shutdown(socket.SHUT_WR)
        out = _read_all(s, 5)
    assert hashlib.sha256(data).hexdigest().encode() in _stdout(out.partition(b"\r\n\r\n")[2])


GRPC_SPELLINGS = {
    "percent-encoded": b"POST /%67rpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "absolute-form": b"POST http://d/v1.41/grpc?x=1 HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
    b"Upgrade: h2c\r\n\r\n",
    "http-1.0": b"POST /grpc HTTP/1.0\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "upgrade-header-only": b"POST /grpc HTTP/1.1\r\nHost: d\r\nUpgrade: h2c\r\n\r\n",
}


def _grpc(path: str, upgrade: bytes, stream: bytes, between: Any = None) -> tuple[bytes, bool]:
    """Upgrade, (call `between`), send `stream`: (the status line, did the engine answer?)."""
    with _connect(path) as s:
        s.sendall(upgrade)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if between is not None:
            between()
        try:
            s.sendall(stream)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent closed the stream: nothing of it can reach the engine
        rest += _read_all(s, 3.0)
    return head.split(b"\r\n")[0], answered(rest, 1)


@pytest.mark.parametrize("spelling", list(GRPC_SPELLINGS))
def test_grpc_spellings_the_engine_upgrades_are_inspected_not_spliced(spelling, agent, stack):
    stream = Wire().rpc(1, SOLVE, solve(ents=(b"network.host",))).bytes()
    status, engine_answered = _grpc(stack.engine_socket, GRPC_SPELLINGS[spelling], stream)
    assert status.startswith(b"HTTP/1.1 101") and engine_answered  # the engine takes it
    status, engine_answered = _grpc(agent.listen, GRPC_SPELLINGS[spelling], stream)
    assert status.startswith(b"HTTP/1.1 101"), status
    assert not engine_answered, "the Solve asking for network.host reached the engine"


@pytest.mark.parametrize("opened_under", ["eci-off", "audit-mode"])
def test_a_grpc_stream_opened_before_enforcement_is_inspected_after_it(opened_under, agent, stack):
    if opened_under == "eci-off":
        before = {"configurationFileVersion": 2,
                  "enhancedContainerIsolation": {"value": False, "locked": False}}  # fmt: skip
    else:
        before = {**DEFAULT_SETTINGS, "eciAgent": {"auditMode": True}}
    agent.set_settings(before)
    stream = Wire().rpc(1, SOLVE, solve(ents=(b"network.host",))).bytes()
    upgrade = b"POST /grpc HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    _, engine_answered = _grpc(
        agent.listen, upgrade, stream, between=lambda: agent.set_settings(DEFAULT_SETTINGS)
    )
    assert not engine_answered, "BYPASS: Solve(network.host) reached the engine with ECI on"
    assert "closed 1 connection(s) let through under a weaker policy" in agent.log()


# -- 2. the image reused for 10 s ----------------------------------------------------------------


def _socket_create(path: str, stack: Any, name: str, image: str, **host: Any) -> bytes:
    hc = {"Binds": [f"{stack.engine_socket}:/s"], "NetworkMode": "none", **host}
    body = {"Image": image, "Cmd": ["sleep", "30"], "HostConfig": hc}
    return _exchange(path, _req("POST", f"/v1.41/containers/create?name={name}", body, close=True),
                     40)  # fmt: skip


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def _engine_containers(direct: Any, prefix: str) -> list[dict[str, Any]]:
    ids = direct("ps", "-aq", "--no-trunc", "--filter", f"name={prefix}").stdout.split()
    if not ids:
        return []
    out = direct("inspect", "--format", "{{json .}}", *ids, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_tag_flipping_under_concurrent_creates_and_starts_gets_no_refused_image_a_socket(
    agent, direct, stack, name
):
    allowed, refused = stack.images["dockercli"], stack.images["busybox"]
    bad_id = _image_id(direct, refused)
    repo = f"local/flip-{name}"
    moving = repo + ":1"
    agent.set_settings(settings_with([allowed]))
    direct("tag", allowed, moving, check=True)
    stop = threading.Event()
    starts: list[int] = []

    def flipper() -> None:
        k = 0
        while not stop.is_set():
            src = refused if k % 2 == 0 else allowed
            _exchange(stack.engine_socket, _req(
                "POST", f"/v1.41/images/{src}/tag?repo={repo}&tag=1", close=True), 2)  # fmt: skip
            k += 1
            time.sleep(0.003)

    def starter() -> None:  # tries to start every container it sees, through the agent
        query = urllib.parse.quote(json.dumps({"name": [name], "status": ["created"]}))
        while not stop.is_set():
            listed = _exchange(stack.engine_socket,
                               _req("GET", f"/v1.41/containers/json?all=1&filters={query}",
                                    close=True), 2)  # fmt: skip
            try:
                found = _json_body(listed)
            except ValueError:
                continue
            for c in found:
                reply = _exchange(
                    agent.listen, _req("POST", f"/v1.41/containers/{c['Id']}/start", close=True)
                )
                starts.append(_status(reply))

    try:
        assert _status(_socket_create(agent.listen, stack, f"{name}-seed", moving)) == 201
        threads = [threading.Thread(target=flipper), threading.Thread(target=starter)]
        for t in threads:
            t.start()
        with cf.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(
                lambda i: _status(_socket_create(agent.listen, stack, f"{name}-{i}", moving)),
                range(80)))  # fmt: skip
        stop.set()
        for t in threads:
            t.join(10)
        assert set(statuses) <= {201, 403}, statuses
        seen = _engine_containers(direct, name)
        with_bad = [c["Name"] for c in seen if c["Image"] == bad_id]
        assert not with_bad, f"containers with the refused image on the engine: {with_bad}"
        ran_bad = [
            c["Name"]
            for c in seen
            if c["Image"] == bad_id and not c["State"]["StartedAt"].startswith("0001")
        ]
        assert not ran_bad  # fmt: skip
        for c in seen:  # what is there has the allowed image and only the agent's socket
            assert [m["Source"] for m in c["Mounts"]] == [agent.container_socket], c["Name"]
    finally:
        stop.set()
        ids = direct("ps", "-aq", "--filter", f"name={name}").stdout.split()
        if ids:
            direct("rm", "-f", *ids)
        direct("rmi", moving)


def test_exceptions_derived_images_and_settings_inside_the_reuse_window(
    agent, direct, stack, name, tmp_path
):
    allowed, refused = stack.images["dockercli"], stack.images["busybox"]
    local = f"local/win-{name}:1"
    derived = f"local/derived-{name}:1"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    n = iter(range(100))

    def create(image: str, **host: Any) -> tuple[int, str]:
        cname = f"{name}-{next(n)}"
        return _status(_socket_create(agent.listen, stack, cname, image, **host)), cname

    try:
        # An exception for the registry image; a local tag of it is cached, then moved.
        agent.set_settings({**settings_with([allowed]),
                            "eciAgent": {"isolationExceptions": [
                                {"images": [allowed], "allow": ["--privileged"]}]}})  # fmt: skip
        direct("tag", allowed, local, check=True)
        assert create(allowed)[0] == 201
        status, c = create(allowed, Privileged=True)
        assert status == 201 and _exists(direct, c)  # the exception itself works
        assert create(local)[0] == 201  # cached: local -> the allowed image
        status, c = create(local, Privileged=True)  # the exception names the registry name only
        assert status == 403 and not _exists(direct, c)
        direct("tag", refused, local, check=True)
        for host in ({}, {"Privileged": True}, {"PidMode": "host"}):
            status, c = create(local, **host)
            assert status == 403 and not _exists(direct, c), host

        # Derived images: cached while FROM the allowed image, then rebuilt FROM another.
        agent.set_settings(settings_with([allowed], allowDerivedImages=True))
        (ctx / "Dockerfile").write_text(f"FROM {allowed}\nLABEL x=1\n")
        direct("build", "-q", "-t", derived, str(ctx), check=True)
        assert create(derived)[0] == 201
        (ctx / "Dockerfile").write_text(f"FROM {refused}\nLABEL x=1\n")
        direct("build", "-q", "-t", derived, str(ctx), check=True)
        status, c = create(derived)
        assert status == 403 and not _exists(direct, c)

        # The list changes inside the window: the cached name is judged on the new list.
        agent.set_settings(settings_with([allowed]))
        assert create(allowed)[0] == 201
        agent.set_settings(settings_with([refused]))
        status, c = create(allowed)
        assert status == 403 and not _exists(direct, c)
        agent.set_settings(DEFAULT_SETTINGS)
        status, c = create(allowed)
        assert status == 403 and not _exists(direct, c)

        bad_id = _image_id(direct, refused)
        assert all(c["Image"] != bad_id for c in _engine_containers(direct, name))
    finally:
        ids = direct("ps", "-aq", "--filter", f"name={name}").stdout.split()
        if ids:
            direct("rm", "-f", *ids)
        direct("rmi", "-f", local, derived)


# -- 3. the gate's engine client -------------------------------------------------------------


def test_image_names_that_are_paths_or_need_escaping_are_refused(agent, direct, stack, name):
    allowed = stack.images["dockercli"]
    agent.set_settings(settings_with([allowed]))
    names = [
        "../../containers/x",
        f"x/../../../v1.41/images/{allowed}",
        f"{allowed}/../../{allowed}",
        f"docker.io/library/../{allowed}",
        f"/{allowed}", f"{allowed}/", f"//{allowed}",
        "%2e%2e/x", f"{allowed}%00", "a b", "a\r\nX-Injected: 1", "a\nb", "\u00e9t\u00e9",
        "a?b=1", "a#b", "sha256:", f"{allowed}\x00", "x" * 70_000, "x" * 2_000_000,
        allowed.replace("fixtures", "FIXTURES"),
    ]  # fmt: skip
    for i, image in enumerate(names):
        cname = f"{name}-{i}"
        t = time.monotonic()
        reply = _socket_create(agent.listen, stack, cname, image)
        assert time.monotonic() - t < 10, image[:60]
        assert _status(reply) in (400, 403, 404, 503), (image[:60], reply[:300])
        assert not _exists(direct, cname), image[:60]
    ping = _exchange(agent.listen, _req("GET", "/_ping", close=True))
    assert ping.startswith(b"HTTP/1.1 200"), ping
    # and the allowed name still works through the same engine client
    cname = f"{name}-ok"
    try:
        assert _status(_socket_create(agent.listen, stack, cname, allowed)) == 201
    finally:
        direct("rm", "-f", cname)
