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
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.policy import gojson
from agent.policy.decide import (
    ALLOW,
    PREFIX,
    ContainerFact,
    Decision,
    HostFacts,
    MissingFact,
    VolumeFact,
    bad_request,
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
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    MountEntry,
    MountIntent,
    NamedVolume,
    ProtectedSocket,
    ResolvedPath,
    UnreadableMount,
    create_mounts,
    exposed_socket,
    local_volume_mount,
    parse_bind_spec,
    parse_mountinfo,
    plugin_mounts,
    procfs_mount_points,
    socket_aliases,
    volume_create_mount,
)
from agent.policy.routes import BadTarget, Target, canonical_target, match_route
from agent.proxy.connection import Request, RequestHead, Verify
from agent.proxy.engine_client import EngineClient, EngineError, NotFound
from agent.proxy.server import Peer
from agent.registry.client import RegistryClient, RegistryError
from agent.settings.model import Effective

log = logging.getLogger("eci_agent.gate")
events_log = logging.getLogger("eci_agent.events")

#: Routes whose JSON body the policy reads.
BODY_ROUTES = frozenset(
    {
        "POST /containers/create",
        "POST /containers/{id}/start",
        "POST /volumes/create",
        "POST /services/create",
        "POST /services/{id}/update",
    }
)

#: Routes that (re)start a container: its bind sources are resolved again by the engine then.
START_ROUTES = frozenset({"POST /containers/{id}/start", "POST /containers/{id}/restart"})
PLUGIN_ENABLE = "POST /plugins/{name}/enable"

WELL_KNOWN_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
MOUNTINFO = "/proc/self/mountinfo"
REGISTRY_TTL = 60.0


@dataclass
class GateConfig:
    engine_socket: str
    listen_sockets: tuple[str, ...]
    container_socket: str
    settings_where: Callable[[], str]
    current: Callable[[], Effective]
    registry: RegistryClient = field(default_factory=RegistryClient)


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
        self._registry_cache: dict[RegistryQuery, tuple[float, RegistryAnswer]] = {}
        self._image_cache: dict[str, LocalImage] = {}

    # -- the driver's questions ----------------------------------------------------------------

    def needs_body(self, head: RequestHead) -> bool:
        if not self.config.current().eci_enabled:
            return False
        try:
            target = canonical_target(head.target)
        except BadTarget:
            return False
        match = match_route(head.method, target.path)
        return match is not None and match.route.key in BODY_ROUTES

    async def judge(self, request: Request, peer: Peer) -> tuple[Decision, bytes | None]:
        effective = self.config.current()
        if not effective.eci_enabled:
            return ALLOW, None
        try:
            decision, body = await self._judge(request)
        except MissingFact as err:
            decision, body = deny(503, f"cannot evaluate the policy: {err}", "fail-closed"), None
        except EngineError as err:
            decision = deny(
                503, f"cannot evaluate the policy: the engine answered {err}", "fail-closed"
            )
            body = None
        except Exception as err:  # noqa: BLE001 - fail closed on anything unexpected
            log.exception("policy evaluation failed")
            decision = deny(503, f"cannot evaluate the policy: {err}", "fail-closed")
            body = None
        if not decision.allowed:
            self._record(request, decision, peer, effective)
        return decision, body

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
        try:
            await self.engine.remove_container(container_id, force=True)
        except EngineError as err:
            log.error("cannot remove mismatched container %s: %s", container_id, err)
        decision = deny(
            403,
            "docker socket mount denied: the image changed between the check and the create "
            f"(checked {expected}, created with {actual}); the container was removed",
            "socket-mount-race",
        )
        self._record(verify.request, decision, peer, self.config.current())
        return False, 403, decision.message

    # -- judging --------------------------------------------------------------------------------

    async def _judge(self, request: Request) -> tuple[Decision, bytes | None]:
        head = request.head
        try:
            target = canonical_target(head.target)
        except BadTarget as err:
            return bad_request(f"request target refused: {err}"), None
        match = match_route(head.method, target.path)
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
        except UnreadableMount as err:
            return deny(403, f"cannot judge the mounts: {err}", "unjudgeable-mount"), None
        if key not in BODY_ROUTES:
            return ALLOW, None
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
            return await self._judge_volume_create(doc), None
        if key in ("POST /services/create", "POST /services/{id}/update"):
            if not isinstance(doc, GoObject):
                return bad_request("service body must be a JSON object"), None
            return await self._judge_service(doc), None
        return ALLOW, None  # pragma: no cover - every BODY_ROUTES key is handled above

    async def _judge_create(self, body: GoObject) -> tuple[Decision, bytes | None]:
        try:
            intents = create_mounts(body)
        except UnreadableMount as err:
            return bad_request(f"cannot read the mounts of this create: {err}"), None
        if not intents:
            return ALLOW, None
        facts = await self._host_facts(intents)
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
        image = await self._local_image(image_text)
        if image is None:
            # Let the client pull and retry, as it does when the engine says so.
            return (
                Decision(False, 404, f"No such image: {image_text}", "no-such-image"),
                None,
            )
        verdict = await self._image_verdict(image)
        decision = decide_socket_mount(
            exposures,
            image_name,
            verdict,
            image_id=image.id,
            container_socket=self.config.container_socket,
            settings_where=self.config.settings_where(),
        )
        if not decision.allowed or not decision.rewrites:
            return decision, None
        sources = frozenset(r.old_source for r in decision.rewrites)
        return decision, _rewrite_create(body, self.config.container_socket, sources).encode()

    async def _image_verdict(self, image: LocalImage) -> ImageVerdict:
        settings = self.config.current().settings
        image_list = settings.eci.socket_mount.image_list
        bases: tuple[LocalImage, ...] = ()
        if image_list.allow_derived_images and image.is_local_only:
            bases = await self._derived_bases(image_list)
        answers = await self._registry_answers(registry_queries(image_list, (image, *bases)))
        return judge_image(image_list, image, answers, bases)

    async def _judge_start(self, name: str) -> tuple[Decision, str]:
        """A (re)start: the engine resolves every bind source again, so judge them again.

        Also returns the container's ID, which the start is forwarded with.
        """
        try:
            info = await self.engine.inspect_container(name)
        except NotFound:
            return Decision(False, 404, f"No such container: {name}", "no-such-container"), name
        container_id = info["Id"]
        intents = _container_fact(name, info).mounts
        if not intents:
            return ALLOW, container_id
        facts = await self._host_facts(intents)
        exposures = find_exposures(intents, facts)
        if not exposures:
            return ALLOW, container_id
        image_id = info.get("Image")
        image_text = (info.get("Config") or {}).get("Image") or image_id or ""
        image = await self._local_image(image_id) if image_id else None
        verdict = await self._image_verdict(image) if image is not None else None
        decision = decide_start(
            exposures,
            _display_name(image_text),
            verdict,
            container_socket=self.config.container_socket,
            settings_where=self.config.settings_where(),
        )
        if not decision.allowed and (info.get("HostConfig") or {}).get("AutoRemove"):
            # The engine removes an auto-remove container whose start failed, and `docker run
            # --rm` waits for that removal: do the same, or the client waits forever.
            try:
                await self.engine.remove_container(container_id, v=True, force=True)
            except EngineError as err:
                log.warning("cannot remove refused auto-remove container %s: %s", name, err)
        return decision, container_id

    async def _judge_plugin_enable(self, name: str) -> tuple[Decision, str]:
        """A plugin runs as a container with the mounts its config asks for (and its ID)."""
        try:
            info = await self.engine.inspect_plugin(name)
        except NotFound:
            return Decision(False, 404, f"plugin {name!r} not found", "no-such-plugin"), name
        plugin_id = info["Id"]
        intents = plugin_mounts(info, name)
        if not intents:
            return ALLOW, plugin_id
        facts = await self._host_facts(intents)
        decision = decide_plugin(find_exposures(intents, facts), info.get("Name") or name)
        return decision, plugin_id

    async def _judge_volume_create(self, body: GoObject) -> Decision:
        try:
            mount = volume_create_mount(body)
        except UnreadableMount as err:
            return deny(403, f"cannot judge this volume: {err}", "volume-unjudgeable")
        if mount is None:
            return ALLOW
        device = mount.source
        protected = await asyncio.to_thread(self._protected)
        resolved = await asyncio.to_thread(_resolve, device)
        hit = exposed_socket(resolved, protected)
        if hit is None:
            return ALLOW
        return deny(
            403,
            f"a volume that mounts {device} would expose the {hit[0].label} {hit[0].path}; "
            "volumes cannot carry the engine socket",
            "volume-socket",
        )

    async def _judge_service(self, body: GoObject) -> Decision:
        spec = body.field("TaskTemplate")
        container_spec = spec.field("ContainerSpec") if isinstance(spec, GoObject) else None
        if not isinstance(container_spec, GoObject):
            return ALLOW
        try:
            wrapper = GoObject((("Mounts", container_spec.field("Mounts", None)),))
            intents = tuple(
                i
                for i in create_mounts(GoObject((("HostConfig", wrapper),)))
                if isinstance(i, HostPath | NamedVolume)
            )
        except UnreadableMount as err:
            return bad_request(f"cannot read the service's mounts: {err}")
        if not intents:
            return ALLOW
        facts = await self._host_facts(intents)
        if find_exposures(intents, facts):
            return deny(
                403,
                "swarm services may not mount the engine socket; eci-agent cannot give their "
                "tasks the container-facing socket",
                "service-socket",
            )
        return ALLOW

    # -- facts -----------------------------------------------------------------------------------

    def _protected(self) -> tuple[ProtectedSocket, ...]:
        table = _mount_table()
        paths = [(p, "engine socket") for p in (*WELL_KNOWN_SOCKETS, self.config.engine_socket)] + [
            (p, "eci-agent socket") for p in (*self.config.listen_sockets,)
        ]
        paths.append((self.config.container_socket, "eci-agent container socket"))
        out: list[ProtectedSocket] = []
        seen: set[str] = set()
        for path, label in paths:
            if path in seen:
                continue
            seen.add(path)
            resolved = _resolve(path)
            links = 1
            aliases: tuple[str, ...] = ()
            if resolved.inode is not None:
                dev = resolved.inode[0]
                try:
                    links = os.stat(resolved.resolved).st_nlink
                except OSError:
                    pass
                aliases = socket_aliases(resolved.resolved, (os.major(dev), os.minor(dev)), table)
            out.append(
                ProtectedSocket(
                    path, resolved.resolved, resolved.inode, label, links=links, aliases=aliases
                )
            )
        return tuple(out)

    async def _host_facts(self, intents: tuple[MountIntent, ...]) -> HostFacts:
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
        paths = await asyncio.to_thread(lambda: {p: _resolve(p) for p in needed})
        protected = await asyncio.to_thread(self._protected)
        procfs = procfs_mount_points(await asyncio.to_thread(_mount_table))
        return HostFacts(protected, paths, volumes, containers, procfs)

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
        answers: dict[RegistryQuery, RegistryAnswer] = {}
        now = time.monotonic()
        for query in queries:
            cached = self._registry_cache.get(query)
            if cached is not None and now - cached[0] < REGISTRY_TTL:
                answers[query] = cached[1]
                continue
            try:
                digest = await asyncio.to_thread(
                    self.config.registry.manifest_digest, query.domain, query.path, query.reference
                )
                answer = RegistryAnswer(digest=digest)
                self._registry_cache[query] = (now, answer)
            except RegistryError as err:
                answer = RegistryAnswer(error=str(err))
            answers[query] = answer
        return answers

    def _record(self, request: Request, decision: Decision, peer: Peer, eff: Effective) -> None:
        events_log.warning(
            "%s",
            json.dumps(
                {
                    "event": "denied",
                    "time": time.time(),
                    "rule": decision.rule,
                    "status": decision.status,
                    "method": request.head.method,
                    "path": request.head.target,
                    "message": decision.message,
                    "peer": {"pid": peer.pid, "uid": peer.uid, "via": peer.listener},
                    "settings_sha256": eff.settings.sha256,
                }
            ),
        )


def _pin(decision: Decision, target: Target, raw_target: str, path: str) -> Decision:
    """An allowed decision that forwards `path` (the judged object by ID) instead."""
    if not decision.allowed:
        return decision
    prefix = f"/v{target.version}" if target.version is not None else ""
    query = raw_target.partition("?")[2]
    return dataclasses.replace(decision, target=prefix + path + ("?" + query if query else ""))


def _resolve(path: str) -> ResolvedPath:
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError:
        return ResolvedPath(path, resolved)
    return ResolvedPath(
        path,
        resolved,
        (st.st_dev, st.st_ino),
        stat.S_ISSOCK(st.st_mode),
        stat.S_ISDIR(st.st_mode),
    )


def _mount_table() -> tuple[MountEntry, ...]:
    """This process's mount table (the engine's too, when both run in the host namespace)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return ()


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


def _rewrite_bind(spec: Any, socket_path: str, sources: frozenset[str]) -> Any:
    if not isinstance(spec, str):
        return spec
    intent = parse_bind_spec(spec, "")
    if isinstance(intent, HostPath) and intent.source in sources:
        return socket_path + spec[len(intent.source) :]
    return spec


def _rewrite_create(body: GoObject, socket_path: str, sources: frozenset[str]) -> str:
    """The create body with every socket bind source in `sources` replaced by `socket_path`.

    The rewritten fields are written once under their canonical names, so the engine reads
    exactly the merged view the policy judged.
    """
    host_config = body.field("HostConfig")
    assert isinstance(host_config, GoObject)
    binds = host_config.field("Binds")
    if isinstance(binds, list):
        host_config = gojson.with_field(
            host_config, "Binds", [_rewrite_bind(b, socket_path, sources) for b in binds]
        )
    mounts = host_config.field("Mounts")
    if isinstance(mounts, list):
        new_mounts: list[Any] = []
        for m in mounts:
            if (
                isinstance(m, GoObject)
                and m.field("Type") == "bind"
                and m.field("Source") in sources
            ):
                m = gojson.with_field(m, "Source", socket_path)
            new_mounts.append(m)
        host_config = gojson.with_field(host_config, "Mounts", new_mounts)
    return gojson.dumps(gojson.with_field(body, "HostConfig", host_config))
