"""The asyncio driver: sockets in, `ProxyConnection` commands out. No policy lives here.

Each accepted client connection is a `_Session` (an asyncio protocol: the event loop calls it
with the bytes it read, no task per connection). It keeps one engine connection, taken warm
from a small pool so that a fresh client does not pay for a fresh engine connect, feeds the
bytes from both sides into the connection's state object and carries out the commands it
returns, in order. The policy's answers (`Gate.judge`, `Gate.verify`) are coroutines; a judge
that needs no I/O finishes at once (its first step is run on the spot, as Python 3.12's eager
tasks do), any other goes on as a task while the session waits for it.

Flow control: a slow reader on one side slows the other. When more than `HIGH_WATER` bytes are
buffered for one peer, reading from the other peer pauses until they are written (no unbounded
buffering of streams such as `docker cp` or `logs -f`); so does reading from a client that
pipelines more than that behind a request still in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar, cast

from agent.policy.decide import Decision
from agent.proxy.connection import (
    CloseClient,
    CloseEngine,
    Command,
    Judge,
    KnownHeads,
    Log,
    ProxyConnection,
    Request,
    RequestHead,
    SendClient,
    SendEngine,
    ShutdownClient,
    ShutdownEngine,
    Splice,
    StreamRefused,
    Unpin,
    Verify,
)
from agent.proxy.identity import HOST, Identity, identity_of_pid
from agent.proxy.kernel_splice import KernelSplice
from agent.proxy.kernel_splice import available as kernel_splice_available
from agent.service.sockets import listen_unix

log = logging.getLogger("eci_agent.proxy")

READ_SIZE = 256 * 1024
#: getsockopt: a pidfd of the connecting process (Linux 6.5+; not in Python 3.11's socket).
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
#: Pending connections the kernel queues for us (dockerd itself listens with 4096).
BACKLOG = 4096
#: Stop reading from one side while this much is buffered for the other.
HIGH_WATER = 256 * 1024
#: Hand spliced streams (attach, exec, /session) to the kernel (`kernel_splice`); setting
#: ECI_AGENT_USERSPACE_STREAMS=1 keeps them in user space (to compare the two).
KERNEL_SPLICE = kernel_splice_available() and os.environ.get("ECI_AGENT_USERSPACE_STREAMS") != "1"
#: How often to try again to hand a stream to the kernel while bytes still wait in user
#: space for one side (a client that does not read); after that the stream stays here.
HANDOFF_TRIES = 20
#: Kernel send buffer of the agent's engine connections. A unix stream socket queues what it
#: sends against the sender's buffer (default ~208 KiB): a larger one lets an upload (`docker
#: cp` in, `docker load`) go on with fewer writes cut short, pauses and wake-ups. Kernel memory,
#: used only while bytes wait. Engine connections are pooled, so it is set once per connection;
#: the client side keeps the default (one more syscall per accept measured no gain there).
SNDBUF = 1024 * 1024


T = TypeVar("T")


class Peer:
    """Who is on the other end of a unix socket, as the kernel tells it (SO_PEERCRED).

    Made twice per connection: a plain class, not a frozen dataclass, so that mypyc compiles
    its `__init__` (the one `dataclasses` writes sets each field through `object.__setattr__`,
    interpreted: ~15k instructions, a sixth of what a fresh connection costs the agent). Treat
    it as immutable all the same: it compares and hashes by value."""

    __slots__ = ("pid", "uid", "gid", "listener", "identity")

    def __init__(
        self,
        pid: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        listener: str = "host",
        identity: Identity = HOST,
    ) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.listener = listener  # which of the agent's sockets it came through: host, container
        self.identity = identity  # the container the process runs in (read at accept)

    def _key(self) -> tuple[int | None, int | None, int | None, str, Identity]:
        return (self.pid, self.uid, self.gid, self.listener, self.identity)

    def __eq__(self, other: object) -> bool:
        return type(other) is Peer and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Peer(pid={self.pid!r}, uid={self.uid!r}, gid={self.gid!r}, "
            f"listener={self.listener!r}, identity={self.identity!r})"
        )


class _HasExtraInfo(Protocol):
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


_UCRED = struct.Struct("3i")


def peer_of(transport: _HasExtraInfo, listener: str) -> Peer:
    found = transport.get_extra_info("socket")
    if found is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer(listener=listener)
    # One socket object over the transport's descriptor for both questions (uvloop's stand-in
    # makes a new one for each call), let go of without closing the descriptor.
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, found.fileno())
    except (OSError, ValueError):  # the descriptor is gone already: who asked is unknown
        return Peer(listener=listener, identity=identity_of_pid(None))
    try:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, gid = _UCRED.unpack(raw)
        except OSError:
            return Peer(listener=listener, identity=identity_of_pid(None))
        pidfd: int | None = None
        try:
            pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            pidfd = None  # before Linux 6.5: the pid alone (a recycled pid is a tiny window)
    finally:
        sock.detach()
    try:
        return Peer(pid, uid, gid, listener, identity_of_pid(pid, pidfd=pidfd))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _set_sndbuf(transport: _HasExtraInfo) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)


class Gate(Protocol):
    """The policy seen from the driver: what to read, and the verdicts."""

    def needs_body(self, head: RequestHead) -> bool: ...

    async def judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]: ...

    async def verify(self, verify: Verify, peer: Peer) -> tuple[bool, int, str]: ...

    def unpin(self, pins: tuple[str, ...]) -> None: ...

    def stream_refused(self, refused: StreamRefused, peer: Peer) -> None: ...

    def is_grpc(self, head: RequestHead) -> bool: ...

    def grpc_inspection(self) -> str | None: ...


# ---------------------------------------------------------------------------------------------
# Running a coroutine's first step now


class _Rest:
    """Awaitable going on with a coroutine whose first step already ran and yielded `first`
    (what `yield from` does, from the middle)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        yielded = self.first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation): pass it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish(rest: _Rest) -> Any:
    return await rest


def _start(coro: Coroutine[Any, Any, T]) -> T | asyncio.Task[T]:
    """Run `coro` until it first waits: its result if it never does, otherwise a task running
    the rest."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    return asyncio.get_running_loop().create_task(_finish(_Rest(coro, first)))


# ---------------------------------------------------------------------------------------------
# Engine connections


class _Engine(asyncio.Protocol):
    """One connection to the engine socket; hands what it reads to the session using it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.session: _Session | None = None
        self.alive = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's are no subclasses
        t.set_write_buffer_limits(high=HIGH_WATER)
        _set_sndbuf(t)
        self.alive = True

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:  # idle in the pool: nothing was asked
            self.close()
            return
        session.engine_data(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        session = self.session
        if session is None:
            self.alive = False
            return False
        return session.engine_eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        session = self.session
        if session is not None:
            session.engine_lost(self)

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.hold_client_reading("engine-slow", True)

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.hold_client_reading("engine-slow", False)

    def reusable(self) -> bool:
        return self.alive and not self.eof and self.transport is not None

    def close(self) -> None:
        self.alive = False
        self.session = None
        if self.transport is not None:
            self.transport.close()


class EnginePool:
    """A few pre-opened connections to the engine socket."""

    def __init__(self, path: str, warm: int = 4, max_idle: int = 32) -> None:
        self.path = path
        self.warm = warm
        self.max_idle = max_idle
        self._idle: list[_Engine] = []
        self._filling: asyncio.Task[None] | None = None

    def take(self) -> _Engine | None:
        """An idle engine connection, if one is at hand."""
        while self._idle:
            engine = self._idle.pop()
            if engine.reusable():
                self._refill()
                return engine
            engine.close()
        self._refill()
        return None

    async def connect(self) -> _Engine:
        loop = asyncio.get_running_loop()
        _, engine = await loop.create_unix_connection(_Engine, self.path)
        return engine

    async def acquire(self) -> _Engine:
        return self.take() or await self.connect()

    def release(self, engine: _Engine) -> None:
        """Take back an engine connection that is idle between requests."""
        engine.session = None
        if engine.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(engine)
        else:
            engine.close()

    def _refill(self) -> None:
        if self.warm <= 0 or (self._filling is not None and not self._filling.done()):
            return
        if len(self._idle) >= self.warm:
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._idle) < self.warm:
            try:
                engine = await self.connect()
            except OSError:
                return
            self._idle.append(engine)

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        for engine in self._idle:
            engine.close()
        self._idle.clear()


# ---------------------------------------------------------------------------------------------
# Client connections


class _Session(asyncio.Protocol):
    """One client connection being served (the protocol of the client's transport)."""

    def __init__(
        self,
        pool: EnginePool,
        gate: Gate,
        listener: str,
        live: set[_Session],
        known: KnownHeads | None = None,
    ) -> None:
        self.pool = pool
        self.known = known
        self.gate = gate
        self.listener = listener
        self.live = live
        self.peer = Peer(listener=listener)
        self.conn = ProxyConnection(gate.needs_body)
        self.transport: asyncio.Transport | None = None
        self.engine: _Engine | None = None
        self.connecting: asyncio.Task[_Engine] | None = None
        self.to_engine: list[bytes] = []  # written once the engine connection is there
        self.waiting: asyncio.Task[Any] | None = None  # a judge or verify going on
        self.queue: list[Command] = []  # commands that came while waiting
        self.holds: set[str] = set()  # why reading from the client is paused
        self.client_slow = False  # the client's write buffer is full
        self.closed = False
        self.spliced = False
        self.kernel: KernelSplice | None = None  # the stream, once handed to the kernel
        #: A spliced BuildKit /grpc stream: how it is read ("grpc", "grpc-audit", "unread").
        self.grpc_stream: str | None = None
        self.handoff_tries = 0
        self.client_done = False
        self.engine_done = False

    # -- the client's transport ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's are no subclasses
        t.set_write_buffer_limits(high=HIGH_WATER)
        self.peer = peer = peer_of(t, self.listener)
        if self.known is not None and peer.listener == "host" and peer.identity == HOST:
            # A host process: its requests allowed by route alone may be remembered.
            self.conn.known = self.known
        self.live.add(self)
        engine = self.pool.take()
        if engine is not None:
            self._attach(engine)
        else:
            self._connect()

    def weaker_stream(self) -> bool:
        """A /grpc stream carried unread or only recorded, while the policy now cuts them."""
        return (
            self.grpc_stream in ("unread", "grpc-audit") and self.gate.grpc_inspection() == "grpc"
        )

    def weaker_body(self) -> bool:
        """A request body passing unread that the policy in force now reads."""
        head = self.conn.unread_body_head()
        return head is not None and self.gate.needs_body(head)

    def data_received(self, data: bytes) -> None:
        self._run(self.conn.client_data(data))
        if self.conn.backlog > HIGH_WATER and not self.closed:
            self.hold_client_reading("backlog", True)

    def eof_received(self) -> bool:
        self.client_done = True
        self._run(self.conn.client_data(b""))
        return True  # keep the transport: the response may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        if self.kernel is not None:
            return  # the transport let go of its socket for the kernel's copy
        # The client is gone: stop, whatever the engine still sends.
        self.close()

    def pause_writing(self) -> None:
        self.client_slow = True
        engine = self.engine
        if engine is not None and engine.transport is not None:
            engine.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_slow = False
        engine = self.engine
        if engine is not None and engine.transport is not None and not self.closed:
            engine.transport.resume_reading()

    def hold_client_reading(self, why: str, hold: bool) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if hold:
            if not self.holds:
                transport.pause_reading()
            self.holds.add(why)
        elif why in self.holds:
            self.holds.discard(why)
            if not self.holds:
                transport.resume_reading()

    # -- the engine's transport ---------------------------------------------------------------

    def engine_data(self, engine: _Engine, data: bytes) -> None:
        if engine is self.engine:
            self._run(self.conn.engine_data(data))
            if "backlog" in self.holds and self.conn.backlog <= HIGH_WATER:
                self.hold_client_reading("backlog", False)

    def engine_eof(self, engine: _Engine) -> bool:
        if engine is not self.engine:
            return False
        self.engine_done = True
        self._run(self.conn.engine_data(b""))
        if self.spliced and not self.closed:
            return True  # half-closed: the client may still send
        if self.engine is engine:
            self._detach()
        return False

    def engine_lost(self, engine: _Engine) -> None:
        if engine is not self.engine:
            return
        self._detach()
        if self.spliced:
            self.close()
        elif not self.engine_done:
            self.engine_done = True
            self._run(self.conn.engine_data(b""))

    def _detach(self) -> _Engine | None:
        """Stop using the engine connection (the caller closes or pools it)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.session = None
            self.hold_client_reading("engine-slow", False)
        return engine

    def _attach(self, engine: _Engine) -> None:
        engine.session = self
        self.engine = engine
        self.engine_done = False
        if self.client_slow and engine.transport is not None:
            engine.transport.pause_reading()

    def _connect(self) -> None:
        if self.connecting is not None:
            return
        self.connecting = asyncio.get_running_loop().create_task(self.pool.acquire())
        self.connecting.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[_Engine]) -> None:
        self.connecting = None
        if task.cancelled():
            return
        err = task.exception()
        if self.closed:
            if err is None:
                self.pool.release(task.result())
            return
        if err is not None:
            log.debug("cannot connect to the engine: %s", err)
            self.close()
            return
        engine = task.result()
        self._attach(engine)
        pending, self.to_engine = self.to_engine, []
        if pending and engine.transport is not None:
            engine.transport.writelines(pending)
        self.hold_client_reading("connecting", False)

    def _send_engine(self, data: bytes) -> None:
        engine = self.engine
        if engine is not None and engine.alive and engine.transport is not None:
            if not engine.transport.is_closing():
                engine.transport.write(data)
            return
        if self.spliced:
            return  # the engine's side of the pipe is gone
        if engine is not None:
            self._detach()
            engine.close()
        if self.connecting is None:
            engine = self.pool.take()
            if engine is not None and engine.transport is not None:
                self._attach(engine)
                engine.transport.write(data)
                return
        self.to_engine.append(data)
        self.hold_client_reading("connecting", True)
        self._connect()

    # -- carrying out commands ------------------------------------------------------------------

    def _run(self, commands: list[Command]) -> None:
        if self.waiting is not None or self.closed:
            if not self.closed:
                self.queue += commands
            return
        try:
            self._carry_out(commands)
        except Exception:  # a bug in the driver or the policy: drop this connection only
            log.exception("proxy session failed")
            self.close()

    def _carry_out(self, commands: list[Command]) -> None:
        i = 0
        while i < len(commands):
            if self.closed:
                return
            command = commands[i]
            i += 1
            if type(command) is SendClient:
                transport = self.transport
                assert transport is not None
                if not transport.is_closing():
                    transport.write(command.data)
            elif type(command) is SendEngine:
                self._send_engine(command.data)
            elif type(command) is Judge:
                verdict = _start(self.gate.judge(command.request, self.peer))
                if isinstance(verdict, asyncio.Task):
                    self._wait(verdict, commands[i:], self._judged)
                    return
                commands = self._judged(verdict) + commands[i:]
                i = 0
            elif type(command) is Verify:
                answer = _start(self.gate.verify(command, self.peer))
                if isinstance(answer, asyncio.Task):
                    self._wait(answer, commands[i:], self._verified)
                    return
                commands = self._verified(answer) + commands[i:]
                i = 0
            elif type(command) is Splice:
                self.spliced = True
                head = self.conn.stream_head
                if head is not None and self.gate.is_grpc(head):
                    self.grpc_stream = self.conn.stream_inspect or "unread"
                    if self.weaker_stream():
                        # Judged under a weaker policy, joined after a stronger one came
                        # (the engine's 101 was slow): never carried unread or audit-only.
                        self.close()
                        return
                if KERNEL_SPLICE and not self.conn.inspecting:
                    asyncio.get_running_loop().call_soon(self._hand_to_kernel)
            elif type(command) is StreamRefused:
                self.gate.stream_refused(command, self.peer)
            elif type(command) is Unpin:
                self.gate.unpin(command.pins)
            elif type(command) is ShutdownEngine:
                self.client_done = True
                engine = self.engine
                if engine is not None and engine.transport is not None:
                    if engine.transport.can_write_eof():
                        with contextlib.suppress(OSError, RuntimeError):
                            engine.transport.write_eof()
                if self.engine_done:
                    self.close()
            elif type(command) is ShutdownClient:
                self.engine_done = True
                transport = self.transport
                if transport is not None and transport.can_write_eof():
                    with contextlib.suppress(OSError, RuntimeError):
                        transport.write_eof()
                if self.client_done:
                    self.close()
            elif type(command) is CloseEngine:
                engine = self._detach()
                if engine is not None:
                    engine.close()
            elif type(command) is CloseClient:
                self.close()
            elif type(command) is Log:
                log.debug("%s", command.message)
            else:  # pragma: no cover - a new command without a handler is a bug
                raise RuntimeError(f"unexpected command {command!r}")

    def _wait(
        self,
        task: asyncio.Task[Any],
        rest: list[Command],
        then: Callable[[Any], list[Command]],
    ) -> None:
        self.waiting = task
        self.queue = rest

        def done(task: asyncio.Task[Any]) -> None:
            self.waiting = None
            queued, self.queue = self.queue, []
            if self.closed or task.cancelled():
                return
            try:
                commands = then(task.result())
            except Exception:
                log.exception("policy evaluation failed")
                self.close()
                return
            self._run(commands + queued)
            if "backlog" in self.holds and self.conn.backlog <= HIGH_WATER:
                self.hold_client_reading("backlog", False)

        task.add_done_callback(done)

    def _judged(self, result: tuple[Decision, bytes | None]) -> list[Command]:
        decision, body = result
        return self.conn.judged(decision, body)

    def _verified(self, result: tuple[bool, int, str]) -> list[Command]:
        ok, status, message = result
        return self.conn.verified(ok, status, message)

    def _hand_to_kernel(self) -> None:
        """Give a spliced stream's two sockets to `KernelSplice`, once nothing waits in user
        space for either side; until then (or if that fails) the stream stays here."""
        if self.closed or self.kernel is not None:
            return
        engine = self.engine
        client_t = self.transport
        if engine is None or not engine.alive or engine.transport is None or client_t is None:
            log.debug("stream stays in user space: one side is gone")
            return
        engine_t = engine.transport
        if (
            self.waiting is not None
            or self.queue
            or self.to_engine
            or client_t.get_write_buffer_size()
            or engine_t.get_write_buffer_size()
        ):
            self.handoff_tries += 1
            if self.handoff_tries <= HANDOFF_TRIES:
                delay = 0.005 * self.handoff_tries
                asyncio.get_running_loop().call_later(delay, self._hand_to_kernel)
            else:
                log.debug("stream stays in user space: bytes still wait for a slow peer")
            return
        client_fd = engine_fd = -1
        try:
            client_fd = os.dup(client_t.get_extra_info("socket").fileno())
            engine_fd = os.dup(engine_t.get_extra_info("socket").fileno())
            kernel = KernelSplice(
                asyncio.get_running_loop(),
                client_fd,
                engine_fd,
                self._kernel_done,
                client_finished=self.client_done,
                engine_finished=self.engine_done,
            )
        except (OSError, AttributeError) as err:
            for fd in (client_fd, engine_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            log.debug("stream stays in user space: %s", err)
            return
        self.kernel = kernel
        self.transport = None
        self._detach()
        engine.alive = False
        engine_t.abort()  # nothing is buffered: the kernel copy owns duplicates of the sockets
        client_t.abort()
        kernel.start()
        log.debug("stream handed to the kernel (splice)")

    def _kernel_done(self) -> None:
        if not self.closed:
            self.close()

    # -- the end --------------------------------------------------------------------------------

    def close(self) -> None:
        """End the session; give a cleanly idle engine connection back to the pool."""
        if self.closed:
            return
        self.closed = True
        self.live.discard(self)
        for task in (self.waiting, self.connecting):
            if task is not None:
                task.cancel()
        self.waiting = None
        self.queue = []
        if self.kernel is not None:
            self.kernel.close()
        engine = self.engine
        self.engine = None
        if engine is not None:
            engine.session = None
            if not self.spliced and self.conn.engine_reusable() and engine.reusable():
                if engine.transport is not None:
                    engine.transport.resume_reading()
                self.pool.release(engine)
            else:
                engine.close()
        if self.transport is not None:
            self.transport.close()  # after what is buffered for the client is written


class ProxyListener:
    """A unix socket that serves the proxy; `listener` names it in decisions and events."""

    def __init__(
        self,
        path: str,
        pool: EnginePool,
        gate: Gate,
        *,
        listener: str = "host",
        mode: int = 0o660,
        group: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.pool = pool
        self.gate = gate
        self.listener = listener
        self.mode = mode
        self.group = group
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        #: Heads of host clients allowed by route alone (none on the container-facing socket).
        self.known = KnownHeads() if listener == "host" else None

    def _session(self) -> _Session:
        return _Session(self.pool, self.gate, self.listener, self._sessions, self.known)

    def forget_known_heads(self) -> None:
        """After a policy change: judge every request afresh."""
        if self.known is not None:
            self.known.reset()

    async def start(self) -> None:
        sock = self._sock or listen_unix(self.path, self.mode, self.group)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._session, sock=sock, backlog=BACKLOG
        )

    def close_weaker_sessions(self) -> int:
        """After a policy change, end what was let through under a weaker one and is not done:

        - BuildKit streams opened under ECI off or audit mode when /grpc is now read and cut.
          Their bytes were never read, or read only to record, and a Solve sent on them now
          would reach the engine unjudged; BuildKit reports the lost connection and the next
          build opens a new, inspected one. (A stream whose engine answer comes after this is
          closed when it comes: `_Session.weaker_stream`.)
        - requests whose body is still passing unread (admitted under ECI off) when the policy
          now reads such bodies: the rest of a create must not reach the engine unjudged. The
          engine sees the body end early and makes nothing; the client may send it again."""
        weaker = [s for s in self._sessions if s.weaker_stream() or s.weaker_body()]
        for session in weaker:
            session.close()
        return len(weaker)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        for session in list(self._sessions):
            session.close()
        await asyncio.sleep(0)  # let the transports close
        if self._sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


Starter = Callable[[], Awaitable[None]]
