"""Which ECI features this machine has, which the settings use, and where they would not apply.

The data is `resources/features.json` (one row per feature: the Docker Desktop version that
brought it, what eci-agent does with it on a plain engine, and the source). This module is pure:
`parse_table` checks the data, `platform_from` reads the engine's `GET /version` and `GET /info`
answers, `features_used` lists what an `AdminSettings` asks for, and `evaluate` puts them
together into the report `GET /v1/features` and `eci-agent features` show. Only
`load_default_table` reads a file.

The point of the version column: an admin-settings.json is often deployed to Docker Desktop
too. A feature that came later than the Docker Desktop a machine runs does not fail loudly
there, it just does nothing (`"*"` on 4.35 allows no image), so the report warns about it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.policy.commands import DOCUMENTED_WILDCARDS
from agent.policy.isolation import EngineIsolation, isolation_status
from agent.settings.model import AdminSettings, CommandListType

FEATURES_FILE = "features.json"
SCHEMA = 1

Version = tuple[int, int, int]

KINDS = frozenset(
    {"isolation", "setting", "limitation", "container-type", "command", "extension", "service"}
)
#: Docker Desktop's side: since a version; cannot do it; leaves it outside ECI; ignores the
#: key (eciAgent); accepted by eci-agent only, not in Docker's docs.
SUPPORTS = frozenset({"since", "not-supported", "not-protected", "ignored", "undocumented"})
#: eci-agent's side on a plain Docker Engine.
AGENT_STATES = frozenset({"enforced", "partial", "not-applicable"})
#: Docker Desktop backends a `since` feature can be missing on (`notOn`).
BACKENDS = frozenset({"wsl2"})

DOCKER_DESKTOP = "docker-desktop"
DOCKER_ENGINE = "docker-engine"
UNKNOWN = "unknown"

_DESKTOP_NAME = re.compile(r"^Docker Desktop (\d+)\.(\d+)(?:\.(\d+))?\b")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


class FeatureDataError(ValueError):
    """resources/features.json is not well-formed; the message names the row and field."""


# -- versions ----------------------------------------------------------------------------------


def parse_version(text: str) -> Version | None:
    """`4.36`, `4.36.0`, `v4.36.1` -> (4, 36, 0|1); anything else None."""
    m = _VERSION.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def format_version(version: Version) -> str:
    """(4, 36, 0) -> `4.36`; (4, 36, 1) -> `4.36.1`."""
    major, minor, patch = version
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


def desktop_version(platform_name: str) -> Version | None:
    """The Docker Desktop version in `GET /version` `Platform.Name`
    (`Docker Desktop 4.36.0 (175267)`); None for any other engine."""
    m = _DESKTOP_NAME.match(platform_name.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


# -- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesktopSupport:
    support: str
    version: Version | None = None
    exact: bool = True
    not_on: tuple[str, ...] = ()
    #: What a Docker Desktop without the feature does with the setting (or always, for the
    #: unsupported kinds): the words of the warning.
    older: str = ""

    def available(self, version: Version, wsl2: bool = False) -> bool | None:
        """Whether Docker Desktop `version` has it; None when the docs do not say."""
        if self.support == "undocumented":
            return None
        if self.support != "since" or self.version is None:
            return False
        if wsl2 and "wsl2" in self.not_on:
            return False
        return version >= self.version


@dataclass(frozen=True, slots=True)
class FeatureRow:
    id: str
    kind: str
    title: str
    desktop: DesktopSupport
    agent_state: str
    agent_detail: str
    source: str
    settings: str | None = None
    command: str | None = None


@dataclass(frozen=True, slots=True)
class FeatureTable:
    rows: tuple[FeatureRow, ...]
    index: Mapping[str, FeatureRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {r.id: r for r in self.rows})

    def get(self, feature: str) -> FeatureRow:
        try:
            return self.index[feature]
        except KeyError:
            raise FeatureDataError(f"{FEATURES_FILE} has no feature {feature!r}") from None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.rows)

    def commands(self) -> dict[str, FeatureRow]:
        """The `command` rows by command name (`compose` -> its row)."""
        return {r.command: r for r in self.rows if r.kind == "command" and r.command}


def _text(row: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FeatureDataError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _desktop(doc: Any, where: str) -> DesktopSupport:
    if not isinstance(doc, dict):
        raise FeatureDataError(f"{where}: expected an object")
    unknown = set(doc) - {"support", "version", "exact", "notOn", "older"}
    if unknown:
        raise FeatureDataError(f"{where}: unknown keys {sorted(unknown)}")
    support = _text(doc, "support", where)
    if support not in SUPPORTS:
        raise FeatureDataError(f"{where}.support: {support!r} is not one of {sorted(SUPPORTS)}")
    older = _text(doc, "older", where) or ""
    version: Version | None = None
    text = doc.get("version")
    if support == "since":
        version = parse_version(text) if isinstance(text, str) else None
        if version is None:
            raise FeatureDataError(
                f"{where}.version: expected a version such as 4.36, got {text!r}"
            )
    elif text is not None:
        raise FeatureDataError(f"{where}.version: only `since` rows have a version")
    exact = doc.get("exact", True)
    if not isinstance(exact, bool):
        raise FeatureDataError(f"{where}.exact: expected true or false")
    not_on = doc.get("notOn", [])
    if not isinstance(not_on, list) or any(b not in BACKENDS for b in not_on):
        raise FeatureDataError(f"{where}.notOn: expected a list of {sorted(BACKENDS)}")
    return DesktopSupport(support, version, exact, tuple(not_on), older)


def parse_table(doc: Any) -> FeatureTable:
    """Check and read the decoded features.json; `FeatureDataError` names what is wrong."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise FeatureDataError(f"{FEATURES_FILE}: expected an object with schema {SCHEMA}")
    raw = doc.get("features")
    if not isinstance(raw, list) or not raw:
        raise FeatureDataError(f"{FEATURES_FILE}: features must be a non-empty list")
    rows: list[FeatureRow] = []
    seen: set[str] = set()
    for i, row in enumerate(raw):
        where = f"features[{i}]"
        if not isinstance(row, dict):
            raise FeatureDataError(f"{where}: expected an object")
        unknown = set(row) - {
            "id", "kind", "title", "settings", "command", "dockerDesktop", "eciAgent", "source",
        }  # fmt: skip
        if unknown:
            raise FeatureDataError(f"{where}: unknown keys {sorted(unknown)}")
        fid = _text(row, "id", where)
        assert fid is not None
        where = f"features[{i}] ({fid})"
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", fid):
            raise FeatureDataError(f"{where}.id: use lower-case words joined by -")
        if fid in seen:
            raise FeatureDataError(f"{where}.id: given twice")
        seen.add(fid)
        kind = _text(row, "kind", where)
        if kind not in KINDS or kind == "service":
            raise FeatureDataError(f"{where}.kind: {kind!r} is not one of {sorted(KINDS)}")
        command = _text(row, "command", where, required=kind == "command")
        if command is not None and kind != "command":
            raise FeatureDataError(f"{where}.command: only `command` rows name a command")
        agent = row.get("eciAgent")
        if not isinstance(agent, dict) or set(agent) - {"state", "detail"}:
            raise FeatureDataError(f"{where}.eciAgent: expected {{state, detail}}")
        state = _text(agent, "state", f"{where}.eciAgent")
        if state not in AGENT_STATES:
            raise FeatureDataError(
                f"{where}.eciAgent.state: {state!r} is not one of {sorted(AGENT_STATES)}"
            )
        detail = _text(agent, "detail", f"{where}.eciAgent")
        rows.append(
            FeatureRow(
                id=fid,
                kind=kind,
                title=_text(row, "title", where) or "",
                desktop=_desktop(row.get("dockerDesktop"), f"{where}.dockerDesktop"),
                agent_state=state,
                agent_detail=detail or "",
                source=_text(row, "source", where) or "",
                settings=_text(row, "settings", where, required=False),
                command=command,
            )
        )
    return FeatureTable(tuple(rows))


def load_table(path: Path) -> FeatureTable:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FeatureDataError(f"cannot read {path}: {err}") from err
    return parse_table(doc)


@functools.cache
def load_default_table() -> FeatureTable:
    """The packaged resources/features.json (read once)."""
    from agent.paths import resource_path

    return load_table(resource_path(FEATURES_FILE))


# -- the machine -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    """What the engine says it is. `kind`: docker-desktop, docker-engine (any other engine:
    Docker Engine - Community, a distribution's build with an empty name, ...) or unknown."""

    kind: str = UNKNOWN
    name: str = ""
    desktop_version: Version | None = None
    engine_version: str = ""
    api_version: str = ""
    min_api_version: str = ""
    os: str = ""
    arch: str = ""
    kernel_version: str = ""
    operating_system: str = ""
    wsl2: bool = False
    #: Set for a platform given on the command line (`--docker-desktop 4.35`), not asked.
    assumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "dockerDesktopVersion": (
                format_version(self.desktop_version) if self.desktop_version else None
            ),
            "engineVersion": self.engine_version or None,
            "apiVersion": self.api_version or None,
            "minApiVersion": self.min_api_version or None,
            "os": self.os or None,
            "arch": self.arch or None,
            "kernelVersion": self.kernel_version or None,
            "operatingSystem": self.operating_system or None,
            "wsl2": self.wsl2,
            "assumed": self.assumed,
        }

    def describe(self) -> str:
        if self.kind == UNKNOWN:
            return "unknown (the engine did not answer)" if not self.assumed else "any engine"
        if self.kind == DOCKER_DESKTOP:
            version = format_version(self.desktop_version) if self.desktop_version else "?"
            text = f"Docker Desktop {version}" + (" (WSL 2)" if self.wsl2 else "")
        else:
            text = self.name or "Docker Engine"
        if self.engine_version:
            text += f", engine {self.engine_version}"
        if self.api_version:
            text += f" (API {self.api_version})"
        if self.os and self.arch:
            text += f", {self.os}/{self.arch}"
        return text


def _str(doc: Mapping[str, Any] | None, key: str) -> str:
    value = doc.get(key) if doc is not None else None
    return value if isinstance(value, str) else ""


def platform_from(
    version: Mapping[str, Any] | None, info: Mapping[str, Any] | None = None
) -> Platform:
    """Read `GET /version` (and `GET /info` when given); both None: the engine did not answer."""
    if version is None and info is None:
        return Platform()
    raw_platform = version.get("Platform") if version is not None else None
    name = _str(raw_platform, "Name") if isinstance(raw_platform, Mapping) else ""
    kernel = _str(version, "KernelVersion") or _str(info, "KernelVersion")
    operating_system = _str(info, "OperatingSystem")
    found = desktop_version(name)
    is_desktop = found is not None or operating_system == "Docker Desktop"
    return Platform(
        kind=DOCKER_DESKTOP if is_desktop else DOCKER_ENGINE,
        name=name,
        desktop_version=found,
        engine_version=_str(version, "Version") or _str(info, "ServerVersion"),
        api_version=_str(version, "ApiVersion"),
        min_api_version=_str(version, "MinAPIVersion"),
        os=_str(version, "Os") or _str(info, "OSType"),
        arch=_str(version, "Arch") or _str(info, "Architecture"),
        kernel_version=kernel,
        operating_system=operating_system,
        wsl2=is_desktop and "wsl2" in kernel.lower(),
    )


def assumed_desktop(version: Version, *, wsl2: bool = False) -> Platform:
    """A Docker Desktop of `version`, for evaluating a settings file offline."""
    return Platform(
        kind=DOCKER_DESKTOP,
        name=f"Docker Desktop {format_version(version)}",
        desktop_version=version,
        wsl2=wsl2,
        assumed=True,
    )


def isolation_level(engine: EngineIsolation | None) -> str:
    """sysbox, userns-remap, rootless, none (API checks only) or unknown."""
    if engine is None:
        return UNKNOWN
    if engine.has_sysbox:
        return "sysbox"
    if engine.userns_remap:
        return "userns-remap"
    if engine.rootless:
        return "rootless"
    return "none"


# -- the settings ------------------------------------------------------------------------------

SOCKET = "enhancedContainerIsolation.dockerSocketMount"
IMAGES = f"{SOCKET}.imageList.images"
COMMANDS = f"{SOCKET}.commandList.commands"


@dataclass(frozen=True, slots=True)
class Usage:
    """The settings use `feature` at JSON path `path`."""

    feature: str
    path: str


def _command_key(text: str) -> tuple[str, bool]:
    """A command-list entry -> (its first word, whether it is a wildcard)."""
    name = " ".join(text.split())
    if name.startswith("docker "):
        name = name[len("docker ") :]
    wildcard = name.endswith("*") and " " not in name
    return name.rstrip("*").split(" ")[0], wildcard


def features_used(settings: AdminSettings, table: FeatureTable) -> tuple[Usage, ...]:
    """The table's features the settings ask for, each with where (JSON path)."""
    eci = settings.eci
    out: list[Usage] = []
    if eci.value:
        for feature in ("eci", "socket-mount-denied", "build-protection"):
            out.append(Usage(feature, "enhancedContainerIsolation.value"))
    if eci.locked:
        out.append(Usage("eci-lock", "enhancedContainerIsolation.locked"))
    image_list = eci.socket_mount.image_list
    derived = f"{SOCKET}.imageList.allowDerivedImages"
    for i, pattern in enumerate(image_list.images):
        path = f"{IMAGES}[{i}]"
        if pattern.is_everything:
            out.append(Usage("image-list-everything", path))
            continue
        out.append(Usage("image-list", path))
        if pattern.any_tag:
            out.append(Usage("image-list-tag-wildcard", path))
        if pattern.digest is not None:
            out.append(Usage("image-list-digest", path))
        if pattern.has_path_wildcard:
            out.append(Usage("image-list-path-wildcard", path))
        if image_list.allow_derived_images:
            if pattern.any_tag:
                out.append(Usage("derived-images-wildcard-tags", path))
            else:
                out.append(Usage("derived-images", path))
    if image_list.allow_derived_images and not any(u.feature.startswith("derived") for u in out):
        out.append(Usage("derived-images", derived))
    command_list = eci.socket_mount.command_list
    if command_list.commands or command_list.type is CommandListType.ALLOW:
        out.append(Usage("command-list", f"{SOCKET}.commandList"))
    commands = table.commands()
    for i, command in enumerate(command_list.commands):
        path = f"{COMMANDS}[{i}]"
        key, wildcard = _command_key(command.text)
        if wildcard:
            documented = f"{key}*" in DOCUMENTED_WILDCARDS
            out.append(
                Usage(
                    "command-list-wildcards" if documented else "command-list-other-wildcards", path
                )
            )
        row = commands.get(key)
        if row is not None:
            out.append(Usage(row.id, path))
    extensions = settings.extensions
    if extensions.image_command_lists:
        out.append(Usage("eciagent-command-lists", "eciAgent.commandLists"))
    if extensions.isolation_exceptions:
        out.append(Usage("eciagent-isolation-exceptions", "eciAgent.isolationExceptions"))
    if extensions.audit_mode:
        out.append(Usage("eciagent-audit-mode", "eciAgent.auditMode"))
    return tuple(out)


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureWarning:
    feature: str
    severity: str  # "warning": it would not apply / is not protected; "notice": good to know
    message: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "severity": self.severity,
            "message": self.message,
            "path": self.path,
        }


@dataclass(frozen=True, slots=True)
class FeatureReport:
    platform: Platform
    isolation: str
    isolation_summary: str
    mode: str | None
    minimum_desktop: Version | None
    rows: tuple[dict[str, Any], ...]
    warnings: tuple[FeatureWarning, ...] = ()
    settings_source: str | None = None
    settings_sha256: str | None = None
    extra_rows: tuple[dict[str, Any], ...] = field(default=())

    @property
    def target(self) -> Version | None:
        return self.platform.desktop_version if self.platform.kind == DOCKER_DESKTOP else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform.to_dict(),
            "isolation": {"level": self.isolation, "summary": self.isolation_summary},
            "mode": self.mode,
            "settings": {"source": self.settings_source, "sha256": self.settings_sha256},
            "dockerDesktopTarget": format_version(self.target) if self.target else None,
            "minimumDockerDesktop": (
                format_version(self.minimum_desktop) if self.minimum_desktop else None
            ),
            "warnings": [w.to_dict() for w in self.warnings],
            "features": [*self.extra_rows, *self.rows],
        }


def _agent_state(
    row: FeatureRow, engine: EngineIsolation | None, platform: Platform
) -> tuple[str, str]:
    """What eci-agent does with `row` here: the data's state, sharpened by the engine's facts."""
    if row.id in ("eci", "docker-in-docker") and engine is not None and engine.has_sysbox:
        return "enforced", (
            "sysbox-runc is registered on this engine: every container created through the "
            "agent runs with it"
        )
    if row.id == "eci" and engine is not None:
        return "partial", isolation_status(engine).splitlines()[0]
    if row.id == "eci" and platform.kind == UNKNOWN and not platform.assumed:
        return "partial", "the engine's own isolation is unknown (it did not answer)"
    return row.agent_state, row.agent_detail


def _warnings_for(
    row: FeatureRow, paths: Sequence[str], platform: Platform
) -> Iterable[FeatureWarning]:
    where = paths[0] if paths else None
    desk = row.desktop
    target = platform.desktop_version if platform.kind == DOCKER_DESKTOP else None
    on_desktop = platform.kind == DOCKER_DESKTOP
    if desk.support == "since" and desk.version is not None:
        needs = format_version(desk.version)
        if target is not None:
            if target < desk.version:
                yield FeatureWarning(
                    row.id,
                    "warning",
                    f"{row.title}: needs Docker Desktop {needs} or later; on Docker Desktop "
                    f"{format_version(target)}: {desk.older}",
                    where,
                )
            elif platform.wsl2 and "wsl2" in desk.not_on:
                yield FeatureWarning(
                    row.id,
                    "warning",
                    f"{row.title}: not on Docker Desktop's WSL 2 backend: {desk.older}",
                    where,
                )
        elif desk.version > (4, 13, 0):
            yield FeatureWarning(
                row.id,
                "notice",
                f"{row.title}: on Docker Desktop this needs {needs} or later; before that: "
                f"{desk.older}",
                where,
            )
        return
    if desk.support in ("not-supported", "ignored", "undocumented"):
        here = f"; eci-agent: {row.agent_detail}" if not on_desktop else ""
        yield FeatureWarning(
            row.id,
            "warning" if on_desktop else "notice",
            f"{row.title}: on Docker Desktop, {desk.older}" + here,
            where,
        )


def evaluate(
    table: FeatureTable,
    settings: AdminSettings,
    *,
    platform: Platform,
    engine: EngineIsolation | None = None,
    mode: str | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = (),
) -> FeatureReport:
    """The feature report for `settings` on `platform` (see the module doc).

    `engine` is the engine's own isolation (`GET /info`), `mode` what the agent does now
    (enforcing, audit, off; None offline), `extra_rows` the agent's own service rows.
    """
    used: dict[str, list[str]] = {}
    for usage in features_used(settings, table):
        table.get(usage.feature)  # every feature named here must be in the data
        used.setdefault(usage.feature, []).append(usage.path)
    target = platform.desktop_version if platform.kind == DOCKER_DESKTOP else None
    active_mode = mode == "enforcing"
    # A Docker Desktop without ECI at all: one warning says it, not one per setting.
    eci_since = table.get("eci").desktop.version
    no_eci = target is not None and eci_since is not None and target < eci_since
    rows: list[dict[str, Any]] = []
    warnings: list[FeatureWarning] = []
    if mode == "off":
        warnings.append(
            FeatureWarning(
                "eci",
                "warning",
                "Enhanced Container Isolation is off: nothing below is enforced now",
                "enhancedContainerIsolation.value",
            )
        )
    elif mode == "audit":
        warnings.append(
            FeatureWarning(
                "eciagent-audit-mode",
                "warning",
                "audit mode: what the policy would refuse is recorded and let through; this "
                "machine is not protected",
                "eciAgent.auditMode",
            )
        )
    for row in table.rows:
        state, detail = _agent_state(row, engine, platform)
        paths = used.get(row.id, [])
        desk = row.desktop
        rows.append(
            {
                "name": row.id,
                "kind": row.kind,
                "title": row.title,
                "state": state,
                "detail": detail,
                "used": bool(paths),
                "usedAt": paths,
                "active": active_mode and state != "not-applicable",
                "dockerDesktop": {
                    "support": desk.support,
                    "since": format_version(desk.version) if desk.version else None,
                    "exact": desk.exact,
                    "notOn": list(desk.not_on),
                    "available": (
                        desk.available(target, platform.wsl2) if target is not None else None
                    ),
                    "whenMissing": desk.older,
                },
                "source": row.source,
            }
        )
        if paths and (not no_eci or row.id == "eci"):
            warnings.extend(_warnings_for(row, paths, platform))
    if platform.kind == DOCKER_DESKTOP and platform.wsl2:
        row = table.get("wsl2-vm-access")
        warnings.append(FeatureWarning(row.id, "warning", f"{row.title}: {row.desktop.older}"))
    needed = [
        table.get(f).desktop.version
        for f in used
        if table.get(f).desktop.support == "since" and table.get(f).desktop.version
    ]
    minimum = max((v for v in needed if v is not None), default=None)
    return FeatureReport(
        platform=platform,
        isolation=isolation_level(engine),
        isolation_summary=isolation_status(engine) if engine is not None else "",
        mode=mode,
        minimum_desktop=minimum,
        rows=tuple(rows),
        warnings=tuple(warnings),
        settings_source=settings.source,
        settings_sha256=settings.sha256,
        extra_rows=tuple(dict(r) for r in extra_rows),
    )


def mode_of(eci_enabled: bool, audit: bool) -> str:
    return "off" if not eci_enabled else "audit" if audit else "enforcing"


#: The features `evaluate` and `features_used` name by id (checked against the data by tests).
NAMED_FEATURES = frozenset(
    {
        "eci",
        "eci-lock",
        "socket-mount-denied",
        "build-protection",
        "image-list",
        "image-list-everything",
        "image-list-tag-wildcard",
        "image-list-digest",
        "image-list-path-wildcard",
        "derived-images",
        "derived-images-wildcard-tags",
        "command-list",
        "command-list-wildcards",
        "command-list-other-wildcards",
        "eciagent-command-lists",
        "eciagent-isolation-exceptions",
        "eciagent-audit-mode",
        "wsl2-vm-access",
        "docker-in-docker",
    }
)
