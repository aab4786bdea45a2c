"""The /grpc inspector, driven by bytes alone: HTTP/2 frames and HPACK blocks built here (with
hpack's Encoder), protobuf by the small encoders below."""

from __future__ import annotations

import random

import hpack
import pytest

from agent.proxy.grpc_inspect import (
    PREFACE,
    GrpcInspector,
    Kind,
    Verdict,
    judge,
)

# -- protobuf --------------------------------------------------------------------------------


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(n: int, wire: int) -> bytes:
    return varint(n << 3 | wire)


def ld(n: int, b: bytes) -> bytes:
    return tag(n, 2) + varint(len(b)) + b


def vi(n: int, v: int) -> bytes:
    return tag(n, 0) + varint(v)


def entry(k: bytes, v: bytes) -> bytes:
    return ld(1, k) + ld(2, v)


def exec_op(network: int | None = None, security: int | None = None, devices: int = 0) -> bytes:
    meta = ld(1, b"sh") + ld(1, b"-c") + ld(1, b"echo hi") + ld(3, b"/")  # Meta: args, cwd
    out = ld(1, meta) + ld(2, vi(1, 0) + ld(3, b"/"))  # a Mount: input 0 at /
    if network is not None:
        out += vi(3, network)
    if security is not None:
        out += vi(4, security)
    for i in range(devices):
        out += ld(6, ld(1, b"vendor.com/gpu=%d" % i))
    return out


def op_exec(**kw: int | None) -> bytes:
    return ld(1, ld(1, b"sha256:" + b"0" * 64)) + ld(2, exec_op(**kw))  # type: ignore[arg-type]


def op_source(identifier: bytes = b"docker-image://docker.io/library/alpine:latest") -> bytes:
    return ld(3, ld(1, identifier)) + ld(10, ld(1, b"amd64") + ld(2, b"linux"))


def op_build(inner: bytes) -> bytes:
    return ld(5, vi(1, 0) + ld(3, inner))


def definition(*ops: bytes) -> bytes:
    metadata = entry(b"sha256:" + b"1" * 64, ld(1, b""))  # map<string, OpMetadata>
    return b"".join(ld(1, op) for op in ops) + ld(2, metadata)


def solve(
    attrs: dict[bytes, bytes] | None = None,
    ents: tuple[bytes, ...] = (),
    defn: bytes | None = None,
    inputs: dict[bytes, bytes] | None = None,
) -> bytes:
    """control.proto SolveRequest, fields in order as Go marshals them, with a few more."""
    out = ld(1, b"ref-abc") + ld(5, b"session-xyz") + ld(6, b"dockerfile.v0")
    if defn is not None:
        out = ld(2, defn) + out
    base = {b"filename": b"Dockerfile", b"platform": b"linux/amd64", b"target": b""}
    for k, v in {**base, **(attrs or {})}.items():
        out += ld(7, entry(k, v))
    out += ld(8, ld(1, ld(1, b"registry") + ld(2, entry(b"ref", b"cache"))))  # Cache
    for e in ents:
        out += ld(9, e)
    for k, v in (inputs or {}).items():
        out += ld(10, entry(k, v))
    out += vi(16, 2) + tag(99, 5) + b"\0\0\0\0" + tag(98, 1) + b"\0" * 8  # new/unknown fields
    return out


def bridge_solve(defn: bytes | None = None, opts: dict[bytes, bytes] | None = None) -> bytes:
    out = b"" if defn is None else ld(1, defn)
    for k, v in (opts or {}).items():
        out += ld(3, entry(k, v))
    return out + vi(5, 1)


CLEAN = solve(
    attrs={b"force-network-mode": b"none", b"build-arg:X": b"network.host"},
    defn=definition(op_source(), op_exec(network=2), op_exec(network=0, security=0)),
    inputs={b"dockerfile": definition(op_source(b"local://dockerfile"))},
)

# -- HTTP/2 ----------------------------------------------------------------------------------

SOLVE = "/moby.buildkit.v1.Control/Solve"
BRIDGE = "/moby.buildkit.v1.frontend.LLBBridge/"


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


class Wire:
    """A client->engine byte stream, with the offsets of each gRPC message written."""

    def __init__(self, *, settings: bool = True) -> None:
        self.enc = hpack.Encoder()
        self.buf = bytearray(PREFACE)
        if settings:
            self.buf += frame(4, 0, 0, (3).to_bytes(2, "big") + (100).to_bytes(4, "big"))
        self.first = -1  # offset of the first byte of the last message written
        self.last = -1  # and of its last byte

    def raw(self, b: bytes) -> Wire:
        self.buf += b
        return self

    def headers(
        self,
        sid: int,
        path: str,
        *,
        end_stream: bool = False,
        pad: int | None = None,
        priority: bool = False,
        pieces: int = 1,
        extra: list[tuple[str, str]] | None = None,
    ) -> Wire:
        hdrs = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("buildid", "b1"),
        ] + (extra or [])
        block = self.enc.encode(hdrs)
        return self.block(
            sid, block, end_stream=end_stream, pad=pad, priority=priority, pieces=pieces
        )

    def block(
        self,
        sid: int,
        block: bytes,
        *,
        end_stream: bool = False,
        pad: int | None = None,
        priority: bool = False,
        pieces: int = 1,
    ) -> Wire:
        size = -(-len(block) // pieces)
        parts = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        flags = (1 if end_stream else 0) | (4 if len(parts) == 1 else 0)
        payload = parts[0]
        if priority:
            flags |= 0x20
            payload = (3).to_bytes(4, "big") + b"\x10" + payload
        if pad is not None:
            flags |= 0x8
            payload = bytes((pad,)) + payload + b"\0" * pad
        self.buf += frame(1, flags, sid, payload)
        for i, part in enumerate(parts[1:], 2):
            self.buf += frame(9, 4 if i == len(parts) else 0, sid, part)
        return self

    def data(
        self, sid: int, payload: bytes, *, end_stream: bool = False, pad: int | None = None
    ) -> Wire:
        flags = 1 if end_stream else 0
        if pad is not None:
            flags |= 0x8
            self.buf += frame(0, flags, sid, bytes((pad,)) + payload + b"\xee" * pad)
        else:
            self.buf += frame(0, flags, sid, payload)
        return self

    def message(
        self,
        sid: int,
        msg: bytes,
        *,
        size: int = 16384,
        pad: int | None = None,
        flag: int = 0,
        end_stream: bool = True,
    ) -> Wire:
        body = bytes((flag,)) + len(msg).to_bytes(4, "big") + msg
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        for i, chunk in enumerate(chunks):
            head = 9 + (1 if pad is not None else 0)
            if i == 0:
                self.first = len(self.buf) + head
            self.last = len(self.buf) + head + len(chunk) - 1
            self.data(sid, chunk, end_stream=end_stream and i == len(chunks) - 1, pad=pad)
        return self

    def rpc(self, sid: int, path: str, msg: bytes, **kw: int | None) -> Wire:
        return self.headers(sid, path).message(sid, msg, **kw)  # type: ignore[arg-type]

    def bytes(self) -> bytes:
        return bytes(self.buf)


def run(chunks: list[bytes], **kw: object) -> tuple[int, Verdict]:
    """Feed the chunks in order, as the driver would; the bytes released and the last verdict."""
    insp = GrpcInspector(**kw)  # type: ignore[arg-type]
    released = fed = 0
    verdict = Verdict(0)
    for c in chunks:
        fed += len(c)
        verdict = insp.feed(c)
        released += verdict.release
        assert released <= fed
        if verdict.cut:
            assert verdict.release == 0
            assert insp.feed(b"more") == verdict  # a cut stream stays cut
            break
    return released, verdict


def split_at(data: bytes, *points: int) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


MODES = [pytest.param(False, id="tail"), pytest.param(True, id="whole")]


def assert_withheld(w: Wire, released: int, whole: bool) -> None:
    """The engine never got the refused message whole; with `whole`, none of it."""
    assert released <= (w.first if whole else w.last)


# -- clean traffic ---------------------------------------------------------------------------


@pytest.mark.parametrize("whole", MODES)
def test_clean_solve_is_released_whole(whole: bool) -> None:
    w = Wire().rpc(1, SOLVE, CLEAN)
    data = w.bytes()
    released, v = run([data], hold_whole_message=whole)
    assert not v.cut
    assert released == len(data)


def test_clean_judge_finds_nothing() -> None:
    assert judge(Kind.CONTROL_SOLVE, CLEAN) == []
    assert judge(Kind.CONTROL_SOLVE, b"") == []
    assert judge(Kind.BRIDGE_SOLVE, bridge_solve(definition(op_exec()))) == []


@pytest.mark.parametrize(
    "path",
    [
        "/moby.buildkit.v1.Control/Status",
        "/moby.buildkit.v1.Control/ListWorkers",
        "/moby.buildkit.v1.Control/DiskUsage",
        "/moby.buildkit.v1.Control/Session",
        "/moby.buildkit.v1.frontend.LLBBridge/ReadFile",
        "/grpc.health.v1.Health/Check",
        "/moby.buildkit.v1.Control/SolveX",
        "/moby.buildkit.v1.Controller/Solve",
    ],
)
def test_other_rpcs_pass_untouched(path: str) -> None:
    # The same bytes as a refused Solve: only read on the Solve path.
    msg = solve(ents=(b"network.host",), attrs={b"force-network-mode": b"host"})
    w = Wire().rpc(1, path, msg).rpc(3, path, b"\x01\x02garbage", size=3)
    data = w.bytes()
    released, v = run([data])
    assert not v.cut
    assert released == len(data)


def test_other_rpc_bytes_are_released_frame_by_frame() -> None:
    w = Wire().headers(1, "/moby.buildkit.v1.Control/Session")
    start = len(w.buf)
    w.data(1, b"x" * 100)
    data = w.bytes()
    insp = GrpcInspector()
    assert insp.feed(data[: start + 50]).release == start  # the partial frame waits
    assert insp.feed(data[start + 50 :]).release == len(data) - start
    assert insp.held == 0


# -- refused options -------------------------------------------------------------------------

REFUSED = [
    ("ent-network-host", SOLVE, solve(ents=(b"network.host",)), "--allow network.host"),
    ("ent-insecure", SOLVE, solve(ents=(b"security.insecure",)), "--allow security.insecure"),
    ("ent-device", SOLVE, solve(ents=(b"device",)), "--allow device"),
    (
        "ent-device-cfg",
        SOLVE,
        solve(ents=(b"device=nvidia.com/gpu=all",)),
        "--allow device=nvidia.com/gpu=all",
    ),
    ("ent-unknown", SOLVE, solve(ents=(b"Network.Host",)), "--allow Network.Host"),
    ("ent-empty", SOLVE, solve(ents=(b"",)), "--allow "),
    ("force-net-host", SOLVE, solve(attrs={b"force-network-mode": b"host"}), "--network=host"),
    ("force-net-bogus", SOLVE, solve(attrs={b"force-network-mode": b"bridge"}), "--network=bridge"),
    (
        "force-net-dup-key",  # an entry with the key twice; Go keeps the last, we read both
        SOLVE,
        solve() + ld(7, ld(1, b"force-network-mode") + ld(1, b"x") + ld(2, b"host")),
        "--network=host",
    ),
    (
        "llb-net-host",
        SOLVE,
        solve(defn=definition(op_source(), op_exec(network=1))),
        "RUN --network=host",
    ),
    ("llb-insecure", SOLVE, solve(defn=definition(op_exec(security=1))), "RUN --security=insecure"),
    (
        "llb-insecure-unknown",
        SOLVE,
        solve(defn=definition(op_exec(security=7))),
        "RUN --security=insecure",
    ),
    ("llb-device", SOLVE, solve(defn=definition(op_exec(devices=2))), "RUN --device"),
    (
        "llb-net-int32-wrap",
        SOLVE,
        solve(defn=definition(op_exec(network=(1 << 32) + 1))),
        "RUN --network=host",
    ),
    ("llb-net-unknown", SOLVE, solve(defn=definition(op_exec(network=3))), "network mode 3"),
    (
        "llb-frontend-input",
        SOLVE,
        solve(inputs={b"context": definition(op_exec(network=1))}),
        "RUN --network=host",
    ),
    (
        "llb-nested-buildop",
        SOLVE,
        solve(defn=definition(op_build(definition(op_build(definition(op_exec(security=1))))))),
        "RUN --security=insecure",
    ),
    (
        "bridge-llb",
        BRIDGE + "Solve",
        bridge_solve(definition(op_exec(network=1))),
        "RUN --network=host",
    ),
    (
        "bridge-opt",
        BRIDGE + "Solve",
        bridge_solve(opts={b"force-network-mode": b"host"}),
        "--network=host",
    ),
    (
        "bridge-input",
        BRIDGE + "Solve",
        ld(13, entry(b"x", definition(op_exec(security=1)))),
        "RUN --security=insecure",
    ),
    ("new-container", BRIDGE + "NewContainer", ld(1, b"c1") + vi(3, 1), "--network=host"),
    (
        "exec-process",
        BRIDGE + "ExecProcess",
        ld(1, b"p1") + ld(2, ld(1, b"c1") + ld(2, ld(1, b"sh")) + vi(5, 1)),
        "--allow security.insecure",
    ),
    (
        "percent-path",
        "/moby.buildkit.v1.Control/%53olve",
        solve(ents=(b"network.host",)),
        "--allow network.host",
    ),
    ("query-path", SOLVE + "?x=1", solve(ents=(b"network.host",)), "--allow network.host"),
    ("prefixed-path", "/x" + SOLVE, solve(ents=(b"network.host",)), "--allow network.host"),
]


@pytest.mark.parametrize("whole", MODES)
@pytest.mark.parametrize(
    ("path", "msg", "option"), [pytest.param(*r[1:], id=r[0]) for r in REFUSED]
)
def test_refused_option_cuts_before_the_message_is_whole(
    path: str, msg: bytes, option: str, whole: bool
) -> None:
    w = Wire().rpc(1, path, msg, size=64)
    released, v = run([w.bytes()], hold_whole_message=whole)
    assert v.cut
    assert option in [x.option for x in v.violations]
    assert option in v.reason
    assert v.stream_id == 1
    assert_withheld(w, released, whole)


def test_buildx_network_host_names_both_options() -> None:
    # What `docker buildx build --network=host` sends: the attribute and the entitlement.
    msg = solve(attrs={b"force-network-mode": b"host"}, ents=(b"network.host",))
    _, v = run([Wire().rpc(1, SOLVE, msg).bytes()])
    assert [x.option for x in v.violations] == ["--network=host", "--allow network.host"]
    assert v.reason.startswith("BuildKit build options are not allowed: --network=host, --allow")


@pytest.mark.parametrize("value", [b"", b"sandbox", b"none"])
def test_harmless_network_modes_pass(value: bytes) -> None:
    assert judge(Kind.CONTROL_SOLVE, solve(attrs={b"force-network-mode": value})) == []


@pytest.mark.parametrize("whole", MODES)
def test_second_message_on_a_stream_is_judged(whole: bool) -> None:
    good = ld(1, b"p1") + ld(3, ld(1, b"stdin"))
    bad = ld(1, b"p1") + ld(2, vi(5, 1))
    w = Wire().headers(1, BRIDGE + "ExecProcess").message(1, good, end_stream=False)
    w.message(1, bad, size=4)
    released, v = run([w.bytes()], hold_whole_message=whole)
    assert v.cut
    assert_withheld(w, released, whole)


# -- splits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("whole", MODES)
@pytest.mark.parametrize("bad", [False, True], ids=["clean", "refused"])
def test_every_single_split_point(bad: bool, whole: bool) -> None:
    msg = solve(ents=(b"network.host",)) if bad else CLEAN
    w = Wire().rpc(1, SOLVE, msg, size=50)
    data = w.bytes()
    for k in range(len(data) + 1):
        released, v = run(split_at(data, k), hold_whole_message=whole)
        assert v.cut is bad, k
        if bad:
            assert_withheld(w, released, whole)
        else:
            assert released == len(data), k


@pytest.mark.parametrize("whole", MODES)
def test_byte_by_byte_and_random_splits(whole: bool) -> None:
    rng = random.Random(7)
    for bad in (False, True):
        msg = solve(attrs={b"force-network-mode": b"host"}) if bad else CLEAN
        w = Wire().headers(3, "/moby.buildkit.v1.Control/Status", end_stream=True)
        w.headers(5, SOLVE).message(5, msg, size=rng.randint(1, 40), pad=rng.choice([None, 0, 9]))
        w.headers(7, "/moby.buildkit.v1.Control/ListWorkers").message(7, b"\x0a\x00")
        data = w.bytes()
        splits = [[data[i : i + 1] for i in range(len(data))]]
        for _ in range(60):
            splits.append(split_at(data, *rng.sample(range(len(data)), rng.randint(1, 30))))
        for chunks in splits:
            released, v = run(chunks, hold_whole_message=whole)
            assert v.cut is bad
            if bad:
                assert_withheld(w, released, whole)
            else:
                assert released == len(data)


def test_tail_mode_releases_all_but_the_completing_frame() -> None:
    w = Wire().headers(1, SOLVE)
    msg = solve(ents=(b"security.insecure",))
    w.message(1, msg, size=10)
    data = w.bytes()
    last_frame = w.last - 9 - ((len(msg) + 5 - 1) % 10)  # where the final DATA frame starts
    insp = GrpcInspector()
    total = insp.feed(data[:-1]).release
    assert total == last_frame  # every earlier frame went on (flow control keeps moving)
    v = insp.feed(data[-1:])
    assert v.cut and v.release == 0


# -- interleaving ----------------------------------------------------------------------------


@pytest.mark.parametrize("whole", MODES)
@pytest.mark.parametrize("bad", [False, True], ids=["clean", "refused"])
def test_two_streams_interleaved(bad: bool, whole: bool) -> None:
    msg = solve(ents=(b"network.host",)) if bad else CLEAN
    body = b"\0" + len(msg).to_bytes(4, "big") + msg
    other = b"\0\0\0\0\x04" + b"\x0a\x02ab"
    w = Wire().headers(1, SOLVE).headers(3, "/moby.buildkit.v1.Control/Session")
    first = last = -1
    for i in range(0, len(body), 30):
        chunk = body[i : i + 30]
        if first < 0:
            first = len(w.buf) + 9
        last = len(w.buf) + 9 + len(chunk) - 1
        w.data(1, chunk, end_stream=i + 30 >= len(body))
        w.data(3, other)
    w.first, w.last = first, last
    data = w.bytes()
    released, v = run(split_at(data, len(data) // 3, len(data) // 2), hold_whole_message=whole)
    assert v.cut is bad
    if bad:
        assert_withheld(w, released, whole)
        assert v.stream_id == 1
    else:
        assert released == len(data)


def test_whole_mode_holds_what_follows_a_message_being_gathered() -> None:
    w = Wire().headers(1, SOLVE)
    held_from = len(w.buf)
    w.data(1, b"\0\0\0\0\x10")  # the prefix of a 16-byte message
    w.headers(3, "/moby.buildkit.v1.Control/Status", end_stream=True)
    data = w.bytes()
    strict = GrpcInspector(hold_whole_message=True)
    assert strict.feed(data).release == held_from
    assert strict.held == len(data) - held_from
    sixteen = ld(1, b"r" * 14)
    assert len(sixteen) == 16
    v = strict.feed(frame(0, 1, 1, sixteen))
    assert not v.cut and v.release == len(data) - held_from + 9 + 16
    tail = GrpcInspector()
    assert tail.feed(data).release == len(data)


@pytest.mark.parametrize("how", ["rst", "end_stream"])
def test_an_abandoned_message_releases_the_hold(how: str) -> None:
    w = Wire().headers(1, SOLVE)
    w.data(1, b"\0\0\0\0\x10" + b"\x0a\x01", end_stream=how == "end_stream")
    if how == "rst":
        w.raw(frame(3, 0, 1, b"\0\0\0\x08"))
    data = w.bytes()
    insp = GrpcInspector(hold_whole_message=True)
    assert insp.feed(data).release == len(data)


# -- HPACK -----------------------------------------------------------------------------------


@pytest.mark.parametrize("whole", MODES)
def test_dynamic_table_carries_across_requests(whole: bool) -> None:
    w = Wire().rpc(1, SOLVE, CLEAN).rpc(3, SOLVE, CLEAN)
    before = len(w.buf)
    w.headers(5, SOLVE)
    # The third block names the path from the dynamic table: it is a few bytes only.
    assert len(w.buf) - before < 20
    w.message(5, solve(ents=(b"network.host",)))
    released, v = run([w.bytes()], hold_whole_message=whole)
    assert v.cut and v.stream_id == 5
    assert_withheld(w, released, whole)


@pytest.mark.parametrize("whole", MODES)
def test_continuation_and_padding_and_priority(whole: bool) -> None:
    w = Wire().headers(1, SOLVE, pieces=4, extra=[("x-filler", "f" * 300)])
    w.message(1, solve(ents=(b"security.insecure",)), size=33, pad=17)
    released, v = run([w.bytes()], hold_whole_message=whole)
    assert v.cut
    assert_withheld(w, released, whole)
    w = Wire().headers(1, SOLVE, pad=5, priority=True, pieces=3).message(1, CLEAN, pad=0)
    w.headers(3, SOLVE, pad=0, priority=True).message(3, solve(), pad=200)
    data = w.bytes()
    released, v = run([data], hold_whole_message=whole)
    assert not v.cut and released == len(data)


def test_trailers_are_decoded_and_allowed() -> None:
    w = Wire().headers(1, "/moby.buildkit.v1.Control/Session").data(1, b"\0\0\0\0\0")
    w.block(1, w.enc.encode([("grpc-status", "0")]), end_stream=True)
    w.rpc(3, SOLVE, solve(ents=(b"network.host",)))
    _, v = run([w.bytes()])
    assert v.cut and v.stream_id == 3


# -- protocol errors: cut --------------------------------------------------------------------


def nested(depth: int) -> bytes:
    d = definition(op_source())
    for _ in range(depth):
        d = definition(op_build(d))
    return d


GARBAGE = [
    ("bad-preface", b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")),
    ("http1", b"GET / HTTP/1.1\r\n\r\n"),
    ("first-frame-not-settings", Wire(settings=False).headers(1, SOLVE).bytes()),
    ("settings-ack-first", PREFACE + frame(4, 1, 0, b"")),
    ("settings-bad-length", Wire().raw(frame(4, 0, 0, b"\0\0\0")).bytes()),
    ("push-promise", Wire().raw(frame(5, 4, 1, b"\0\0\0\x02\x82")).bytes()),
    ("continuation-alone", Wire().raw(frame(9, 4, 1, b"\x82")).bytes()),
    ("data-unopened", Wire().raw(frame(0, 0, 1, b"\0\0\0\0\0")).bytes()),
    ("data-stream-0", Wire().raw(frame(0, 0, 0, b"")).bytes()),
    ("headers-stream-0", Wire().raw(frame(1, 4, 0, b"\x82")).bytes()),
    ("even-stream", Wire().headers(2, "/moby.buildkit.v1.Control/Status").bytes()),
    ("stream-reused", Wire().rpc(3, SOLVE, CLEAN).headers(1, SOLVE).bytes()),
    ("two-paths", Wire().headers(1, "/a/b", extra=[(":path", SOLVE)]).bytes()),
    ("hpack-bad-index", Wire().raw(frame(1, 4, 1, b"\xff\xff\xff\xff\x0f")).bytes()),
    ("hpack-table-too-big", Wire().raw(frame(1, 4, 1, b"\x3f\xe1\xff\x03")).bytes()),
    ("hpack-truncated", Wire().raw(frame(1, 4, 1, b"\x40\x05ab")).bytes()),
    (
        "continuation-interrupted",
        Wire().raw(frame(1, 0, 1, b"\x82")).raw(frame(8, 0, 0, b"\0\0\0\x01")).bytes(),
    ),
    (
        "continuation-other-stream",
        Wire().raw(frame(1, 0, 1, b"\x82")).raw(frame(9, 4, 3, b"\x84")).bytes(),
    ),
    ("data-pad-too-long", Wire().headers(1, SOLVE).raw(frame(0, 8, 1, b"\x05abcd")).bytes()),
    ("data-pad-empty", Wire().headers(1, SOLVE).raw(frame(0, 8, 1, b"")).bytes()),
    ("headers-pad-too-long", Wire().raw(frame(1, 0x0C, 1, b"\x09\x82")).bytes()),
    ("headers-priority-short", Wire().raw(frame(1, 0x24, 1, b"\0\0")).bytes()),
    ("priority-bad-length", Wire().raw(frame(2, 0, 1, b"\0\0")).bytes()),
    ("rst-bad-length", Wire().raw(frame(3, 0, 1, b"\0")).bytes()),
    ("compressed", Wire().rpc(1, SOLVE, CLEAN, flag=1).bytes()),
    ("bad-flag", Wire().rpc(1, SOLVE, CLEAN, flag=2).bytes()),
    ("pb-truncated-varint", Wire().rpc(1, SOLVE, b"\x48\xff").bytes()),
    ("pb-long-varint", Wire().rpc(1, SOLVE, b"\x48" + b"\xff" * 10 + b"\x01").bytes()),
    ("pb-truncated-field", Wire().rpc(1, SOLVE, b"\x4a\x10abc").bytes()),
    ("pb-group", Wire().rpc(1, SOLVE, tag(20, 3) + tag(20, 4)).bytes()),
    ("pb-wire-7", Wire().rpc(1, SOLVE, tag(20, 7)).bytes()),
    ("pb-field-0", Wire().rpc(1, SOLVE, vi(0, 1)).bytes()),
    ("pb-truncated-fixed64", Wire().rpc(1, SOLVE, tag(20, 1) + b"\0\0").bytes()),
    ("pb-entitlement-as-varint", Wire().rpc(1, SOLVE, vi(9, 1)).bytes()),
    ("pb-network-as-bytes", Wire().rpc(1, SOLVE, ld(2, ld(1, ld(2, ld(3, b"\x01"))))).bytes()),
    ("pb-too-deep", Wire().rpc(1, SOLVE, ld(2, nested(20))).bytes()),
]


@pytest.mark.parametrize("data", [pytest.param(g[1], id=g[0]) for g in GARBAGE])
def test_garbage_cuts(data: bytes) -> None:
    released, v = run([data])
    assert v.cut
    assert not v.violations
    assert v.reason
    # Nothing from the offending frame on went to the engine.
    assert released < len(data)


def test_deep_but_allowed_nesting_passes() -> None:
    assert judge(Kind.CONTROL_SOLVE, ld(2, nested(10))) == []


def test_compressed_reason() -> None:
    _, v = run([Wire().rpc(1, SOLVE, CLEAN, flag=1).bytes()])
    assert "compressed" in v.reason and v.stream_id == 1


def test_bad_preface_cuts_at_the_first_wrong_byte() -> None:
    insp = GrpcInspector()
    assert insp.feed(b"PRI * HTTP/2").release == 0 and not insp.feed(b"").cut
    assert insp.feed(b".1").cut


# -- sizes -----------------------------------------------------------------------------------


def test_oversize_frame_cuts_on_its_header() -> None:
    good = Wire().headers(1, "/moby.buildkit.v1.Control/Session").bytes()
    released, v = run([good, (70000).to_bytes(3, "big")], max_frame_size=65536)
    assert v.cut and "frame of 70000 bytes" in v.reason
    assert released == len(good)
    released, v = run([good, (65536).to_bytes(3, "big")], max_frame_size=65536)
    assert not v.cut


def test_oversize_message_cuts_on_its_prefix() -> None:
    w = Wire().headers(1, SOLVE)
    held = len(w.buf) + 9
    w.data(1, b"\0" + (2000).to_bytes(4, "big"))
    released, v = run([w.bytes()], max_held=1000)
    assert v.cut and "larger than 1000" in v.reason
    assert released < held


def test_message_at_the_cap_is_judged() -> None:
    msg = solve(attrs={b"pad": b"p" * 500})
    w = Wire().rpc(1, SOLVE, msg)
    data = w.bytes()
    assert run([data], max_held=len(msg)) == (len(data), Verdict(len(data)))
    assert run([data], max_held=len(msg) - 1)[1].cut


def test_messages_gathered_on_many_streams_count_together() -> None:
    w = Wire()
    for sid in (1, 3, 5):
        w.headers(sid, SOLVE).data(sid, b"\0" + (900).to_bytes(4, "big") + b"\x0a" * 400)
    released, v = run([w.bytes()], max_held=1000)
    assert v.cut


def test_whole_mode_caps_the_bytes_held() -> None:
    w = Wire().headers(1, SOLVE).data(1, b"\0" + (900).to_bytes(4, "big"))
    for _ in range(20):
        w.data(1, b"")
        w.raw(frame(8, 0, 0, b"\0\0\0\x01") * 10)
    _, v = run([w.bytes()], max_held=1000, hold_whole_message=True)
    assert v.cut and "larger than 1000" in v.reason
    _, v = run([w.bytes()], max_held=1000)
    assert not v.cut
