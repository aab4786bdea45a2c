"""The policy's I/O shell: gathers the facts a decision needs, then asks the pure core.

`Gate.judge` is called by the driver for every request. It reads the settings in force, maps
the target to an engine route, reads the JSON body the way the engine does, and, for a create
whose mounts reach an engine socket, resolves host paths, asks the engine about volumes,
containers and images, asks the registry for digests, and hands all of it to
`agent.policy.decide`. Whatever it cannot find out is a denial that says why (fail closed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from agent.events.limiter import DenialLimiter, Suppressed, sender_of
from agent.events.model import Kind, format_time
from agent.events.store import EventStore
from agent.pins.board import (
    Held,
    MissingSource,
    PinBoard,
    PinError,
    PinRecord,
    hold,
    needs_pin,
    release_all,
)
from agent.policy import gojson
from agent.policy.command_map import (
    ALWAYS_ALLOWED_KEYS,
    LABELLED_CREATE_KEYS,
    UnclassifiedRoute,
    command_blocked_message,
    commands_for,
    compose_labelled,
    judge_request,
    within,
)
from agent.policy.decide import (
    ALLOW,
    ALLOW_BY_ROUTE,
    PREFIX,
    ContainerFact,
    Decision,
    Exposure,
    HostFacts,
    MissingFact,
    VolumeFact,
    bad_request,
    decide_container_peer,
    decide_created_image,
    decide_plugin,
    decide_socket_mount,
    decide_start,
    deny,
    find_exposures,
    host_paths_needed,
)
from agent.policy.gojson import GoObject
from agent.policy.imageref import InvalidReference, parse_image_ref
from agent.policy.images import (
    ImageVerdict,
    LocalImage,
    RegistryAnswer,
    RegistryQuery,
    judge_image,
    registry_queries,
)
from agent.policy.isolation import (
    JOINABLE,
    EngineIsolation,
    IsolationFacts,
    NamespaceFact,
    SensitivePath,
    Violation,
    build_violations,
    decide_isolation,
    decide_preexisting_start,
    decide_violations,
    engine_isolation,
    exec_violations,
    inspect_violations,
    matching_exceptions,
    mount_violations,
    namespace_targets,
    plugin_config_violations,
    plugin_privilege_violations,
    runtime_rewrite,
    service_network_targets,
    service_violations,
    sets_restart_policy,
    update_violations,
)
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    MountEntry,
    MountIntent,
    NamedVolume,
    ProtectedSocket,
    ResolvedPath,
    UnreadableMount,
    clean_host_path,
    create_mounts,
    exposed_socket,
    local_volume_mount,
    may_name_socket,
    parse_bind_spec,
    plugin_mounts,
    procfs_mount_points,
    volume_create_mount,
)
from agent.policy.routes import (
    BadTarget,
    Route,
    RouteMatch,
    Target,
    canonical_target,
    match_route,
)
from agent.proxy.connection import Request, RequestHead, StreamRefused, Verify
from agent.proxy.engine_client import EngineClient, EngineError, NotFound
from agent.proxy.host_paths import (
    MountTable,
    only_root_can_change,
    protected_sockets,
    resolve,
    resolve_all,
)
from agent.proxy.identity import HOST
from agent.proxy.server import Peer
from agent.proxy.server import _start as start_now
from agent.registry.digests import DigestService
from agent.settings.model import CommandList, Effective, ImageList

log = logging.getLogger("eci_agent.gate")
events_log = logging.getLogger("eci_agent.events")
_T = TypeVar("_T")

#: Routes whose JSON body the policy reads.
BODY_ROUTES = frozenset(
    {
        "POST /containers/create",
        "POST /containers/{id}/start",
        "POST /volumes/create",
        "POST /networks/create",
        "POST /services/create",
        "POST /services/{id}/update",
        "POST /containers/{id}/exec",
        "POST /containers/{id}/update",
        "POST /plugins/pull",
        "POST /plugins/{name}/upgrade",
    }
)

#: Routes that (re)start a container: its bind sources are resolved again by the engine then.
START_ROUTES = frozenset({"POST /containers/{id}/start", "POST /containers/{id}/restart"})
#: `docker cp`: the engine mounts the container's binds on the host for each copy.
ARCHIVE_ROUTES = frozenset(
    {
        "PUT /containers/{id}/archive",
        "GET /containers/{id}/archive",
        "HEAD /containers/{id}/archive",
    }
)
PLUGIN_ENABLE = "POST /plugins/{name}/enable"
GRPC_ROUTE = "POST /grpc"

WELL_KNOWN_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
REGISTRY_TTL = 60.0
#: How long what `GET /info` and the host networks say is reused.
ENGINE_INFO_TTL = 10.0
#: A service naming more networks than this is refused rather than looked up one by one.
MAX_SERVICE_NETWORKS = 64
#: Host folders no container may bind (with the engine's data root and the socket folders);
#: True: paths below it are refused too.
SENSITIVE_FOLDERS = (
    ("/", "host root folder", False),
    ("/etc", "host configuration folder", True),
    ("/proc", "host procfs", True),
    ("/sys", "host sysfs", True),
    ("/dev", "host device folder", True),
    ("/boot", "host boot folder", True),
    ("/root", "host root user's home", True),
    ("/run/containerd", "containerd folder", True),
    ("/var/run/containerd", "containerd folder", True),
)
#: How long what the engine said about a client's container is reused (name and image).
CLIENT_TTL = 5.0
#: What a container may do INTO another container: run a process there (exec), type into its
#: main process (attach) or write its files (copy in). Judged by `_judge_crossing`.
INTO_CONTAINER_ROUTES = frozenset(
    {
        "POST /containers/{id}/exec",
        "POST /containers/{id}/attach",
        "GET /containers/{id}/attach/ws",
        "PUT /containers/{id}/archive",
    }
)
#: How long the image a create's `Image` was found to be is reused for the next socket-mount
#: creates naming it, without asking the engine again; and how many names are kept. Safe
#: because such a create is checked after the fact anyway (`Gate.verify`: the created
#: container's image ID must be the one judged, or one judged allowed just then).
RESOLVED_TTL = 10.0
RESOLVED_MAX = 256
#: In an allowed decision's details: the image came from `_resolved` (see `Gate.verify`).
REUSED = "image_reused"
#: Creates whose labels tell a Compose project (the `compose` command of the command list).
LABELLED_CREATES = LABELLED_CREATE_KEYS
#: Go's ParseForm reads these bodies as form fields that override the query: never forward one.
FORM_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class ClientContainer:
    """The container a client process runs in, as the engine describes it."""

    id: str | None  # None: the process is in no container the agent could name
    name: str = ""
    image: str = ""  # Config.Image, as the container was created with
    image_id: str | None = None
    problem: str | None = None  # why the agent could not tell more
    #: Whether the container bind-mounts the agent's container-facing socket (is given it).
    mounts_socket: bool = False

    def details(self) -> dict[str, str]:
        out = {"container": self.id or "unknown", "image": self.image}
        if self.name:
            out["container_name"] = self.name
        if self.problem:
            out["identity_problem"] = self.problem
        return out


@dataclass(slots=True)
class _CreateImage:
    """The image a create names, as one judgment of it finds it (see `_judge_create_checks`)."""

    reused: LocalImage | None = None  # what the engine said a moment ago (`Gate._resolved`)
    prefetch: asyncio.Future[LocalImage | None] | None = None  # the engine asked early
    found: LocalImage | None = None  # the image the socket check judged
    exceptions: bool = False  # isolation exceptions were judged on it


class _AskAgain(Exception):
    """A judgment made on a reused answer about the image must be made on a fresh one."""


#: How many times a request is judged when the policy changes while it is being judged.
JUDGE_TRIES = 3


@dataclass
class GateConfig:
    engine_socket: str
    listen_sockets: tuple[str, ...]
    container_socket: str
    settings_where: Callable[[], str]
    current: Callable[[], Effective]
    registry: DigestService = field(default_factory=DigestService.memory_only)
    events: EventStore | None = None  # where denials are stored (the log line is kept too)
    #: Where bind sources a user can change are pinned (None: not pinned, e.g. unit tests).
    pins: PinBoard | None = None
    #: The agent's state folder (events, registry credentials, pin records): never bound.
    state_dir: str | None = None


def _form_encoded(head: RequestHead) -> bool:
    for value in head.header_values(b"content-type"):
        media = value.split(b";", 1)[0].strip().lower()
        if media == b"application/x-www-form-urlencoded" or media.startswith(b"multipart/"):
            # url-encoded: Go's ParseForm reads it; multipart: FormValue does (newer engines'
            # build handler). No docker client sends either.
            return True
    return False


def _has_body(head: RequestHead) -> bool:
    """Whether a request carries a body (a non-zero Content-Length, or chunked)."""
    if head.header_values(b"transfer-encoding"):
        return True
    return any(v.strip(b" \t").lstrip(b"0") for v in head.header_values(b"content-length"))


def _is_json_content_type(value: bytes | None) -> bool:
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class Gate:
    """See the module doc. One per agent; shared by every connection and listener."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.engine = EngineClient(config.engine_socket)
        self._image_cache: dict[str, LocalImage] = {}
        self._clients: dict[str, tuple[float, ClientContainer]] = {}
        #: Refusals each sender may have recorded one by one (the rest are counted).
        self._limiter = DenialLimiter()
        self._flush_at: asyncio.TimerHandle | None = None
        #: (container, image ID, listener, settings hash) -> (when, the peer-image decision)
        self._peer_images: dict[tuple[str, str, str, str | None], tuple[float, Decision]] = {}
        #: (image ID, settings hash) -> (when, the command list for containers of that image)
        self._command_lists: dict[tuple[str, str | None], tuple[float, CommandList]] = {}
        self._routed: tuple[RequestHead, Target, RouteMatch | None] | None = None
        self._sensitive_cache: tuple[EngineIsolation, float, tuple[SensitivePath, ...]] | None = (
            None
        )
        self._engine_info: tuple[float, EngineIsolation] | None = None
        self._networks: tuple[float, tuple[tuple[str, str], ...]] | None = None
        #: The protected sockets as configured (for `may_name_socket`, a hint only).
        self._socket_paths = (
            *WELL_KNOWN_SOCKETS,
            config.engine_socket,
            *config.listen_sockets,
            config.container_socket,
        )
        self._mounts = MountTable()
        #: Whether the protected sockets may be resolved on the loop (None: not asked yet).
        self._protected_on_loop: bool | None = None
        self._protected_paths = (
            *((p, "engine socket") for p in (*WELL_KNOWN_SOCKETS, config.engine_socket)),
            *((p, "eci-agent socket") for p in config.listen_sockets),
            (config.container_socket, "eci-agent container socket"),
        )
        #: The protected sockets' paths as written (see `_hold`).
        self._protected_set = frozenset(p for p, _ in self._protected_paths)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: A create's `Image` text -> (when, the image the engine said it was): see RESOLVED_TTL.
        self._resolved: dict[str, tuple[float, LocalImage]] = {}

    def _background(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
        """Start `coro` now (its first step runs at once: a question is on its way to the
        engine when this returns); its answer may go unused: kept referenced until done, its
        failure read (whoever awaits it gets the failure too)."""
        try:
            started = start_now(coro)
        except Exception as err:  # noqa: BLE001 - handed to whoever awaits the answer
            failed: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
            failed.set_exception(err)
            failed.add_done_callback(_forget_task(self._tasks))
            return failed
        if not isinstance(started, asyncio.Task):
            done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
            done.set_result(started)
            return done
        self._tasks.add(started)
        started.add_done_callback(_forget_task(self._tasks))
        return started

    # -- the driver's questions ----------------------------------------------------------------

    def needs_body(self, head: RequestHead) -> bool:
        if not self.config.current().eci_enabled:
            return False
        routed = self._routed
        if routed is not None and routed[0] is head:
            match = routed[2]
        else:
            try:
                target = canonical_target(head.target)
            except BadTarget:
                return False
            match = match_route(head.method, target.path)
            # The driver asks `judge` about this same head next: keep the routing for it.
            self._routed = (head, target, match)
        return match is not None and match.route.key in BODY_ROUTES

    def is_grpc(self, head: RequestHead) -> bool:
        """Whether this request is BuildKit's `POST /grpc` upgrade, routed as the engine would
        (a target that cannot be mapped counts as one: it might be)."""
        try:
            target = canonical_target(head.target)
        except BadTarget:
            return True
        match = match_route(head.method, target.path)
        return match is not None and match.route.key == GRPC_ROUTE

    def grpc_inspection(self) -> str | None:
        """What a `/grpc` stream opened now gets: "grpc" (read, refusals cut it), "grpc-audit"
        (read, refusals recorded only) or None (ECI off: not read)."""
        effective = self.config.current()
        if not effective.eci_enabled:
            return None
        return "grpc-audit" if effective.settings.extensions.audit_mode else "grpc"

    def _route(self, head: RequestHead) -> tuple[Target, RouteMatch | None]:
        """Raises BadTarget. Reuses what `needs_body` found for the very same head object."""
        routed = self._routed
        if routed is not None and routed[0] is head:
            return routed[1], routed[2]
        target = canonical_target(head.target)
        return target, match_route(head.method, target.path)

    async def judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]:
        """The decision on `request` under the policy in force when it is given.

        Judging may wait for facts (the engine, a registry); if the admin's policy changes
        meanwhile, the request is judged again under the new one (audit mode's let-through
        included), or refused when the new one must read a body that was passed unread. Only
        the decision given is recorded."""
        for _ in range(JUDGE_TRIES):
            effective = self.config.current()
            if not effective.eci_enabled:
                return ALLOW, None
            if request.body is None and self.needs_body(request.head):
                decision = deny(
                    503,
                    "the policy changed while this request was on its way; send it again",
                    "policy-changed",
                )
                self._record(request, decision, peer, effective)
                return decision, None
            decision, body = await self._judge_safely(request, peer)
            now = self.config.current()
            if now is effective or now == effective:
                return self._given(request, peer, effective, decision), body
            if decision.pins:
                self.unpin(decision.pins)  # not forwarded: judged again
        decision = deny(
            503, "the policy kept changing while this request was judged; send it again",
            "policy-changed",
        )  # fmt: skip
        self._record(request, decision, peer, self.config.current())
        return decision, None

    async def _judge_safely(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]:
        """`_judge`, failing closed: a fact that cannot be had refuses the request (503)."""
        try:
            return await self._judge(request, peer)
        except MissingFact as err:
            return deny(503, f"cannot evaluate the policy: {err}", "fail-closed"), None
        except EngineError as err:
            return deny(
                503, f"cannot evaluate the policy: the engine answered {err}", "fail-closed"
            ), None
        except Exception as err:  # noqa: BLE001 - fail closed on anything unexpected
            log.exception("policy evaluation failed")
            return deny(503, f"cannot evaluate the policy: {err}", "fail-closed"), None

    def _given(
        self, request: Request, peer: Peer, effective: Effective, decision: Decision
    ) -> Decision:
        """What is done with `decision` under `effective`: recorded when it refuses; audit
        mode records the policy's refusals (403) and lets them through. What cannot be
        forwarded faithfully (400 ambiguous requests, 404 unknown routes, 503 unknown facts)
        is still refused."""
        if decision.allowed:
            return decision
        if effective.settings.extensions.audit_mode and decision.status == 403:
            if decision.auditable:
                self._record(request, decision, peer, effective, would=True)
                return _audited(decision)
        self._record(request, decision, peer, effective)
        return decision

    def unpin(self, pins: tuple[str, ...]) -> None:
        """The engine refused a request forwarded with these pins: release them now."""
        board = self.config.pins
        if board is not None:
            self._background(asyncio.to_thread(_release_pins, board, pins))

    def stream_refused(self, refused: StreamRefused, peer: Peer) -> None:
        """A BuildKit request inside /grpc asked for host powers: record it (the connection
        itself was already cut, or let go on in audit mode)."""
        effective = self.config.current()
        if refused.violations:
            decision = decide_violations(
                effective.settings,
                list(refused.violations),
                image_text="",
                settings_where=self.config.settings_where(),
                subject="build",
                rule="isolation-build",
            )
        else:
            decision = deny(400, f"BuildKit stream cut: {refused.reason}", "grpc-protocol")
        if decision.allowed:  # pragma: no cover - builds get no exceptions
            return
        self._record(Request(refused.head), decision, peer, effective, would=refused.audited)

    def _auditing(self) -> bool:
        return self.config.current().settings.extensions.audit_mode

    async def verify(self, verify: Verify, peer: Peer) -> tuple[bool, int, str]:
        """After an allowed socket-mounting create: does the container have the judged image?"""
        expected = verify.decision.expect_image_id
        try:
            created = json.loads(verify.body)
            container_id = created["Id"]
        except (ValueError, KeyError, TypeError):
            return False, 502, PREFIX + "the engine's create response could not be read"
        try:
            info = await self.engine.inspect_container(container_id)
            actual = info.get("Image")
        except EngineError as err:
            actual = None
            log.warning("cannot inspect created container %s: %s", container_id, err)
        if actual == expected:
            return True, 201, ""
        decision = None
        if actual is not None and verify.decision.details.get(REUSED):
            # Judged on an earlier answer about the image name, and the name has moved on
            # since: forget those answers, and judge the image the container really has (by
            # its ID, which cannot move) as a fresh look at the name would have.
            self._resolved.clear()
            named = (info.get("Config") or {}).get("Image") or actual
            decision = decide_created_image(
                _display_name(named),
                await self._image_id_verdict(actual),
                self.config.settings_where(),
            )
            if decision.allowed:
                return True, 201, ""
        try:
            await self.engine.remove_container(container_id, force=True)
        except EngineError as err:
            log.error("cannot remove mismatched container %s: %s", container_id, err)
        if decision is not None:
            decision = dataclasses.replace(
                decision, message=decision.message + " (the container was removed)"
            )
        else:
            decision = deny(
                403,
                "docker socket mount denied: the image changed between the check and the create "
                f"(checked {expected}, created with {actual}); the container was removed",
                "socket-mount-race",
            )
        self._record(verify.request, decision, peer, self.config.current())
        return False, 403, decision.message

    async def _image_id_verdict(self, image_id: str) -> ImageVerdict | None:
        """The verdict on the image with this ID (None: it cannot be judged; never raises, so
        the caller can always remove a container it refuses)."""
        try:
            image = await self._local_image(image_id)
            if image is None or image.id != image_id:
                return None
            return await self._image_verdict(image)
        except Exception as err:  # noqa: BLE001 - fail closed: refused, and removed
            log.warning("cannot judge image %s: %s", image_id, err)
            return None

    def _reusable_image(self, image_text: str) -> LocalImage | None:
        found = self._resolved.get(image_text)
        if found is None:
            return None
        if time.monotonic() - found[0] >= RESOLVED_TTL:
            del self._resolved[image_text]
            return None
        return found[1]

    def _keep_image(self, image_text: str, image: LocalImage) -> None:
        if len(self._resolved) >= RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[image_text] = (time.monotonic(), image)

    # -- judging --------------------------------------------------------------------------------

    async def _judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]:
        head = request.head
        try:
            target, match = self._route(head)
        except BadTarget as err:
            return bad_request(f"request target refused: {err}"), None
        if match is None:
            return (
                deny(
                    404,
                    f"{head.method} {target.path} is not an Engine API endpoint eci-agent "
                    "knows; refused rather than passed through",
                    "unknown-route",
                ),
                None,
            )
        if head.method in FORM_BODY_METHODS and _form_encoded(head):
            return (
                bad_request(
                    "a request body sent as a form (application/x-www-form-urlencoded or "
                    "multipart/*) is refused: the engine would read it as query parameters "
                    "the policy did not see"
                ),
                None,
            )
        if peer.listener == "container" or peer.identity != HOST:
            refused = await self._judge_container_client(request, peer, target, match.route)
            if isinstance(refused, _Into):
                # Into another container held to the same command list: forwarded to the one
                # judged, by ID (a rename in between must not send it elsewhere).
                decision, body = await self._judge_request(request, target, match)
                return _pinned_into(decision, target, head.target, match, refused.id), body
            if refused is not None:
                if refused.status != 403 or not self._auditing():
                    return refused, None
                # Audit mode forwards it: as the other checks would (a socket mount still
                # gets the container-facing socket, a create its image check), or not at all.
                rest, body = await self._judge_request(request, target, match)
                if not rest.allowed and (rest.status != 403 or not rest.auditable):
                    return rest, body
                kept = dataclasses.replace(
                    refused,
                    expect_image_id=rest.expect_image_id,
                    target=rest.target,
                    inspect=rest.inspect,
                )
                return kept, body
            decision, body = await self._judge_request(request, target, match)
            decision = await self._same_list_child(decision, peer)
            if decision.allowed and match.route.key == "POST /containers/create":
                return await self._shared_pid(request, body, peer, decision)
            return decision, body
        return await self._judge_request(request, target, match)

    def _mounts_socket(self, info: Mapping[str, Any]) -> bool:
        """Whether a container (its inspect data) bind-mounts the agent's container socket."""
        wanted = self.config.container_socket
        for mount in info.get("Mounts") or ():
            if isinstance(mount, dict) and mount.get("Type") == "bind":
                if mount.get("Source") == wanted:
                    return True
        return False

    async def _shared_pid(
        self, request: Request, body: bytes | None, peer: Peer, decision: Decision
    ) -> tuple[Decision, bytes | None]:
        """A container's create that joins another container's PID namespace: its processes
        may then trace every process in it (same uid) and act as them, as an exec would. When
        a container given the socket is in that namespace, its list must be within the
        creator's; and the namespace is named by ID, so a rename before the start changes
        nothing. `PidMode` is read where the engine reads it: in `HostConfig`, or at the top
        of the body when `HostConfig` is missing."""
        if not self.config.current().settings.extensions.image_command_lists:
            return decision, body
        try:
            doc = gojson.loads_bytes(body if body is not None else (request.body or b""))
        except gojson.JSONSyntaxError:
            return decision, body
        if not isinstance(doc, GoObject):
            return decision, body
        hc = doc.field("HostConfig")
        changed = False
        for where in ("HostConfig", ""):
            obj = hc if where else doc
            if not isinstance(obj, GoObject):
                continue
            pid_mode = obj.field("PidMode", "")
            if not isinstance(pid_mode, str) or not pid_mode.startswith("container:"):
                continue
            name = pid_mode.removeprefix("container:")
            try:
                info = await self.engine.inspect_container(name)
            except NotFound:
                continue  # the engine refuses it itself
            refused = await self._looser_in_namespace(info, peer, f"--pid=container:{name}")
            if refused is not None:
                if decision.pins:
                    self.unpin(decision.pins)
                return refused, None
            obj = gojson.with_field(obj, "PidMode", f"container:{info.get('Id') or name}")
            if where:
                hc = obj
                doc = gojson.with_field(doc, "HostConfig", hc)
            else:
                doc = gojson.with_field(obj, "HostConfig", hc) if isinstance(hc, GoObject) else obj
            changed = True
        if not changed:
            return decision, body
        return decision, gojson.dumps(doc).encode()

    async def _looser_in_namespace(
        self, info: Mapping[str, Any], peer: Peer, what: str
    ) -> Decision | None:
        """The refusal when a container given the socket, with a list not within the client's,
        shares the PID namespace of the container `info` describes (it, or one joined to the
        same namespace through `--pid=container:`, either way); None when there is none."""
        client = await self._client(peer)
        holders = await self._pid_namespace_holders(info)
        if not holders:
            return None
        own = await self._command_list_of(client.image_id)
        for holder in holders:
            theirs = await self._command_list_of(holder.get("Image"))
            if not within(theirs, own):
                refused = deny(
                    403,
                    f"{what} is refused: container {str(holder.get('Id') or '')[:12]} in that PID "
                    "namespace is given the socket and held to a command list that allows more "
                    "than this container's (eciAgent.commandLists), and a process in the "
                    "namespace can act as its processes; ask your administrator "
                    f"({self.config.settings_where()})",
                    "command-list-crossing",
                    into=str(holder.get("Id") or ""),
                )
                return _attributed(refused, client)
        return None

    async def _pid_namespace_root(self, info: Mapping[str, Any]) -> str:
        """The ID of the container whose PID namespace this one uses (following
        `--pid=container:` joins; itself when it joins none)."""
        seen: set[str] = set()
        current: Mapping[str, Any] = info
        while True:
            cid = str(current.get("Id") or "")
            mode = (current.get("HostConfig") or {}).get("PidMode") or ""
            if not isinstance(mode, str) or not mode.startswith("container:") or cid in seen:
                return cid
            seen.add(cid)
            if len(seen) > 16:
                raise MissingFact("a chain of more than 16 --pid=container: joins")
            try:
                current = await self.engine.inspect_container(mode.removeprefix("container:"))
            except NotFound:
                return cid

    async def _pid_namespace_holders(self, info: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The containers given the socket that share the PID namespace of `info`'s."""
        root = await self._pid_namespace_root(info)
        out: list[Mapping[str, Any]] = []
        listed = await self.engine.get_json("/containers/json", all="1")
        for summary in listed if isinstance(listed, list) else ():
            if not self._mounts_socket(summary):
                continue
            holder = await self.engine.inspect_container(str(summary.get("Id")))
            if await self._pid_namespace_root(holder) == root:
                out.append(holder)
        return out

    async def _same_list_child(self, decision: Decision, peer: Peer) -> Decision:
        """A container's create of a container that gets the socket: the child's requests are
        judged by its image's command list, so it must be the creator's own (otherwise a
        container held to a strict list runs what it likes in a child of a looser image)."""
        if not (decision.allowed and decision.rewrites and decision.expect_image_id):
            return decision
        if not self.config.current().settings.extensions.image_command_lists:
            return decision
        client = await self._client(peer)
        own = await self._command_list_of(client.image_id)
        theirs = await self._command_list_of(decision.expect_image_id)
        if within(theirs, own):
            return decision
        if decision.pins:
            self.unpin(decision.pins)
        return _attributed(
            deny(
                403,
                "a container may give the socket only to containers held to a command list "
                "within its own (eciAgent.commandLists): image "
                f"{decision.expect_image_id[:19]} is held to one that allows more; ask your "
                "administrator "
                f"({self.config.settings_where()})",
                "command-list-crossing",
            ),
            client,
        )

    async def _judge_request(
        self, request: Request, target: Target, match: RouteMatch
    ) -> tuple[Decision, bytes | None]:
        """The checks every client gets, after those for a container's own requests."""
        head = request.head
        key = match.route.key
        try:
            if key in START_ROUTES:
                if (request.body or b"").strip():
                    return (
                        deny(
                            403,
                            "starting a container with a HostConfig in the request body (the "
                            "pre-1.24 API form) is refused; give the HostConfig when creating "
                            "the container",
                            "start-with-hostconfig",
                        ),
                        None,
                    )
                decision, pinned = await self._judge_start(match.params["id"])
                action = key.rsplit("/", 1)[1]
                return _pin(decision, target, head.target, f"/containers/{pinned}/{action}"), None
            if key == PLUGIN_ENABLE:
                decision, pinned = await self._judge_plugin_enable(match.params["name"])
                return _pin(decision, target, head.target, f"/plugins/{pinned}/enable"), None
            if key in ARCHIVE_ROUTES:
                # Forwarded by ID, as a start: a rename in between changes nothing (the
                # engine's error for a missing path then names the ID; the CLI words its own).
                decision, pinned = await self._judge_archive(match.params["id"])
                return _pin(decision, target, head.target, f"/containers/{pinned}/archive"), None
        except UnreadableMount as err:
            return deny(403, f"cannot judge the mounts: {err}", "unjudgeable-mount"), None
        if key == "POST /build":
            return self._judge_build(target), None
        if key == GRPC_ROUTE:
            # BuildKit's API: the build options travel inside the stream after the upgrade.
            if _has_body(head):
                # The engine hijacks without reading a body: bytes sent as one would reach its
                # HTTP/2 server unread by the inspector, which starts after the 101.
                return (
                    bad_request(
                        "POST /grpc with a request body is refused: the engine would read the "
                        "body as the BuildKit stream, unjudged"
                    ),
                    None,
                )
            audit = self.config.current().settings.extensions.audit_mode
            inspect = "grpc-audit" if audit else "grpc"
            return Decision(True, rule="grpc-inspected", inspect=inspect), None
        if key not in BODY_ROUTES:
            # Nothing above looked at more than the method and the route.
            return ALLOW_BY_ROUTE, None
        body = request.body or b""
        if not body.strip():
            return ALLOW, None
        if not _is_json_content_type(head.header(b"content-type")):
            return (
                bad_request(
                    "request body is not sent as application/json; the engine would refuse it"
                ),
                None,
            )
        try:
            doc = gojson.loads_bytes(body)
        except gojson.JSONSyntaxError as err:
            return bad_request(f"request body is not valid JSON ({err})"), None
        if key == "POST /containers/create":
            if not isinstance(doc, GoObject):
                return bad_request("container create body must be a JSON object"), None
            return await self._judge_create(doc)
        if key == "POST /volumes/create":
            if not isinstance(doc, GoObject):
                return bad_request("volume create body must be a JSON object"), None
            return await self._judge_volume_create(doc)
        if key in ("POST /services/create", "POST /services/{id}/update"):
            if not isinstance(doc, GoObject):
                return bad_request("service body must be a JSON object"), None
            decision, rewritten = await self._judge_service(doc)
            if decision.allowed and key == "POST /services/{id}/update":
                if target.query_value("rollback") == "previous":
                    decision, pinned = await self._judge_service_rollback(match.params["id"])
                    pinned_decision = _pin(
                        decision, target, head.target, f"/services/{pinned}/update"
                    )
                    return pinned_decision, rewritten
            return decision, rewritten
        if key == "POST /containers/{id}/exec":
            if not isinstance(doc, GoObject):
                return bad_request("exec create body must be a JSON object"), None
            decision, pinned = await self._judge_container_change(
                match.params["id"], exec_violations(doc)
            )
            if pinned == match.params["id"]:
                return decision, None  # nothing asked of the container: forwarded as sent
            # judged against that container's image: created in that very container
            return _pin(decision, target, head.target, f"/containers/{pinned}/exec"), None
        if key == "POST /containers/{id}/update":
            if not isinstance(doc, GoObject):
                return bad_request("container update body must be a JSON object"), None
            decision, pinned = await self._judge_container_change(
                match.params["id"], update_violations(doc)
            )
            if not decision.allowed or not sets_restart_policy(doc):
                if pinned == match.params["id"]:
                    return decision, None  # nothing asked of the container: forwarded as sent
                return _pin(decision, target, head.target, f"/containers/{pinned}/update"), None
            # With a restart policy the engine starts the container by itself (when it exits,
            # when the engine starts): judge it as a start now, and update what was judged.
            try:
                started, pinned = await self._judge_start(match.params["id"], removing=False)
            except UnreadableMount as err:
                return deny(403, f"cannot judge the mounts: {err}", "unjudgeable-mount"), None
            if not started.allowed:
                message = started.message + (
                    " (refused for a restart policy: the engine would start it by itself)"
                )
                return dataclasses.replace(started, message=message), None
            return _pin(decision, target, head.target, f"/containers/{pinned}/update"), None
        if key in ("POST /plugins/pull", "POST /plugins/{name}/upgrade"):
            return self._judge_plugin_privileges(doc, target), None
        return ALLOW, None  # pragma: no cover - every BODY_ROUTES key is handled above

    async def _judge_container_client(
        self, request: Request, peer: Peer, target: Target, route: Route
    ) -> Decision | _Into | None:
        """A process inside a container: its image, its command list, and what it does into
        another container.

        Returns the refusal, or None to go on with the checks every client gets (`_Into`: and
        forward to that container by ID).
        """
        client = await self._client(peer)
        if peer.listener != "container":
            # The agent never gives a container its host-facing socket: it got there some
            # other way, and is served only as far as a socket mount would have been allowed.
            decision = await self._judge_peer_image(client, peer.listener)
            if not decision.allowed:
                return _attributed(decision, client)
        elif peer.identity != HOST:
            if client.problem is not None:
                # A container's process the agent cannot name any more (it connected, handed
                # the connection on and exited), or a container the engine does not know: its
                # own per-image list cannot be found, and the global one may be looser.
                return _attributed(
                    deny(
                        403,
                        "eci-agent cannot tell which container sent this request "
                        f"({client.problem}); refused rather than judged by another command "
                        "list",
                        "unknown-peer",
                    ),
                    client,
                )
            # Handed to containers whose image may mount the socket, but reachable from others
            # (a shared PID namespace: /proc/1/root/...): the sender's own container must be
            # given it, and its own image must be one that may.
            if not client.mounts_socket:
                decision = deny(
                    403,
                    f"container {(client.id or '')[:12]} reached eci-agent's container socket "
                    "without being given it (another container's, through a shared PID "
                    "namespace or a path into it); only a container that mounts it may use it",
                    "socket-not-mounted",
                )
            else:
                decision = await self._judge_peer_image(client, peer.listener)
            if not decision.allowed:
                refused = _attributed(decision, client)
                if not self._auditing():
                    return refused
                # Audit mode let this container have the socket (its create was recorded):
                # what its commands would meet is the more telling record.
                commands = await self._judge_commands(request, target, route, client)
                return commands if isinstance(commands, Decision) else refused
        return await self._judge_commands(request, target, route, client)

    async def _judge_commands(
        self, request: Request, target: Target, route: Route, client: ClientContainer
    ) -> Decision | _Into | None:
        """A container's request against its command list (and into another container)."""
        effective = self.config.current()
        if route.key in ALWAYS_ALLOWED_KEYS:
            return None
        query: dict[str, str] = {}
        for name, value in reversed(target.query):
            query[name] = value  # the first value wins, as in Go's Form.Get
        extra = (
            frozenset({"compose"})
            if route.key in LABELLED_CREATES and _compose_labelled(request)
            else frozenset()
        )
        command_list = await self._command_list_of(client.image_id)
        try:
            commands = commands_for(route.method, route.template, query) | extra
            verdict = judge_request(command_list, route.method, route.template, query, extra=extra)
        except UnclassifiedRoute:
            return _attributed(
                deny(
                    403,
                    command_blocked_message(request.head.target, self.config.settings_where())
                    + f" ({route.key} belongs to no docker command eci-agent knows)",
                    "command-unclassified",
                ),
                client,
            )
        if verdict.allowed:
            if (
                route.key in INTO_CONTAINER_ROUTES
                and effective.settings.extensions.image_command_lists
            ):
                return await self._judge_crossing(route, target, client, command_list)
            return None
        decision = deny(
            403,
            command_blocked_message(request.head.target, self.config.settings_where()),
            "command-blocked",
            commands=",".join(sorted(commands)),
            matched=",".join(verdict.matched),
            list_type=command_list.type.value,
            list_source=(
                "global"
                if command_list is effective.settings.eci.socket_mount.command_list
                else "eciAgent.commandLists"
            ),
        )
        return _attributed(decision, client)

    async def _command_list_of(self, image_id: str | None) -> CommandList:
        """The command list for a container of the image with this ID: the first
        `eciAgent.commandLists` entry whose images admit it BY DIGEST, as the socket image list
        does (a name is only a name: a tag or an image ID says nothing of who made it),
        otherwise the global one. Raises `MissingFact` when an entry before the one that
        applies cannot be judged (its registry is unknown): the lists may differ either way."""
        settings = self.config.current().settings
        entries = settings.extensions.image_command_lists
        fallback = settings.eci.socket_mount.command_list
        if not entries or not image_id:
            return fallback
        key = (image_id, settings.sha256)
        now = time.monotonic()
        kept = self._command_lists.get(key)
        if kept is not None and now - kept[0] < CLIENT_TTL:
            return kept[1]
        chosen = fallback
        image = await self._local_image(image_id)
        if image is not None and image.id == image_id:
            for entry in entries:
                image_list = ImageList(entry.images)
                answers = await self._registry_answers(registry_queries(image_list, (image,)))
                verdict = judge_image(image_list, image, answers)
                if verdict.allowed:
                    chosen = entry.command_list
                    break
                if verdict.unknown:
                    raise MissingFact(
                        "which eciAgent.commandLists entry applies to image "
                        f"{image_id[:19]} cannot be told: {', '.join(verdict.unknown)} could not "
                        "be asked"
                    )
        if len(self._command_lists) > 1024:
            self._command_lists.clear()
        self._command_lists[key] = (now, chosen)
        return chosen

    async def _judge_crossing(
        self, route: Route, target: Target, client: ClientContainer, own: CommandList
    ) -> Decision | _Into | None:
        """A container's exec, attach or copy INTO another container: what runs there is
        judged by that container's command list (its processes are its own), so a client may
        only reach one held to the same list as itself."""
        match = match_route(route.method, target.path)
        name = match.params.get("id", "") if match is not None else ""
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return None  # the engine answers 404 itself
        holders = await self._pid_namespace_holders(info)
        if not holders:
            return _Into(str(info.get("Id") or name))  # nothing there can ask the agent
        lists = [await self._command_list_of(h.get("Image")) for h in holders]
        if all(within(theirs, own) for theirs in lists):
            return _Into(str(info.get("Id") or name))
        return _attributed(
            deny(
                403,
                f"{_crossing_verb(route)} container "
                f"{name} is refused: it is held to another command list than the container "
                "asking that allows more (eciAgent.commandLists), and what runs there would be "
                "judged by its list; "
                f"ask your administrator ({self.config.settings_where()})",
                "command-list-crossing",
                into=str(info.get("Id") or name),
            ),
            client,
        )

    async def _judge_peer_image(self, client: ClientContainer, listener: str) -> Decision:
        if client.id is None:
            return deny(
                403,
                "eci-agent cannot tell which process sent this request "
                f"({client.problem}); refused rather than served unchecked",
                "unknown-peer",
            )
        settings = self.config.current().settings
        key = (client.id, client.image_id or "", listener, settings.sha256)
        now = time.monotonic()
        kept = self._peer_images.get(key) if client.image_id else None
        if kept is not None and now - kept[0] < CLIENT_TTL:
            decision = kept[1]
        else:
            image = await self._local_image(client.image_id) if client.image_id else None
            verdict = await self._image_verdict(image) if image is not None else None
            decision = decide_container_peer(
                client.id,
                _display_name(client.image or (client.image_id or "")),
                verdict,
                settings_where=self.config.settings_where(),
                listener=listener,
            )
            if client.image_id:
                if len(self._peer_images) > 1024:
                    self._peer_images.clear()
                self._peer_images[key] = (now, decision)
        return decision

    async def _client(self, peer: Peer) -> ClientContainer:
        identity = peer.identity
        if identity.container is None:
            return ClientContainer(
                None,
                problem=identity.problem
                or f"process {peer.pid} (uid {peer.uid}) is not in a container",
            )
        now = time.monotonic()
        cached = self._clients.get(identity.container)
        if cached is not None and now - cached[0] < CLIENT_TTL:
            return cached[1]
        try:
            info = await self.engine.inspect_container(identity.container)
        except NotFound:
            client = ClientContainer(
                identity.container, problem="the engine does not know this container"
            )
        else:
            client = ClientContainer(
                info.get("Id") or identity.container,
                name=(info.get("Name") or "").lstrip("/"),
                image=(info.get("Config") or {}).get("Image") or "",
                image_id=info.get("Image"),
                mounts_socket=self._mounts_socket(info),
            )
        if len(self._clients) > 1024:
            self._clients.clear()
        self._clients[identity.container] = (now, client)
        return client

    async def _judge_create(self, body: GoObject) -> tuple[Decision, bytes | None]:
        try:
            intents = create_mounts(body)
        except UnreadableMount:
            intents = ()  # the checks below refuse it, saying why
        held, refused = await self._hold(intents)
        if refused is not None:
            return refused, None
        try:
            decision, rewritten = await self._judge_create_checks(body, held=held)
            if decision.allowed and held:
                skip = {clean_host_path(r.old_source) for r in decision.rewrites}
                pins = await self._pin_held(held, skip)
                if isinstance(pins, Decision):
                    return pins, None
                if pins:
                    current = gojson.loads_bytes(rewritten) if rewritten is not None else body
                    assert isinstance(current, GoObject)
                    out = _rewrite_create(current, _pin_map(intents, pins))
                    after = gojson.loads(out)
                    assert isinstance(after, GoObject)
                    left = _left_unpinned(create_mounts(after), held)
                    if left is not None:
                        self.unpin(tuple(pins.values()))
                        return _unpinnable(left), None
                    rewritten = out.encode()
                    decision = _with_pins(decision, pins)
        finally:
            release_all(held.values())
        if decision.allowed or "image" in decision.details:
            return decision, rewritten
        image_text = body.field("Image", "")
        if isinstance(image_text, str) and image_text:
            # The reference as the create named it (for events and `eci-agent suggest`).
            try:
                named = str(parse_image_ref(image_text))
            except InvalidReference:
                named = image_text
            decision = dataclasses.replace(decision, details={**decision.details, "image": named})
        return decision, rewritten

    async def _judge_create_checks(
        self, body: GoObject, *, reuse: bool = True, held: dict[str, Held] | None = None
    ) -> tuple[Decision, bytes | None]:
        """The socket and isolation checks of a create.

        `reuse`: a socket mount may be judged on what the engine said the image name was a
        moment ago (`_resolved`), if that ends in a plain allow: no refusal, no isolation
        exception (both depend on the image) comes from a reused answer; those are judged
        again on a fresh one. The container created is checked after the fact (`verify`).
        """
        try:
            intents = create_mounts(body)
        except UnreadableMount as err:
            return bad_request(f"cannot read the mounts of this create: {err}"), None
        image = _CreateImage()
        image_text = body.field("Image", "")
        if intents and isinstance(image_text, str) and image_text:
            image.reused = self._reusable_image(image_text) if reuse else None
            if image.reused is None and may_name_socket(intents, self._socket_paths):
                # Likely a socket mount: ask the engine about the image while the host paths
                # are resolved (in a worker thread). Only a head start: the answer is used only
                # if the exposure check below finds a socket, exactly as if asked then.
                image.prefetch = self._background(self._local_image(image_text))
        facts = await self._host_facts(intents, held) if intents else None
        decision, rewritten = await self._judge_create_socket(body, intents, facts, image)
        if decision.allowed:
            try:
                decision, rewritten = await self._judge_create_isolation(
                    body, intents, facts, decision, rewritten, image
                )
            except _AskAgain:
                return await self._judge_create_checks(body, reuse=False, held=held)
        if image.found is None:
            return decision, rewritten
        plain = decision.allowed and not image.exceptions
        if image.found is image.reused:
            if not plain:
                return await self._judge_create_checks(body, reuse=False, held=held)
            return dataclasses.replace(decision, details={**decision.details, REUSED: "1"}), (
                rewritten
            )
        if plain and isinstance(image_text, str):
            self._keep_image(image_text, image.found)
        return decision, rewritten

    async def _judge_create_isolation(
        self,
        body: GoObject,
        intents: tuple[MountIntent, ...],
        host: HostFacts | None,
        socket_decision: Decision,
        rewritten: bytes | None,
        image: _CreateImage,
    ) -> tuple[Decision, bytes | None]:
        """After the socket check: the host powers the create asks for (policy.isolation).

        `image.found`: what the socket check found the create's image to be (None: it did not
        ask); the isolation exceptions are judged on that same image, so one image ID is judged
        and then checked after the create. Raises `_AskAgain` if that image was a reused answer
        (exceptions are only granted on a fresh one).
        """
        hc = body.field("HostConfig")
        facts = await self._isolation_facts(
            intents, host, namespace_targets(hc if isinstance(hc, GoObject) else None, body)
        )
        image_text = body.field("Image", "")
        image_text = image_text if isinstance(image_text, str) else ""
        decision = decide_isolation(
            self.config.current().settings,
            body,
            intents,
            facts,
            settings_where=self.config.settings_where(),
        )
        if not decision.allowed and decision.status == 403:
            if image.found is not None and image.found is image.reused:
                raise _AskAgain
            image.exceptions = True
            verdicts, image_id = await self._exception_verdicts(
                image_text, decision, image_id=None, image=image.found
            )
            if verdicts:
                decision = decide_isolation(
                    self.config.current().settings,
                    body,
                    intents,
                    facts,
                    settings_where=self.config.settings_where(),
                    verdicts=verdicts,
                )
                if decision.allowed:
                    decision = dataclasses.replace(decision, expect_image_id=image_id)
        if not decision.allowed:
            # Refused; audit mode forwards it, still with the socket rewrite and image check.
            expected = socket_decision.expect_image_id or decision.expect_image_id
            return dataclasses.replace(decision, expect_image_id=expected), rewritten
        if socket_decision.rewrites or socket_decision.expect_image_id:
            decision = dataclasses.replace(
                socket_decision,
                expect_image_id=socket_decision.expect_image_id or decision.expect_image_id,
                details={**socket_decision.details, **decision.details},
            )
        runtime = runtime_rewrite(body, facts.engine)
        if runtime is None:
            return decision, rewritten
        current = gojson.loads_bytes(rewritten) if rewritten is not None else body
        assert isinstance(current, GoObject)
        host_config = current.field("HostConfig")
        if not isinstance(host_config, GoObject):
            host_config = GoObject()
        host_config = gojson.with_field(host_config, "Runtime", runtime)
        out = gojson.dumps(gojson.with_field(current, "HostConfig", host_config)).encode()
        return dataclasses.replace(decision, details={**decision.details, "runtime": runtime}), out

    async def _judge_create_socket(
        self,
        body: GoObject,
        intents: tuple[MountIntent, ...],
        facts: HostFacts | None,
        found: _CreateImage,
    ) -> tuple[Decision, bytes | None]:
        """The socket check of a create. Sets `found.found` to the image it judged, if any:
        `found.reused` if set, else the engine's answer (`found.prefetch` if asked early)."""
        if not intents or facts is None:
            return ALLOW, None
        try:
            exposures = find_exposures(intents, facts)
        except UnreadableMount as err:
            return deny(
                403, f"cannot judge the mounts of this create: {err}", "unjudgeable-mount"
            ), None
        if not exposures:
            return ALLOW, None
        image_text = body.field("Image", "")
        if not isinstance(image_text, str) or not image_text:
            return bad_request("a create that mounts the engine socket must name an image"), None
        image_name = _display_name(image_text)
        if found.reused is not None:
            image: LocalImage | None = found.reused
        elif found.prefetch is not None:
            image = await found.prefetch
        else:
            image = await self._local_image(image_text)
        if image is None:
            # Let the client pull and retry, as it does when the engine says so.
            return (
                Decision(False, 404, f"No such image: {image_text}", "no-such-image"),
                None,
            )
        found.found = image
        verdict = await self._image_verdict(image)
        decision = decide_socket_mount(
            exposures,
            image_name,
            verdict,
            image_id=image.id,
            container_socket=self.config.container_socket,
            settings_where=self.config.settings_where(),
        )
        if not decision.allowed and self._auditing() and all(e.rewritable for e in exposures):
            # Audit mode lets it through: with the container-facing socket all the same, so
            # what the container then asks is audited too (and checked to be this image).
            sources = (e.source for e in exposures)
            socket_map = _socket_map(self.config.container_socket, sources)
            rewritten = _rewrite_create(body, socket_map).encode()
            return dataclasses.replace(decision, expect_image_id=image.id), rewritten
        if not decision.allowed and self._auditing():
            # A socket reached in a way that cannot be rewritten: never forward it as it is.
            return dataclasses.replace(decision, auditable=False), None
        if not decision.allowed or not decision.rewrites:
            return decision, None
        socket_map = _socket_map(
            self.config.container_socket, (r.old_source for r in decision.rewrites)
        )
        return decision, _rewrite_create(body, socket_map).encode()

    async def _image_verdict(self, image: LocalImage) -> ImageVerdict:
        settings = self.config.current().settings
        image_list = settings.eci.socket_mount.image_list
        bases: tuple[LocalImage, ...] = ()
        if image_list.allow_derived_images and image.is_local_only:
            bases = await self._derived_bases(image_list)
        answers = await self._registry_answers(registry_queries(image_list, (image, *bases)))
        return judge_image(image_list, image, answers, bases)

    async def _judge_start(self, name: str, removing: bool = True) -> tuple[Decision, str]:
        """A (re)start: the engine resolves every bind source again, so judge them again.

        Also returns the container's ID, which the start is forwarded with. `removing`: a
        refused auto-remove container is removed, as the engine does when its start fails.
        """
        stored = await self._stored_container(name)
        if stored is None:
            return _no_such_container(name), name
        info, intents = stored
        container_id = info["Id"]
        moved = await self._moved_pins(intents)
        try:
            # A pin whose source leads elsewhere now is judged as that file (the engine would
            # follow the path), and pointed at it if the start is allowed.
            held = {pin: h for pin, (_, h) in moved.items()}
            facts = await self._host_facts(intents, held) if intents else None
            exposures = find_exposures(intents, facts) if facts is not None else ()
            decision = await self._judge_exposures(info, exposures)
            if decision.allowed:
                isolation = await self._judge_start_isolation(name, info, intents, facts)
                if not isolation.allowed:
                    decision = isolation
                elif isolation.rule != ALLOW.rule and not exposures:
                    decision = isolation
            if decision.allowed and moved and facts is not None:
                decision = await self._repin(moved, facts) or decision
        finally:
            release_all(h for _, h in moved.values())
        if (
            removing
            and not decision.allowed
            and not self._auditing()
            and (info.get("HostConfig") or {}).get("AutoRemove")
        ):
            # The engine removes an auto-remove container whose start failed, and `docker run
            # --rm` waits for that removal: do the same, or the client waits forever.
            try:
                await self.engine.remove_container(container_id, v=True, force=True)
            except EngineError as err:
                log.warning("cannot remove refused auto-remove container %s: %s", name, err)
        return decision, container_id

    async def _stored_container(
        self, name: str
    ) -> tuple[dict[str, Any], tuple[MountIntent, ...]] | None:
        """A container's inspect data and the mounts the engine will make for it (None: the
        engine knows no such container)."""
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return None
        return info, _container_fact(name, info).mounts

    async def _judge_exposures(
        self, info: dict[str, Any], exposures: tuple[Exposure, ...]
    ) -> Decision:
        """The sockets a stored container's binds reach now, against its image."""
        if not exposures:
            return ALLOW
        image_id = info.get("Image")
        image_text = (info.get("Config") or {}).get("Image") or image_id or ""
        image = await self._local_image(image_id) if image_id else None
        verdict = await self._image_verdict(image) if image is not None else None
        return decide_start(
            exposures,
            _display_name(image_text),
            verdict,
            container_socket=self.config.container_socket,
            settings_where=self.config.settings_where(),
        )

    async def _judge_archive(self, name: str) -> tuple[Decision, str]:
        """`docker cp` (PUT, GET and HEAD `.../archive`): for the copy the engine mounts the
        container's binds on the host, running or not, resolving each source again. So they
        are judged now as a start's are: the sockets they reach, and sensitive host paths (the
        rest of a start's checks is about running the container, which a copy does not)."""
        stored = await self._stored_container(name)
        if stored is None:
            return _no_such_container(name), name
        info, intents = stored
        container_id = info["Id"]
        if not intents:
            return ALLOW, container_id
        moved = await self._moved_pins(intents)
        try:
            held = {pin: h for pin, (_, h) in moved.items()}
            host = await self._host_facts(intents, held)
            decision = await self._judge_exposures(info, find_exposures(intents, host))
            if not decision.allowed:
                return decision, container_id
            facts = await self._isolation_facts(intents, host, set())
            decision = decide_violations(
                self.config.current().settings,
                mount_violations(intents, facts),
                image_text=(info.get("Config") or {}).get("Image") or "",
                settings_where=self.config.settings_where(),
                subject="copy to or from container",
                rule="isolation-archive",
            )
            if decision.allowed and moved:
                decision = await self._repin(moved, host) or decision
        finally:
            release_all(h for _, h in moved.values())
        return decision, container_id

    async def _judge_plugin_enable(self, name: str) -> tuple[Decision, str]:
        """A plugin runs as a container with the mounts its config asks for (and its ID)."""
        try:
            info = await self.engine.inspect_plugin(name)
        except NotFound:
            return Decision(False, 404, f"plugin {name!r} not found", "no-such-plugin"), name
        plugin_id = info["Id"]
        intents = plugin_mounts(info, name)
        facts = await self._host_facts(intents) if intents else None
        decision = (
            decide_plugin(find_exposures(intents, facts), info.get("Name") or name)
            if facts is not None
            else ALLOW
        )
        if decision.allowed:
            decision = await self._judge_plugin_isolation(info, name, intents, facts)
        return decision, plugin_id

    async def _judge_plugin_isolation(
        self,
        info: dict[str, Any],
        name: str,
        intents: tuple[HostPath, ...],
        host: HostFacts | None,
    ) -> Decision:
        """A plugin's own host powers (capabilities, host namespaces, devices, host paths)."""
        facts = await self._isolation_facts(intents, host, set())
        violations = plugin_config_violations(info, facts)
        violations += inspect_violations(GoObject(), intents, facts)
        return decide_violations(
            self.config.current().settings,
            violations,
            image_text="",
            settings_where=self.config.settings_where(),
            subject=f'plugin "{info.get("Name") or name}"',
            rule="isolation-plugin",
        )

    async def _judge_volume_create(self, body: GoObject) -> tuple[Decision, bytes | None]:
        """A local volume that binds a host folder: never the socket. A device a user can
        change is held, judged as it is, and the volume made on its pin."""
        try:
            mount = volume_create_mount(body)
        except UnreadableMount as err:
            return deny(403, f"cannot judge this volume: {err}", "volume-unjudgeable"), None
        if mount is None:
            return ALLOW, None
        held, refused = await self._hold((mount,))
        if refused is not None:
            return refused, None
        try:
            device = mount.source
            host = await self._host_paths({device}, held)
            hit = exposed_socket(host.paths[device], host.protected)
            if hit is not None:
                return deny(
                    403,
                    f"a volume that mounts {device} would expose the {hit[0].label} "
                    f"{hit[0].path}; volumes cannot carry the engine socket",
                    "volume-socket",
                ), None
            facts = await self._isolation_facts((mount,), host, set())
            decision = decide_violations(
                self.config.current().settings,
                mount_violations((mount,), facts),
                image_text="",
                settings_where=self.config.settings_where(),
                subject="volume",
                rule="isolation-volume",
            )
            if not decision.allowed or not held:
                return decision, None
            pins = await self._pin_held(held, set())
        finally:
            release_all(held.values())
        if isinstance(pins, Decision):
            return pins, None
        opts = body.field("DriverOpts")
        assert isinstance(opts, GoObject)  # volume_create_mount found a device in it
        pin = pins[clean_host_path(device)]
        # A map, not a struct: its keys are exact (the last "device" is the one read).
        pairs = tuple((k, v) for k, v in opts.pairs if k != "device") + (("device", pin),)
        out = gojson.dumps(gojson.with_field(body, "DriverOpts", GoObject(pairs)))
        return _with_pins(ALLOW, pins), out.encode()

    async def _judge_service(self, body: GoObject) -> tuple[Decision, bytes | None]:
        """A service spec (create, update): its socket mounts, then its host powers. An
        allowed spec is forwarded with each network it names pinned to the ID it was judged
        as (the engine stores IDs there anyway), so a network named like a prefix of another's
        ID cannot change meaning between the look-up and the engine's own."""
        spec = body.field("TaskTemplate")
        container_spec = spec.field("ContainerSpec") if isinstance(spec, GoObject) else None
        intents: tuple[MountIntent, ...] = ()
        if isinstance(container_spec, GoObject):
            try:
                intents = _service_mounts(container_spec)
            except UnreadableMount as err:
                return bad_request(f"cannot read the service's mounts: {err}"), None
        held, refused = await self._hold(intents)
        if refused is not None:
            return refused, None
        try:
            decision, rewritten = await self._judge_service_held(body, intents, held)
            if not decision.allowed or not held:
                return decision, rewritten
            pins = await self._pin_held(held, set())
            if isinstance(pins, Decision):
                return pins, None
            if not pins:
                return decision, rewritten
        finally:
            release_all(held.values())
        # The tasks' containers get the pins, as a container's create does.
        current = gojson.loads_bytes(rewritten) if rewritten is not None else body
        assert isinstance(current, GoObject) and isinstance(container_spec, GoObject)
        task = current.field("TaskTemplate")
        assert isinstance(task, GoObject)
        task_spec = task.field("ContainerSpec")
        assert isinstance(task_spec, GoObject)
        task_spec = _rewrite_sources(task_spec, _pin_map(intents, pins))
        left = _left_unpinned(_service_mounts(task_spec), held)
        if left is not None:
            self.unpin(tuple(pins.values()))
            return _unpinnable(left), None
        task = gojson.with_field(task, "ContainerSpec", task_spec)
        out = gojson.dumps(gojson.with_field(current, "TaskTemplate", task)).encode()
        return _with_pins(decision, pins), out

    async def _judge_service_held(
        self, body: GoObject, intents: tuple[MountIntent, ...], held: dict[str, Held]
    ) -> tuple[Decision, bytes | None]:
        decision = await self._judge_service_socket(body, intents, held)
        if not decision.allowed:
            return decision, None
        spec = body.field("TaskTemplate")
        container_spec = spec.field("ContainerSpec") if isinstance(spec, GoObject) else None
        host = await self._host_facts(intents, held) if intents else None
        facts = await self._isolation_facts(intents, host, set())
        networks = await self._service_networks(service_network_targets(body))
        missing = sorted(t for t, net in networks.items() if net is None)
        if missing:
            return Decision(False, 404, f"network {missing[0]} not found", "no-such-network"), None
        named = tuple((t, net[0]) for t, net in networks.items() if net is not None and net[1])
        if named:
            facts = dataclasses.replace(facts, host_networks=facts.host_networks + named)
        try:
            violations = service_violations(body, facts)
        except ValueError as err:
            return bad_request(f"cannot read the service's isolation settings: {err}"), None
        violations += inspect_violations(GoObject(), intents, facts)
        image = container_spec.field("Image", "") if isinstance(container_spec, GoObject) else ""
        decision = decide_violations(
            self.config.current().settings,
            violations,
            image_text=image if isinstance(image, str) else "",
            settings_where=self.config.settings_where(),
            subject="swarm service",
            rule="isolation-service",
        )
        if not decision.allowed:
            return decision, None
        ids = {t: net[0] for t, net in networks.items() if net is not None and net[0] != t}
        return decision, (_pin_service_networks(body, ids).encode() if ids else None)

    async def _service_networks(self, targets: set[str]) -> dict[str, tuple[str, bool] | None]:
        """Each network a service names, looked up now as swarm resolves it (name, ID or ID
        prefix; swarm scope, then any): its ID and whether it is a host network (swarm's own
        `host` network has an ID that `GET /networks` does not list); None: not found."""
        if len(targets) > MAX_SERVICE_NETWORKS:
            raise MissingFact(f"a service naming {len(targets)} networks is more than eci-agent "
                              f"looks up ({MAX_SERVICE_NETWORKS})")  # fmt: skip
        found: dict[str, tuple[str, bool] | None] = {}
        for target in sorted(targets):
            found[target] = None
            for scope in ("swarm", ""):
                try:
                    net = await self.engine.inspect_network(target, scope)
                except NotFound:
                    continue
                host = net.get("Driver") == "host" or net.get("Name") == "host"
                found[target] = (str(net.get("Id") or target), host)
                break
        return found

    async def _judge_service_rollback(self, service: str) -> tuple[Decision, str]:
        """`POST /services/{id}/update?rollback=previous`: the engine puts back the spec it
        kept from before the last update and ignores the body, so that spec is judged (and
        the update goes to the service judged, by ID)."""
        try:
            info = await self.engine.inspect_service(service)
        except NotFound:
            return Decision(False, 404, f"service {service} not found", "no-such-service"), service
        service_id = str(info.get("ID") or service)
        previous = info.get("PreviousSpec")
        if not isinstance(previous, dict):
            return ALLOW, service_id  # nothing to roll back to: the engine refuses it itself
        doc = gojson.loads(json.dumps(previous))
        if not isinstance(doc, GoObject):  # pragma: no cover - a dict dumps to an object
            return ALLOW, service_id
        spec = doc.field("TaskTemplate")
        container_spec = spec.field("ContainerSpec") if isinstance(spec, GoObject) else None
        if isinstance(container_spec, GoObject):
            try:
                held, refused = await self._hold(_service_mounts(container_spec))
            except UnreadableMount:
                held, refused = {}, None  # judged below, saying why
            release_all(held.values())
            if held:
                where = ", ".join(sorted(held))
                refused = deny(
                    403,
                    f"the spec a rollback would put back binds {where}, which a user other than "
                    "root can change, and a rollback cannot be given pinned paths; update the "
                    "service with that spec instead",
                    "unpinnable-bind",
                )
            if refused is not None:
                return refused, service_id
        decision, _ = await self._judge_service(doc)
        if decision.allowed:
            return decision, service_id
        message = decision.message + " (the spec this rollback would put back)"
        return dataclasses.replace(decision, message=message), service_id

    async def _judge_service_socket(
        self, body: GoObject, intents: tuple[MountIntent, ...], held: dict[str, Held]
    ) -> Decision:
        intents = tuple(i for i in intents if isinstance(i, HostPath | NamedVolume))
        if not intents:
            return ALLOW
        facts = await self._host_facts(intents, held)
        if find_exposures(intents, facts):
            return deny(
                403,
                "swarm services may not mount the engine socket; eci-agent cannot give their "
                "tasks the container-facing socket",
                "service-socket",
            )
        return ALLOW

    # -- isolation beyond the socket (agent.policy.isolation) ------------------------------------

    async def _judge_start_isolation(
        self,
        name: str,
        info: dict[str, Any],
        intents: tuple[MountIntent, ...],
        host: HostFacts | None,
    ) -> Decision:
        """A (re)start of a container whose stored config the policy would refuse now."""
        doc = gojson.loads(json.dumps(info))
        assert isinstance(doc, GoObject)
        hc = doc.field("HostConfig")
        facts = await self._isolation_facts(
            intents, host, namespace_targets(hc if isinstance(hc, GoObject) else None, None)
        )
        violations = _preexisting(inspect_violations(doc, intents, facts), facts.engine, info)
        shown = (info.get("Name") or name).lstrip("/")
        image_text = (info.get("Config") or {}).get("Image") or ""
        settings = self.config.current().settings
        where = self.config.settings_where()
        decision = decide_preexisting_start(
            settings, shown, image_text, violations, settings_where=where
        )
        if decision.allowed:
            return decision
        verdicts, _ = await self._exception_verdicts(
            image_text, decision, image_id=info.get("Image"), violations=violations
        )
        if not verdicts:
            return decision
        return decide_preexisting_start(
            settings, shown, image_text, violations, settings_where=where, verdicts=verdicts
        )

    async def _judge_container_change(
        self, name: str, violations: list[Violation]
    ) -> tuple[Decision, str]:
        """Exec create and update of an existing container: judged against its image. Also
        returns the container's ID when one was judged (else `name`), to forward it with."""
        if not violations:
            return ALLOW, name
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return _no_such_container(name), name
        container_id = str(info.get("Id") or name)
        image_text = (info.get("Config") or {}).get("Image") or ""
        settings = self.config.current().settings
        where = self.config.settings_where()
        decision = decide_violations(
            settings, violations, image_text=image_text, settings_where=where
        )
        if decision.allowed:
            return decision, container_id
        verdicts, _ = await self._exception_verdicts(
            image_text, decision, image_id=info.get("Image"), violations=violations
        )
        if verdicts:
            decision = decide_violations(
                settings, violations, image_text=image_text, settings_where=where, verdicts=verdicts
            )
        return decision, container_id

    def _judge_plugin_privileges(self, doc: Any, target: Target) -> Decision:
        """`docker plugin install`/`upgrade`: the privileges the client grants the plugin."""
        if not isinstance(doc, list):
            return bad_request("the plugin privileges body must be a JSON array")
        try:
            violations = plugin_privilege_violations(doc, "privileges")
        except ValueError as err:
            return bad_request(f"cannot read the plugin privileges: {err}")
        remote = target.query_value("remote") or ""
        return decide_violations(
            self.config.current().settings,
            violations,
            image_text="",
            settings_where=self.config.settings_where(),
            subject=f'plugin "{remote}"' if remote else "plugin",
            rule="isolation-plugin",
        )

    def _judge_build(self, target: Target) -> Decision:
        """`docker build --network=host` (and the classic builder's `--security-opt`)."""
        query: dict[str, str] = {}
        for key, value in reversed(target.query):
            query[key] = value  # the first value wins, as in Go's Form.Get
        try:
            violations = build_violations(query)
        except ValueError as err:
            return bad_request(f"cannot read the build options: {err}")
        return decide_violations(
            self.config.current().settings,
            violations,
            image_text="",
            settings_where=self.config.settings_where(),
            subject="build",
            rule="isolation-build",
        )

    async def _exception_verdicts(
        self,
        image_text: str,
        decision: Decision,
        *,
        image_id: str | None,
        violations: list[Violation] | None = None,
        image: LocalImage | None = None,
    ) -> tuple[dict[int, ImageVerdict], str | None]:
        """Digest checks for the isolation exceptions whose names match (see
        `isolation.matching_exceptions`): an exception is only for the image it names.

        `image`: the image `image_text` was already found to be for this request (judged
        again as it is, not looked up again: the tag may have moved since)."""
        settings = self.config.current().settings
        if not settings.extensions.isolation_exceptions or not image_text:
            return {}, None
        if violations is None:
            tokens = decision.details.get("options", "")
            violations = [Violation(t, t, "", "") for t in tokens.split(",") if t]
        entries = matching_exceptions(settings, image_text, violations)
        if not entries:
            return {}, None
        if image is None:
            image = await self._local_image(image_id or image_text)
        if image is None:
            return {}, None
        verdicts: dict[int, ImageVerdict] = {}
        for index, entry in entries:
            image_list = ImageList(entry.images)
            answers = await self._registry_answers(registry_queries(image_list, (image,)))
            verdicts[index] = judge_image(image_list, image, answers)
        return verdicts, image.id

    async def engine_isolation(self) -> EngineIsolation:
        """What isolation the engine itself gives (`GET /info`, cached briefly); for the
        status API: sysbox-runc, userns-remap, rootless (see `isolation.isolation_status`)."""
        now = time.monotonic()
        cached = self._engine_info
        if cached is not None and now - cached[0] < ENGINE_INFO_TTL:
            return cached[1]
        info = await self.engine.get_json("/info")
        engine = engine_isolation(info if isinstance(info, dict) else {})
        self._engine_info = (now, engine)
        return engine

    async def preexisting_containers(self) -> list[tuple[str, str, str, list[Violation]]]:
        """Containers whose stored config the policy refuses (made before enforcement, or while
        ECI was off): (ID, name, image, violations), for status and doctor."""
        listed = await self.engine.get_json("/containers/json", all=1)
        out: list[tuple[str, str, str, list[Violation]]] = []
        for summary in listed or []:
            cid = summary.get("Id") or ""
            try:
                info = await self.engine.inspect_container(cid)
            except NotFound:
                continue
            intents = _container_fact(cid, info).mounts
            host = await self._host_facts(intents) if intents else None
            doc = gojson.loads(json.dumps(info))
            assert isinstance(doc, GoObject)
            hc = doc.field("HostConfig")
            facts = await self._isolation_facts(
                intents, host, namespace_targets(hc if isinstance(hc, GoObject) else None, None)
            )
            found = _preexisting(inspect_violations(doc, intents, facts), facts.engine, info)
            if found:
                name = (info.get("Name") or "").lstrip("/")
                image = (info.get("Config") or {}).get("Image") or ""
                out.append((cid, name, image, found))
        return out

    async def _isolation_facts(
        self, intents: Iterable[MountIntent], host: HostFacts | None, targets: set[str]
    ) -> IsolationFacts:
        engine = await self.engine_isolation()
        now = time.monotonic()
        cached = self._sensitive_cache
        if cached is not None and cached[0] == engine and now - cached[1] < ENGINE_INFO_TTL:
            sensitive = cached[2]
        else:
            # Root-owned folders (`/etc`, the data root, ...): resolved again every few
            # seconds, not per create; the bind sources themselves are resolved every time.
            sensitive = await asyncio.to_thread(self._sensitive, engine)
            self._sensitive_cache = (engine, now, sensitive)
        containers: dict[str, NamespaceFact] = {}
        pending = list(targets)
        while pending and len(containers) < 16:
            target = pending.pop()
            if target in containers:
                continue
            fact = await self._namespace_fact(target)
            containers[target] = fact
            for value in (fact.modes or {}).values():
                if value.startswith("container:"):
                    pending.append(value.split(":", 1)[1])
        if host is None:
            host = HostFacts((), {})
        return IsolationFacts(engine, sensitive, host, containers, await self._host_networks())

    async def _namespace_fact(self, name: str) -> NamespaceFact:
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return NamespaceFact(name, modes=None)
        hc = info.get("HostConfig") or {}
        modes = {k: str(hc.get(k) or "") for k in JOINABLE}
        return NamespaceFact(name, info.get("Id") or "", modes)

    async def _host_networks(self) -> tuple[tuple[str, str], ...]:
        now = time.monotonic()
        cached = self._networks
        if cached is not None and now - cached[0] < ENGINE_INFO_TTL:
            return cached[1]
        listed = await self.engine.get_json("/networks", filters=json.dumps({"driver": ["host"]}))
        found = [("host", "")]
        for net in listed or []:
            if isinstance(net, dict) and net.get("Driver") == "host":
                found.append((str(net.get("Name") or ""), str(net.get("Id") or "")))
        self._networks = (now, tuple(found))
        return self._networks[1]

    def _sensitive(self, engine: EngineIsolation) -> tuple[SensitivePath, ...]:
        folders: list[tuple[str, str, bool]] = list(SENSITIVE_FOLDERS)
        if engine.docker_root_dir:
            folders.append((engine.docker_root_dir, "engine's data root", True))
        for sock in (*WELL_KNOWN_SOCKETS, self.config.engine_socket):
            folders.append((os.path.dirname(sock), "engine socket folder", False))
        for sock in (*self.config.listen_sockets, self.config.container_socket):
            folders.append((os.path.dirname(sock), "eci-agent socket folder", False))
        if self.config.state_dir:
            folders.append((self.config.state_dir, "eci-agent state folder", True))
        if self.config.pins is not None:
            # The folder (and those above it); a pin inside is judged as what it holds.
            folders.append((str(self.config.pins.root), "eci-agent pins folder", False))
        out: list[SensitivePath] = []
        seen: set[str] = set()
        for path, label, inside in folders:
            if path in seen or not path:
                continue
            seen.add(path)
            found = resolve(path)
            out.append(SensitivePath(path, label, found.resolved, found.inode, inside))
        return tuple(out)

    # -- facts -----------------------------------------------------------------------------------

    def _protected_root_held(self) -> bool:
        held = all(only_root_can_change(p) for p, _ in self._protected_paths)
        if not held:
            log.warning(
                "a protected socket's path can be changed by a user other than root; its "
                "folders are resolved off the event loop (a little slower per create): %s",
                ", ".join(p for p, _ in self._protected_paths),
            )
        return held

    def _all_host_paths(
        self, needed: set[str]
    ) -> tuple[tuple[MountEntry, ...], tuple[ProtectedSocket, ...], dict[str, ResolvedPath]]:
        """In a worker thread: the table, the protected sockets and every path named."""
        table = MountTable().current()
        protected, paths = protected_sockets(self._protected_paths, table)
        paths.update(resolve_all(needed.difference(paths)))
        return table, protected, paths

    # -- bind sources held still (agent.pins) -----------------------------------------------------

    async def _hold(
        self, intents: tuple[MountIntent, ...]
    ) -> tuple[dict[str, Held], Decision | None]:
        """Open each host path a user other than root can change, so that what is judged
        is the file then pinned (see agent.pins). Returns them by cleaned path, or a refusal."""
        if self.config.pins is None:
            return {}, None
        paths = [i for i in intents if isinstance(i, HostPath)]
        if not paths:
            return {}, None
        if self._protected_on_loop is None:
            self._protected_on_loop = await asyncio.to_thread(self._protected_root_held)
        if self._protected_on_loop and all(i.source in self._protected_set for i in paths):
            # The usual socket mount: a protected socket only root can change, no thread trip.
            return {}, None
        return await asyncio.to_thread(_hold_all, intents, self.config.pins)

    async def _pin_held(self, held: dict[str, Held], skip: set[str]) -> dict[str, str] | Decision:
        """Pin each held source (but those in `skip`): cleaned path -> pin path."""
        board = self.config.pins
        assert board is not None
        wanted = [h for key, h in held.items() if key not in skip]
        if not wanted:
            return {}
        return await asyncio.to_thread(_pin_all, board, wanted)

    async def _moved_pins(
        self, intents: tuple[MountIntent, ...]
    ) -> dict[str, tuple[PinRecord, Held]]:
        """A stored container's pins whose source leads to another file now, held."""
        board = self.config.pins
        if board is None:
            return {}
        below = str(board.root) + "/"
        pins = {
            clean_host_path(i.source)
            for i in intents
            if isinstance(i, HostPath) and clean_host_path(i.source).startswith(below)
        }
        if not pins:
            return {}
        return await asyncio.to_thread(_moved_pins, board, pins)

    async def _repin(
        self, moved: dict[str, tuple[PinRecord, Held]], host: HostFacts
    ) -> Decision | None:
        """Point each moved pin at the file its source leads to now (None: done), if any
        container may mount that file: no socket (not even the container-facing one) and no
        sensitive path, whatever the image and its exceptions, as other containers may name
        the same pin (`--volumes-from`) and the engine restarts them by itself."""
        board = self.config.pins
        assert board is not None
        for record, held in moved.values():
            if _inside(held.found.resolved, str(board.root)):
                return _names_a_pin(HostPath(record.source, f"the bind pinned at {record.pin}"))
        intents = tuple(HostPath(pin, f"the bind of {r.source}") for pin, (r, _) in moved.items())
        sources = {pin: r.source for pin, (r, _) in moved.items()}
        for exposure in find_exposures(intents, host):
            return deny(
                403,
                f"the bind source {sources.get(exposure.source, exposure.source)} now leads to "
                f"the {exposure.socket.label} {exposure.socket.path}; eci-agent keeps the file it "
                "was pinned as (remove the container and create it again to change it)",
                "repin-refused",
            )
        facts = await self._isolation_facts(intents, host, set())
        for violation in mount_violations(intents, facts):
            return deny(
                403,
                f"{violation.via} now leads to a path no container may mount: {violation.why}; "
                "eci-agent keeps the file it was pinned as (remove the container and create it "
                "again to change it)",
                "repin-refused",
            )
        try:
            for record, held in moved.values():
                await asyncio.to_thread(board.repin, record, held)
        except PinError as err:
            return deny(403, str(err), "unpinnable-bind")
        return None

    async def _host_facts(
        self, intents: tuple[MountIntent, ...], held: dict[str, Held] | None = None
    ) -> HostFacts:
        volumes: dict[str, VolumeFact] = {}
        containers: dict[str, ContainerFact] = {}
        for intent in intents:
            if isinstance(intent, NamedVolume):
                volumes[intent.name] = await self._volume(intent.name)
            elif isinstance(intent, FromContainer):
                fact = await self._container_mounts(intent.container)
                containers[intent.container] = fact
                for inner in fact.mounts:
                    if isinstance(inner, NamedVolume) and inner.name not in volumes:
                        volumes[inner.name] = await self._volume(inner.name)
        partial = HostFacts((), {}, volumes, containers)
        needed = host_paths_needed(intents, partial)

        found = await self._host_paths(needed, held)
        return HostFacts(found.protected, found.paths, volumes, containers, found.procfs)

    async def _host_paths(self, needed: set[str], held: dict[str, Held] | None = None) -> HostFacts:
        """The protected sockets, the host procfs mounts and the paths `needed`, resolved now.

        The mount table (procfs) and the protected sockets are read on the loop when only
        root can change where those paths lead (`only_root_can_change`, asked once): then
        nothing can make them block. A path a client names could (a hung network or FUSE
        mount), so any other path is resolved in a worker thread, after them. The usual
        socket mount names one of the protected paths itself and is judged on that same
        resolution, with no thread trip."""
        if self._protected_on_loop is None:
            self._protected_on_loop = await asyncio.to_thread(self._protected_root_held)
        pinned: dict[str, ResolvedPath] = {}
        if held:
            # A held source is judged as the open file it is (which is what gets pinned).
            for p in needed:
                h = held.get(clean_host_path(p))
                if h is not None:
                    pinned[p] = dataclasses.replace(h.found, source=p)
            needed = needed.difference(pinned)
        if self._protected_on_loop:
            table = self._mounts.current()
            protected, paths = protected_sockets(self._protected_paths, table)
            other = needed.difference(paths)
            if other:
                paths.update(await asyncio.to_thread(resolve_all, other))
        else:
            table, protected, paths = await asyncio.to_thread(self._all_host_paths, needed)
        found = {p: paths[p] for p in needed}
        if self.config.pins is not None:
            below = str(self.config.pins.root) + "/"
            ours = [p for p, r in found.items() if clean_host_path(r.resolved).startswith(below)]
            if ours:
                found.update(await asyncio.to_thread(_as_pinned, self.config.pins, ours, found))
        return HostFacts(protected, {**found, **pinned}, procfs=procfs_mount_points(table))

    async def _volume(self, name: str) -> VolumeFact:
        try:
            info = await self.engine.inspect_volume(name)
        except NotFound:
            return VolumeFact(name, exists=False)
        try:
            mount = local_volume_mount(info.get("Driver") or "", info.get("Options") or {}, name)
        except UnreadableMount as err:
            return VolumeFact(name, exists=True, error=str(err))
        return VolumeFact(name, exists=True, device=mount.source if mount else None)

    async def _container_mounts(self, name: str) -> ContainerFact:
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return ContainerFact(name, error="no such container")
        except EngineError as err:
            return ContainerFact(name, error=str(err))
        return _container_fact(name, info)

    async def _local_image(self, name: str) -> LocalImage | None:
        try:
            info = await self.engine.inspect_image(name)
        except NotFound:
            return None
        return _local_image(info)

    async def _derived_bases(self, image_list: Any) -> tuple[LocalImage, ...]:
        listed = await self.engine.images()
        bases: list[LocalImage] = []
        for summary in listed:
            repo_digests = summary.get("RepoDigests") or []
            if not any(_digest_listed(image_list, d) for d in repo_digests):
                continue
            image_id = summary["Id"]
            cached = self._image_cache.get(image_id)
            if cached is None:
                cached = await self._local_image(image_id)
                if cached is None:
                    continue
                self._image_cache[image_id] = cached
            bases.append(cached)
        return tuple(bases)

    async def _registry_answers(
        self, queries: Iterable[RegistryQuery]
    ) -> dict[RegistryQuery, RegistryAnswer]:
        # From memory when fresh; otherwise looked up (cached, refreshed, offline fallback).
        return await self.config.registry.answers(tuple(queries))

    def _record(
        self, request: Request, decision: Decision, peer: Peer, eff: Effective, would: bool = False
    ) -> None:
        sender = sender_of(peer.uid, peer.identity.container, peer.listener)
        recorded, owed = self._limiter.admit(sender, time.time())
        for summary in owed:
            self._record_suppressed(summary)
        if not recorded:
            self._flush_later()
            return
        events_log.warning(
            "%s",
            json.dumps(
                {
                    "event": "would-deny" if would else "denied",
                    "time": time.time(),
                    "rule": decision.rule,
                    "status": decision.status,
                    "method": request.head.method,
                    "path": request.head.target,
                    "message": decision.message,
                    "peer": {
                        "pid": peer.pid,
                        "uid": peer.uid,
                        "via": peer.listener,
                        "container": peer.identity.container,
                    },
                    "details": dict(decision.details),
                    "settings_sha256": eff.settings.sha256,
                }
            ),
        )
        store = self.config.events
        if store is None:
            return
        details = dict(decision.details)
        container = details.pop("container", None) or peer.identity.container
        commands = details.pop("commands", "")
        store.record_denial(
            method=request.head.method,
            path=request.head.target,
            rule=decision.rule,
            status=decision.status,
            message=decision.message,
            peer=peer,
            settings_sha256=eff.settings.sha256,
            image=details.pop("image", None) or None,
            container_id=None if container == "unknown" else container,
            container_name=details.pop("container_name", None),
            commands=tuple(c for c in commands.split(",") if c),
            extra=details,
            decision="would-deny" if would else "denied",
        )

    def _record_suppressed(self, summary: Suppressed) -> None:
        uid, container, listener = cast(tuple[int | None, str | None, str], summary.sender)
        who = f"uid {uid}" + (f" in container {container[:12]}" if container else "")
        message = (
            f"{summary.count} refused request(s) from {who} via the {listener} socket since "
            f"{format_time(summary.since)} were counted, not recorded one by one (more than "
            f"{self._limiter.burst} at once or {self._limiter.rate:g} a second)"
        )
        events_log.warning("%s", json.dumps({"event": Kind.DENIALS_SUPPRESSED.value,
                                             "message": message}))  # fmt: skip
        store = self.config.events
        if store is not None:
            store.record(
                Kind.DENIALS_SUPPRESSED,
                message,
                uid=uid,
                container_id=container,
                listener=listener,
                extra={"count": summary.count, "since": format_time(summary.since)},
            )

    def _flush_later(self) -> None:
        """Report counts of senders gone quiet, a little after they went quiet."""
        if self._flush_at is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_at = loop.call_later(self._limiter.quiet + 0.1, self._flush_due)

    def flush_suppressed(self) -> None:
        """At shutdown: record every count of refusals not yet reported."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        for summary in self._limiter.take_all():
            self._record_suppressed(summary)

    def _flush_due(self) -> None:
        self._flush_at = None
        for summary in self._limiter.due(time.time()):
            self._record_suppressed(summary)
        if self._limiter.pending():
            self._flush_later()


def _forget_task(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # read: an unused failure is no "never retrieved" warning

    return done


def _preexisting(
    found: list[Violation], engine: EngineIsolation, info: dict[str, Any]
) -> list[Violation]:
    """What a stored container config asks for, less what the engine fills in by itself: on
    cgroup v1 the engine's default cgroup namespace is the host's (`CgroupnsMode: host`)."""
    if str(info.get("HostConfig", {}).get("CgroupnsMode")) == "host" and engine.cgroup_v1:
        return [v for v in found if v.token != "--cgroupns=host"]
    return found


def _audited(decision: Decision) -> Decision:
    """What audit mode forwards instead of `decision` (a refusal): the same request, allowed.

    A socket-mount create keeps its rewrite to the container-facing socket and the image check
    after the create (see `_judge_create_socket`)."""
    return Decision(
        True,
        rule=f"audited:{decision.rule}",
        expect_image_id=decision.expect_image_id,
        target=decision.target,
        inspect=decision.inspect,
        details={**decision.details, "would_deny": decision.message},
    )


def _attributed(decision: Decision, client: ClientContainer) -> Decision:
    """The decision with who asked (container ID, name, image) in its details."""
    return dataclasses.replace(decision, details={**decision.details, **client.details()})


def _compose_labelled(request: Request) -> bool:
    body = request.body or b""
    if not body.strip():
        return False
    try:
        doc = gojson.loads_bytes(body)
    except gojson.JSONSyntaxError:
        return False  # refused as unreadable further on
    return isinstance(doc, GoObject) and compose_labelled(doc)


def _no_such_container(name: str) -> Decision:
    """The engine's own answer, in its words, for a container it does not know."""
    return Decision(False, 404, f"No such container: {name}", "no-such-container")


def _crossing_verb(route: Route) -> str:
    """How the docker CLI's user would name a request into another container."""
    if route.template.endswith("/exec"):
        return "docker exec into"
    if route.template.endswith("/archive"):
        return "docker cp into"
    return "docker attach to"


@dataclass(frozen=True, slots=True)
class _Into:
    """A container client's request into another container, allowed: forward it to `id`."""

    id: str


def _pinned_into(
    decision: Decision, target: Target, raw_target: str, match: RouteMatch, container_id: str
) -> Decision:
    """`decision`, forwarded to the container judged by `_judge_crossing` (by ID); refused if
    the request's own checks judged another one (renamed in between)."""
    if not decision.allowed:
        return decision
    suffix = match.route.template.removeprefix("/containers/{id}/")
    wanted = f"/containers/{container_id}/{suffix}"
    if decision.target is not None:
        if decision.target.partition("?")[0].endswith(wanted):
            return decision
        return deny(
            409,
            f"container {match.params.get('id', '')} changed while this request was judged; "
            "send it again",
            "container-moved",
        )
    return _pin(decision, target, raw_target, wanted)


def _pin(decision: Decision, target: Target, raw_target: str, path: str) -> Decision:
    """An allowed decision that forwards `path` (the judged object by ID) instead."""
    if not decision.allowed:
        return decision
    prefix = f"/v{target.version}" if target.version is not None else ""
    query = raw_target.partition("?")[2]
    return dataclasses.replace(decision, target=prefix + path + ("?" + query if query else ""))


def _container_fact(name: str, info: dict[str, Any]) -> ContainerFact:
    """A container's mounts from its inspect data: mount points and `HostConfig.Binds`."""
    mounts: list[MountIntent] = []
    for i, m in enumerate(info.get("Mounts") or []):
        where = f"{name}.Mounts[{i}]"
        if m.get("Type") == "bind" and m.get("Source"):
            mounts.append(HostPath(m["Source"], where, rewritable=False))
        elif m.get("Type") == "volume" and m.get("Name"):
            mounts.append(NamedVolume(m["Name"], where))
    for i, spec in enumerate((info.get("HostConfig") or {}).get("Binds") or []):
        intent = parse_bind_spec(spec, f"{name}.HostConfig.Binds[{i}]")
        if isinstance(intent, HostPath):
            mounts.append(HostPath(intent.source, intent.via, rewritable=False))
        elif intent is not None:
            mounts.append(intent)
    return ContainerFact(name, tuple(mounts))


def _local_image(info: dict[str, Any]) -> LocalImage:
    return LocalImage(
        id=info["Id"],
        repo_tags=tuple(info.get("RepoTags") or ()),
        repo_digests=tuple(info.get("RepoDigests") or ()),
        layers=tuple((info.get("RootFS") or {}).get("Layers") or ()),
    )


def _digest_listed(image_list: Any, repo_digest: str) -> bool:
    try:
        ref = parse_image_ref(repo_digest)
    except InvalidReference:
        return False
    return any(p.matches_repository(ref.domain, ref.path) for p in image_list.images)


def _display_name(image_text: str) -> str:
    try:
        return parse_image_ref(image_text).name
    except InvalidReference:
        return image_text


def _rewrite_bind(spec: Any, sources: Mapping[str, str]) -> Any:
    if not isinstance(spec, str):
        return spec
    intent = parse_bind_spec(spec, "")
    if isinstance(intent, HostPath) and intent.source in sources:
        return sources[intent.source] + spec[len(intent.source) :]
    return spec


def _pin_service_networks(body: GoObject, ids: dict[str, str]) -> str:
    """The service spec with each network `Target` in `ids` (both lists) replaced by its ID,
    written once under the canonical names, as the engine reads the merged view."""

    def pinned(networks: Any) -> Any:
        if not isinstance(networks, list):
            return networks
        out: list[Any] = []
        for net in networks:
            if isinstance(net, GoObject):
                t = net.field("Target", "")
                if isinstance(t, str) and t in ids:
                    net = gojson.with_field(net, "Target", ids[t])
            out.append(net)
        return out

    task = body.field("TaskTemplate")
    if isinstance(task, GoObject) and isinstance(task.field("Networks"), list):
        task = gojson.with_field(task, "Networks", pinned(task.field("Networks")))
        body = gojson.with_field(body, "TaskTemplate", task)
    if isinstance(body.field("Networks"), list):
        body = gojson.with_field(body, "Networks", pinned(body.field("Networks")))
    return gojson.dumps(body)


def _rewrite_sources(host_config: GoObject, sources: Mapping[str, str]) -> GoObject:
    """`host_config` (or a service's ContainerSpec) with each bind source in `sources` (as
    written) replaced by the path it maps to, in `Binds` and in `Mounts` of type bind.

    The rewritten fields are written once under their canonical names, so the engine reads
    exactly the merged view the policy judged.
    """
    binds = host_config.field("Binds")
    if isinstance(binds, list):
        host_config = gojson.with_field(
            host_config, "Binds", [_rewrite_bind(b, sources) for b in binds]
        )
    mounts = host_config.field("Mounts")
    if isinstance(mounts, list):
        new_mounts: list[Any] = []
        for m in mounts:
            if isinstance(m, GoObject) and m.field("Type") == "bind":
                source = m.field("Source")
                if isinstance(source, str) and source in sources:
                    m = gojson.with_field(m, "Source", sources[source])
            new_mounts.append(m)
        host_config = gojson.with_field(host_config, "Mounts", new_mounts)
    return host_config


def _rewrite_create(body: GoObject, sources: Mapping[str, str]) -> str:
    """The create body with each bind source in `sources` replaced (`_rewrite_sources`)."""
    host_config = body.field("HostConfig")
    assert isinstance(host_config, GoObject)
    return gojson.dumps(
        gojson.with_field(body, "HostConfig", _rewrite_sources(host_config, sources))
    )


def _socket_map(socket_path: str, sources: Iterable[str]) -> dict[str, str]:
    return dict.fromkeys(sources, socket_path)


def _service_mounts(container_spec: GoObject) -> tuple[MountIntent, ...]:
    """A service's mounts (its ContainerSpec's `Mounts`), read as a create's."""
    wrapper = GoObject((("Mounts", container_spec.field("Mounts", None)),))
    return create_mounts(GoObject((("HostConfig", wrapper),)))


def _pin_map(intents: Iterable[MountIntent], pins: Mapping[str, str]) -> dict[str, str]:
    """Each host path as written in the request -> the pin of the file it was held as."""
    return {
        i.source: pins[clean_host_path(i.source)]
        for i in intents
        if isinstance(i, HostPath) and clean_host_path(i.source) in pins
    }


def _with_pins(decision: Decision, pins: Mapping[str, str]) -> Decision:
    return dataclasses.replace(
        decision,
        details={**decision.details, "pinned": str(len(pins))},
        pins=tuple(sorted(pins.values())),
    )


#: Where a held host path can be replaced by its pin: a bind's source in `Binds` or in
#: `Mounts` (a container's HostConfig, a service's ContainerSpec), a volume's `device`.
def _pinnable(intent: HostPath) -> bool:
    via = intent.via
    if via == "DriverOpts":
        return True
    if not intent.rewritable:
        return False
    return via.startswith("HostConfig.Binds[") or (
        via.startswith("HostConfig.Mounts[") and via.endswith("].Source")
    )


#: Pins one request may ask for (each is a mount on the host: bounded).
MAX_PINS_PER_REQUEST = 64


def _inside(path: str, folder: str) -> bool:
    path = clean_host_path(path)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _hold_all(
    intents: tuple[MountIntent, ...], board: PinBoard
) -> tuple[dict[str, Held], Decision | None]:
    """In a worker thread: hold every host path in `intents` a user can change.

    One of the agent's pins, named as it is (a service's stored spec sent back by `docker
    service update`, a container made again from its inspect data), is forwarded as it is
    and judged as the file it holds (`_as_pinned`). Anything else inside the pins folder, or
    leading into it, is refused."""
    pins_root = str(board.root)
    held: dict[str, Held] = {}
    try:
        for intent in intents:
            if not isinstance(intent, HostPath):
                continue
            key = clean_host_path(intent.source)
            if _inside(key, pins_root) or _inside(os.path.realpath(key), pins_root):
                if os.path.dirname(key) == pins_root and board.record_of(key) is not None:
                    continue
                release_all(held.values())
                return {}, _names_a_pin(intent)
            if not _pinnable(intent) and needs_pin(intent.source):
                release_all(held.values())
                return {}, _unpinnable(intent)
            if key in held or not needs_pin(intent.source):
                continue
            if len(held) >= MAX_PINS_PER_REQUEST:
                release_all(held.values())
                return {}, deny(
                    403,
                    f"more than {MAX_PINS_PER_REQUEST} bind sources a user other than root "
                    "can change in one request; eci-agent pins each with a mount and bounds "
                    "how many one request makes",
                    "too-many-pins",
                )
            make = intent.via.startswith("HostConfig.Binds[")  # the engine makes it, as root
            held[key] = h = hold(intent.source, make_missing=make)
            if _inside(h.found.resolved, pins_root):
                release_all(held.values())
                return {}, _names_a_pin(intent)
    except MissingSource as err:
        release_all(held.values())
        return {}, bad_request(f'invalid mount config for type "bind": {err}')
    except PinError as err:
        release_all(held.values())
        return {}, deny(403, str(err), "unpinnable-bind")
    return held, None


def _as_pinned(
    board: PinBoard, paths: list[str], found: Mapping[str, ResolvedPath]
) -> dict[str, ResolvedPath]:
    """In a worker thread: a path leading to one of our pins, judged as the file it holds
    (resolved as it was when pinned, so `/etc/x` held at a pin is still inside `/etc`). One
    without a record is judged as its own path."""
    out = {}
    for p in paths:
        inside = clean_host_path(found[p].resolved)[len(str(board.root)) + 1 :]
        token, _, rest = inside.partition("/")
        record = board.record_of(os.path.join(board.root, token))
        if record is not None:
            resolved = os.path.join(record.resolved, rest) if rest else record.resolved
            out[p] = dataclasses.replace(found[p], resolved=resolved)
    return out


def _moved_pins(board: PinBoard, pins: set[str]) -> dict[str, tuple[PinRecord, Held]]:
    """In a worker thread: see `Gate._moved_pins`."""
    out: dict[str, tuple[PinRecord, Held]] = {}
    for pin in sorted(pins):
        record = board.record_of(pin)
        held = board.moved(record) if record is not None else None
        if record is not None and held is not None:
            out[pin] = (record, held)
    return out


def _left_unpinned(after: tuple[MountIntent, ...], held: Mapping[str, Held]) -> HostPath | None:
    """A held path the forwarded body still names (a second line: every route to it must
    have been given the pin, or the engine would resolve it again later)."""
    for intent in after:
        if isinstance(intent, HostPath) and clean_host_path(intent.source) in held:
            return intent
    return None


def _unpinnable(intent: HostPath) -> Decision:
    return deny(
        403,
        f"the host path {intent.source} ({intent.via}) can be changed by a user other than "
        "root, so eci-agent must hold it still, which it can only do for a bind given in "
        "HostConfig.Binds or HostConfig.Mounts (docker run -v or --mount type=bind) or a "
        "volume's device option",
        "unpinnable-bind",
    )


def _release_pins(board: PinBoard, pins: tuple[str, ...]) -> None:
    for pin in pins:
        record = board.record_of(pin)
        if record is None:
            continue
        try:
            board.release(record)
        except OSError as err:
            log.warning("pins: cannot release %s: %s", pin, err)


def _names_a_pin(intent: HostPath) -> Decision:
    return deny(
        403,
        f"{intent.source} ({intent.via}) is, or leads into, a pin eci-agent made for another "
        "bind; bind the folder or file it holds itself (eci-agent pins list names it)",
        "names-a-pin",
    )


def _pin_all(board: PinBoard, wanted: list[Held]) -> dict[str, str] | Decision:
    """In a worker thread: pin each held file; all or none."""
    made = []
    try:
        for h in wanted:
            made.append((clean_host_path(h.source), board.pin(h)))
    except PinError as err:
        for _, record in made:
            try:
                board.release(record)
            except OSError as release_err:
                log.warning("pins: cannot undo %s: %s", record.pin, release_err)
        return deny(403, str(err), "unpinnable-bind")
    return {key: record.pin for key, record in made}
