"""What a request asks to mount, read from its body the way the engine reads it.

Every route by which a container can get a host path is turned into a `MountIntent`:
`HostConfig.Binds` (`src:dst[:mode]`, where a src without a leading `/` is a named volume),
`HostConfig.Mounts` (bind, volume with inline local-driver options, npipe), the legacy
`Volumes` map (a key with a `:` is read as a bind spec, erring towards seeing one),
`HostConfig.VolumesFrom` (every mount of another container), the same three fields given at
the top level of the body (which engines before Docker 27 still read) and a
`POST /volumes/create` with local-driver options. The proxy shell then resolves host paths
and looks up volumes and containers; `agent.policy.decide` judges the result.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from agent.policy.gojson import MISSING, GoObject


@dataclass(frozen=True, slots=True)
class HostPath:
    """A host path the container would see (a bind source, or a local volume's device)."""

    source: str
    via: str  # where in the request, e.g. "HostConfig.Binds[0]"
    rewritable: bool = True  # the source string can be swapped for another path in place


@dataclass(frozen=True, slots=True)
class NamedVolume:
    """A volume by name; what it holds is only known by asking the engine."""

    name: str
    via: str


@dataclass(frozen=True, slots=True)
class FromContainer:
    """`VolumesFrom`: every mount of another container."""

    container: str
    via: str


MountIntent = HostPath | NamedVolume | FromContainer


class UnreadableMount(ValueError):
    """A mount field whose meaning we cannot be sure of; the request is refused."""


def _as_list(value: Any, where: str) -> list[Any]:
    if value is MISSING or value is None:
        return []
    if not isinstance(value, list):
        raise UnreadableMount(f"{where}: expected an array")
    return value


def parse_bind_spec(spec: str, where: str) -> MountIntent | None:
    """Read one `Binds` entry the way the Linux engine does (`src:dst[:mode]`)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return None  # an anonymous volume at a container path
    if len(parts) > 3:
        raise UnreadableMount(f"{where}: {spec!r} is not src:dst[:mode]")
    source = parts[0]
    if not source:
        raise UnreadableMount(f"{where}: {spec!r} has an empty source")
    if source.startswith("/") or source.startswith("\\") or source[1:3] in (":\\", ":/"):
        return HostPath(source, where)
    return NamedVolume(source, where)


def local_driver_device(driver: Any, options: Any) -> str | None:
    """The host path or device a local-driver volume mounts, if its options name one."""
    if isinstance(driver, str) and driver not in ("", "local"):
        return None
    if not isinstance(options, GoObject):
        return None
    entries = options.entries()
    device = entries.get("device")
    if isinstance(device, str) and device:
        return device
    return None


def _mounts(value: Any, where: str) -> list[MountIntent]:
    intents: list[MountIntent] = []
    for i, mount in enumerate(_as_list(value, where)):
        at = f"{where}[{i}]"
        if mount is None:
            continue
        if not isinstance(mount, GoObject):
            raise UnreadableMount(f"{at}: expected an object")
        kind = mount.field("Type", "")
        source = mount.field("Source", "")
        if not isinstance(kind, str) or not isinstance(source, str):
            raise UnreadableMount(f"{at}: Type and Source must be strings")
        if kind in ("bind", "npipe"):
            intents.append(HostPath(source, f"{at}.Source"))
        elif kind == "volume":
            opts = mount.field("VolumeOptions")
            driver_config = opts.field("DriverConfig") if isinstance(opts, GoObject) else None
            if isinstance(driver_config, GoObject):
                device = local_driver_device(
                    driver_config.field("Name", ""), driver_config.field("Options")
                )
                if device is not None:
                    intents.append(
                        HostPath(device, f"{at}.VolumeOptions.DriverConfig", rewritable=False)
                    )
            if source:
                intents.append(NamedVolume(source, f"{at}.Source"))
        elif kind in ("tmpfs", "image", "cluster"):
            continue
        elif source.startswith("/"):
            # An unknown type the engine may learn later: treat its path as a host path.
            intents.append(HostPath(source, f"{at}.Source"))
    return intents


def create_mounts(body: GoObject) -> tuple[MountIntent, ...]:
    """Every mount a `POST /containers/create` body asks for."""
    intents: list[MountIntent] = []
    host_config = body.field("HostConfig")
    if host_config is not MISSING and host_config is not None:
        if not isinstance(host_config, GoObject):
            raise UnreadableMount("HostConfig: expected an object")
        intents.extend(host_config_mounts(host_config, "HostConfig"))
    # Engines before Docker 27 also read HostConfig fields given at the top level of the body
    # (a pre-API-1.18 shim, moby runconfig `ContainerConfigWrapper`) when `HostConfig` is absent
    # or null. They are read whatever the engine, and never rewritten: such a socket mount is
    # refused, as the CLI never sends one.
    for legacy in host_config_mounts(body, "(top level)"):
        if isinstance(legacy, HostPath):
            intents.append(HostPath(legacy.source, legacy.via, rewritable=False))
        else:
            intents.append(legacy)
    volumes = body.field("Volumes")
    if isinstance(volumes, GoObject):
        for key in volumes.entries():
            intent = parse_bind_spec(key, f"Volumes[{key!r}]")
            if isinstance(intent, HostPath):
                intents.append(HostPath(intent.source, intent.via, rewritable=False))
            elif intent is not None:
                intents.append(intent)
    elif volumes is not MISSING and volumes is not None:
        raise UnreadableMount("Volumes: expected an object")
    return tuple(intents)


def host_config_mounts(host_config: GoObject, where: str) -> list[MountIntent]:
    intents: list[MountIntent] = []
    for i, spec in enumerate(_as_list(host_config.field("Binds"), f"{where}.Binds")):
        if spec is None:
            continue
        if not isinstance(spec, str):
            raise UnreadableMount(f"{where}.Binds[{i}]: expected a string")
        intent = parse_bind_spec(spec, f"{where}.Binds[{i}]")
        if intent is not None:
            intents.append(intent)
    intents.extend(_mounts(host_config.field("Mounts"), f"{where}.Mounts"))
    for i, spec in enumerate(_as_list(host_config.field("VolumesFrom"), f"{where}.VolumesFrom")):
        if spec is None:
            continue
        if not isinstance(spec, str) or not spec:
            raise UnreadableMount(f"{where}.VolumesFrom[{i}]: expected a container name")
        name = spec.split(":", 1)[0]
        intents.append(FromContainer(name, f"{where}.VolumesFrom[{i}]"))
    return intents


def volume_create_device(body: GoObject) -> str | None:
    """The host path a `POST /volumes/create` body would mount, if any."""
    return local_driver_device(body.field("Driver", ""), body.field("DriverOpts"))


def clean_host_path(path: str) -> str:
    """Lexically clean an absolute host path (the engine cleans bind sources the same way)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


@dataclass(frozen=True, slots=True)
class ProtectedSocket:
    """A socket that leads to the engine: its path, resolved path and inode (if it exists)."""

    path: str
    resolved: str
    inode: tuple[int, int] | None = None
    label: str = "engine socket"


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    """What the shell found on the host for a source path: its resolved form and inode."""

    source: str
    resolved: str
    inode: tuple[int, int] | None = None
    is_socket: bool = False


def exposed_socket(
    path: ResolvedPath, protected: tuple[ProtectedSocket, ...]
) -> tuple[ProtectedSocket, bool] | None:
    """Which protected socket a host path exposes, and whether it is the socket itself.

    The path exposes a socket when it is the socket (by path before or after resolving
    symlinks, or by inode, which catches hard links) or a folder above it (`/var/run`, `/`).
    """
    candidates = {clean_host_path(path.source), clean_host_path(path.resolved)}
    for sock in protected:
        targets = {clean_host_path(sock.path), clean_host_path(sock.resolved)}
        if candidates & targets:
            return sock, True
        if path.inode is not None and sock.inode is not None and path.inode == sock.inode:
            return sock, True
        for candidate in candidates:
            prefix = candidate.rstrip("/") + "/"
            if any(t.startswith(prefix) for t in targets):
                return sock, False
    return None
