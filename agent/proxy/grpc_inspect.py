"""Judging the BuildKit requests a client sends on a `/grpc` connection (sans-I/O).

`docker buildx build` with the default `docker` driver speaks BuildKit's gRPC API to the engine
over `POST /grpc` (hijacked with `Upgrade: h2c`, then HTTP/2 cleartext with prior knowledge).
The build options ECI must refuse travel inside that stream, in the protobuf request messages:

- `/moby.buildkit.v1.Control/Solve` (`SolveRequest`): `Entitlements` (`--allow network.host`,
  `--allow security.insecure`, `--allow device`), `FrontendAttrs["force-network-mode"]`
  (`--network=host`), and the LLB `Definition` / `FrontendInputs` a client built itself;
- `/moby.buildkit.v1.frontend.LLBBridge/Solve` (client-side frontends): the same LLB and
  `FrontendOpt`;
- `/moby.buildkit.v1.frontend.LLBBridge/NewContainer` (`buildx debug`): `Network` = HOST;
- `/moby.buildkit.v1.frontend.LLBBridge/ExecProcess`: `InitMessage.Security` = INSECURE.

In the LLB every `pb.Op` is read: an `ExecOp` with `network` HOST, `security` INSECURE or any
`cdiDevices` is refused (a `BuildOp`'s nested definition too). Nothing else is read: the other
RPCs (Status, ListWorkers, DiskUsage, Session, ...) pass as they are.

Field numbers were taken from BuildKit's `api/services/control/control.proto`,
`frontend/gateway/pb/gateway.proto` and `solver/pb/ops.proto` at v0.8.0 (the BuildKit moby
20.10 vendors) and at the newest master checked (v0.29 era); they are the same in both, later
versions only added fields. The entitlement names are the ones `util/entitlements.Parse`
accepts (exactly `network.host`, `security.insecure`, and since v0.20 `device` or
`device=<cfg>`); any entitlement at all is refused, as the engine rejects unknown ones anyway.

How bytes are held
------------------
`GrpcInspector.feed(data)` takes the client->engine bytes as they arrive and answers how many
more of them may go to the engine now (always a prefix of what has not been released yet), or
that the stream must be cut. A frame is released only once it is complete and has been read;
everything after a frame still being received waits with it (bytes are never reordered).

A gRPC server acts on a request message only once it has all of it (it reads the 5-byte
prefix, then exactly that many bytes, and only then calls the method). By default
(`hold_whole_message=False`) the frames of a judged message are therefore released as they
come, except the frame that completes the message, which is released only after the message
was judged: the engine never holds a whole unjudged request. This keeps HTTP/2 flow control
moving: moby's `/grpc` server (golang.org/x/net/http2) grants 1 MiB per stream and only grants
more as it receives data, so a client with a larger Solve would wait forever for a window if
all of it were held. `hold_whole_message=True` holds every byte of a judged message (and what
follows it) until it is judged: stricter, but a message larger than the engine's flow-control
window then stalls the build.

Whatever cannot be read the way the engine would read it cuts the stream (fail closed): a bad
preface, a frame larger than `max_frame_size`, a header block HPACK cannot decode, frames out
of HTTP/2's order, a compressed or oversized judged message, malformed protobuf.

HPACK is decoded with `hpack` (python-hyper), one decoder for the whole connection: every
header block is decoded in order, trailers too, so the dynamic table stays in step with the
engine's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from agent.policy.isolation import Violation

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A judged gRPC message larger than this is refused (it is buffered to be read).
DEFAULT_MAX_HELD = 32 * 1024 * 1024
#: HTTP/2's own ceiling (a 24-bit length); the engine advertises less (x/net: 1 MiB).
MAX_FRAME_SIZE = (1 << 24) - 1
#: golang.org/x/net/http2's default SETTINGS_HEADER_TABLE_SIZE (the decoder's table limit).
DEFAULT_HEADER_TABLE_SIZE = 4096
#: Bound on one decoded header list (grpc-go's own default is 16 MiB).
DEFAULT_MAX_HEADER_LIST = 16 * 1024 * 1024
#: Judged streams open at once (buildx opens a handful).
MAX_JUDGED_STREAMS = 1024
#: Nesting of LLB definitions (a BuildOp holds a Definition).
_MAX_DEPTH = 16

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE = 0, 1, 2, 3, 4, 5
_CONTINUATION = 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

_NET_UNSET, _NET_HOST, _NET_NONE = 0, 1, 2
_SECURITY_SANDBOX = 0

_CONTROL = b"moby.buildkit.v1.Control"
_BRIDGE = b"moby.buildkit.v1.frontend.LLBBridge"

_HOST_NET_WHY = "build steps would run in the host's network stack"
_INSECURE_WHY = "build steps would run with all privileges (like --privileged)"
_DEVICE_WHY = "build steps would get host devices"


class Kind(enum.Enum):
    """The requests that are read."""

    CONTROL_SOLVE = "/moby.buildkit.v1.Control/Solve"
    BRIDGE_SOLVE = "/moby.buildkit.v1.frontend.LLBBridge/Solve"
    NEW_CONTAINER = "/moby.buildkit.v1.frontend.LLBBridge/NewContainer"
    EXEC_PROCESS = "/moby.buildkit.v1.frontend.LLBBridge/ExecProcess"


_KINDS = {
    (_CONTROL, b"Solve"): Kind.CONTROL_SOLVE,
    (_BRIDGE, b"Solve"): Kind.BRIDGE_SOLVE,
    (_BRIDGE, b"NewContainer"): Kind.NEW_CONTAINER,
    (_BRIDGE, b"ExecProcess"): Kind.EXEC_PROCESS,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `GrpcInspector.feed` allows.

    `release`: how many more bytes (the oldest of those fed and not yet released) may be sent
    to the engine now. `cut`: the stream must end here; nothing more of it may reach the
    engine (`release` is then 0). `reason` says why, for the user and the event log;
    `violations` lists the refused options (empty for a protocol error), with `option` as the
    user knows it (`--network=host`, `--allow network.host`, ...); `stream_id` is the HTTP/2
    stream of the refused request, when there is one.
    """

    release: int
    cut: bool = False
    reason: str = ""
    violations: tuple[Violation, ...] = ()
    stream_id: int | None = None


class _Cut(Exception):
    def __init__(
        self, reason: str, violations: tuple[Violation, ...] = (), stream_id: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.violations = violations
        self.stream_id = stream_id


class _Malformed(ValueError):
    """Protobuf that cannot be read as the engine would read it."""


class _Stream:
    """A judged stream: where its current gRPC message stands."""

    __slots__ = ("kind", "prefix", "need", "body", "hold_from")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.prefix = bytearray()
        self.need = -1  # the message's length once its prefix is read
        self.body = bytearray()
        self.hold_from: int | None = None  # offset of the frame the message began in


class GrpcInspector:
    """The client->engine bytes of one `/grpc` connection, from the first byte after the
    engine's `101`. Feed every byte, in order; forward exactly what the verdicts release."""

    def __init__(
        self,
        *,
        hold_whole_message: bool = False,
        max_held: int = DEFAULT_MAX_HELD,
        max_frame_size: int = MAX_FRAME_SIZE,
        header_table_size: int = DEFAULT_HEADER_TABLE_SIZE,
        max_header_list_size: int = DEFAULT_MAX_HEADER_LIST,
    ) -> None:
        self._hold_whole = hold_whole_message
        self._max_held = max_held
        self._max_frame = min(max_frame_size, MAX_FRAME_SIZE)
        # Loaded with the first BuildKit stream, not at start: its Huffman table and module
        # are ~0.4 MiB of an agent that may never see one.
        import hpack

        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = header_table_size
        self._decoder.max_header_list_size = max_header_list_size
        self._max_block = max_header_list_size
        self._buf = bytearray()  # bytes fed and not yet parsed (from offset `_parsed`)
        self._parsed = 0  # stream offset up to which whole frames have been read
        self._released = 0  # stream offset up to which bytes were released
        self._preface = False
        self._settings_seen = False
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._buffered = 0  # bytes of judged messages being gathered
        # An unfinished header block: (stream, fragments so far, END_STREAM).
        self._block: tuple[int, bytearray, bool] | None = None
        self._cut: Verdict | None = None

    @property
    def held(self) -> int:
        """Bytes fed and not (yet) released."""
        return self._parsed + len(self._buf) - self._released

    @property
    def cut(self) -> Verdict | None:
        """The verdict that cut the stream, once it was cut."""
        return self._cut

    def feed(self, data: bytes) -> Verdict:
        if self._cut is not None:
            return self._cut
        self._buf += data
        try:
            self._read()
            if self._hold_whole and self.held > self._max_held:
                raise _Cut(
                    f"a BuildKit request is larger than {self._max_held} bytes and cannot be judged"
                )
        except _Cut as cut:
            self._cut = Verdict(0, True, cut.reason, cut.violations, cut.stream_id)
            self._buf = bytearray()
            self._streams.clear()
            return self._cut
        upto = self._parsed
        if self._hold_whole:
            for st in self._streams.values():
                if st.hold_from is not None and st.hold_from < upto:
                    upto = st.hold_from
        release = upto - self._released
        self._released = upto
        return Verdict(release)

    # -- HTTP/2 ------------------------------------------------------------------------------

    def _read(self) -> None:
        buf = self._buf
        if not self._preface:
            have = bytes(buf[: len(PREFACE)])
            if not PREFACE.startswith(have):
                raise _Cut("the BuildKit connection did not start with the HTTP/2 preface")
            if len(have) < len(PREFACE):
                return
            del buf[: len(PREFACE)]
            self._parsed += len(PREFACE)
            self._preface = True
        pos = 0
        while len(buf) - pos >= 3:  # the length is judged as soon as it is known
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > self._max_frame:
                raise _Cut(f"an HTTP/2 frame of {length} bytes is larger than allowed")
            end = pos + 9 + length
            if len(buf) < end:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            # The view is dropped when `_frame` returns (nothing keeps it), so `buf` can be
            # resized below; after a `_Cut` the buffer is thrown away instead.
            self._frame(ftype, flags, sid, memoryview(buf)[pos + 9 : end], self._parsed)
            self._parsed += end - pos
            pos = end
        del buf[:pos]

    def _frame(self, ftype: int, flags: int, sid: int, payload: memoryview, at: int) -> None:
        if not self._settings_seen:
            if ftype != _SETTINGS or flags & _ACK:
                raise _Cut("the BuildKit connection's first HTTP/2 frame is not SETTINGS")
            self._settings_seen = True
        if self._block is not None:
            block_sid, fragments, end_stream = self._block
            if ftype != _CONTINUATION or sid != block_sid:
                raise _Cut("an HTTP/2 header block was interrupted")
            self._add_fragment(fragments, payload)
            if flags & _END_HEADERS:
                self._block = None
                self._headers(sid, fragments, end_stream)
            return
        if ftype == _DATA:
            self._data(flags, sid, payload, at)
        elif ftype == _HEADERS:
            self._headers_frame(flags, sid, payload)
        elif ftype == _CONTINUATION:
            raise _Cut("an HTTP/2 CONTINUATION frame without a header block")
        elif ftype == _PUSH_PROMISE:
            raise _Cut("a client sent an HTTP/2 PUSH_PROMISE")
        elif ftype == _RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise _Cut("a malformed HTTP/2 RST_STREAM frame")
            self._drop(sid)
        elif ftype == _SETTINGS:
            if sid != 0 or len(payload) % 6:
                raise _Cut("a malformed HTTP/2 SETTINGS frame")
        elif ftype == _PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise _Cut("a malformed HTTP/2 PRIORITY frame")
        # PING, GOAWAY, WINDOW_UPDATE and unknown frame types pass.

    def _add_fragment(self, fragments: bytearray, part: memoryview) -> None:
        fragments += part
        if len(fragments) > self._max_block:
            raise _Cut("an HTTP/2 header block is too large")

    def _headers_frame(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid == 0:
            raise _Cut("an HTTP/2 HEADERS frame on stream 0")
        start, stop = 0, len(payload)
        if flags & _PADDED:
            if stop < 1 or payload[0] > stop - 1:
                raise _Cut("a malformed padded HTTP/2 HEADERS frame")
            stop -= payload[0]
            start = 1
        if flags & _PRIORITY_FLAG:
            start += 5
        if start > stop:
            raise _Cut("a malformed HTTP/2 HEADERS frame")
        fragments = bytearray()
        self._add_fragment(fragments, payload[start:stop])
        end_stream = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._headers(sid, fragments, end_stream)
        else:
            self._block = (sid, fragments, end_stream)

    def _headers(self, sid: int, block: bytearray, end_stream: bool) -> None:
        try:
            headers = list(self._decoder.decode(bytes(block), raw=True))
        except Exception as err:  # any decoding failure: fail closed
            raise _Cut(f"an HTTP/2 header block could not be decoded ({err})") from err
        paths = [bytes(v) for n, v in headers if bytes(n) == b":path"]
        pseudo = any(bytes(n).startswith(b":") for n, _ in headers)
        if sid <= self._last_stream:
            # Trailers of a stream already open (pseudo-headers are not allowed there), or a
            # stream ID used again, which the engine refuses.
            if pseudo:
                raise _Cut("an HTTP/2 stream ID was used again")
        else:
            if sid % 2 == 0:
                raise _Cut("a client opened an even-numbered HTTP/2 stream")
            self._last_stream = sid
            if len(paths) > 1:
                raise _Cut("an HTTP/2 request with more than one :path")
            kind = _kind(paths[0]) if paths else None
            if kind is not None:
                if len(self._streams) >= MAX_JUDGED_STREAMS:
                    raise _Cut("too many BuildKit requests open at once")
                self._streams[sid] = _Stream(kind)
        if end_stream:
            self._drop(sid)

    def _data(self, flags: int, sid: int, payload: memoryview, at: int) -> None:
        if sid == 0 or sid > self._last_stream:
            raise _Cut("HTTP/2 DATA on a stream that was not opened")
        st = self._streams.get(sid)
        start, stop = 0, len(payload)
        if flags & _PADDED:
            if stop < 1 or payload[0] > stop - 1:
                raise _Cut("a malformed padded HTTP/2 DATA frame")
            stop -= payload[0]
            start = 1
        if st is not None:
            self._grpc(sid, st, payload[start:stop], at)
        if flags & _END_STREAM:
            self._drop(sid)

    def _drop(self, sid: int) -> None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self._buffered -= len(st.body)

    # -- gRPC --------------------------------------------------------------------------------

    def _grpc(self, sid: int, st: _Stream, data: memoryview, at: int) -> None:
        i, n = 0, len(data)
        while i < n:
            if st.hold_from is None:
                st.hold_from = at
            if st.need < 0:
                take = min(5 - len(st.prefix), n - i)
                st.prefix += data[i : i + take]
                i += take
                if len(st.prefix) < 5:
                    return
                flag = st.prefix[0]
                if flag == 1:
                    raise _Cut(
                        f"a compressed {st.kind.value} request cannot be judged", stream_id=sid
                    )
                if flag != 0:
                    raise _Cut(f"a malformed {st.kind.value} request", stream_id=sid)
                st.need = int.from_bytes(st.prefix[1:5], "big")
                if st.need > self._max_held:
                    raise _Cut(
                        f"a {st.kind.value} request of {st.need} bytes is larger than "
                        f"{self._max_held} bytes and cannot be judged",
                        stream_id=sid,
                    )
            take = min(st.need - len(st.body), n - i)
            if take:
                st.body += data[i : i + take]
                i += take
                self._buffered += take
                if self._buffered > self._max_held:
                    raise _Cut(
                        f"BuildKit requests larger than {self._max_held} bytes cannot be judged",
                        stream_id=sid,
                    )
            if len(st.body) == st.need:
                message = bytes(st.body)
                self._buffered -= len(st.body)
                st.prefix, st.body, st.need, st.hold_from = bytearray(), bytearray(), -1, None
                try:
                    found = judge(st.kind, message)
                except ValueError as err:
                    raise _Cut(
                        f"a malformed {st.kind.value} request ({err})", stream_id=sid
                    ) from err
                if found:
                    raise _Cut(_reason(found), tuple(found), sid)


def _kind(path: bytes) -> Kind | None:
    """The judged request a `:path` names, read at least as widely as grpc-go does (the path
    before any query, percent-decoded; the service is what precedes the last slash)."""
    path = path.split(b"?", 1)[0]
    if b"%" in path:
        path = unquote_to_bytes(path)
    head, _, method = path.rpartition(b"/")
    service = head.rpartition(b"/")[2]
    return _KINDS.get((service, method))


def _reason(found: list[Violation]) -> str:
    options = ", ".join(v.option for v in found)
    return f"BuildKit build options are not allowed: {options} ({found[0].why})"


# -- protobuf --------------------------------------------------------------------------------


def judge(kind: Kind, message: bytes) -> list[Violation]:
    """The refused options in one request message of `kind` (the gRPC message without its
    5-byte prefix). `ValueError` if the message cannot be read as the engine would read it."""
    view = memoryview(message)
    if kind is Kind.CONTROL_SOLVE:
        return _control_solve(view)
    if kind is Kind.BRIDGE_SOLVE:
        return _bridge_solve(view)
    if kind is Kind.NEW_CONTAINER:
        return _new_container(view)
    return _exec_message(view)


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):  # as gogo/protobuf-go: at most 10 bytes, wrapped to 64 bits
        if i >= len(buf):
            raise _Malformed("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, i
        shift += 7
    raise _Malformed("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(field number, wire type, varint value, length-delimited bytes) for every field."""
    i, n = 0, len(buf)
    empty = buf[0:0]
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise _Malformed("bad field number")
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, wire, value, empty
        elif wire == 2:
            length, i = _varint(buf, i)
            if length > n - i:
                raise _Malformed("truncated field")
            yield number, wire, 0, buf[i : i + length]
            i += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if size > n - i:
                raise _Malformed("truncated field")
            i += size
            yield number, wire, 0, empty
        else:  # groups (3, 4) never appear in these messages; 6 and 7 do not exist
            raise _Malformed(f"wire type {wire}")


def _want(wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise _Malformed(f"{what} has wire type {wire}")


def _int32(value: int) -> int:
    """An enum as Go reads it: the varint truncated to int32."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _text(b: memoryview | bytes) -> str:
    return bytes(b).decode("utf-8", "backslashreplace")


def _control_solve(msg: memoryview) -> list[Violation]:
    """control.proto `SolveRequest`: Definition = 2, FrontendAttrs = 7 (map<string,string>),
    Entitlements = 9 (repeated string), FrontendInputs = 10 (map<string, pb.Definition>)."""
    found: list[Violation] = []
    for number, wire, _, data in _fields(msg):
        if number == 2:
            _want(wire, 2, "Definition")
            found += _definition(data, "Definition", 0)
        elif number == 7:
            _want(wire, 2, "FrontendAttrs")
            found += _frontend_attr(data, "FrontendAttrs")
        elif number == 9:
            _want(wire, 2, "Entitlements")
            found.append(_entitlement(bytes(data)))
        elif number == 10:
            _want(wire, 2, "FrontendInputs")
            found += _definition_map_entry(data, "FrontendInputs")
    return _unique(found)


def _bridge_solve(msg: memoryview) -> list[Violation]:
    """gateway.proto `SolveRequest`: Definition = 1, FrontendOpt = 3 (map<string,string>),
    FrontendInputs = 13 (map<string, pb.Definition>)."""
    found: list[Violation] = []
    for number, wire, _, data in _fields(msg):
        if number == 1:
            _want(wire, 2, "Definition")
            found += _definition(data, "Definition", 0)
        elif number == 3:
            _want(wire, 2, "FrontendOpt")
            found += _frontend_attr(data, "FrontendOpt")
        elif number == 13:
            _want(wire, 2, "FrontendInputs")
            found += _definition_map_entry(data, "FrontendInputs")
    return _unique(found)


def _new_container(msg: memoryview) -> list[Violation]:
    """gateway.proto `NewContainerRequest`: Network = 3 (pb.NetMode)."""
    found: list[Violation] = []
    for number, wire, value, _ in _fields(msg):
        if number == 3:
            _want(wire, 0, "Network")
            found += _net_mode(value, "--network=host", "NewContainer.Network")
    return _unique(found)


def _exec_message(msg: memoryview) -> list[Violation]:
    """gateway.proto `ExecMessage`: Init = 2 (`InitMessage`: Security = 5, pb.SecurityMode)."""
    found: list[Violation] = []
    for number, wire, _, data in _fields(msg):
        if number != 2:
            continue
        _want(wire, 2, "Init")
        for n2, w2, value, _ in _fields(data):
            if n2 == 5:
                _want(w2, 0, "Init.Security")
                found += _security_mode(
                    value, "--allow security.insecure", "ExecProcess.Init.Security"
                )
    return _unique(found)


def _entitlement(name: bytes) -> Violation:
    key = name.split(b"=", 1)[0]
    if name == b"network.host":
        return Violation("--allow network.host", "network.host", "Entitlements", _HOST_NET_WHY)
    if name == b"security.insecure":
        return Violation(
            "--allow security.insecure", "security.insecure", "Entitlements", _INSECURE_WHY
        )
    if key == b"device":
        return Violation(f"--allow {_text(name)}", "device", "Entitlements", _DEVICE_WHY)
    return Violation(
        f"--allow {_text(name)}", _text(name), "Entitlements", "an entitlement grants extra powers"
    )


#: `force-network-mode` values that give no host network (dockerui's parseNetMode).
_SAFE_NET_MODES = (b"", b"sandbox", b"none")


def _frontend_attr(entry: memoryview, where: str) -> list[Violation]:
    """One map<string,string> entry (key = 1, value = 2). Every occurrence is looked at, not
    only the last one Go would keep."""
    keys: list[bytes] = []
    values: list[bytes] = []
    for number, wire, _, data in _fields(entry):
        if number == 1:
            _want(wire, 2, f"{where} key")
            keys.append(bytes(data))
        elif number == 2:
            _want(wire, 2, f"{where} value")
            values.append(bytes(data))
    if b"force-network-mode" not in (keys or [b""]):
        return []
    found: list[Violation] = []
    for value in values or [b""]:
        if value == b"host":
            found.append(
                Violation(
                    "--network=host",
                    "--network=host",
                    f"{where}[force-network-mode]",
                    _HOST_NET_WHY,
                )
            )
        elif value not in _SAFE_NET_MODES:
            found.append(
                Violation(
                    f"--network={_text(value)}",
                    "--network",
                    f"{where}[force-network-mode]",
                    "an unknown network mode",
                )
            )
    return found


def _definition_map_entry(entry: memoryview, where: str) -> list[Violation]:
    """One map<string, pb.Definition> entry (key = 1, value = 2)."""
    found: list[Violation] = []
    for number, wire, _, data in _fields(entry):
        if number == 2:
            _want(wire, 2, f"{where} value")
            found += _definition(data, where, 0)
        elif number == 1:
            _want(wire, 2, f"{where} key")
    return found


def _definition(msg: memoryview, where: str, depth: int) -> list[Violation]:
    """ops.proto `Definition`: def = 1 (repeated bytes, each a marshaled `Op`)."""
    if depth > _MAX_DEPTH:
        raise _Malformed("LLB definitions nested too deep")
    found: list[Violation] = []
    for number, wire, _, data in _fields(msg):
        if number == 1:
            _want(wire, 2, "Definition.def")
            found += _op(data, where, depth)
    return found


def _op(msg: memoryview, where: str, depth: int) -> list[Violation]:
    """ops.proto `Op`: exec = 2 (`ExecOp`), build = 5 (`BuildOp`: def = 3, a Definition)."""
    found: list[Violation] = []
    for number, wire, _, data in _fields(msg):
        if number == 2:
            _want(wire, 2, "Op.exec")
            found += _exec_op(data, where)
        elif number == 5:
            _want(wire, 2, "Op.build")
            for n2, w2, _, d2 in _fields(data):
                if n2 == 3:
                    _want(w2, 2, "BuildOp.def")
                    found += _definition(d2, where, depth + 1)
    return found


def _exec_op(msg: memoryview, where: str) -> list[Violation]:
    """ops.proto `ExecOp`: network = 3 (NetMode: UNSET 0, HOST 1, NONE 2), security = 4
    (SecurityMode: SANDBOX 0, INSECURE 1), cdiDevices = 6 (repeated, since v0.20)."""
    found: list[Violation] = []
    for number, wire, value, _ in _fields(msg):
        if number == 3:
            _want(wire, 0, "ExecOp.network")
            found += _net_mode(value, "RUN --network=host", f"{where} (LLB ExecOp.network)")
        elif number == 4:
            _want(wire, 0, "ExecOp.security")
            found += _security_mode(
                value, "RUN --security=insecure", f"{where} (LLB ExecOp.security)"
            )
        elif number == 6:
            _want(wire, 2, "ExecOp.cdiDevices")
            via = f"{where} (LLB ExecOp.cdiDevices)"
            found.append(Violation("RUN --device", "--device", via, _DEVICE_WHY))
    return found


def _net_mode(value: int, option: str, via: str) -> list[Violation]:
    """A NetMode as Go reads it: HOST refused, and any value BuildKit does not know."""
    mode = _int32(value)
    if mode == _NET_HOST:
        return [Violation(option, "--network=host", via, _HOST_NET_WHY)]
    if mode not in (_NET_UNSET, _NET_NONE):
        return [Violation(f"network mode {mode}", "--network", via, "an unknown network mode")]
    return []


def _security_mode(value: int, option: str, via: str) -> list[Violation]:
    """A SecurityMode: anything but SANDBOX (INSECURE, or a value BuildKit does not know)."""
    if _int32(value) != _SECURITY_SANDBOX:
        return [Violation(option, "security.insecure", via, _INSECURE_WHY)]
    return []


def _unique(found: list[Violation]) -> list[Violation]:
    seen: set[str] = set()
    out: list[Violation] = []
    for v in found:
        if v.option not in seen:
            seen.add(v.option)
            out.append(v)
    return out
