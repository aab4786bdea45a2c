"""The doctor's judgement: facts in, findings out. No I/O here (`agent.doctor.gather` reads).

Each check yields `Finding`s: `ok`, `warn` or `fail`, a sentence, and the fix. The question
behind most of them: can anyone reach the engine without going through eci-agent? A socket
other users can write to, a group with members, a TCP listener or a second socket all can.
"""

from __future__ import annotations

import ipaddress
import json
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.policy.isolation import SYSBOX_RUNTIME, engine_isolation

OK = "ok"
WARN = "warn"
FAIL = "fail"

DEFAULT_ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")

SOCKET_FIX = (
    "chown root:root {path} && chmod 0600 {path} (or 0660 with a group that has no members); "
    "under systemd set SocketMode=0600 and SocketGroup=root in a docker.socket drop-in, and "
    "let users in through eci-agent's socket instead"
)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


# -- facts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder above a socket: who may pass through it."""

    path: str
    uid: int
    gid: int
    mode: int


@dataclass(frozen=True, slots=True)
class PathFacts:
    """A socket (or file) as `lstat` saw it, with the folders above it and its group's members."""

    path: str
    exists: bool = True
    is_socket: bool = True
    uid: int = 0
    gid: int = 0
    mode: int = 0o600
    group_name: str = ""
    #: Users in the group (from /etc/group, plus those whose primary group it is).
    group_members: tuple[str, ...] = ()
    folders: tuple[Folder, ...] = ()
    inode: tuple[int, int] | None = None

    @property
    def perms(self) -> int:
        return stat.S_IMODE(self.mode)


@dataclass(frozen=True, slots=True)
class EngineFacts:
    socket: str
    version: Mapping[str, Any] | None = None
    info: Mapping[str, Any] | None = None
    error: str | None = None
    #: `GET /plugins` (None: not read).
    plugins: tuple[Any, ...] | None = None
    #: Bind sources a user other than root can change, given to the engine as written, not
    #: pinned: (container name, or `service NAME` / `volume NAME`, source); None: not read.
    unpinned: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    """A dockerd process: what it was told to listen on, and the TCP ports it really holds."""

    pid: int
    hosts: tuple[str, ...] = ()
    tls_verify: bool = False
    listening_tcp: tuple[str, ...] = ()
    #: Whether this is the engine the doctor was asked about (it serves that socket).
    ours: bool = True


@dataclass(frozen=True, slots=True)
class SettingsFacts:
    path: str
    exists: bool = True
    untrusted: tuple[str, ...] = ()
    error: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class AgentFacts:
    control: str
    status: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OtherSocket:
    """Another socket that leads to the same engine (the daemon listens on it, or it answers
    `GET /info` with the engine's ID)."""

    facts: PathFacts
    why: str


@dataclass(frozen=True, slots=True)
class DoctorFacts:
    engine: EngineFacts
    engine_socket: PathFacts | None = None
    agent: AgentFacts | None = None
    agent_sockets: Mapping[str, PathFacts] = field(default_factory=dict)
    settings: SettingsFacts | None = None
    daemons: tuple[DaemonFacts, ...] | None = None  # None: /proc could not be read
    other_sockets: tuple[OtherSocket, ...] = ()
    #: `fs.protected_hardlinks` and `fs.protected_symlinks` (None: not read).
    protected_links: tuple[int | None, int | None] = (None, None)


# -- small pure helpers the gatherer uses too --------------------------------------------------


def parse_group_file(text: str) -> dict[int, tuple[str, tuple[str, ...]]]:
    """/etc/group -> {gid: (name, members)}."""
    out: dict[int, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        try:
            gid = int(parts[2])
        except ValueError:
            continue
        members = tuple(m for m in parts[3].split(",") if m.strip())
        out.setdefault(gid, (parts[0], members))
    return out


def parse_passwd_primary(text: str) -> dict[int, tuple[str, ...]]:
    """/etc/passwd -> {gid: users whose primary group it is}."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        try:
            out.setdefault(int(parts[3]), []).append(parts[0])
        except ValueError:
            continue
    return {gid: tuple(users) for gid, users in out.items()}


def group_members(
    gid: int,
    groups: Mapping[int, tuple[str, tuple[str, ...]]],
    primary: Mapping[int, Sequence[str]],
) -> tuple[str, tuple[str, ...]]:
    """(group name, its members: listed ones and those whose primary group it is)."""
    name, listed = groups.get(gid, (str(gid), ()))
    members = list(listed)
    members += [u for u in primary.get(gid, ()) if u not in members]
    return name, tuple(members)


def _flag_value(argv: Sequence[str], i: int, short: str, long: str) -> tuple[str | None, int]:
    arg = argv[i]
    for flag in (long, short):
        if arg == flag:
            return (argv[i + 1] if i + 1 < len(argv) else None), i + 2
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :], i + 1
    if short and arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
        return arg[len(short) :], i + 1
    return None, i + 1


def daemon_flags(argv: Sequence[str]) -> tuple[list[str], str | None, bool]:
    """dockerd's argv -> (hosts given with -H/--host, --config-file, --tlsverify)."""
    hosts: list[str] = []
    config: str | None = None
    tls_verify = False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-H", "--host") or arg.startswith(("--host=", "-H")):
            value, i = _flag_value(argv, i, "-H", "--host")
            if value:
                hosts.append(value)
            continue
        if arg == "--config-file" or arg.startswith("--config-file="):
            config, i = _flag_value(argv, i, "", "--config-file")
            continue
        if arg == "--tlsverify" or arg == "--tlsverify=true":
            tls_verify = True
        i += 1
    return hosts, config, tls_verify


def config_hosts(text: str) -> tuple[list[str], bool]:
    """daemon.json -> (its `hosts`, its `tlsverify`); nothing for a file that does not parse."""
    try:
        doc = json.loads(text)
    except ValueError:
        return [], False
    if not isinstance(doc, dict):
        return [], False
    hosts = doc.get("hosts")
    listed = [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []
    return listed, doc.get("tlsverify") is True


def parse_proc_net_tcp(text: str, inodes: Iterable[int]) -> list[str]:
    """/proc/<pid>/net/tcp{,6} -> the `addr:port` of LISTEN sockets whose inode is in `inodes`."""
    wanted = set(inodes)
    out: list[str] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":
            continue
        try:
            inode = int(parts[9])
        except ValueError:
            continue
        if inode not in wanted:
            continue
        address, _, port = parts[1].partition(":")
        out.append(f"{_decode_address(address)}:{int(port, 16)}")
    return out


def _decode_address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return f"[{ipaddress.IPv6Address(words)}]"


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- who can reach a socket ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reach:
    others: bool  # any local user
    group: bool  # members of the socket's group (gid != 0)
    blocked_by: str | None  # the folder that keeps others out, when one does


def reach(facts: PathFacts) -> Reach:
    """Who, besides the socket's owner and root, can connect (write permission on a socket,
    search permission on every folder above it)."""
    others_pass = True
    group_pass = True
    blocked_by: str | None = None
    for folder in facts.folders:
        mode = stat.S_IMODE(folder.mode)
        if not mode & stat.S_IXOTH:
            others_pass = False
            blocked_by = blocked_by or folder.path
            if not (folder.gid == facts.gid and mode & stat.S_IXGRP):
                group_pass = False
    mode = facts.perms
    others = others_pass and bool(mode & stat.S_IWOTH)
    group = facts.gid != 0 and group_pass and bool(mode & (stat.S_IWGRP | stat.S_IWOTH))
    return Reach(others, group, blocked_by)


def _engine_access(check: str, facts: PathFacts, what: str, rootless: bool) -> list[Finding]:
    """Findings for a socket that leads straight to the engine."""
    path = facts.path
    fix = SOCKET_FIX.format(path=path)
    mode = facts.perms
    r = reach(facts)
    out: list[Finding] = []
    if facts.uid != 0:
        out.append(
            Finding(
                check,
                WARN if rootless else FAIL,
                f"{what} {path} is owned by uid {facts.uid}: that user reaches the engine "
                "without eci-agent"
                + (
                    " (a rootless engine: expected, but that user is not held to ECI)"
                    if rootless
                    else ""
                ),
                "" if rootless else fix,
            )
        )
    if mode & stat.S_IWOTH:
        if r.others:
            out.append(
                Finding(
                    check,
                    FAIL,
                    f"{what} {path} is writable by every user (mode {mode:04o}): anyone on this "
                    "machine can use the engine directly and bypass eci-agent",
                    fix,
                )
            )
        else:
            out.append(
                Finding(
                    check,
                    WARN,
                    f"{what} {path} is writable by every user (mode {mode:04o}); only the folder "
                    f"{r.blocked_by} keeps others out today",
                    fix,
                )
            )
    if mode & stat.S_IWGRP and facts.gid != 0:
        name = facts.group_name or str(facts.gid)
        if facts.group_members and r.group:
            out.append(
                Finding(
                    check,
                    FAIL,
                    f"{what} {path} is writable by group {name}, whose members "
                    f"({', '.join(facts.group_members)}) can use the engine directly and bypass "
                    "eci-agent",
                    f"gpasswd -d USER {name} for each of them and give them eci-agent's socket "
                    f"instead, or {fix}",
                )
            )
        elif facts.group_members:
            out.append(
                Finding(
                    check,
                    WARN,
                    f"{what} {path} is writable by group {name} "
                    f"({', '.join(facts.group_members)}); only the folder {r.blocked_by} keeps "
                    "them out today",
                    fix,
                )
            )
        else:
            out.append(
                Finding(
                    check,
                    WARN,
                    f"{what} {path} is writable by group {name}, which has no members today: "
                    "anyone added to it later bypasses eci-agent",
                    f"chgrp root {path} (or keep {name} empty)",
                )
            )
    elif mode & stat.S_IWGRP and facts.gid == 0 and facts.group_members:
        out.append(
            Finding(
                check,
                WARN,
                f"{what} {path} is writable by group root, which has members "
                f"({', '.join(facts.group_members)}): they reach the engine without eci-agent",
                f"chmod g-w {path}",
            )
        )
    if not out:
        out.append(
            Finding(
                check,
                OK,
                f"{what} {path}: owner uid {facts.uid}, group {facts.group_name or facts.gid}, "
                f"mode {mode:04o}: only root reaches the engine directly",
            )
        )
    return out


# -- the checks ------------------------------------------------------------------------------


def check_engine(facts: DoctorFacts) -> list[Finding]:
    engine = facts.engine
    if engine.version is None:
        return [
            Finding(
                "engine-reachable",
                FAIL,
                f"the engine at {engine.socket} does not answer: {engine.error or 'no answer'}",
                "start dockerd, or name its socket with --engine PATH",
            )
        ]
    version = engine.version
    platform = version.get("Platform")
    name = platform.get("Name") if isinstance(platform, Mapping) else ""
    return [
        Finding(
            "engine-reachable",
            OK,
            f"{name or 'Docker Engine'} {version.get('Version')} (API {version.get('ApiVersion')}) "
            f"answers at {engine.socket}",
        )
    ]


def _rootless(facts: DoctorFacts) -> bool:
    info = facts.engine.info
    return info is not None and engine_isolation(info).rootless


def check_engine_socket(facts: DoctorFacts) -> list[Finding]:
    sock = facts.engine_socket
    if sock is None:
        return []
    if not sock.exists:
        return [
            Finding(
                "engine-socket",
                FAIL,
                f"the engine socket {sock.path} does not exist",
                "name the engine's socket with --engine PATH",
            )
        ]
    if not sock.is_socket:
        return [Finding("engine-socket", FAIL, f"{sock.path} is not a socket", "check --engine")]
    return _engine_access("engine-socket", sock, "the engine socket", _rootless(facts))


def check_other_sockets(facts: DoctorFacts) -> list[Finding]:
    out: list[Finding] = []
    for other in facts.other_sockets:
        found = _engine_access(
            "extra-engine-socket", other.facts, f"another engine socket ({other.why})", False
        )
        if all(f.status == OK for f in found):
            found = [
                Finding(
                    "extra-engine-socket",
                    WARN,
                    f"{other.facts.path} also leads to the engine ({other.why}); only root can "
                    f"use it (mode {other.facts.perms:04o}), but it is one more way around "
                    "eci-agent",
                    "drop the extra -H/hosts entry from dockerd unless something needs it",
                )
            ]
        out.extend(found)
    if not out:
        out.append(Finding("extra-engine-socket", OK, "no other unix socket leads to the engine"))
    return out


def check_tcp(facts: DoctorFacts) -> list[Finding]:
    if facts.daemons is None:
        return [
            Finding(
                "engine-tcp",
                WARN,
                "could not read the dockerd processes (/proc): check its -H flags and the "
                '"hosts" of its daemon.json yourself',
            )
        ]
    ours = [d for d in facts.daemons if d.ours]
    if not ours:
        return [
            Finding(
                "engine-tcp",
                WARN,
                f"no dockerd process serving {facts.engine.socket} was found (another namespace "
                "or a VM?): check its -H flags and daemon.json yourself",
            )
        ]
    out: list[Finding] = []
    for daemon in ours:
        addresses = list(daemon.listening_tcp)
        for host in daemon.hosts:
            if host.startswith("tcp://"):
                address = host[len("tcp://") :] or "0.0.0.0:2375"
                if not any(a.endswith(":" + address.rsplit(":", 1)[-1]) for a in addresses):
                    addresses.append(address)
        for address in addresses:
            if daemon.tls_verify:
                out.append(
                    Finding(
                        "engine-tcp",
                        WARN,
                        f"dockerd (pid {daemon.pid}) also listens on tcp://{address} with TLS "
                        "client certificates: whoever holds one bypasses eci-agent",
                        "remove the tcp:// host from dockerd's -H flags or daemon.json",
                    )
                )
            elif _is_loopback(address):
                out.append(
                    Finding(
                        "engine-tcp",
                        FAIL,
                        f"dockerd (pid {daemon.pid}) listens on tcp://{address} without TLS: any "
                        "local process can use the engine there, bypassing eci-agent",
                        "remove the tcp:// host from dockerd's -H flags or daemon.json "
                        "(Docker Desktop: turn off exposeDockerAPIOnTCP2375)",
                    )
                )
            else:
                out.append(
                    Finding(
                        "engine-tcp",
                        FAIL,
                        f"dockerd (pid {daemon.pid}) listens on tcp://{address} without TLS: "
                        "anyone who can reach that address controls the engine, bypassing "
                        "eci-agent",
                        "remove the tcp:// host from dockerd's -H flags or daemon.json",
                    )
                )
    if not out:
        pids = ", ".join(str(d.pid) for d in ours)
        out.append(Finding("engine-tcp", OK, f"dockerd (pid {pids}) listens on no TCP address"))
    return out


def check_other_engines(facts: DoctorFacts) -> list[Finding]:
    if not facts.daemons:
        return []
    others = [d for d in facts.daemons if not d.ours]
    if not others:
        return []
    listed = "; ".join(f"pid {d.pid} ({', '.join(d.hosts) or 'default socket'})" for d in others)
    return [
        Finding(
            "other-engines",
            WARN,
            f"{len(others)} other dockerd process(es) run on this machine, not behind this "
            f"eci-agent: {listed}",
            "stop them, or put an eci-agent in front of each and close their sockets to users",
        )
    ]


def check_isolation(facts: DoctorFacts) -> list[Finding]:
    info = facts.engine.info
    if info is None:
        return []
    engine = engine_isolation(info)
    out: list[Finding] = []
    if engine.has_sysbox:
        out.append(
            Finding(
                "sysbox",
                OK,
                f"{SYSBOX_RUNTIME} is registered: eci-agent runs every container with it",
            )
        )
    else:
        out.append(
            Finding(
                "sysbox",
                WARN,
                f"{SYSBOX_RUNTIME} is not registered: containers run with "
                f"{engine.default_runtime} (no user namespace of their own as under Docker "
                "Desktop's ECI); eci-agent only refuses host powers at the API",
                f'install Sysbox and add {SYSBOX_RUNTIME} to "runtimes" in daemon.json, then '
                "restart dockerd",
            )
        )
    if engine.userns_remap:
        out.append(
            Finding(
                "userns-remap",
                OK,
                "userns-remap is on: root in a container is not root on the host",
            )
        )
    elif engine.rootless:
        out.append(
            Finding(
                "userns-remap", OK, "a rootless engine: containers cannot gain more than its user"
            )
        )
    elif engine.has_sysbox:
        out.append(
            Finding(
                "userns-remap",
                OK,
                f"userns-remap is off, but {SYSBOX_RUNTIME} gives every container its own user "
                "namespace",
            )
        )
    else:
        out.append(
            Finding(
                "userns-remap",
                WARN,
                "userns-remap is off: root in a container is root on the host",
                'set "userns-remap": "default" in daemon.json and restart dockerd (images and '
                "containers are not carried over)",
            )
        )
    return out


def check_volume_plugins(facts: DoctorFacts) -> list[Finding]:
    """Volume drivers other than `local` (`GET /info` Plugins.Volume): eci-agent refuses to
    enable one, since the engine mounts into containers whatever path it answers, so any
    there was enabled without it and its volumes are used unjudged (docs/ISOLATION.md)."""
    info = facts.engine.info
    if info is None:
        return []
    plugins = info.get("Plugins")
    drivers = plugins.get("Volume") if isinstance(plugins, Mapping) else None
    found = {str(d) for d in drivers or () if str(d) != "local"}
    # /info lists a managed plugin only once the engine has looked it up; /plugins always
    for plugin in facts.engine.plugins or ():
        if isinstance(plugin, Mapping) and plugin.get("Enabled") is True:
            config = plugin.get("Config")
            interface = config.get("Interface") if isinstance(config, Mapping) else None
            types = interface.get("Types") if isinstance(interface, Mapping) else None
            if any("volumedriver" in str(t).lower() for t in types or ()):
                found.add(str(plugin.get("Name") or plugin.get("Id") or "?"))
    others = sorted(found)
    if not others:
        return [Finding("volume-plugins", OK, "no volume driver but local")]
    return [
        Finding(
            "volume-plugins",
            WARN,
            f"volume driver(s) {', '.join(others)}: their volumes are mounted from whatever path "
            "the driver answers, which eci-agent cannot judge",
            "docker plugin disable (or rm) them unless you trust them as you trust the engine",
        )
    ]


def check_unpinned_binds(facts: DoctorFacts) -> list[Finding]:
    """Containers, services and local bind volumes made before eci-agent pinned bind sources
    (or on the raw socket) whose source a user can change: the engine resolves it again each
    time it mounts it (its own restarts, a service's new tasks, any container using the
    volume), so a swap after the agent's judgement still works there (docs/ISOLATION.md)."""
    unpinned = facts.engine.unpinned
    if unpinned is None:
        return []
    if not unpinned:
        return [
            Finding(
                "unpinned-binds",
                OK,
                "no container, service or volume binds a path a user can change unpinned",
            )
        ]
    owners = sorted({who for who, _ in unpinned})
    counts = {
        kind: sum(1 for who in owners if _owner_kind(who) == kind)
        for kind in ("container", "service", "volume")
    }
    counted = ", ".join(f"{n} {kind}(s)" for kind, n in counts.items() if n)
    shown = ", ".join(f"{who} ({src})" for who, src in sorted(unpinned)[:5])
    more = f" and {len(unpinned) - 5} more" if len(unpinned) > 5 else ""
    return [
        Finding(
            "unpinned-binds",
            WARN,
            f"{counted} bind a path a user other than root can change, as written (made "
            f"before eci-agent pinned such sources, or without it): {shown}{more}; the engine "
            "resolves it again each time it mounts it",
            "remove them and create them again through eci-agent",
        )
    ]


def _owner_kind(who: str) -> str:
    """`service NAME` and `volume NAME` are named so; a container by its name alone."""
    kind = who.partition(" ")[0]
    return kind if kind in ("service", "volume") and " " in who else "container"


def check_protected_links(facts: DoctorFacts) -> list[Finding]:
    """The kernel's link protections. Without `fs.protected_hardlinks`, a user may hard-link a
    file they neither own nor may write (one in /etc) into a folder of theirs: a bind of that
    folder then hands a container the file, and nothing about the folder's path or inode says
    so (the agent judges the paths and folders it is given, not every file inside them).
    Without `fs.protected_symlinks`, root processes follow users' links in sticky folders like
    /tmp; the agent judges what such a link leads to and pins it, so that is a weaker note."""
    hard, sym = facts.protected_links
    if hard is None and sym is None:
        return []
    if hard == 0:
        return [
            Finding(
                "protected-links",
                WARN,
                "fs.protected_hardlinks is 0: a user can hard-link a file they do not own (in "
                "/etc, say) into a folder they bind into a container, and no check on the "
                "folder sees it" + ("; fs.protected_symlinks is 0 too" if sym == 0 else ""),
                "sysctl -w fs.protected_hardlinks=1 fs.protected_symlinks=1, and keep it in "
                "/etc/sysctl.d/ (Debian's default is 1 for both)",
            )
        ]
    if sym == 0:
        return [
            Finding(
                "protected-links",
                WARN,
                "fs.protected_symlinks is 0: root processes follow users' links in sticky "
                "folders like /tmp (the agent judges where a bind source leads and pins it, "
                "so this is defence in depth)",
                "sysctl -w fs.protected_symlinks=1, and keep it in /etc/sysctl.d/",
            )
        ]
    return [
        Finding("protected-links", OK, "the kernel's hard and symbolic link protections are on")
    ]


def check_settings(facts: DoctorFacts) -> list[Finding]:
    s = facts.settings
    if s is None:
        return []
    if not s.exists:
        return [
            Finding(
                "settings-file",
                WARN,
                f"no settings file at {s.path}: the built-in default applies (ECI on, no image "
                "may mount the socket, not locked: users may switch ECI off)",
                f"deploy an admin-settings.json at {s.path} (owned by root, mode 0644), with "
                "enhancedContainerIsolation locked",
            )
        ]
    if s.untrusted:
        return [
            Finding(
                "settings-file",
                FAIL,
                f"{s.path} could be changed by a non-root user ({'; '.join(s.untrusted)}): "
                "the agent refuses it and keeps the last good policy",
                f"chown root:root {s.path} && chmod 0644 {s.path}, and chmod go-w every folder "
                "above it",
            )
        ]
    if s.error:
        return [
            Finding(
                "settings-file",
                FAIL,
                f"{s.path} is refused: {s.error}",
                f"fix it (eci-agent check {s.path} names each problem)",
            )
        ]
    sha = f" (sha256 {s.sha256[:12]})" if s.sha256 else ""
    return [Finding("settings-file", OK, f"{s.path}{sha}: valid, owned and writable by root only")]


def check_agent(facts: DoctorFacts) -> list[Finding]:
    agent = facts.agent
    if agent is None:
        return []
    if agent.status is None:
        return [
            Finding(
                "agent-running",
                FAIL,
                f"eci-agent does not answer on {agent.control}: {agent.error or 'no answer'}",
                "start it (systemctl start eci-agent), or name its socket with --control PATH",
            )
        ]
    status = agent.status
    info = status.get("agent") or {}
    out = [
        Finding(
            "agent-running",
            OK,
            f"eci-agent {info.get('version')} (pid {info.get('pid')}) answers on {agent.control}",
        )
    ]
    code = info.get("code")
    if isinstance(code, dict) and code.get("summary"):
        # Performance only: pure Python enforces the same policy, a stale build is just unused.
        out.append(
            Finding(
                "agent-code",
                WARN if code.get("stale") else OK,
                f"proxy code: {code['summary']}",
                "run `make native` in eci-agent's checkout, then restart it"
                if code.get("stale")
                else "",
            )
        )
    mode = status.get("mode") or ("enforcing" if status.get("enforcing") else "off")
    where = (status.get("settings") or {}).get("source") or "the built-in default"
    if mode == "enforcing":
        locked = "locked" if status.get("locked") else "NOT locked: users may switch it off"
        out.append(
            Finding(
                "agent-enforcing",
                OK if status.get("locked") else WARN,
                f"enforcing the settings of {where} ({locked})",
                "" if status.get("locked") else 'set "locked": true in enhancedContainerIsolation',
            )
        )
    elif mode == "audit":
        out.append(
            Finding(
                "agent-enforcing",
                WARN,
                "audit mode: what the policy would refuse is recorded and let through; this "
                "machine is not protected",
                "remove eciAgent.auditMode from the settings once eci-agent suggest is done",
            )
        )
    else:
        out.append(
            Finding(
                "agent-enforcing",
                FAIL,
                "Enhanced Container Isolation is off: eci-agent passes every request",
                'set "value": true and "locked": true in enhancedContainerIsolation',
            )
        )
    if status.get("settingsError"):
        out.append(
            Finding(
                "agent-enforcing",
                WARN,
                f"the settings file was refused, the last good policy stays in force: "
                f"{status['settingsError']}",
                "fix the file (eci-agent check FILE)",
            )
        )
    engine = status.get("engine") or {}
    if engine.get("socket") and engine["socket"] != facts.engine.socket:
        out.append(
            Finding(
                "agent-enforcing",
                WARN,
                f"the agent is in front of {engine['socket']}, not {facts.engine.socket}",
                "give doctor the agent's engine (--engine), or check which engine users reach",
            )
        )
    elif engine and engine.get("reachable") is False:
        out.append(
            Finding(
                "agent-enforcing",
                FAIL,
                f"the agent cannot reach its engine: {engine.get('error')}",
                "start the engine",
            )
        )
    return out


def check_agent_sockets(facts: DoctorFacts) -> list[Finding]:
    out: list[Finding] = []
    for name, sock in sorted(facts.agent_sockets.items()):
        check = "agent-socket"
        if not sock.exists or not sock.is_socket:
            out.append(
                Finding(
                    check,
                    FAIL,
                    f"the agent's {name} socket {sock.path} is missing",
                    "restart eci-agent",
                )
            )
            continue
        mode = sock.perms
        group = sock.group_name or str(sock.gid)
        describe = (
            f"the agent's {name} socket {sock.path} (owner uid {sock.uid}, group {group}, "
            f"mode {mode:04o})"
        )
        if name == "control" and mode & stat.S_IWOTH:
            out.append(
                Finding(
                    check,
                    WARN,
                    f"{describe} is writable by every user; the agent still refuses callers "
                    "outside root and its control group, but the file mode should say so too",
                    f"chmod 0600 {sock.path} (0660 with --control-group); restart eci-agent",
                )
            )
        elif name == "container" and mode & stat.S_IWOTH:
            out.append(
                Finding(
                    check,
                    OK,
                    f"{describe}: open on purpose (the socket allowed containers get); every "
                    "request on it is held to the command list",
                )
            )
        elif mode & stat.S_IWOTH:
            out.append(
                Finding(
                    check,
                    OK,
                    f"{describe}: every local user may use docker through eci-agent, which judges "
                    "every request",
                )
            )
        else:
            out.append(Finding(check, OK, describe))
    return out


CHECKS = (
    check_engine,
    check_engine_socket,
    check_other_sockets,
    check_tcp,
    check_other_engines,
    check_isolation,
    check_volume_plugins,
    check_unpinned_binds,
    check_protected_links,
    check_settings,
    check_agent,
    check_agent_sockets,
)


def diagnose(facts: DoctorFacts) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(facts))
    return findings


def exit_status(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0
