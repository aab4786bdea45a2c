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
    exposed_socket,
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


ALLOW = Decision(True, rule="pass")


def deny(status: int, message: str, rule: str, **details: str) -> Decision:
    return Decision(False, status, PREFIX + message, rule, details=details)


def bad_request(message: str, rule: str = "bad-request") -> Decision:
    """A request the proxy cannot read with certainty: refused, never forwarded on a guess."""
    return Decision(False, 400, PREFIX + message, rule)


@dataclass(frozen=True, slots=True)
class VolumeFact:
    """A named volume as the engine reports it; `exists` False means it would be created."""

    name: str
    exists: bool
    device: str | None = None


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


@dataclass(frozen=True, slots=True)
class HostFacts:
    protected: tuple[ProtectedSocket, ...]
    paths: Mapping[str, ResolvedPath]
    volumes: Mapping[str, VolumeFact] = field(default_factory=dict)
    containers: Mapping[str, ContainerFact] = field(default_factory=dict)


class MissingFact(LookupError):
    """The shell did not gather a fact the policy needs: fail closed."""


def host_paths_needed(intents: tuple[MountIntent, ...], facts: HostFacts | None = None) -> set[str]:
    """The host paths the shell must resolve (after volume and container facts are known)."""
    needed: set[str] = set()
    for intent in intents:
        if isinstance(intent, HostPath):
            needed.add(intent.source)
        elif isinstance(intent, NamedVolume) and facts is not None:
            vol = facts.volumes.get(intent.name)
            if vol is not None and vol.device:
                needed.add(vol.device)
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
            hit = exposed_socket(_resolved(facts, intent.source), facts.protected)
            if hit is not None:
                sock, exact = hit
                found.append(Exposure(intent.via, intent.source, sock, exact, intent.rewritable))
        elif isinstance(intent, NamedVolume):
            vol = facts.volumes.get(intent.name)
            if vol is None:
                raise MissingFact(f"volume {intent.name!r} was not looked up")
            if vol.device:
                hit = exposed_socket(_resolved(facts, vol.device), facts.protected)
                if hit is not None:
                    found.append(Exposure(intent.via, vol.device, hit[0], hit[1], False))
        elif isinstance(intent, FromContainer):
            ctr = facts.containers.get(intent.container)
            if ctr is None:
                raise MissingFact(f"container {intent.container!r} was not looked up")
            if ctr.error is not None:
                raise MissingFact(f"cannot read the mounts of {intent.container!r}: {ctr.error}")
            if depth > 0:
                continue
            for inner in find_exposures(ctr.mounts, facts, depth=depth + 1):
                found.append(Exposure(intent.via, inner.source, inner.socket, inner.exact, False))
    return tuple(found)


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
            f"registry's digest (remove it and pull it again: docker image rm {verdict.stale[0]}"
            f" && docker pull {verdict.stale[0]})"
        )
    if verdict.unknown:
        return (
            "image digest could not be verified against the registry ("
            + "; ".join(verdict.unknown)
            + ")"
        )
    return "image is not in the allowed list"


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
    for exp in exposures:
        if not exp.exact:
            return deny(
                403,
                f'docker socket mount denied for container with image "{image_name}"; '
                f"{exp.via} mounts {exp.source}, a folder that holds the {exp.socket.label} "
                f"{exp.socket.path}; mount the socket file itself instead",
                "socket-mount-folder",
                via=exp.via,
            )
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
