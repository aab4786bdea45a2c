"""Container isolation beyond the socket: the host powers a request may not ask for.

Theory of operation
-------------------
Docker Desktop's ECI runs every container under Sysbox, which cannot share a host namespace
and contains `--privileged`. On a plain engine nothing contains them, so while ECI is on the
agent refuses them at the API: every field by which a request reaches the host is read from
the body the way the engine reads it (`agent.policy.gojson`: keys match case-insensitively,
the last duplicate wins; `HostConfig` fields given at the top level of an old-API body count
too) and turned into `Violation`s, each named by the option as the docker CLI spells it
(`--pid=host`, `--cap-add=SYS_ADMIN`, `--security-opt=seccomp=unconfined`, `-v /etc:...`).

- **Namespaces**: `PidMode`, `IpcMode`, `UTSMode`, `NetworkMode`, `UsernsMode`, `CgroupnsMode`
  set to `host`; a `container:<name>` mode whose container (followed through its own
  `container:` modes) is in the host namespace; `NetworkMode` naming the host network by ID.
- **Privileges**: `Privileged`; `CapAdd` (and the 1.40 `Capabilities`) holding a capability
  from `DANGEROUS_CAPABILITIES`, spelled as the engine normalizes it (any case, with or without
  `CAP_`, a lone string or an array); exec `Privileged`.
- **Confinement**: `SecurityOpt` that turns seccomp off or swaps its profile, AppArmor other
  than `docker-default`, SELinux `label=disable`/`type:`/`user:`/`role:` (old `:` form and bare
  `disable` too), `writable-cgroups=true`; `MaskedPaths`/`ReadonlyPaths` that drop a default.
- **Hardware**: any `Devices`, `DeviceCgroupRules` or `DeviceRequests` (`--gpus`).
- **Kernel settings**: `Sysctls` outside the namespaced set (`NAMESPACED_SYSCTLS`).
- **Identity**: a `CgroupParent` with a component named like a container's cgroup: the agent
  tells which container a client runs in from its cgroup path (`agent.policy.peers`).
- **Host paths**: a bind (by any route `agent.policy.mounts` knows) of a sensitive host folder
  (`SensitivePath`: `/`, `/etc`, `/proc`, `/sys`, `/dev`, `/boot`, `/root`, the engine's data
  root, the socket folders), of a folder above one, or of a path that resolves to one.
- **Runtime**: when the engine has `sysbox-runc`, every container runs with it (`runtime_for`).

Admins can grant named exceptions per image (`eciAgent.isolationExceptions`): an entry's
`allow` tokens (`normalize_allow_token`) waive those violations for images whose name matches
and whose digest the registry serves for that name (the same check as the socket image list),
never all of them at once.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.policy.decide import ALLOW, Decision, HostFacts, MissingFact, bad_request, deny
from agent.policy.gojson import MISSING, GoObject
from agent.policy.imageref import InvalidReference, parse_image_ref
from agent.policy.images import ImageVerdict
from agent.policy.mounts import FromContainer, HostPath, MountIntent, NamedVolume, clean_host_path
from agent.policy.peers import container_of_cgroup
from agent.settings.model import AdminSettings, IsolationException

SYSBOX_RUNTIME = "sysbox-runc"

#: Capabilities that reach past the container: kernel modules, raw I/O, other processes, the
#: clock, the host network stack, BPF, every file (`DAC_READ_SEARCH` opens by handle), MAC.
DANGEROUS_CAPABILITIES = frozenset(
    {
        "ALL",
        "SYS_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_PTRACE",
        "SYS_BOOT",
        "SYS_TIME",
        "DAC_READ_SEARCH",
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "SYSLOG",
        "LINUX_IMMUTABLE",
        "SYS_PACCT",
        "AUDIT_CONTROL",
        "CHECKPOINT_RESTORE",
    }
)

#: Sysctls the kernel keeps per namespace (runc's list); `net.*` only off the host network.
NAMESPACED_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
NAMESPACED_SYSCTL_PREFIXES = ("fs.mqueue.", "net.")

#: The engine's default masked and read-only paths (moby `oci/defaults.go`): a request that
#: lists these fields must keep every one of them (`--security-opt systempaths=unconfined`
#: sends empty lists).
DEFAULT_MASKED_PATHS = frozenset(
    {
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    }
)
DEFAULT_READONLY_PATHS = frozenset(
    {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

#: Files inside a sensitive folder that are harmless to share (the host's time zone).
HARMLESS_FILES = frozenset({"/etc/localtime", "/etc/timezone"})

#: The namespace fields, with the CLI option that sets each and what sharing the host's means.
NAMESPACES: tuple[tuple[str, str, str], ...] = (
    ("PidMode", "--pid", "the host's processes, which it could signal, trace and enter"),
    ("IpcMode", "--ipc", "the host's shared memory and IPC objects"),
    ("UTSMode", "--uts", "the host's hostname, which it could change"),
    ("NetworkMode", "--network", "the host's network stack and its loopback services"),
    ("UsernsMode", "--userns", "the host's user IDs: root in the container is root on the host"),
    ("CgroupnsMode", "--cgroupns", "the host's cgroup tree"),
)
#: The namespaces a `container:<name>` mode can join.
JOINABLE = frozenset({"PidMode", "IpcMode", "NetworkMode"})


@dataclass(frozen=True, slots=True)
class Violation:
    """One host power a request asks for.

    `option` is the CLI spelling shown to the user; `token` the `allow` entry of an isolation
    exception that waives it; `via` where in the request; `why` what it would give.
    """

    option: str
    token: str
    via: str
    why: str


@dataclass(frozen=True, slots=True)
class SensitivePath:
    """A host folder no container may bind: the folder itself, any folder above it, and (with
    `inside`) anything below it. `resolved` and `inode` are what the shell found on the host."""

    path: str
    label: str
    resolved: str = ""
    inode: tuple[int, int] | None = None
    inside: bool = True
    #: Derived: each cleaned form (the path, its resolved form) and that form with one "/"
    #: after it (what a path strictly below it starts with).
    forms: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cleaned = dict.fromkeys(clean_host_path(p) for p in (self.path, self.resolved) if p)
        object.__setattr__(self, "forms", tuple((t, t.rstrip("/") + "/") for t in cleaned))


@dataclass(frozen=True, slots=True)
class EngineIsolation:
    """What `GET /info` says about the isolation the engine itself provides."""

    runtimes: tuple[str, ...] = ()
    default_runtime: str = "runc"
    userns_remap: bool = False
    rootless: bool = False
    docker_root_dir: str = ""
    security_options: tuple[str, ...] = ()
    cgroup_v1: bool = False  # the engine's default cgroup namespace is then the host's

    @property
    def has_sysbox(self) -> bool:
        return SYSBOX_RUNTIME in self.runtimes


def engine_isolation(info: Mapping[str, Any]) -> EngineIsolation:
    """Read `GET /info` (a plain decoded dict)."""
    runtimes = info.get("Runtimes")
    names = tuple(sorted(runtimes)) if isinstance(runtimes, Mapping) else ()
    options = tuple(str(o) for o in (info.get("SecurityOptions") or ()) if isinstance(o, str))
    names_in_options = {
        part.split("=", 1)[1] for o in options for part in o.split(",") if part.startswith("name=")
    }
    return EngineIsolation(
        runtimes=names,
        default_runtime=str(info.get("DefaultRuntime") or "runc"),
        userns_remap="userns" in names_in_options,
        rootless="rootless" in names_in_options,
        docker_root_dir=str(info.get("DockerRootDir") or ""),
        security_options=options,
        cgroup_v1=str(info.get("CgroupVersion") or "") == "1",
    )


@dataclass(frozen=True, slots=True)
class NamespaceFact:
    """Another container's namespace modes (for `container:<name>`); None: no such container."""

    name: str
    id: str = ""
    modes: Mapping[str, str] | None = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IsolationFacts:
    """What the shell found out for one request."""

    engine: EngineIsolation = field(default_factory=EngineIsolation)
    sensitive: tuple[SensitivePath, ...] = ()
    host: HostFacts | None = None  # resolved paths, volumes and containers of the mounts
    containers: Mapping[str, NamespaceFact] = field(default_factory=dict)
    host_networks: tuple[tuple[str, str], ...] = (("host", ""),)  # (name, ID) of host networks


# -- reading the request ---------------------------------------------------------------------


def _strings(value: Any, via: str, *, lone_string: bool = False) -> list[str]:
    """A JSON array of strings (or, for Go `strslice.StrSlice`, one string)."""
    if value is MISSING or value is None:
        return []
    if isinstance(value, str) and lone_string:
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{via}: expected an array of strings")
    out: list[str] = []
    for i, item in enumerate(value):
        if item is None:
            continue
        if not isinstance(item, str):
            raise ValueError(f"{via}[{i}]: expected a string")
        out.append(item)
    return out


def normalize_capability(name: str) -> str:
    """As the engine normalizes it: upper case, `CAP_` prefix dropped here (`ALL` stays)."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def split_security_opt(opt: str) -> tuple[str, str]:
    """(key, value) as moby `parseSecurityOpt` reads it (`=` first, else the old `:`)."""
    if opt == "disable":
        return "label", "disable"
    if opt == "no-new-privileges":
        return "no-new-privileges", "true"
    if "=" in opt:
        key, _, value = opt.partition("=")
    elif ":" in opt:
        key, _, value = opt.partition(":")
    else:
        return opt, ""
    return key, value


def _security_opt_violations(opts: list[str], via: str) -> list[Violation]:
    found: list[Violation] = []
    for i, opt in enumerate(opts):
        key, value = split_security_opt(opt)
        at = f"{via}[{i}]"
        folded = key.strip().lower()
        if folded == "seccomp":
            if value == "unconfined":
                found.append(
                    Violation(
                        "--security-opt seccomp=unconfined",
                        "--security-opt=seccomp=unconfined",
                        at,
                        "it turns off the system-call filter",
                    )
                )
            elif value not in ("", "builtin"):
                found.append(
                    Violation(
                        "--security-opt seccomp=<profile>",
                        "--security-opt=seccomp",
                        at,
                        "a custom seccomp profile can allow any system call",
                    )
                )
        elif folded == "apparmor":
            if value != "docker-default":
                found.append(
                    Violation(
                        f"--security-opt apparmor={value}",
                        f"--security-opt=apparmor={value}",
                        at,
                        "only the default AppArmor profile (docker-default) confines it",
                    )
                )
        elif folded == "label":
            if not value.startswith("level:"):
                found.append(
                    Violation(
                        f"--security-opt label={value}",
                        f"--security-opt=label={value}",
                        at,
                        "it turns off or replaces the SELinux confinement",
                    )
                )
        elif folded == "writable-cgroups" and value.lower() not in ("false", "0"):
            found.append(
                Violation(
                    "--security-opt writable-cgroups=true",
                    "--security-opt=writable-cgroups=true",
                    at,
                    "it lets the container write to the host's cgroup settings",
                )
            )
        elif folded == "systempaths" and value == "unconfined":
            found.append(
                Violation(
                    "--security-opt systempaths=unconfined",
                    "--security-opt=systempaths=unconfined",
                    at,
                    "it unmasks /proc and /sys paths of the host kernel",
                )
            )
    return found


def _cap_violations(hc: GoObject, where: str) -> list[Violation]:
    found: list[Violation] = []
    for name in ("CapAdd", "Capabilities"):
        via = f"{where}.{name}"
        for cap in _strings(hc.field(name), via, lone_string=True):
            norm = normalize_capability(cap)
            if norm in DANGEROUS_CAPABILITIES:
                found.append(
                    Violation(
                        f"--cap-add={norm}",
                        f"--cap-add={norm}",
                        via,
                        "this capability reaches the host kernel or other processes",
                    )
                )
    return found


#: Bind propagation that hands mounts made in the container back to the host.
_SHARED_PROPAGATION = frozenset({"shared", "rshared"})
_PROPAGATION_WHY = (
    "mounts made in the container (binds it was given too) show up in the host's folder, "
    "where any container may then bind them"
)


def _propagation_violations(hc: GoObject, where: str) -> list[Violation]:
    """`-v src:dst:rshared` and `--mount type=bind,...,bind-propagation=rshared` (a
    HostConfig, or a service's ContainerSpec, which has `Mounts` only)."""
    found: list[Violation] = []
    binds = hc.field("Binds")
    for i, spec in enumerate(binds if isinstance(binds, list) else []):
        if not isinstance(spec, str):
            continue
        parts = spec.split(":")
        modes = parts[2].split(",") if len(parts) == 3 else []
        shared = sorted(_SHARED_PROPAGATION.intersection(modes))
        if shared:
            found.append(
                Violation(
                    f"-v {parts[0]}:{parts[1]}:{shared[0]}",
                    "--mount-propagation=shared",
                    f"{where}.Binds[{i}]",
                    _PROPAGATION_WHY,
                )
            )
    mounts = hc.field("Mounts")
    for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, GoObject):
            continue
        options = mount.field("BindOptions")
        propagation = options.field("Propagation") if isinstance(options, GoObject) else None
        if isinstance(propagation, str) and propagation.lower() in _SHARED_PROPAGATION:
            found.append(
                Violation(
                    f"--mount bind-propagation={propagation}",
                    "--mount-propagation=shared",
                    f"{where}.Mounts[{i}].BindOptions.Propagation",
                    _PROPAGATION_WHY,
                )
            )
    return found


def _sysctl_allowed(name: str, host_network: bool) -> bool:
    key = name.strip().replace("/", ".")
    if key in NAMESPACED_SYSCTLS or key.startswith("fs.mqueue."):
        return True
    return key.startswith("net.") and not host_network


def _mode(hc: GoObject, name: str, via: str) -> str:
    value = hc.field(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{via}.{name}: expected a string")
    return value


def _is_host_mode(value: str) -> bool:
    return value.split(":", 1)[0].strip().lower() == "host"


def _container_target(value: str) -> str | None:
    head, sep, rest = value.partition(":")
    return rest if sep and head.strip().lower() == "container" else None


def _reaches_host(field_name: str, value: str, facts: IsolationFacts, depth: int = 0) -> str | None:
    """Why a namespace mode is the host's (a description), or None."""
    if _is_host_mode(value):
        return "host"
    if field_name == "NetworkMode" and _host_network(value, facts):
        return f"the host network ({value})"
    target = _container_target(value)
    if target is None or field_name not in JOINABLE:
        return None
    if depth > 8:
        return f"container {target} (a chain of container: modes too long to follow)"
    fact = facts.containers.get(target)
    if fact is None:
        raise MissingFact(f"container {target!r} (a {field_name} target) was not looked up")
    if fact.modes is None:
        return None  # no such container: the engine refuses it
    inner = fact.modes.get(field_name, "")
    if _reaches_host(field_name, inner, facts, depth + 1) is not None:
        return f"container {target}, which shares the host's namespace"
    return None


def _host_network(value: str, facts: IsolationFacts) -> bool:
    text = value.strip()
    if not text:
        return False
    for name, net_id in facts.host_networks:
        if text == name or (net_id and net_id.startswith(text.lower()) and len(text) >= 1):
            return True
    return False


def namespace_targets(hc: GoObject | None, top: GoObject | None) -> set[str]:
    """The containers named by `container:<name>` modes (the shell inspects them)."""
    names: set[str] = set()
    for obj in (hc, top):
        if obj is None:
            continue
        for field_name in JOINABLE:
            value = obj.field(field_name, "")
            if isinstance(value, str):
                target = _container_target(value)
                if target:
                    names.add(target)
    return names


def host_config_violations(hc: GoObject, where: str, facts: IsolationFacts) -> list[Violation]:
    """Every violation in one HostConfig object (or the top level of an old-API body)."""
    found: list[Violation] = []
    privileged = hc.field("Privileged", False)
    if privileged is True:
        found.append(
            Violation(
                "--privileged",
                "--privileged",
                f"{where}.Privileged",
                "it gives every capability and every host device, without seccomp or AppArmor",
            )
        )
    host_network = False
    for field_name, option, what in NAMESPACES:
        value = _mode(hc, field_name, where)
        reached = _reaches_host(field_name, value, facts)
        if reached is None:
            continue
        if field_name == "NetworkMode":
            host_network = True
        shown = f"{option}={value}" if reached == "host" else f"{option}={value} ({reached})"
        found.append(
            Violation(shown, f"{option}=host", f"{where}.{field_name}", f"it shares {what}")
        )
    found += _cap_violations(hc, where)
    found += _propagation_violations(hc, where)
    found += _security_opt_violations(
        _strings(hc.field("SecurityOpt"), f"{where}.SecurityOpt"), f"{where}.SecurityOpt"
    )
    for name, defaults, option in (
        ("MaskedPaths", DEFAULT_MASKED_PATHS, "systempaths=unconfined"),
        ("ReadonlyPaths", DEFAULT_READONLY_PATHS, "systempaths=unconfined"),
    ):
        paths = hc.field(name)
        if paths is MISSING or paths is None:
            continue
        listed = set(_strings(paths, f"{where}.{name}"))
        if not defaults <= listed:
            missing = sorted(defaults - listed)
            found.append(
                Violation(
                    f"--security-opt {option}",
                    f"--security-opt={option}",
                    f"{where}.{name}",
                    f"it drops the default protection of {', '.join(missing[:3])}"
                    + ("..." if len(missing) > 3 else ""),
                )
            )
    devices = hc.field("Devices")
    if devices is not MISSING and devices is not None:
        if not isinstance(devices, list):
            raise ValueError(f"{where}.Devices: expected an array")
        for i, dev in enumerate(devices):
            if dev is None:
                continue
            path = dev.field("PathOnHost", "") if isinstance(dev, GoObject) else ""
            path = path if isinstance(path, str) else ""
            found.append(
                Violation(
                    f"--device={path}" if path else "--device",
                    f"--device={path}" if path else "--device",
                    f"{where}.Devices[{i}]",
                    "it gives the container a host device",
                )
            )
    for i, _rule in enumerate(
        _strings(hc.field("DeviceCgroupRules"), f"{where}.DeviceCgroupRules")
    ):
        found.append(
            Violation(
                "--device-cgroup-rule",
                "--device-cgroup-rule",
                f"{where}.DeviceCgroupRules[{i}]",
                "it lets the container use host devices it can create",
            )
        )
    requests = hc.field("DeviceRequests")
    if isinstance(requests, list) and any(r is not None for r in requests):
        found.append(
            Violation(
                "--gpus", "--gpus", f"{where}.DeviceRequests", "it gives the container host GPUs"
            )
        )
    elif requests is not MISSING and requests is not None and not isinstance(requests, list):
        raise ValueError(f"{where}.DeviceRequests: expected an array")
    parent = hc.field("CgroupParent")
    if isinstance(parent, str):
        found += _cgroup_parent_violations(parent, "--cgroup-parent", f"{where}.CgroupParent")
    sysctls = hc.field("Sysctls")
    if isinstance(sysctls, GoObject):
        for key in sysctls.entries():
            if not _sysctl_allowed(key, host_network):
                found.append(
                    Violation(
                        f"--sysctl {key}",
                        f"--sysctl={key.strip().replace('/', '.')}",
                        f"{where}.Sysctls",
                        "it is a kernel setting of the whole host, not of the container",
                    )
                )
    elif sysctls is not MISSING and sysctls is not None:
        raise ValueError(f"{where}.Sysctls: expected an object")
    return found


# -- host paths ---------------------------------------------------------------------------------


def sensitive_hit(
    source: str, resolved: str, inode: tuple[int, int] | None, sensitive: Iterable[SensitivePath]
) -> tuple[SensitivePath, str] | None:
    """Which sensitive folder a host path exposes, and how ("is", "holds", "inside")."""
    candidates = {clean_host_path(source), clean_host_path(resolved)} - {""}
    if candidates & HARMLESS_FILES and not any(c.startswith("/proc/") for c in candidates):
        written = clean_host_path(source)
        if written in HARMLESS_FILES:
            return None
    below = [(c, c.rstrip("/") + "/") for c in candidates]  # c, and what is under c starts with
    for sens in sensitive:
        forms = sens.forms
        if (inode is not None and inode == sens.inode) or any(t in candidates for t, _ in forms):
            return sens, "is"
        for cand, cand_below in below:
            if any(t != cand and t.startswith(cand_below) for t, _ in forms):
                return sens, "holds"
            if sens.inside and any(cand != t and cand.startswith(t_below) for t, t_below in forms):
                return sens, "inside"
    return None


def _path_forms(source: str) -> tuple[str, ...]:
    cleaned = clean_host_path(source) if source.startswith("/") else source
    return (source,) if cleaned == source else (source, cleaned)


def _path_violation(
    via: str, source: str, facts: IsolationFacts, shown: str | None = None
) -> Violation | None:
    host = facts.host
    if host is None:
        raise MissingFact("host paths were not resolved")
    for form in _path_forms(source):
        found = host.paths.get(form)
        if found is None:
            raise MissingFact(f"host path {form!r} was not resolved")
        hit = sensitive_hit(form, found.resolved, found.inode, facts.sensitive)
        if hit is None:
            continue
        sens, how = hit
        what = {
            "is": f"it is the {sens.label} {sens.path}",
            "holds": f"it is a folder above the {sens.label} {sens.path}",
            "inside": f"it is inside the {sens.label} {sens.path}",
        }[how]
        if found.resolved and clean_host_path(found.resolved) != clean_host_path(form):
            what += f" (it resolves to {found.resolved})"
        return Violation(
            shown or f"-v {source}:...",
            f"--volume={clean_host_path(source)}",
            via,
            what,
        )
    return None


def mount_violations(
    intents: tuple[MountIntent, ...], facts: IsolationFacts, depth: int = 0
) -> list[Violation]:
    """Binds of sensitive host paths, by every route the mount intents list."""
    host = facts.host
    found: list[Violation] = []
    for intent in intents:
        if isinstance(intent, HostPath):
            v = _path_violation(intent.via, intent.source, facts)
            if v is not None:
                found.append(v)
        elif isinstance(intent, NamedVolume):
            vol = host.volumes.get(intent.name) if host is not None else None
            if vol is None:
                raise MissingFact(f"volume {intent.name!r} was not looked up")
            if vol.device:
                v = _path_violation(
                    intent.via, vol.device, facts, f"-v {intent.name}:... (bound to {vol.device})"
                )
                if v is not None:
                    found.append(v)
        elif isinstance(intent, FromContainer):
            ctr = host.containers.get(intent.container) if host is not None else None
            if ctr is None:
                raise MissingFact(f"container {intent.container!r} was not looked up")
            if ctr.error is not None or depth > 0:
                continue  # the socket check refuses unreadable ones
            for inner in mount_violations(ctr.mounts, facts, depth + 1):
                found.append(
                    Violation(
                        f"--volumes-from {intent.container} ({inner.option})",
                        inner.token,
                        intent.via,
                        inner.why,
                    )
                )
    return found


# -- what each request asks for ----------------------------------------------------------------


def _host_config_parts(body: GoObject) -> tuple[GoObject | None, GoObject | None]:
    hc = body.field("HostConfig")
    if hc is MISSING or hc is None:
        hc = None
    elif not isinstance(hc, GoObject):
        raise ValueError("HostConfig: expected an object")
    return hc, body


def create_violations(
    body: GoObject, intents: tuple[MountIntent, ...], facts: IsolationFacts
) -> list[Violation]:
    """A `POST /containers/create` body: HostConfig, its old top-level form, the mounts."""
    hc, top = _host_config_parts(body)
    found: list[Violation] = []
    if hc is not None:
        found += host_config_violations(hc, "HostConfig", facts)
    if top is not None:
        # Engines before Docker 27 read HostConfig fields at the top level (when `HostConfig`
        # is absent): read them whatever the engine, erring towards refusing.
        found += host_config_violations(top, "(top level)", facts)
    networking = body.field("NetworkingConfig")
    if isinstance(networking, GoObject):
        endpoints = networking.field("EndpointsConfig")
        if isinstance(endpoints, GoObject):
            for key in endpoints.entries():
                if _is_host_mode(key) or _host_network(key, facts):
                    found.append(
                        Violation(
                            f"--network={key}",
                            "--network=host",
                            "NetworkingConfig.EndpointsConfig",
                            "it attaches the container to the host's network stack",
                        )
                    )
    found += mount_violations(intents, facts)
    found += runtime_violations(body, facts.engine)
    return _unique(found)


def runtime_violations(body: GoObject, engine: EngineIsolation) -> list[Violation]:
    """With sysbox-runc on the engine, no other runtime may be asked for."""
    if not engine.has_sysbox:
        return []
    found: list[Violation] = []
    hc, top = _host_config_parts(body)
    for obj, where in ((hc, "HostConfig"), (top, "(top level)")):
        if obj is None:
            continue
        runtime = obj.field("Runtime", "")
        if runtime in ("", None, SYSBOX_RUNTIME):
            continue
        shown = runtime if isinstance(runtime, str) else json.dumps(runtime)
        found.append(
            Violation(
                f"--runtime={shown}",
                f"--runtime={shown}",
                f"{where}.Runtime",
                f"this engine isolates containers with {SYSBOX_RUNTIME}; another runtime would not",
            )
        )
    return found


def runtime_rewrite(body: GoObject, engine: EngineIsolation) -> str | None:
    """The runtime to write into `HostConfig.Runtime` (None: leave the body as it is)."""
    if not engine.has_sysbox:
        return None
    hc, _ = _host_config_parts(body)
    if hc is not None and hc.field("Runtime", "") == SYSBOX_RUNTIME:
        return None
    return SYSBOX_RUNTIME


def exec_violations(body: GoObject) -> list[Violation]:
    """`POST /containers/{id}/exec`: a privileged process in the container."""
    if body.field("Privileged", False) is True:
        return [
            Violation(
                "docker exec --privileged",
                "--privileged",
                "Privileged",
                "the process gets every capability",
            )
        ]
    return []


def update_violations(body: GoObject) -> list[Violation]:
    """`POST /containers/{id}/update`: the engine copies only resources and the restart policy
    today; device fields are refused anyway, should an engine ever copy them."""
    found: list[Violation] = []
    for name, option in (
        ("Devices", "--device"),
        ("DeviceCgroupRules", "--device-cgroup-rule"),
        ("DeviceRequests", "--gpus"),
    ):
        value = body.field(name)
        if isinstance(value, list) and any(v is not None for v in value):
            found.append(Violation(option, option, name, "it gives the container host devices"))
    return found


def sets_restart_policy(body: GoObject) -> bool:
    """Whether a `POST /containers/{id}/update` body gives the container a restart policy
    under which the engine starts it by itself ("always", "unless-stopped", "on-failure";
    any name but "" and "no", to be safe)."""
    policy = body.field("RestartPolicy")
    if not isinstance(policy, GoObject):
        return False
    name = policy.field("Name", "")
    return not isinstance(name, str) or name.strip() not in ("", "no")


def service_violations(body: GoObject, facts: IsolationFacts) -> list[Violation]:
    """Swarm `POST /services/create` and `/services/{id}/update` bodies."""
    found: list[Violation] = []
    task = body.field("TaskTemplate")
    spec = task.field("ContainerSpec") if isinstance(task, GoObject) else None
    where = "TaskTemplate.ContainerSpec"
    if isinstance(spec, GoObject):
        for name in ("CapabilityAdd",):
            for cap in _strings(spec.field(name), f"{where}.{name}"):
                norm = normalize_capability(cap)
                if norm in DANGEROUS_CAPABILITIES:
                    found.append(
                        Violation(
                            f"--cap-add={norm}",
                            f"--cap-add={norm}",
                            f"{where}.{name}",
                            "this capability reaches the host kernel or other processes",
                        )
                    )
        privileges = spec.field("Privileges")
        if isinstance(privileges, GoObject):
            found += _service_privileges(privileges, f"{where}.Privileges")
        found += _propagation_violations(spec, where)
        sysctls = spec.field("Sysctls")
        if isinstance(sysctls, GoObject):
            for key in sysctls.entries():
                if not _sysctl_allowed(key, False):
                    found.append(
                        Violation(
                            f"--sysctl {key}",
                            f"--sysctl={key}",
                            f"{where}.Sysctls",
                            "it is a kernel setting of the whole host",
                        )
                    )
    # The top-level `Networks` is deprecated, but the engine still takes it when
    # `TaskTemplate.Networks` is empty.
    task_networks = task.field("Networks") if isinstance(task, GoObject) else None
    for where, networks in (("TaskTemplate.Networks", task_networks),
                            ("Networks", body.field("Networks"))):  # fmt: skip
        for i, target in enumerate(_network_targets(networks)):
            if _is_host_mode(target) or _host_network(target, facts):
                found.append(
                    Violation(
                        "--network=host",
                        "--network=host",
                        f"{where}[{i}].Target",
                        "its tasks would share the host's network stack",
                    )
                )
    if not isinstance(task, GoObject):
        return _unique(found)
    runtime = task.field("Runtime", "")
    if isinstance(runtime, str) and runtime.lower() == "plugin":
        plugin = task.field("PluginSpec")
        privs = plugin.field("PluginPrivilege") if isinstance(plugin, GoObject) else None
        if isinstance(privs, list):
            found += plugin_privilege_violations(privs, "TaskTemplate.PluginSpec.PluginPrivilege")
    return _unique(found)


def _network_targets(networks: Any) -> list[str]:
    """The `Target` of each entry of a service's `Networks` list ("" where there is none)."""
    if not isinstance(networks, list):
        return []
    out: list[str] = []
    for net in networks:
        target = net.field("Target", "") if isinstance(net, GoObject) else ""
        out.append(target if isinstance(target, str) else "")
    return out


def service_network_targets(body: GoObject) -> set[str]:
    """Every network a service spec names (the shell asks the engine what each one is)."""
    task = body.field("TaskTemplate")
    found = set(_network_targets(body.field("Networks")))
    if isinstance(task, GoObject):
        found.update(_network_targets(task.field("Networks")))
    found.discard("")
    return found


def _service_privileges(privileges: GoObject, where: str) -> list[Violation]:
    found: list[Violation] = []
    selinux = privileges.field("SELinuxContext")
    if isinstance(selinux, GoObject) and selinux.field("Disable", False) is True:
        found.append(
            Violation(
                "--security-opt label=disable",
                "--security-opt=label=disable",
                f"{where}.SELinuxContext.Disable",
                "it turns off the SELinux confinement",
            )
        )
    seccomp = privileges.field("Seccomp")
    mode = seccomp.field("Mode", "") if isinstance(seccomp, GoObject) else ""
    if isinstance(mode, str) and mode.lower() in ("unconfined", "custom"):
        token = (
            "--security-opt=seccomp=unconfined"
            if mode.lower() == "unconfined"
            else "--security-opt=seccomp"
        )
        found.append(
            Violation(
                f"seccomp mode {mode}", token, f"{where}.Seccomp.Mode", "it replaces the filter"
            )
        )
    apparmor = privileges.field("AppArmor")
    mode = apparmor.field("Mode", "") if isinstance(apparmor, GoObject) else ""
    if isinstance(mode, str) and mode.lower() == "disabled":
        found.append(
            Violation(
                "apparmor mode disabled",
                "--security-opt=apparmor=unconfined",
                f"{where}.AppArmor.Mode",
                "it turns off AppArmor",
            )
        )
    return found


def plugin_privilege_violations(privileges: list[Any], where: str) -> list[Violation]:
    """A plugin privilege list (`POST /plugins/pull`, `/upgrade` bodies; services' PluginSpec)."""
    found: list[Violation] = []
    for i, priv in enumerate(privileges):
        if not isinstance(priv, GoObject):
            continue
        name = priv.field("Name", "")
        values = _strings(priv.field("Value"), f"{where}[{i}].Value")
        at = f"{where}[{i}]"
        name = name.lower() if isinstance(name, str) else ""
        if name == "network" and any(_is_host_mode(v) for v in values):
            found.append(Violation("plugin network host", "--network=host", at, "host network"))
        elif name == "host pid namespace" and any(v == "true" for v in values):
            found.append(Violation("plugin host pid namespace", "--pid=host", at, "host PIDs"))
        elif name == "host ipc namespace" and any(v == "true" for v in values):
            found.append(Violation("plugin host ipc namespace", "--ipc=host", at, "host IPC"))
        elif name == "allow-all-devices" and any(v == "true" for v in values):
            found.append(Violation("plugin allow-all-devices", "--device", at, "every device"))
        elif name == "device" and values:
            found.append(
                Violation(f"plugin device {', '.join(values)}", "--device", at, "host devices")
            )
        elif name == "mount" and values:
            found += [
                Violation(f"plugin mount {v}", f"--volume={v}", at, "a host path")
                for v in values
                if posixpath.isabs(v)
            ]
        elif name == "capabilities":
            for cap in values:
                norm = normalize_capability(cap)
                if norm in DANGEROUS_CAPABILITIES:
                    found.append(
                        Violation(f"plugin capability {norm}", f"--cap-add={norm}", at, "caps")
                    )
    return found


def _is_volume_driver(interface: Any) -> bool:
    """Whether a plugin's `Config.Interface` lists the volume driver capability (as the
    string `docker.volumedriver/1.0`, or as an object with `Capability`)."""
    types = interface.get("Types") if isinstance(interface, dict) else None
    for t in types or ():
        if isinstance(t, dict):
            t = str(t.get("Capability") or "")
        if isinstance(t, str) and "volumedriver" in t.lower():
            return True
    return False


#: The mount types a plugin may ask for: host paths (judged as binds) and memory.
PLUGIN_MOUNT_TYPES = frozenset({"", "bind", "tmpfs"})


def plugin_config_violations(info: Mapping[str, Any], facts: IsolationFacts) -> list[Violation]:
    """An installed plugin (`GET /plugins/{name}/json`), judged before it is enabled."""
    config = info.get("Config") or {}
    settings = info.get("Settings") or {}
    found: list[Violation] = []
    network = (config.get("Network") or {}).get("Type") or ""
    if isinstance(network, str) and _is_host_mode(network):
        found.append(Violation("plugin network host", "--network=host", "Config.Network", "host"))
    if config.get("PidHost") is True:
        found.append(Violation("plugin PidHost", "--pid=host", "Config.PidHost", "host PIDs"))
    if config.get("IpcHost") is True:
        found.append(Violation("plugin IpcHost", "--ipc=host", "Config.IpcHost", "host IPC"))
    linux = config.get("Linux") or {}
    for cap in linux.get("Capabilities") or ():
        norm = normalize_capability(str(cap))
        if norm in DANGEROUS_CAPABILITIES:
            found.append(
                Violation(
                    f"plugin capability {norm}",
                    f"--cap-add={norm}",
                    "Config.Linux.Capabilities",
                    "this capability reaches the host kernel or other processes",
                )
            )
    for section, part in (("Config", config), ("Settings", settings)):
        for i, mount in enumerate(part.get("Mounts") or ()):
            kind = mount.get("Type") if isinstance(mount, dict) else None
            if kind is None or kind == "":
                kind = ""
            if not isinstance(kind, str) or kind not in PLUGIN_MOUNT_TYPES:
                found.append(
                    Violation(
                        f"plugin mount of type {kind!r}",
                        "--mount",
                        f"{section}.Mounts[{i}].Type",
                        "a file system of its own (procfs, sysfs, cgroup...) reaches host-wide "
                        "kernel state that a container's masked and read-only paths keep out",
                    )
                )
    if _is_volume_driver(config.get("Interface")):
        found.append(
            Violation(
                "plugin volume driver",
                "--volume-driver",
                "Config.Interface.Types",
                "the engine mounts into containers whatever path it answers (its rootfs joined "
                "with `..` climbs to any host path, the engine socket's folder included), "
                "after eci-agent could judge it",
            )
        )
    if linux.get("AllowAllDevices") is True:
        found.append(
            Violation("plugin AllowAllDevices", "--device", "Config.Linux", "every host device")
        )
    for section, part in (("Config.Linux", linux), ("Settings", settings)):
        for i, dev in enumerate(part.get("Devices") or ()):
            path = dev.get("Path") if isinstance(dev, dict) else None
            if path:
                found.append(
                    Violation(
                        f"plugin device {path}",
                        "--device",
                        f"{section}.Devices[{i}]",
                        "a host device",
                    )
                )
    return _unique(found)


def _cgroup_parent_violations(parent: str, option: str, where: str) -> list[Violation]:
    """The engine puts a container (or a build step) at `<parent>/<id>`, and a client's
    container is read from the first ID in its cgroup path: a parent naming another
    container's ID would make these processes pass for that container (and get its
    command list)."""
    if container_of_cgroup(f"0::{parent}") is None:
        return []
    return [
        Violation(
            f"{option}={parent}",
            "--cgroup-parent",
            where,
            "it is named like a container's cgroup, which is how eci-agent tells which "
            "container a request comes from",
        )
    ]


def build_violations(query: Mapping[str, str]) -> list[Violation]:
    """`POST /build` query parameters (`docker build --network=host`, classic `--security-opt`,
    `--cgroup-parent`)."""
    found: list[Violation] = []
    found += _cgroup_parent_violations(
        query.get("cgroupparent", ""), "docker build --cgroup-parent", "cgroupparent"
    )
    mode = query.get("networkmode", "")
    if _is_host_mode(mode) or _container_target(mode) is not None:
        found.append(
            Violation(
                f"docker build --network={mode}",
                "--network=host",
                "networkmode",
                "build steps would run in the host's (or another container's) network stack",
            )
        )
    raw = query.get("securityopt", "")
    if raw:
        try:
            opts = json.loads(raw)
        except ValueError:
            opts = None
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise ValueError("the securityopt query parameter is not a JSON array of strings")
        found += _security_opt_violations(opts, "securityopt")
    return found


def _unique(found: list[Violation]) -> list[Violation]:
    seen: set[str] = set()
    out: list[Violation] = []
    for v in found:
        if v.option not in seen:
            seen.add(v.option)
            out.append(v)
    return out


# -- containers made before enforcement ---------------------------------------------------------


def inspect_violations(
    info: GoObject, intents: tuple[MountIntent, ...], facts: IsolationFacts
) -> list[Violation]:
    """A container's inspect data (`GET /containers/{id}/json`): what it was created with."""
    hc = info.field("HostConfig")
    found: list[Violation] = []
    if isinstance(hc, GoObject):
        found += host_config_violations(hc, "HostConfig", facts)
        runtime = hc.field("Runtime", "")
        if facts.engine.has_sysbox and isinstance(runtime, str) and runtime != SYSBOX_RUNTIME:
            found.append(
                Violation(
                    f"--runtime={runtime or facts.engine.default_runtime}",
                    f"--runtime={runtime or facts.engine.default_runtime}",
                    "HostConfig.Runtime",
                    f"it runs without {SYSBOX_RUNTIME}, which isolates every other container",
                )
            )
    found += mount_violations(intents, facts)
    return _unique(found)


# -- exceptions and decisions --------------------------------------------------------------------

#: Options an `allow` token may name (the CLI's spelling); `--cap-add` etc. take a value.
_TOKEN_OPTIONS = frozenset(
    {
        "--privileged",
        "--pid",
        "--ipc",
        "--uts",
        "--network",
        "--userns",
        "--cgroupns",
        "--cap-add",
        "--device",
        "--device-cgroup-rule",
        "--gpus",
        "--security-opt",
        "--sysctl",
        "--volume",
        "--runtime",
        "--mount-propagation",
    }
)
_HOST_ONLY = frozenset({"--pid", "--ipc", "--uts", "--network", "--userns", "--cgroupns"})
_NO_VALUE = frozenset({"--privileged", "--device-cgroup-rule", "--gpus"})


def normalize_allow_token(text: str) -> str:
    """An `isolationExceptions[].allow` entry in the form `Violation.token` uses.

    Accepts a capability name (`SYS_PTRACE`, `cap_sys_ptrace`), or a CLI option as the docker
    CLI spells it, `=` or a space before its value (`--pid=host`, `--cap-add SYS_ADMIN`,
    `--device` for any device, `--device=/dev/fuse`, `--security-opt seccomp=unconfined`,
    `--sysctl=kernel.core_pattern`, `--volume=/etc`, `--net=host`). Raises `ValueError`.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("an empty entry")
    if not stripped.startswith("-"):
        cap = normalize_capability(stripped)
        if cap.replace("_", "").isalnum() and cap.upper() == cap:
            if cap not in DANGEROUS_CAPABILITIES:
                raise ValueError(
                    f"{text!r}: {cap} is not a capability eci-agent refuses (nothing to allow)"
                )
            return f"--cap-add={cap}"
        raise ValueError(f"{text!r} is neither a capability nor a docker CLI option")
    option, sep, value = stripped.replace(" ", "=", 1).partition("=")
    value = value.strip()
    option = {"--net": "--network", "-v": "--volume", "--mount": "--volume"}.get(option, option)
    if option not in _TOKEN_OPTIONS:
        known = ", ".join(sorted(_TOKEN_OPTIONS))
        raise ValueError(f"{text!r}: unknown option {option!r} (known: {known})")
    if option in _NO_VALUE:
        if value:
            raise ValueError(f"{text!r}: {option} takes no value here")
        return option
    if option in _HOST_ONLY:
        if value != "host":
            raise ValueError(f"{text!r}: only {option}=host is refused, so only it can be allowed")
        return f"{option}=host"
    if option == "--device":
        return f"--device={value}" if value else "--device"
    if option == "--mount-propagation":
        if value not in _SHARED_PROPAGATION:
            raise ValueError(
                f"{text!r}: only shared propagation is refused, so only it can be allowed"
            )
        return "--mount-propagation=shared"
    if not value:
        raise ValueError(f"{text!r}: {option} needs a value")
    if option == "--cap-add":
        cap = normalize_capability(value)
        if cap not in DANGEROUS_CAPABILITIES:
            raise ValueError(f"{text!r}: {cap} is not a capability eci-agent refuses")
        return f"--cap-add={cap}"
    if option == "--volume":
        source = value.split(":", 1)[0]
        if not posixpath.isabs(source):
            raise ValueError(f"{text!r}: the host path must be absolute")
        return f"--volume={clean_host_path(source)}"
    if option == "--security-opt":
        key, val = split_security_opt(value)
        if key == "seccomp" and val not in ("unconfined",):
            return "--security-opt=seccomp"
        return f"--security-opt={key}={val}" if val else f"--security-opt={key}"
    if option == "--sysctl":
        return f"--sysctl={value.replace('/', '.')}"
    return f"{option}={value}"


def token_allowed(token: str, allow: frozenset[str]) -> bool:
    if token in allow:
        return True
    return token.startswith("--device=") and "--device" in allow


def matching_exceptions(
    settings: AdminSettings, image_text: str, violations: Iterable[Violation]
) -> tuple[tuple[int, IsolationException], ...]:
    """The exception entries (with their index) whose images match `image_text` by name and
    tag and whose `allow` covers every violation; the shell then checks the image's digest."""
    entries = settings.extensions.isolation_exceptions
    wanted = list(violations)
    if not entries or not wanted or not image_text:
        return ()
    try:
        ref = parse_image_ref(image_text)
    except InvalidReference:
        return ()  # an image ID or unreadable name matches no entry
    out: list[tuple[int, IsolationException]] = []
    for i, entry in enumerate(entries):
        if not any(p.matches_name(ref) for p in entry.images):
            continue
        if all(token_allowed(v.token, entry.allow) for v in wanted):
            out.append((i, entry))
    return tuple(out)


def image_display(image_text: str) -> str:
    try:
        return parse_image_ref(image_text).name
    except InvalidReference:
        return image_text


def decide_violations(
    settings: AdminSettings,
    violations: Iterable[Violation],
    *,
    image_text: str,
    settings_where: str,
    verdicts: Mapping[int, ImageVerdict] | None = None,
    subject: str = "container",
    rule: str = "isolation",
) -> Decision:
    """Refuse unless every violation is waived by one exception whose image checks out.

    `verdicts` are the digest checks of `matching_exceptions` (by entry index): an entry
    applies only when its verdict allows the image, so a re-tagged image gets nothing.
    """
    found = list(violations)
    if not found:
        return ALLOW
    for index, _entry in matching_exceptions(settings, image_text, found):
        verdict = (verdicts or {}).get(index)
        if verdict is not None and verdict.allowed:
            return Decision(
                True,
                rule="isolation-exception",
                details={
                    "exception": str(index),
                    "allowed": ",".join(v.token for v in found),
                    "entry": verdict.entry or "",
                },
            )
    options = ", ".join(f"`{v.option}`" for v in found)
    reasons = "; ".join(f"{v.option} ({v.via}): {v.why}" for v in found)
    image = image_display(image_text)
    about = f' with image "{image}"' if image else ""
    return deny(
        403,
        f"{subject}{about} refused: {options} "
        f"{'is' if len(found) == 1 else 'are'} not allowed while enhanced container isolation "
        f"is on ({reasons}); remove {'it' if len(found) == 1 else 'them'}, or ask your "
        "administrator for an isolation exception for this image (eciAgent.isolationExceptions "
        f"in {settings_where})",
        rule,
        options=",".join(v.token for v in found),
        via=",".join(v.via for v in found),
    )


def decide_isolation(
    settings: AdminSettings,
    body: GoObject,
    intents: tuple[MountIntent, ...],
    facts: IsolationFacts,
    *,
    settings_where: str,
    verdicts: Mapping[int, ImageVerdict] | None = None,
) -> Decision:
    """A container create: refuse the host powers it asks for (see the module doc)."""
    try:
        found = create_violations(body, intents, facts)
    except ValueError as err:
        return bad_request(f"cannot read this create's isolation settings: {err}")
    image = body.field("Image", "")
    return decide_violations(
        settings,
        found,
        image_text=image if isinstance(image, str) else "",
        settings_where=settings_where,
        verdicts=verdicts,
    )


def decide_preexisting_start(
    settings: AdminSettings,
    name: str,
    image_text: str,
    violations: Iterable[Violation],
    *,
    settings_where: str,
    verdicts: Mapping[int, ImageVerdict] | None = None,
) -> Decision:
    """Starting a container whose stored config the policy refuses (made before enforcement,
    or while ECI was off): refused, with how to recreate it."""
    found = list(violations)
    decision = decide_violations(
        settings,
        found,
        image_text=image_text,
        settings_where=settings_where,
        verdicts=verdicts,
        rule="isolation-start",
    )
    if decision.allowed:
        return decision
    options = ", ".join(f"`{v.option}`" for v in found)
    return deny(
        403,
        f"container {name} was created with {options}, which enhanced container isolation "
        "does not allow (it was made before ECI was enforced, or while it was off); remove it "
        f"and create it again without {'that option' if len(found) == 1 else 'those options'}"
        f" (docker rm {name}), or ask your administrator for an isolation exception for its "
        f"image (eciAgent.isolationExceptions in {settings_where})",
        "isolation-start",
        options=",".join(v.token for v in found),
    )


# -- status --------------------------------------------------------------------------------------


def isolation_status(engine: EngineIsolation) -> str:
    """What isolation this host gives containers, and how to raise it (for status and doctor)."""
    lines: list[str] = []
    if engine.has_sysbox:
        lines.append(
            f"isolation: strong - every container runs with {SYSBOX_RUNTIME} (Linux user "
            "namespace, no host namespaces), as Docker Desktop's ECI does; eci-agent also "
            "refuses host namespaces, privileges, devices and sensitive host mounts at the API"
        )
        return "\n".join(lines)
    if engine.userns_remap:
        lines.append(
            "isolation: user namespaces - the engine runs with userns-remap, so root in a "
            "container is an unprivileged user on the host; eci-agent refuses --userns=host and "
            "the other host powers at the API"
        )
        lines.append(
            f"to raise it: install Sysbox and register {SYSBOX_RUNTIME} as a runtime in the "
            "engine's daemon.json; eci-agent then runs every container with it"
        )
        return "\n".join(lines)
    if engine.rootless:
        lines.append(
            "isolation: rootless engine - containers cannot gain more than the user running "
            "the engine; eci-agent refuses host powers at the API"
        )
    else:
        lines.append(
            "isolation: API checks only - containers run with runc and share the host's user "
            "IDs (root in a container is root on the host); eci-agent refuses host namespaces, "
            "privileges, dangerous capabilities, devices and sensitive host mounts at the API"
        )
    lines.append(
        f"to raise it: install Sysbox and register {SYSBOX_RUNTIME} in the engine's "
        'daemon.json ("runtimes"), or at least turn on "userns-remap": "default" there and '
        "restart the engine (existing containers and images are not carried over)"
    )
    return "\n".join(lines)
