"""The doctor's facts: sockets (lstat, the folders above, /etc/group), the dockerd processes
(/proc: argv, daemon.json, the TCP ports they hold), the engine (`GET /version`, `/info`), the
settings file and the agent's control API. Nothing here judges; `agent.doctor.checks` does.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.doctor.checks import (
    DEFAULT_ENGINE_SOCKETS,
    AgentFacts,
    DaemonFacts,
    DoctorFacts,
    EngineFacts,
    Folder,
    OtherSocket,
    PathFacts,
    SettingsFacts,
    config_hosts,
    daemon_flags,
    group_members,
    parse_group_file,
    parse_passwd_primary,
    parse_proc_net_tcp,
)
from agent.policy.mounts import UnreadableMount, local_volume_mount
from agent.proxy.engine_client import EngineClient, EngineError
from agent.proxy.host_paths import only_root_can_change

ENGINE_TIMEOUT = 5.0
DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Accounts:
    """/etc/group and /etc/passwd, read once."""

    def __init__(self, group_text: str | None = None, passwd_text: str | None = None) -> None:
        self.groups = parse_group_file(
            group_text if group_text is not None else _read("/etc/group")
        )
        self.primary = parse_passwd_primary(
            passwd_text if passwd_text is not None else _read("/etc/passwd")
        )

    def members(self, gid: int) -> tuple[str, tuple[str, ...]]:
        return group_members(gid, self.groups, self.primary)


def path_facts(path: str, accounts: Accounts) -> PathFacts:
    try:
        st = os.lstat(path)
    except OSError:
        return PathFacts(path, exists=False, is_socket=False)
    name, members = accounts.members(st.st_gid)
    folders: list[Folder] = []
    parent = Path(os.path.realpath(path)).parent
    for folder in (parent, *parent.parents):
        try:
            fst = os.stat(folder)
        except OSError:
            continue
        folders.append(Folder(str(folder), fst.st_uid, fst.st_gid, fst.st_mode))
    return PathFacts(
        path=path,
        exists=True,
        is_socket=stat.S_ISSOCK(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mode=st.st_mode,
        group_name=name,
        group_members=members,
        folders=tuple(folders),
        inode=(st.st_dev, st.st_ino),
    )


async def _engine_answers(
    socket_path: str,
) -> tuple[
    dict[str, Any] | None,
    dict[str, Any] | None,
    str | None,
    tuple[Any, ...] | None,
    tuple[tuple[str, str], ...] | None,
]:
    """`GET /version`, `/info` (or the error), `/plugins` and the bind sources the engine
    keeps (who, source): containers (`/containers/json?all=1`), services (`/services`, none
    when not a swarm manager) and local bind volumes (`/volumes`); None where not read."""
    client = EngineClient(socket_path, keep=1, timeout=ENGINE_TIMEOUT)
    try:
        version = await client.version()
        info = await client.get_json("/info")
        try:
            plugins = await client.get_json("/plugins")
        except (EngineError, TypeError, ValueError):
            plugins = None
        listed = tuple(plugins) if isinstance(plugins, list) else None
        try:
            containers = await client.get_json("/containers/json", all="1")
            volumes = await client.get_json("/volumes")
            try:
                services = await client.get_json("/services")
            except EngineError:
                services = []  # not a swarm manager
            binds: tuple[tuple[str, str], ...] | None = (
                _bind_sources(containers) + _service_sources(services) + _volume_sources(volumes)
            )
        except (EngineError, TypeError, ValueError, AttributeError):
            binds = None
        return version, info if isinstance(info, dict) else None, None, listed, binds
    except (EngineError, TypeError, ValueError) as err:
        return None, None, str(err), None, None
    finally:
        await client.close()


def _bind_sources(containers: Any) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for container in containers or ():
        names = container.get("Names") or [container.get("Id", "?")[:12]]
        for mount in container.get("Mounts") or ():
            if mount.get("Type") == "bind" and isinstance(mount.get("Source"), str):
                out.append((str(names[0]).lstrip("/"), mount["Source"]))
    return tuple(out)


def _service_sources(services: Any) -> tuple[tuple[str, str], ...]:
    """A service's bind sources, in its spec and in the spec a rollback would put back: the
    engine resolves them again for every task it starts."""
    out: list[tuple[str, str]] = []
    for service in services or ():
        name = f"service {(service.get('Spec') or {}).get('Name') or service.get('ID', '?')[:12]}"
        for spec in (service.get("Spec"), service.get("PreviousSpec")):
            task = (spec or {}).get("TaskTemplate") or {}
            for mount in (task.get("ContainerSpec") or {}).get("Mounts") or ():
                if mount.get("Type") == "bind" and isinstance(mount.get("Source"), str):
                    out.append((name, mount["Source"]))
    return tuple(dict.fromkeys(out))


def _volume_sources(volumes: Any) -> tuple[tuple[str, str], ...]:
    """Local volumes that bind a host folder (`o=bind`): mounted afresh by every container."""
    out: list[tuple[str, str]] = []
    for volume in (volumes or {}).get("Volumes") or ():
        where = f"volume {volume.get('Name', '?')}"
        try:
            host = local_volume_mount(volume.get("Driver"), volume.get("Options"), where)
        except UnreadableMount:
            continue  # not a bind: what it mounts is no path a user could swap
        if host is not None:
            out.append((where, host.source))
    return tuple(out)


def engine_facts(socket_path: str) -> EngineFacts:
    version, info, error, plugins, binds = asyncio.run(_engine_answers(socket_path))
    unpinned = None
    if binds is not None:
        # A pin is in a folder only root can change: only sources given as written show here.
        unpinned = tuple((n, s) for n, s in binds if not only_root_can_change(s))
    return EngineFacts(socket_path, version, info, error, plugins, unpinned)


def _engine_id(socket_path: str) -> str | None:
    _version, info, _error, _plugins, _binds = asyncio.run(_engine_answers(socket_path))
    engine_id = info.get("ID") if info else None
    return engine_id if isinstance(engine_id, str) and engine_id else None


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[len("socket:[") : -1]))
    return out


def _listening_tcp(pid: int) -> tuple[str, ...]:
    inodes = _socket_inodes(pid)
    if not inodes:
        return ()
    found: list[str] = []
    for table in ("tcp", "tcp6"):
        found += parse_proc_net_tcp(_read(f"/proc/{pid}/net/{table}"), inodes)
    return tuple(dict.fromkeys(found))


def _unix_path(host: str) -> str | None:
    if host.startswith("unix://"):
        return os.path.realpath(host[len("unix://") :] or "/var/run/docker.sock")
    return None


def dockerd_processes(engine_socket: str) -> tuple[DaemonFacts, ...] | None:
    """Every dockerd on this machine (None when /proc cannot be listed)."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    engine_real = os.path.realpath(engine_socket)
    out: list[DaemonFacts] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "dockerd":
            continue
        hosts, config, tls_verify = daemon_flags(argv)
        file_hosts, file_tls = config_hosts(_read(config or DEFAULT_DAEMON_JSON))
        hosts += [h for h in file_hosts if h not in hosts]
        if not hosts:
            hosts = ["unix:///var/run/docker.sock"]
        serves = {_unix_path(h) for h in hosts}
        ours = engine_real in serves or (
            "fd://" in hosts
            and engine_real in {os.path.realpath(p) for p in DEFAULT_ENGINE_SOCKETS}
        )
        out.append(
            DaemonFacts(
                pid=pid,
                hosts=tuple(hosts),
                tls_verify=tls_verify or file_tls,
                listening_tcp=_listening_tcp(pid),
                ours=ours,
            )
        )
    if len(out) == 1 and not out[0].ours and "fd://" in out[0].hosts:
        out[0] = DaemonFacts(
            out[0].pid, out[0].hosts, out[0].tls_verify, out[0].listening_tcp, True
        )
    return tuple(out)


def other_engine_sockets(
    engine: EngineFacts,
    engine_socket: PathFacts,
    daemons: Iterable[DaemonFacts] | None,
    exclude: Iterable[PathFacts],
    accounts: Accounts,
) -> tuple[OtherSocket, ...]:
    """Sockets besides `engine_socket` (and the agent's) that lead to the same engine."""
    skip = {f.inode for f in (engine_socket, *exclude) if f.inode is not None}
    candidates: dict[str, str] = {}
    for daemon in daemons or ():
        if not daemon.ours:
            continue
        for host in daemon.hosts:
            path = _unix_path(host)
            if path is not None:
                candidates.setdefault(path, f"dockerd pid {daemon.pid} listens on it (-H {host})")
    for path in DEFAULT_ENGINE_SOCKETS:
        candidates.setdefault(path, "")
    engine_id = engine.info.get("ID") if engine.info else None
    out: list[OtherSocket] = []
    seen: set[tuple[int, int]] = set()
    for path, why in candidates.items():
        facts = path_facts(path, accounts)
        if not facts.exists or not facts.is_socket or facts.inode is None:
            continue
        if facts.inode in skip or facts.inode in seen:
            continue
        seen.add(facts.inode)
        if not why:
            if engine_id is None or _engine_id(path) != engine_id:
                continue
            why = "it answers GET /info with this engine's ID"
        out.append(OtherSocket(facts, why))
    return tuple(out)


def settings_facts(path: Path) -> SettingsFacts:
    from agent.settings.loader import Missing, Refused, load_settings, untrusted_reasons

    result = load_settings(path, strict_modes=False)
    if isinstance(result, Missing):
        return SettingsFacts(str(path), exists=False)
    reasons = tuple(untrusted_reasons(path))
    if isinstance(result, Refused):
        return SettingsFacts(str(path), untrusted=reasons, error=result.reason)
    return SettingsFacts(str(path), untrusted=reasons, sha256=result.settings.sha256)


def agent_facts(control: str) -> AgentFacts:
    from agent.control.client import ControlClient, ControlError

    try:
        status = ControlClient(control, timeout=10.0).get("/v1/status")
    except ControlError as err:
        return AgentFacts(control, None, str(err))
    return AgentFacts(control, status if isinstance(status, Mapping) else None)


def gather(
    *,
    engine: str | None,
    control: str,
    settings: str | None,
    accounts: Accounts | None = None,
) -> DoctorFacts:
    """Everything `agent.doctor.checks.diagnose` needs. The engine and settings default to
    what the running agent uses, else /var/run/docker.sock and the settings search path."""
    from agent import paths

    accounts = accounts or Accounts()
    agent = agent_facts(control)
    status = agent.status or {}
    engine_path = engine or (status.get("engine") or {}).get("socket") or DEFAULT_ENGINE_SOCKETS[0]
    settings_path = (
        settings or (status.get("settings") or {}).get("path") or str(paths.default_settings_path())
    )
    facts_engine = engine_facts(engine_path)
    socket = path_facts(engine_path, accounts)
    listeners = status.get("listeners") or {}
    agent_sockets = {
        str(name): path_facts(str(path), accounts)
        for name, path in listeners.items()
        if isinstance(path, str)
    }
    daemons = dockerd_processes(engine_path)
    others = other_engine_sockets(facts_engine, socket, daemons, agent_sockets.values(), accounts)
    return DoctorFacts(
        engine=facts_engine,
        engine_socket=socket,
        agent=agent,
        agent_sockets=agent_sockets,
        settings=settings_facts(Path(settings_path)),
        daemons=daemons,
        other_sockets=others,
        protected_links=(
            _sysctl("/proc/sys/fs/protected_hardlinks"),
            _sysctl("/proc/sys/fs/protected_symlinks"),
        ),
    )


def _sysctl(path: str) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None
