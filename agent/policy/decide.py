"""Decisions: the verdict on one request, and the words the user sees when it is refused.

Theory of operation
-------------------
The proxy shell drives a request through these pure steps, gathering facts in between:

1. `agent.policy.routes` maps the target to an engine route (or refuses it);
2. `agent.policy.mounts` lists what a create asks to mount;
3. `find_exposures` says which of those mounts reach an engine socket, given what the shell
   found on the host (resolved paths, inodes) and in the engine (volumes, other containers);
4. with an exposure, `agent.policy.images.judge_image` judges the image by digest, and
   `decide_socket_mount` turns all of it into a `Decision`: allow (with the socket source
   rewritten to the agent's container-facing socket, and the image ID the created container
   must have), or deny with the seeds' wording.

Denials are errors the docker CLI prints as `Error response from daemon: <message>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.policy.images import ImageVerdict
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    MountIntent,
    NamedVolume,
    ProtectedSocket,
    ResolvedPath,
    UnreadableMount,
    clean_host_path,
    exposed_socket,
    reaches_procfs,
)

PREFIX = "enhanced container isolation: "


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Replace the socket source at `via` (a JSON path into the body) with `new_source`."""

    via: str
    old_source: str
    new_source: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request.

    `status`/`message` form the engine-style error for a refusal. For an allowed create that
    mounts the socket, `rewrites` say how to swap the socket source and `expect_image_id` is
    the image the created container must have (checked after the create, closing the window
    in which a re-tag could swap the image).
    """

    allowed: bool
    status: int = 200
    message: str = ""
    rule: str = ""
    rewrites: tuple[Rewrite, ...] = ()
    expect_image_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    #: The request target to forward instead of the client's: the object that was judged,
    #: named by ID, so a rename between the check and the engine's own lookup changes nothing.
    target: str | None = None
    #: What the connection must keep reading after an upgrade: "grpc" (BuildKit's requests
    #: are judged one by one), "grpc-audit" (the same, recorded but let through).
    inspect: str | None = None
    #: False for a refusal audit mode must not forward either (it cannot be forwarded safely).
    auditable: bool = True
    #: An allow that rests on the request's method and route alone, with ECI on: a host
    #: client's request head byte for byte equal to this one gets the same answer under any
    #: settings, so the proxy may remember it (`agent.proxy.connection.KnownHeads`).
    by_route: bool = False
    #: The pins this request was forwarded with (agent.pins): released at once if the engine
    #: refuses it (an answer of 300 or more), rather than at the next sweep.
    pins: tuple[str, ...] = ()


ALLOW = Decision(True, rule="pass")
#: ALLOW, for a request judged by its method and route alone (see `Decision.by_route`).
ALLOW_BY_ROUTE = Decision(True, rule="pass", by_route=True)


def deny(status: int, message: str, rule: str, **details: str) -> Decision:
    return Decision(False, status, PREFIX + message, rule, details=details)


def bad_request(message: str, rule: str = "bad-request") -> Decision:
    """A request the proxy cannot read with certainty: refused, never forwarded on a guess."""
    return Decision(False, 400, PREFIX + message, rule)


@dataclass(frozen=True, slots=True)
class VolumeFact:
    """A named volume as the engine reports it; `exists` False means it would be created.

    `device` is the host path a local bind volume mounts; `error` says why the volume's
    options cannot be judged (see `agent.policy.mounts.local_volume_mount`).
    """

    name: str
    exists: bool
    device: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerFact:
    """Another container's mounts (for `VolumesFrom`); `error` when it could not be read."""

    name: str
    mounts: tuple[MountIntent, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Exposure:
    """A mount that reaches an engine socket."""

    via: str
    source: str
    socket: ProtectedSocket
    exact: bool  # the socket itself, not a folder above it
    rewritable: bool
    reason: str = ""  # how a folder reaches it, when not by holding it by name


@dataclass(frozen=True, slots=True)
class HostFacts:
    protected: tuple[ProtectedSocket, ...]
    paths: Mapping[str, ResolvedPath]
    volumes: Mapping[str, VolumeFact] = field(default_factory=dict)
    containers: Mapping[str, ContainerFact] = field(default_factory=dict)
    procfs: tuple[str, ...] = ()  # where a procfs is mounted on the host


class MissingFact(LookupError):
    """The shell did not gather a fact the policy needs: fail closed."""


def host_paths_needed(intents: tuple[MountIntent, ...], facts: HostFacts | None = None) -> set[str]:
    """The host paths the shell must resolve (after volume and container facts are known)."""
    needed: set[str] = set()
    for intent in intents:
        if isinstance(intent, HostPath):
            needed.update(_path_forms(intent.source))
        elif isinstance(intent, NamedVolume) and facts is not None:
            vol = facts.volumes.get(intent.name)
            if vol is not None and vol.device:
                needed.update(_path_forms(vol.device))
        elif isinstance(intent, FromContainer) and facts is not None:
            ctr = facts.containers.get(intent.container)
            if ctr is not None:
                needed |= host_paths_needed(ctr.mounts, facts)
    return needed


def _resolved(facts: HostFacts, source: str) -> ResolvedPath:
    found = facts.paths.get(source)
    if found is None:
        raise MissingFact(f"host path {source!r} was not resolved")
    return found


def find_exposures(
    intents: tuple[MountIntent, ...], facts: HostFacts, *, depth: int = 0
) -> tuple[Exposure, ...]:
    """The mounts among `intents` that reach a protected socket (see `exposed_socket`)."""
    found: list[Exposure] = []
    for intent in intents:
        if isinstance(intent, HostPath):
            exp = _path_exposure(intent.via, intent.source, intent.rewritable, facts)
            if exp is not None:
                found.append(exp)
        elif isinstance(intent, NamedVolume):
            vol = facts.volumes.get(intent.name)
            if vol is None:
                raise MissingFact(f"volume {intent.name!r} was not looked up")
            if vol.error is not None:
                raise UnreadableMount(f"{intent.via}: volume {intent.name!r}: {vol.error}")
            if vol.device:
                exp = _path_exposure(intent.via, vol.device, False, facts)
                if exp is not None:
                    found.append(exp)
        elif isinstance(intent, FromContainer):
            ctr = facts.containers.get(intent.container)
            if ctr is None:
                raise MissingFact(f"container {intent.container!r} was not looked up")
            if ctr.error is not None:
                raise MissingFact(f"cannot read the mounts of {intent.container!r}: {ctr.error}")
            if depth > 0:
                continue
            for inner in find_exposures(ctr.mounts, facts, depth=depth + 1):
                found.append(
                    Exposure(
                        intent.via, inner.source, inner.socket, inner.exact, False, inner.reason
                    )
                )
    return tuple(found)


def _path_forms(source: str) -> tuple[str, ...]:
    """A source as given, and lexically cleaned first: the engine cleans bind sources
    (`path.Clean`) before the kernel follows symlinks, so `/a/link/../x` is `/a/x` to it, while
    resolving it as written gives `<link target>/../x`. Both are judged."""
    cleaned = clean_host_path(source) if source.startswith("/") else source
    return (source,) if cleaned == source else (source, cleaned)


def _path_exposure(via: str, source: str, rewritable: bool, facts: HostFacts) -> Exposure | None:
    for form in _path_forms(source):
        found = _form_exposure(via, source, form, rewritable, facts)
        if found is not None:
            return found
    return None


def _form_exposure(
    via: str, source: str, form: str, rewritable: bool, facts: HostFacts
) -> Exposure | None:
    path = _resolved(facts, form)
    hit = exposed_socket(path, facts.protected)
    if hit is not None:
        sock, exact = hit
        reason = ""
        if not exact and sock.links > 1 and path.is_dir:
            reason = (
                f"the {sock.label} {sock.path} has {sock.links} hard links, so this folder of "
                "its filesystem may hold one"
            )
        return Exposure(via, source, sock, exact, rewritable, reason)
    procfs = reaches_procfs(path, facts.procfs)
    if procfs is not None and facts.protected:
        sock = facts.protected[0]
        reason = (
            f"it exposes the host procfs at {procfs}, whose /proc/<pid>/root leads to the "
            f"{sock.label} {sock.path}"
        )
        return Exposure(via, source, sock, False, rewritable, reason)
    return None


def image_denied_message(image_name: str, why: str, settings_where: str) -> str:
    return (
        f'docker socket mount denied for container with image "{image_name}"; {why}; if you '
        f"wish to allow it, configure the docker socket image list in {settings_where}"
    )


def _why_not(verdict: ImageVerdict) -> str:
    if verdict.stale:
        refs = ", ".join(verdict.stale)
        return (
            f"image is not in the allowed list: the local copy of {refs} no longer matches the "
            f"registry's digest, the tag has moved on since it was pulled (fix: eci-agent repull "
            f"{verdict.stale[0]}, or docker image rm {verdict.stale[0]} && docker pull "
            f"{verdict.stale[0]})"
        )
    if verdict.unknown:
        return (
            "image digest could not be verified against the registry ("
            + "; ".join(verdict.unknown)
            + ")"
        )
    return "image is not in the allowed list"


def _folder_denial(exposures: tuple[Exposure, ...], image_name: str) -> Decision | None:
    for exp in exposures:
        if exp.exact:
            continue
        if exp.reason:
            what = f"{exp.via} mounts {exp.source}: {exp.reason}"
        else:
            what = (
                f"{exp.via} mounts {exp.source}, a folder that holds the {exp.socket.label} "
                f"{exp.socket.path}"
            )
        return deny(
            403,
            f'docker socket mount denied for container with image "{image_name}"; {what}; '
            "mount the socket file itself instead",
            "socket-mount-folder",
            via=exp.via,
        )
    return None


def decide_start(
    exposures: tuple[Exposure, ...],
    image_name: str,
    verdict: ImageVerdict | None,
    *,
    container_socket: str,
    settings_where: str,
) -> Decision:
    """Judge starting (or restarting) a container whose mounts, resolved now, reach a socket.

    A bind source is a path the engine resolves again at every start: a symlink swapped
    since the create, or a container made without eci-agent, must not get the socket. The only
    socket a container may hold is the agent's container-facing one, put there by an allowed
    create, and only while its image is still allowed (`verdict`, None if not inspectable).
    """
    if not exposures:
        return ALLOW
    folder = _folder_denial(exposures, image_name)
    if folder is not None:
        return folder
    for exp in exposures:
        if exp.socket.path != container_socket:
            return deny(
                403,
                f'docker socket mount denied for container with image "{image_name}"; '
                f"{exp.via} now mounts the {exp.socket.label} {exp.socket.path} itself, which "
                "eci-agent never hands out; remove the container and create it again through "
                "eci-agent",
                "start-raw-socket",
                via=exp.via,
            )
    refused = _image_refusal(image_name, verdict, settings_where, "start-image", "start-image")
    if refused is not None:
        return refused
    return Decision(True, rule="socket-mount-start-allowed")


def _image_refusal(
    image_name: str,
    verdict: ImageVerdict | None,
    settings_where: str,
    unknown_rule: str,
    denied_rule: str,
) -> Decision | None:
    """The 403 for an image the list does not allow (`verdict` None: it could not be
    inspected, so not verified); None when it is allowed."""
    if verdict is None:
        why = "the image could not be inspected, so it cannot be verified"
        return deny(403, image_denied_message(image_name, why, settings_where), unknown_rule)
    if not verdict.allowed:
        return deny(
            403,
            image_denied_message(image_name, _why_not(verdict), settings_where),
            denied_rule,
            reason=verdict.reason,
        )
    return None


def decide_plugin(exposures: tuple[Exposure, ...], plugin: str) -> Decision:
    """Plugins are not containers of the image list: none may mount an engine socket."""
    for exp in exposures:
        how = exp.reason or (
            f"the {exp.socket.label} {exp.socket.path}"
            if exp.exact
            else f"a folder that holds the {exp.socket.label} {exp.socket.path}"
        )
        return deny(
            403,
            f'docker socket mount denied for plugin "{plugin}"; {exp.via} mounts {exp.source} '
            f"({how}); plugins may not mount the engine socket",
            "plugin-socket",
            via=exp.via,
        )
    return ALLOW


def decide_socket_mount(
    exposures: tuple[Exposure, ...],
    image_name: str,
    verdict: ImageVerdict | None,
    *,
    image_id: str | None,
    container_socket: str,
    settings_where: str,
) -> Decision:
    """Judge a create whose mounts reach an engine socket.

    `verdict` None means the image could not be inspected (fail closed).
    """
    if not exposures:
        return ALLOW
    folder = _folder_denial(exposures, image_name)
    if folder is not None:
        return folder
    if verdict is None or image_id is None:
        return deny(
            403,
            image_denied_message(
                image_name,
                "the image could not be inspected, so it cannot be verified",
                settings_where,
            ),
            "socket-mount-image-unknown",
        )
    if not verdict.allowed:
        return deny(
            403,
            image_denied_message(image_name, _why_not(verdict), settings_where),
            "socket-mount-image",
            reason=verdict.reason,
        )
    for exp in exposures:
        if not exp.rewritable:
            return deny(
                403,
                f'docker socket mount denied for container with image "{image_name}"; '
                f"{exp.via} reaches the {exp.socket.label} in a way eci-agent cannot rewrite "
                "(a volume, another container's mounts or a legacy field); bind-mount the "
                "socket file itself in HostConfig so it can be given the container-facing "
                "socket",
                "socket-mount-indirect",
                via=exp.via,
            )
    rewrites = tuple(Rewrite(e.via, e.source, container_socket) for e in exposures)
    return Decision(
        True,
        rule="socket-mount-allowed",
        rewrites=rewrites,
        expect_image_id=image_id,
        details={"entry": verdict.entry or "", "reason": verdict.reason},
    )


def decide_created_image(
    image_name: str, verdict: ImageVerdict | None, settings_where: str
) -> Decision:
    """A socket-mount create judged on an earlier answer about the image name it gives, whose
    container has another image: the name has moved on. Judged again on that image alone (the
    rest of the judgment did not depend on the image). `verdict` None: it cannot be inspected.
    """
    refused = _image_refusal(
        image_name, verdict, settings_where, "socket-mount-image-unknown", "socket-mount-image"
    )
    if refused is not None:
        return refused
    assert verdict is not None  # _image_refusal refuses a missing verdict
    return Decision(
        True,
        rule="socket-mount-allowed",
        details={"entry": verdict.entry or "", "reason": verdict.reason},
    )


def decide_container_peer(
    container: str,
    image_name: str,
    verdict: ImageVerdict | None,
    *,
    settings_where: str,
    listener: str = "host",
) -> Decision:
    """A process inside `container` talks to one of the agent's sockets.

    The HOST-facing one is never handed to a container, so it was reached some other way (a
    hard link inside a bound folder, a folder bound before the agent ran, ...). The container-
    facing one is handed only to containers whose image may mount the socket, but another
    container may reach it through theirs (a shared PID namespace: `/proc/1/root/...`). Either
    way a client gets no more than a socket mount would give it: it is served only while its
    own image is one the image list allows (`verdict`; None when the container or image could
    not be read).
    """
    if verdict is not None and verdict.allowed:
        return ALLOW
    why = (
        _why_not(verdict)
        if verdict is not None
        else "the container's image could not be inspected, so it cannot be verified"
    )
    return deny(
        403,
        f'docker socket mount denied for container with image "{image_name}"; container '
        f"{container[:12]} reached eci-agent's {listener} socket, which containers may use only "
        "when "
        f"their image may mount the engine socket; {why}; if you wish to allow it, configure "
        f"the docker socket image list in {settings_where}",
        "container-peer",
        container=container,
    )
