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
from collections.abc import Iterable
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


#: Local-driver mount types whose `device` is not a host path: memory and network filesystems.
SAFE_LOCAL_TYPES = frozenset({"tmpfs", "ramfs", "nfs", "nfs4", "cifs", "smb3"})


def local_volume_mount(driver: Any, options: Any, where: str) -> HostPath | None:
    """The host path a local-driver volume with these options bind-mounts, if any.

    The local driver calls mount(2) with `device`, `type` and `o` (moby `volume/local`): with
    `bind` or `rbind` among the `o` flags, `device` is a host path (judged like a bind source;
    it must be absolute, as the engine's working directory is unknown here). Without them, a
    memory or network filesystem is harmless, but any other type mounts something the policy
    cannot judge from its name: the filesystem that holds the socket again (`ext4` on the root
    disk), a host procfs (`proc`, whose `/proc/<pid>/root` leads to the socket), an overlay of
    host folders. Those raise `UnreadableMount`, and the request is refused.
    """
    if isinstance(driver, str) and driver not in ("", "local"):
        return None
    if isinstance(options, GoObject):
        entries: dict[str, Any] = options.entries()
    elif isinstance(options, dict):
        entries = options
    else:
        return None
    values: dict[str, str] = {}
    for key in ("type", "device", "o"):
        value = entries.get(key)
        if value is not None and not isinstance(value, str):
            raise UnreadableMount(f"{where}: volume option {key!r} must be a string")
        values[key] = value or ""
    kind, device, flags = values["type"], values["device"], values["o"].split(",")
    if not kind and not device:
        return None  # nothing to mount: a plain volume
    if "bind" in flags or "rbind" in flags:
        if not device.startswith("/"):
            raise UnreadableMount(
                f"{where}: the bind device {device!r} is not an absolute path; it would be "
                "found from the engine's working directory"
            )
        return HostPath(device, where, rewritable=False)
    if kind in SAFE_LOCAL_TYPES:
        return None
    raise UnreadableMount(
        f"{where}: eci-agent cannot tell what a local volume of type {kind!r} on {device!r} "
        "would expose (only bind, tmpfs and network volumes are judged); mount it on the host "
        "and bind-mount its folder instead"
    )


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
                device = local_volume_mount(
                    driver_config.field("Name", ""),
                    driver_config.field("Options"),
                    f"{at}.VolumeOptions.DriverConfig",
                )
                if device is not None:
                    intents.append(device)
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


def volume_create_mount(body: GoObject) -> HostPath | None:
    """The host path a `POST /volumes/create` body would mount, if any (see
    `local_volume_mount`, which raises `UnreadableMount` for what cannot be judged)."""
    return local_volume_mount(body.field("Driver", ""), body.field("DriverOpts"), "DriverOpts")


def plugin_mounts(info: dict[str, Any], name: str) -> tuple[HostPath, ...]:
    """The host paths a plugin's container gets (`GET /plugins/{name}/json`).

    `Settings.Mounts` is what the engine uses (the config's mounts with `docker plugin set`
    applied); `Config.Mounts` is read too. A mount with an absolute source, or of type bind, is
    a host path; a relative bind source cannot be judged.
    """
    found: list[HostPath] = []
    for section in ("Settings", "Config"):
        part = info.get(section) or {}
        for i, mount in enumerate(part.get("Mounts") or []):
            where = f"plugin {name} {section}.Mounts[{i}]"
            if not isinstance(mount, dict):
                raise UnreadableMount(f"{where}: expected an object")
            source, kind = mount.get("Source"), mount.get("Type") or ""
            if source is None or source == "":
                continue
            if not isinstance(source, str):
                raise UnreadableMount(f"{where}: Source must be a string")
            options = mount.get("Options") or ()
            # runc binds the source for type "bind" and for a "bind"/"rbind" option too
            bind = kind == "bind" or any(o in ("bind", "rbind") for o in options)
            if source.startswith("/"):
                found.append(HostPath(source, where, rewritable=False))
            elif bind:
                raise UnreadableMount(f"{where}: the bind source {source!r} is not absolute")
    return tuple(found)


def clean_host_path(path: str) -> str:
    """Lexically clean an absolute host path (the engine cleans bind sources the same way)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


@dataclass(frozen=True, slots=True)
class ProtectedSocket:
    """A socket that leads to the engine: its path, resolved path and inode (if it exists).

    `links` is its hard-link count (more than 1: a link to it may sit in any folder of its
    filesystem); `aliases` are the other paths under which the mount table shows it (a bind
    mount of its folder elsewhere), see `socket_aliases`.
    """

    path: str
    resolved: str
    inode: tuple[int, int] | None = None
    label: str = "engine socket"
    links: int = 1
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    """What the shell found on the host for a source path: its resolved form and inode."""

    source: str
    resolved: str
    inode: tuple[int, int] | None = None
    is_socket: bool = False
    is_dir: bool = False


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
        targets |= {clean_host_path(a) for a in sock.aliases}
        if candidates & targets:
            return sock, True
        if path.inode is not None and sock.inode is not None and path.inode == sock.inode:
            return sock, True
        for candidate in candidates:
            prefix = candidate.rstrip("/") + "/"
            if any(t.startswith(prefix) for t in targets):
                return sock, False
        if (
            path.is_dir
            and sock.links > 1
            and path.inode is not None
            and sock.inode is not None
            and path.inode[0] == sock.inode[0]
        ):
            return sock, False  # a hard link to the socket may be anywhere on this filesystem
    return None


# ---------------------------------------------------------------------------------------------
# The mount table (/proc/self/mountinfo): where else a socket shows, and where procfs is


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo: `root` of the filesystem `dev` is shown at `mount_point`."""

    mount_point: str
    root: str
    dev: tuple[int, int]  # (major, minor)
    fstype: str


def _unescape_mountinfo(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[MountEntry, ...]:
    """Parse /proc/<pid>/mountinfo (proc(5)); unreadable lines are skipped."""
    entries: list[MountEntry] = []
    # Lines end with LF and fields are split by one space: the kernel escapes LF, space, tab
    # and backslash in paths, but not CR or the other characters `str.splitlines` and
    # `str.split()` would also split a path at.
    for line in text.split("\n"):
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 5 or not tail[0]:
            continue
        major, _, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        entries.append(
            MountEntry(
                _unescape_mountinfo(fields[4]),
                _unescape_mountinfo(fields[3]),
                (int(major), int(minor)),
                tail[0],
            )
        )
    return tuple(entries)


def _under(path: str, folder: str) -> str | None:
    """`path` relative to `folder` ("" when equal), or None when it is not inside it."""
    if path == folder:
        return ""
    prefix = folder.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def may_name_socket(intents: Iterable[MountIntent], sockets: Iterable[str]) -> bool:
    """Whether a host path among `intents`, as written, is one of `sockets`, a folder above
    one, or a file named `*.sock`.

    Only a hint that the create probably mounts a socket (the gate then asks about the image
    early); whether it does is found by resolving every path (`decide.find_exposures`).
    """
    cleaned = [clean_host_path(s) for s in sockets]
    for intent in intents:
        if not isinstance(intent, HostPath):
            continue
        source = clean_host_path(intent.source)
        if source.endswith(".sock"):
            return True
        if any(_under(sock, source) is not None for sock in cleaned):
            return True
    return False


def socket_aliases(
    resolved: str, dev: tuple[int, int], table: tuple[MountEntry, ...]
) -> tuple[str, ...]:
    """Every path at which the mount table shows the file at `resolved` (on device `dev`).

    The mount that holds it gives its path inside the filesystem; every other mount of the same
    filesystem whose root is above that path shows it too (a bind mount of `/run` at
    `/srv/x/run` shows `/srv/x/run/docker.sock`). Mounts hidden under others are included:
    seeing too much only refuses more.
    """
    path = clean_host_path(resolved)
    holder: MountEntry | None = None
    for entry in table:
        if entry.dev != dev or _under(path, entry.mount_point) is None:
            continue
        if holder is None or len(entry.mount_point) >= len(holder.mount_point):
            holder = entry
    if holder is None:
        return ()
    rest = _under(path, holder.mount_point) or ""
    in_fs = posixpath.join(holder.root, rest) if rest else holder.root
    aliases: list[str] = []
    for entry in table:
        if entry.dev != dev:
            continue
        below = _under(in_fs, entry.root)
        if below is None:
            continue
        alias = clean_host_path(
            posixpath.join(entry.mount_point, below) if below else entry.mount_point
        )
        if alias != path and alias not in aliases:
            aliases.append(alias)
    return tuple(aliases)


def procfs_mount_points(table: tuple[MountEntry, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.mount_point for e in table if e.fstype == "proc"))


def reaches_procfs(path: ResolvedPath, procfs: tuple[str, ...]) -> str | None:
    """The procfs mount a host path exposes, if any.

    A folder of a host procfs (`/proc`, `/proc/1`, `/proc/self`) lists host processes, and
    `/proc/<pid>/root` of any of them is the host's root, engine socket included; a folder
    with a procfs mounted below it brings it along (bind mounts are recursive). Files of a
    procfs are fine: the magic links among them are resolved to their targets, which are
    judged themselves.
    """
    resolved = clean_host_path(path.resolved)
    for point in procfs:
        if path.is_dir and _under(resolved, point) is not None:
            return point
        if _under(point, resolved) not in (None, ""):
            return point
    return None
