"""Review of `KnownHeads` (b63fab5), attacked through the real agent and checked on the ENGINE.

A host client's GET/HEAD head that the gate allowed by route alone is remembered with the bytes
it was forwarded as; the same bytes again are forwarded without being parsed and judged. Every
attack below first gets a head remembered, then tries to make the remembered path carry more
than that one head (or serve a client that must be judged), and then asks the ENGINE directly
(containers by name, their mounts) what got through; the agent's log is never the evidence.

1. Transparency: remembered `HEAD /_ping`, `GET /_ping`, a container's JSON, an engine 404
   and a log stream answer byte for byte as the engine does (Date aside), framed alike, next
   to `HEAD .../archive`, which is judged every time and never remembered; pipelined remembered requests are answered in order; a half-close after them.
   A head the engine itself upgrades (websocket attach with `Connection: keep-alive-upgrade`,
   no upgrade to llhttp) is never remembered, and its stream's bytes never become requests.
2. Smuggling: a socket-mounting create pipelined behind remembered heads, after CRLFs, behind a
   remembered head's prefix going on with `Content-Length` / `Transfer-Encoding`, behind bytes
   that look like a body, inside a refused request's body, a remembered head in two pieces (the
   same bytes sent straight to the engine show which of these it would have created); an
   allowed socket mount behind remembered heads still gets the container-facing socket.
3. Spellings: heads differing from a remembered one by case, whitespace, a duplicate header,
   `Connection: close`, HTTP/1.0, `Expect`, `Proxy-Connection`, `Upgrade`, the size bound:
   each judged on its own, answered alike whether remembered or not.
4. Who: a process inside a container reaching the HOST socket (moved into the container's
   cgroup, which is what the agent reads) and the container-facing socket never get an answer
   from the table (image refusal, command list).
5. When: ECI off, audit mode, a command list, back to enforcing, on one connection kept open;
   the table's bound under churn.

No bypass was found. Fixed after this review: `KnownHeads.remember` checked the generation
before it loaded `entries`, so a `reset` from the settings thread landing between the two could
store an exchange judged under the old policy in the new table (harmless, as a by-route answer
is the same under every policy, but not what the class doc promises); and heads with an
`Upgrade` header are no longer remembered.

The agent here is the real `eci-agent run` with a probe (`sitecustomize`, pure-Python build)
that only writes down what the table does: `kept` (remembered), `hit` (forwarded as
remembered) and `reset`, so each test can check that the remembered path was really taken.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.proxy.connection import KNOWN_HEAD_MAX, KNOWN_HEADS_LIMIT
from tests.e2e.agent_process import REPO, AgentProcess, settings_with
from tests.e2e.test_review_session3 import _bad_create as refused_create
from tests.e2e.test_review_session3 import _connect, _read_all, _req

pytestmark = pytest.mark.engine

DEFAULT = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {"value": True, "locked": True},
}
ECI_OFF = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {"value": False, "locked": True},
}

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
HEAD_PING = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
LIST = b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: docker\r\n\r\n"
#: Ends a pipeline: the server closes after answering it.
LAST = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"

# -- the probe -----------------------------------------------------------------------------------

PROBE = textwrap.dedent(
    '''
    """Test probe: writes down what `KnownHeads` does; changes nothing."""
    import os

    _PATH = os.environ.get("ECI_KNOWN_PROBE")
    if _PATH:
        from agent.proxy import connection as _c

        def _note(kind, key=b"", size=0):
            with open(_PATH, "a") as f:
                f.write("%s %d %s\\n" % (kind, size, key.hex()))

        _remember = _c.KnownHeads.remember
        _reset = _c.KnownHeads.reset
        _forward_known = _c.ProxyConnection._forward_known

        def remember(self, key, generation, known):
            _remember(self, key, generation, known)
            if self.entries.get(key) is known:
                _note("kept", key, len(self.entries))

        def reset(self):
            _note("reset")
            _reset(self)

        def forward_known(self, known):
            table = self.known.entries if self.known is not None else {}
            key = next((k for k, v in table.items() if v is known), b"")
            _note("hit", key, len(table))
            return _forward_known(self, known)

        class _Answers(dict):
            """A table of response heads that notes each one found in it."""

            def get(self, key, default=None):
                value = dict.get(self, key, default)
                if value is not None:
                    _note("answer", key, len(self))
                return value

        _init = _c.KnownHeads.__init__

        def init(self, *args, **kwargs):
            _init(self, *args, **kwargs)
            self.answers_get = _Answers()
            self.answers_head = _Answers()

        _c.KnownHeads.remember = remember
        _c.KnownHeads.reset = reset
        _c.KnownHeads.__init__ = init
        _c.ProxyConnection._forward_known = forward_known
    '''
)


class Probe:
    """What the agent's table did, read from the probe's file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[tuple[str, int, bytes]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            kind, size, key = (line.split(" ") + [""])[:3]
            out.append((kind, int(size), bytes.fromhex(key)))
        return out

    def mark(self) -> int:
        return len(self.events())

    def since(self, mark: int, kind: str | None = None) -> list[tuple[str, int, bytes]]:
        return [e for e in self.events()[mark:] if kind is None or e[0] == kind]

    def hits(self, mark: int, key: bytes | None = None) -> int:
        return sum(1 for e in self.since(mark, "hit") if key is None or e[2] == key)

    def kept(self, mark: int, key: bytes | None = None) -> int:
        return sum(1 for e in self.since(mark, "kept") if key is None or e[2] == key)

    def answers(self, mark: int) -> list[bytes]:
        """The response heads passed on as remembered (`KnownHeads.answers_*`)."""
        return [e[2] for e in self.since(mark, "answer")]


@pytest.fixture(scope="module")
def kagent(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The real agent, started with the probe on its path."""
    work = tmp_path_factory.mktemp("known-agent")
    probe_dir = work / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    proc = AgentProcess(work / "agent", stack.engine_socket)
    proc.workdir.mkdir()
    proc.probe = Probe(work / "probe.log")  # type: ignore[attr-defined]
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(probe_dir), str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
        "ECI_KNOWN_PROBE": str(work / "probe.log"),
        "ECI_AGENT_NATIVE": "0",  # the probe patches the Python classes
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        proc.start(DEFAULT)
    yield proc
    code = proc.stop()
    assert code == 0, f"eci-agent did not stop cleanly (exit {code}):\n{proc.log()[-4000:]}"


@pytest.fixture
def probe(kagent: AgentProcess) -> Probe:
    return kagent.probe  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(autouse=True)
def _enforcing_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "kagent" in request.fixturenames:
        request.getfixturevalue("kagent").set_settings(DEFAULT)


# -- helpers -------------------------------------------------------------------------------------


def _exchange(path: str, data: bytes, wait: float = 3.0) -> bytes:
    with _connect(path) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading it all: read the answer
        return _read_all(s, wait)


class Reader:
    """Reads whole responses, one at a time, from a kept-alive connection."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError(self.buf[:300])
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self, method: str = "GET") -> tuple[bytes, bytes]:
        """(head, body as framed on the wire) of the next response."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        status = _status(head)
        fields = _fields(head)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return head, b""
        if "chunked" in fields.get("transfer-encoding", ""):
            framed = b""
            while True:
                line = self._line()
                framed += line + b"\r\n"
                size = int(line.split(b";")[0], 16)
                framed += self._take(size + 2)
                if size == 0:
                    return head, framed
        if "content-length" in fields:
            return head, self._take(int(fields["content-length"]))
        while True:  # until the connection closes
            try:
                self._fill()
            except EOFError:
                body, self.buf = self.buf, b""
                return head, body


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _statuses(reply: bytes) -> list[int]:
    """Status codes of the responses in `reply` (JSON bodies never hold a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def _fields(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, _, v = line.partition(b":")
            out[k.strip().lower().decode()] = v.strip().decode()
    return out


def _payload(head: bytes, body: bytes) -> bytes:
    """The body without its chunked framing, if it has one."""
    if "chunked" not in _fields(head).get("transfer-encoding", ""):
        return body
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


def _without_date(head: bytes) -> bytes:
    return b"\r\n".join(x for x in head.split(b"\r\n") if not x.lower().startswith(b"date:"))


def _bad_create(stack: Any, name: str, close: bool = True) -> bytes:
    """A create the agent must refuse (the raw engine socket and --privileged), which by
    default ends the pipeline it is in (`Connection: close`)."""
    return refused_create(stack, name, close)


def _exists(direct: Any, name: str) -> bool:
    out = direct("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}", check=True)
    return name in out.stdout.split()


def _engine_names(direct: Any, prefix: str) -> list[str]:
    out = direct("ps", "-a", "--filter", f"name={prefix}", "--format", "{{.Names}}", check=True)
    return out.stdout.split()


def _prime(path: str, probe: Probe, *heads: bytes) -> None:
    """Each head alone, in one piece, on its own connection: remembered (checked: the table
    kept it, or already had it)."""
    for head in heads:
        mark = probe.mark()
        with _connect(path) as s:
            s.sendall(head)
            Reader(s).response(head.split(b" ", 1)[0].decode())
        assert probe.kept(mark, head) + probe.hits(mark, head) == 1, f"not remembered: {head!r}"


@pytest.fixture
def sleeper(direct: Any, stack: Any, name: str) -> Iterator[str]:
    direct("run", "-d", "-i", "--name", name, "--network", "none", stack.images["busybox"],
           "sleep", "600", check=True)  # fmt: skip
    yield name
    direct("rm", "-f", name)


def _procs_file(container_pid: int, container_id: str) -> Path:
    """A `cgroup.procs` of the container's cgroup (v1 or v2): where a process is moved in."""
    for line in Path(f"/proc/{container_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if container_id not in path:
            continue
        roots = ["unified", ""] if not controllers else [controllers.replace("name=", "")]
        for root in roots:
            procs = Path("/sys/fs/cgroup", root, path.lstrip("/"), "cgroup.procs")
            if procs.exists():
                return procs
    raise AssertionError(f"no cgroup of container {container_id[:12]} found")


CLIENT = textwrap.dedent(
    """
    import os, socket, sys
    procs, path, cid, wait = sys.argv[1:5]
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    if cid not in open("/proc/self/cgroup").read():
        sys.exit(3)
    data = sys.stdin.buffer.read()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(float(wait))
    s.connect(path)
    s.sendall(data)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    sys.stdout.buffer.write(out)
    """
)


def _from_container(
    direct: Any, container: str, path: str, data: bytes, wait: float = 3.0
) -> bytes:
    """Send `data` to `path` from a process inside `container` (moved into its cgroup, which is
    what the agent reads of a client), and return what came back."""
    info = json.loads(direct("inspect", container, check=True).stdout)[0]
    procs = _procs_file(info["State"]["Pid"], info["Id"])
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(procs), path, info["Id"], str(wait)],
        input=data,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


# -- 1. transparency -------------------------------------------------------------------------


def test_remembered_heads_answer_byte_for_byte_as_the_engine_does(kagent, probe, stack, sleeper):
    heads = [
        ("HEAD", HEAD_PING),
        ("GET", PING),
        ("HEAD", _req("HEAD", f"/v1.41/containers/{sleeper}/archive?path=/etc")),
        ("GET", _req("GET", f"/v1.41/containers/{sleeper}/json")),
        ("GET", _req("GET", "/v1.41/containers/eci-no-such-container/json")),  # engine's 404
        ("GET", _req("GET", f"/v1.41/containers/{sleeper}/logs?stdout=1")),  # a raw stream
    ]

    def run(path: str) -> list[tuple[bytes, bytes]]:
        answers = []
        with _connect(path) as s:
            reader = Reader(s)
            for _ in range(3):  # judged (and remembered) once, then remembered
                for method, head in heads:
                    s.sendall(head)
                    answers.append(reader.response(method))
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):  # nothing more: no body after a HEAD's head
                extra = s.recv(100)
                raise AssertionError(f"bytes after the last response: {extra!r}")
            assert reader.buf == b""
        return answers

    engine = run(stack.engine_socket)
    mark = probe.mark()
    through = run(kagent.listen)
    assert len(engine) == len(through)
    for (dh, db), (ah, ab) in zip(engine, through, strict=True):
        assert _without_date(ah) == _without_date(dh)
        assert ab == db
    assert [_status(h) for h, _ in through[:6]] == [200, 200, 200, 200, 404, 200]
    for _, head in heads:  # remembered at the first (or before), then answered from the table
        if b"/archive?" in head:
            # `docker cp` mounts the container's binds again: judged every time, never remembered
            assert probe.kept(mark, head) + probe.hits(mark, head) == 0, head
            continue
        assert probe.kept(mark, head) + probe.hits(mark, head) == 3, head
        assert probe.hits(mark, head) >= 2, head
    # The engine's response heads too (Date moves on once a second: some may be read again).
    assert len(probe.answers(mark)) >= 3, probe.since(mark)


def test_remembered_answers_keep_responses_in_step(kagent, probe, direct, stack, sleeper):
    """Response heads taken from the table (`answers_*`) frame each response as the engine did.
    The engine answers GET and HEAD of a missing path in a container's archive with the SAME
    head (`Content-Length: 67`), a body only after the GET; those are judged every time (a
    copy mounts the container's binds again) and interleaved with remembered ones: on one
    kept-alive connection and pipelined, every response comes in order, and a refused create
    behind them is still read as a request and refused (checked on the ENGINE)."""
    # By ID: the agent forwards a copy to the judged container's ID, and the engine's 404
    # names the container as the request did.
    cid = direct("inspect", "-f", "{{.Id}}", sleeper, check=True).stdout.strip()
    missing = f"/v1.41/containers/{cid}/archive?path=/eci-no-such-file"
    get_missing, head_missing = _req("GET", missing), _req("HEAD", missing)
    _prime(kagent.listen, probe, PING, HEAD_PING, LIST)
    mix = [("GET", get_missing), ("HEAD", head_missing), ("HEAD", HEAD_PING), ("GET", PING),
           ("HEAD", head_missing), ("GET", LIST), ("GET", get_missing)]  # fmt: skip
    smuggled = sleeper + "-smuggled"

    def run(path: str, rounds: int) -> list[tuple[bytes, bytes]]:
        out = []
        with _connect(path) as s:
            reader = Reader(s)
            for _ in range(rounds):
                for method, head in mix:
                    s.sendall(head)
                    out.append(reader.response(method))
            s.sendall(b"".join(head for _, head in mix) * 4)  # pipelined
            for _ in range(4):
                out += [reader.response(method) for method, _ in mix]
            s.sendall(_bad_create(stack, smuggled))
            refused = reader.response("POST")
            assert reader.buf == b"" and _read_all(s, 2.0) == b""
        return out + [refused]

    mark = probe.mark()
    through = run(kagent.listen, 30)
    assert not _exists(direct, smuggled), "the create behind remembered answers reached the engine"
    try:
        engine = run(stack.engine_socket, 30)  # the same bytes create it there
    finally:
        direct("rm", "-f", smuggled)
    assert len(through) == len(engine)
    for (ah, ab), (dh, db) in zip(through[:-1], engine[:-1], strict=True):
        assert _without_date(ah) == _without_date(dh)
        assert _payload(ah, ab) == _payload(dh, db)
    assert _status(through[-1][0]) == 403 and _status(engine[-1][0]) == 201
    heads = {_without_date(h) for h, _ in through if _status(h) == 404}
    assert len(heads) == 1, "GET and HEAD were not answered with the same head"
    # The remembered routes' heads came from the table: 102 of the 238 responses, a new Date
    # at most once a second; the archive's never did.
    assert len(probe.answers(mark)) >= 60, len(probe.answers(mark))
    for head in (get_missing, head_missing):
        assert probe.kept(mark, head) + probe.hits(mark, head) == 0, head


def test_pipelined_remembered_requests_are_answered_in_order(kagent, probe, direct, stack, name):
    a, b = name + "-a", name + "-b"
    for box in (a, b):
        direct("create", "--name", box, "--network", "none", stack.images["busybox"], "true",
               check=True)  # fmt: skip
    try:
        query = json.dumps({"name": [name]}).replace('"', "%22").replace(" ", "")
        listing = _req("GET", f"/v1.41/containers/json?all=1&filters={query}")
        heads = [_req("GET", f"/v1.41/containers/{a}/json"), HEAD_PING,
                 _req("GET", f"/v1.41/containers/{b}/json"), PING, listing]  # fmt: skip
        _prime(kagent.listen, probe, *heads)
        mark = probe.mark()
        order = [0, 1, 2, 3, 4, 2, 0, 1, 1, 3, 2, 4, 0]
        with _connect(kagent.listen) as s:
            s.sendall(b"".join(heads[i] for i in order))
            reader = Reader(s)
            for i in order:
                head, body = reader.response("HEAD" if heads[i] == HEAD_PING else "GET")
                assert _status(head) == 200, (i, head)
                body = _payload(head, body)
                if i in (0, 2):
                    assert json.loads(body)["Name"] == "/" + (a if i == 0 else b)
                elif i == 1:
                    assert body == b"" and _fields(head)["content-length"] == "0"
                elif i == 3:
                    assert body == b"OK"
                else:
                    assert sorted(c["Names"][0] for c in json.loads(body)) == ["/" + a, "/" + b]
        assert probe.hits(mark) == len(order)
    finally:
        direct("rm", "-f", a, b)


def test_remembered_heads_then_a_half_close_are_all_answered(kagent, probe, stack):
    _prime(kagent.listen, probe, PING, HEAD_PING)

    def run(path: str) -> list[bytes]:
        with _connect(path) as s:
            s.sendall(PING + HEAD_PING + PING)
            s.shutdown(socket.SHUT_WR)
            reader = Reader(s)
            answers = [_without_date(reader.response(m)[0]) for m in ("GET", "HEAD", "GET")]
            assert _read_all(s, 2.0) == b"" and reader.buf == b""  # then closed, nothing more
        return answers

    mark = probe.mark()
    assert run(kagent.listen) == run(stack.engine_socket)
    assert probe.hits(mark) == 3


def _ws_frame(payload: bytes) -> bytes:
    """A client's (masked) websocket text frame."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_a_remembered_head_the_engine_upgrades_opens_a_stream_not_an_api(
    kagent, probe, direct, stack, name
):
    """`Connection: keep-alive-upgrade` is no upgrade to llhttp, but the engine's websocket
    attach takes it for one (it looks for the substring): such a head (it has an `Upgrade`
    header) is never remembered; it opens the container's stdin, and what follows is stream
    data, never a request."""
    cat = name + "-cat"
    direct("run", "-d", "-i", "--name", cat, "--network", "none", stack.images["busybox"], "cat",
           check=True)  # fmt: skip
    head = _req("GET", f"/v1.41/containers/{cat}/attach/ws?stream=1&stdin=1&stdout=1", headers=(
        "Upgrade: websocket", "Connection: keep-alive-upgrade", "Origin: http://docker",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))  # fmt: skip
    mark = probe.mark()
    try:
        for attempt in range(3):
            bad = f"{name}-{attempt}"
            echo = f"echo-{attempt}\n".encode()
            with _connect(kagent.listen) as s:
                s.sendall(head + _ws_frame(echo))
                reply = b""
                while echo not in reply and len(reply) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                try:
                    s.sendall(_bad_create(stack, bad))  # into the stream (the engine may close)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                reply += _read_all(s, 1.0)
            assert reply.startswith(b"HTTP/1.1 101 Switching Protocols"), reply[:300]
            assert echo in reply  # the stream works: cat echoed the frame
            assert b"HTTP/1.1 403" not in reply and b"HTTP/1.1 201" not in reply
            assert not _exists(direct, bad), "BYPASS: bytes after a stream reached the API"
        assert probe.kept(mark, head) == 0 and probe.hits(mark, head) == 0
    finally:
        direct("rm", "-f", cat)


# -- 2. smuggling behind a remembered head -----------------------------------------------------


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


#: case -> (the bytes around the refused create `bad`, does the ENGINE itself create it, does
#: the agent read the create as a request of its own)
SMUGGLED = {
    "behind-remembered": (lambda bad: PING + HEAD_PING + PING + bad, True, True),
    "between-remembered": (lambda bad: PING + bad.replace(b"Connection: close\r\n", b"")
                           + PING + LIST + LAST, True, True),
    # Go reads no request line after a CRLF (400); llhttp skips it: the create is judged.
    "after-crlfs": (lambda bad: PING + b"\r\n\r\n" + bad, False, True),
    "leading-crlf": (lambda bad: b"\r\n" + PING + bad, False, True),
    "remembered-prefix-with-length": (
        lambda bad: PING[:-2] + b"Content-Length: %d\r\n\r\n" % len(bad) + bad + PING + LAST,
        False, False),
    "remembered-prefix-chunked": (
        lambda bad: PING[:-2] + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(bad) + PING + LAST,
        False, False),
    "body-after-remembered": (
        lambda bad: PING + bad[bad.index(b"\r\n\r\n") + 4:] + b"\r\n" + bad, False, False),
    "in-a-refused-body": (
        lambda bad: b"POST /v1.41/no/such/route HTTP/1.1\r\nHost: docker\r\nContent-Length: %d"
        b"\r\n\r\n" % (len(PING) + len(bad)) + PING + bad + LAST, False, False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SMUGGLED))
def test_a_create_smuggled_around_a_remembered_head_never_reaches_the_engine(
    case, kagent, probe, direct, stack, name
):
    build, engine_takes, judged = SMUGGLED[case]
    _prime(kagent.listen, probe, PING, HEAD_PING, LIST)
    try:
        # The same bytes straight to the engine: does it take the create? (so the check
        # below can fail)
        _exchange(stack.engine_socket, build(_bad_create(stack, name + "-direct")), 1.0)
        assert _exists(direct, name + "-direct") is engine_takes
        mark = probe.mark()
        reply = _exchange(kagent.listen, build(_bad_create(stack, name)), 1.0)
        assert reply.startswith(b"HTTP/1.1 "), reply[:300]
        assert 201 not in _statuses(reply), reply[:2000]
        assert not _exists(direct, name), f"BYPASS: {case} created the container"
        assert (403 in _statuses(reply)) is judged, reply[:2000]
        if case.startswith(("behind", "between", "after", "body")):
            assert probe.hits(mark, PING) >= 1  # the remembered path was taken
    finally:
        direct("rm", "-f", name, name + "-direct")


@pytest.mark.parametrize(
    "pieces",
    [
        lambda bad: [PING[:1], PING[1:] + bad],
        lambda bad: [PING[:20], PING[20:] + bad],
        lambda bad: [PING[:-1], PING[-1:] + bad],  # all but the last LF
        lambda bad: [PING, bad],  # whole, then the create in a second piece
        lambda bad: [b"\r\n", PING + bad],  # a CRLF already read: the parser is not at its start
        lambda bad: [PING + bad[:30], bad[30:]],
    ],
    ids=["1+rest", "20+rest", "all-but-LF", "whole+create", "crlf-first", "create-split"],
)
def test_a_remembered_head_in_pieces_is_read_as_one(pieces, kagent, probe, direct, stack, name):
    _prime(kagent.listen, probe, PING)
    parts = pieces(_bad_create(stack, name))
    mark = probe.mark()
    with _connect(kagent.listen) as s:
        for part in parts:
            s.sendall(part)
            time.sleep(0.05)  # read by the agent apart
        reply = _read_all(s, 1.0)
    assert _statuses(reply) == [200, 403], reply[:2000]
    assert b"\r\n\r\nOK" in reply  # the ping's answer, whole
    assert not _exists(direct, name)
    # Only a head read whole from the parser's start is looked up.
    whole = parts[0].startswith(PING)
    assert probe.hits(mark, PING) == (1 if whole else 0)


def test_an_allowed_socket_mount_behind_remembered_heads_gets_the_container_socket(
    kagent, probe, direct, stack, name
):
    kagent.set_settings(settings_with([stack.images["busybox"]]))
    _prime(kagent.listen, probe, PING, HEAD_PING)
    body = {
        "Image": stack.images["busybox"],
        "Cmd": ["true"],
        "HostConfig": {"Binds": [f"{stack.engine_socket}:/var/run/docker.sock"],
                       "NetworkMode": "none"},
    }  # fmt: skip
    create = _req("POST", f"/v1.41/containers/create?name={name}", body, close=True)
    mark = probe.mark()
    try:
        reply = _exchange(kagent.listen, PING + HEAD_PING + PING + create, 5.0)
        assert _statuses(reply) == [200, 200, 200, 201], reply[:2000]
        mounts = json.loads(direct("inspect", "-f", "{{json .Mounts}}", name, check=True).stdout)
        assert [m["Source"] for m in mounts] == [kagent.container_socket]
        assert probe.hits(mark) == 3
    finally:
        direct("rm", "-f", name)


# -- 3. spellings: each head is its own, judged on its own ------------------------------------


def _padded(size: int) -> bytes:
    """`GET /_ping` with an X-Pad header making the head exactly `size` bytes."""
    base = len(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Pad: \r\n\r\n")
    return b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Pad: " + b"p" * (size - base) + b"\r\n\r\n"


#: head -> remembered? (a head that differs from PING in any byte is a head of its own)
SPELLINGS = {
    "lower-case-host": (b"GET /_ping HTTP/1.1\r\nhost: docker\r\n\r\n", True),
    "trailing-space": (b"GET /_ping HTTP/1.1\r\nHost: docker \r\n\r\n", True),
    "tab": (b"GET /_ping HTTP/1.1\r\nHost:\tdocker\r\n\r\n", True),
    "two-spaces": (b"GET  /_ping HTTP/1.1\r\nHost: docker\r\n\r\n", True),
    "duplicate-header": (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-A: 1\r\nX-A: 1\r\n\r\n", True),
    "duplicate-host": (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nHost: docker\r\n\r\n", False),
    "obs-fold": (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-A: 1\r\n 2\r\n\r\n", False),
    "bare-lf": (b"GET /_ping HTTP/1.1\nHost: docker\n\n", False),
    "connection-close": (LAST, False),
    "close-among-tokens": (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive, close\r\n\r\n", False),
    "http-1.0-keep-alive": (
        b"GET /_ping HTTP/1.0\r\nHost: docker\r\nConnection: keep-alive\r\n\r\n", False),
    "expect": (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nExpect: 100-continue\r\n\r\n", False),
    "proxy-connection": (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nProxy-Connection: keep-alive\r\n\r\n", False),
    "upgrade": (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n", False),
    "content-length-0": (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n", False),
    "unknown-route": (b"GET /v1.41/no/such/route HTTP/1.1\r\nHost: docker\r\n\r\n", False),
    "get-on-a-post-route": (
        b"GET /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n\r\n", False),
    "at-the-bound": (_padded(KNOWN_HEAD_MAX), True),
    "over-the-bound": (_padded(KNOWN_HEAD_MAX + 1), False),
}  # fmt: skip


def test_heads_spelled_differently_are_each_judged_and_answered_alike(
    kagent, probe, direct, stack, name
):
    _prime(kagent.listen, probe, PING)
    for i, (case, (head, remembered)) in enumerate(SPELLINGS.items()):
        replies = []
        mark = probe.mark()
        for attempt in range(3):  # unknown, then maybe remembered, then maybe a hit
            bad = f"{name}-{i}-{attempt}"
            replies.append(_exchange(kagent.listen, head + _bad_create(stack, bad), 1.0))
            assert not _exists(direct, bad), f"BYPASS: {case} created the container"
        statuses = [_statuses(r) for r in replies]
        assert statuses[0] == statuses[1] == statuses[2], (case, statuses)
        assert 201 not in statuses[0], case
        heads = [r.partition(b"\r\n\r\n")[0] for r in replies]
        assert _without_date(heads[0]) == _without_date(heads[1]) == _without_date(heads[2]), case
        assert probe.kept(mark, head) + probe.hits(mark, head) == (3 if remembered else 0), case
        assert probe.hits(mark, head) >= (2 if remembered else 0), case
        assert probe.hits(mark, PING) == 0, case  # never taken for the remembered PING
        if case in ("connection-close", "close-among-tokens"):
            assert statuses[0] == [200], case  # answered, closed: the create is never read
        elif case in ("duplicate-host", "obs-fold", "bare-lf"):
            assert statuses[0][0] in (400, 431), (case, statuses[0])
        else:
            assert statuses[0][-1] == 403, (case, statuses[0])


# -- 4. who: only host processes on the host socket --------------------------------------------


def _with_commands(images: list[str], kind: str, commands: list[str]) -> dict[str, Any]:
    doc = settings_with(images)
    doc["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"] = {
        "type": kind,
        "commands": commands,
    }
    return doc


@pytest.mark.parametrize("refusal", ["image-not-allowed", "command-list"])
def test_a_container_process_on_the_host_socket_gets_nothing_from_the_table(
    refusal, kagent, probe, direct, stack, sleeper, name
):
    busybox = stack.images["busybox"]
    if refusal == "image-not-allowed":
        kagent.set_settings(settings_with([]))  # no image may have the socket
        heads = [LIST, PING, HEAD_PING]
    else:
        kagent.set_settings(_with_commands([busybox], "deny", ["container*"]))
        heads = [LIST]
    sleeper_id = json.loads(direct("inspect", sleeper, check=True).stdout)[0]["Id"]
    _prime(kagent.listen, probe, *heads)
    # The host itself is served from the table, unrestricted:
    mark = probe.mark()
    reply = _exchange(kagent.listen, LIST + LAST, 1.0)
    assert _statuses(reply) == [200, 200] and sleeper_id.encode() in reply
    assert probe.hits(mark, LIST) == 1
    # The same bytes from a process inside the (running, busybox) container:
    mark = probe.mark()
    bad = _bad_create(stack, name + "-bad")
    data = b"".join(heads) + LIST + bad
    reply = _from_container(direct, sleeper, kagent.listen, data, 2.0)
    statuses = _statuses(reply)
    assert statuses and statuses[0] == 403, reply[:1000]
    assert sleeper_id.encode() not in reply, "BYPASS: the engine's container list reached it"
    if refusal == "image-not-allowed":
        assert statuses == [403] * (len(heads) + 2), reply[:2000]
        assert b"reached eci-agent's host socket" in reply
    else:
        assert statuses == [403, 403, 403], reply[:2000]
        assert b'docker command \\"' in reply and b"is blocked" in reply
    assert probe.since(mark, "hit") == [] and probe.since(mark, "kept") == []
    assert not _exists(direct, name + "-bad")


def test_the_container_socket_has_no_table(kagent, probe, direct, stack, name):
    """A host process on the container-facing socket gets the global command list."""
    kagent.set_settings(_with_commands([stack.images["busybox"]], "deny", ["container*"]))
    _prime(kagent.listen, probe, LIST, PING)
    mark = probe.mark()
    reply = _exchange(kagent.container_socket, PING + LIST + LIST + _bad_create(stack, name), 1.0)
    assert _statuses(reply) == [200, 403, 403, 403], reply[:2000]
    assert b"is blocked" in reply
    assert probe.since(mark, "hit") == [] and probe.since(mark, "kept") == []
    assert not _exists(direct, name)


# -- 5. when: policy changes on kept-alive connections, and the bound ------------------------


def test_policy_changes_while_a_connection_stays_open(kagent, probe, direct, stack, name):
    busybox = stack.images["busybox"]
    phases = [
        # settings, is a remembered head kept under it, does the create reach the engine
        ("enforcing", settings_with([]), True, False),
        ("eci-off", ECI_OFF, False, True),
        ("enforcing-again", DEFAULT, True, False),
        ("audit", {**DEFAULT, "eciAgent": {"auditMode": True}}, True, True),
        ("command-list", _with_commands([busybox], "allow", ["ps"]), True, False),
        ("back", DEFAULT, True, False),
    ]
    try:
        with _connect(kagent.listen) as s:
            reader = Reader(s)
            for i, (phase, settings, kept, created) in enumerate(phases):
                mark = probe.mark()
                kagent.set_settings(settings)
                assert probe.since(mark, "reset"), f"{phase}: the table was not emptied"
                mark = probe.mark()
                bad = f"{name}-{i}"
                # The open connection's heads: judged afresh, then remembered again (or not).
                s.sendall(PING + HEAD_PING + PING + HEAD_PING + _bad_create(stack, bad, False))
                for method in ("GET", "HEAD", "GET", "HEAD"):
                    head, _ = reader.response(method)
                    assert _status(head) == 200, (phase, head)
                head, body = reader.response()
                assert _status(head) == (201 if created else 403), (phase, head, body[:300])
                assert _exists(direct, bad) is created, phase
                assert probe.kept(mark) == (2 if kept else 0), phase
                assert probe.hits(mark) == (2 if kept else 0), phase
                if created:  # what got through has the agent's socket, not the engine's
                    mounts = json.loads(direct("inspect", "-f", "{{json .Mounts}}", bad).stdout)
                    sources = [m["Source"] for m in mounts]
                    assert sources == ([stack.engine_socket] if phase == "eci-off"
                                       else [kagent.container_socket]), (phase, sources)  # fmt: skip
    finally:
        names = _engine_names(direct, name)
        if names:
            direct("rm", "-f", *names)


def test_the_bound_of_the_table_under_churn(kagent, probe, direct, stack, name):
    heads = [
        b"GET /_ping?n=%d HTTP/1.1\r\nHost: docker\r\n\r\n" % n
        for n in range(3 * KNOWN_HEADS_LIMIT)
    ]
    step = KNOWN_HEADS_LIMIT // 4  # a batch, then its first head again: it is still there
    batches = 0
    mark = probe.mark()
    with _connect(kagent.listen) as s:
        reader = Reader(s)
        for round_ in range(2):
            for start in range(0, len(heads), step):
                batch = heads[start : start + step]
                batches += 1
                bad = f"{name}-{round_}-{start}"
                s.sendall(b"".join(batch) + _bad_create(stack, bad, False) + batch[0])
                for _ in range(len(batch)):
                    head, body = reader.response()
                    assert _status(head) == 200 and body == b"OK"
                assert _status(reader.response()[0]) == 403
                assert _status(reader.response()[0]) == 200
    kept = probe.since(mark, "kept")
    assert len({key for _, _, key in kept}) == len(heads)  # every one was remembered
    assert max(size for _, size, _ in kept) == KNOWN_HEADS_LIMIT  # and never held more
    assert probe.hits(mark) >= batches * 3 // 4  # a batch's first head, sent again at once
    assert _engine_names(direct, name) == []
