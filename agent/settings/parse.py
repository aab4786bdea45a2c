"""admin-settings.json text -> `AdminSettings`, or every problem with its JSON path.

Pure: takes bytes, returns values. Reads the file the way Docker Desktop's Go decoder does
(field names match case-insensitively, the last duplicate wins; see `agent.policy.gojson`), so
a file means the same thing to both, and refuses what Docker Desktop refuses (a BOM, a
trailing comma, any syntax error), naming the line and column.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass
from typing import Any

from agent.policy import gojson
from agent.policy.commands import (
    UNSUPPORTED_BY_DOCKER_DESKTOP,
    CommandPattern,
    UnknownCommand,
    parse_command_pattern,
)
from agent.policy.gojson import MISSING, GoObject
from agent.policy.imageref import ImagePattern, InvalidReference, parse_image_pattern
from agent.policy.isolation import normalize_allow_token
from agent.settings.model import (
    AdminSettings,
    AgentExtensions,
    CommandList,
    CommandListType,
    EnhancedContainerIsolation,
    ImageCommandList,
    ImageList,
    IsolationException,
    SettingsNote,
    Severity,
    SocketMountPolicy,
)

SUPPORTED_FILE_VERSION = 2

#: Top-level keys Docker Desktop defines that are not ours to enforce: accepted, whatever their
#: shape, and listed by `eci-agent check` as ignored.
DOCKER_DESKTOP_KEYS: frozenset[str] = frozenset(
    {
        "exposeDockerAPIOnTCP2375",
        "proxy",
        "containersProxy",
        "linuxVM",
        "kubernetes",
        "windowsContainers",
        "disableUpdate",
        "analyticsEnabled",
        "silentModulesUpdate",
        "extensionsEnabled",
        "onlyMarketplaceExtensions",
        "extensionsPrivateMarketplace",
        "extensionsPrivateMarketplaceAdminContactURL",
        "scout",
        "allowBetaFeatures",
        "allowExperimentalFeatures",
        "enableDockerAI",
        "enableDockerMCPToolkit",
        "blockDockerLoad",
        "filesharingAllowedDirectories",
        "useVirtualizationFrameworkVirtioFS",
        "useVirtualizationFrameworkRosetta",
        "useGrpcfuse",
        "displayedOnboarding",
        "desktopTerminalEnabled",
        "enableInference",
        "enableInferenceTCP",
        "enableInferenceTCPPort",
        "enableInferenceCORS",
        "enableInferenceGPUVariant",
        "defaultNetworkingMode",
        "dnsInhibition",
        "portBindingBehavior",
        "enableKerberosNtlm",
        "sbomIndexing",
        "useWindowsContainers",
        "allowedOrgs",
        "wslEngineEnabled",
        "desktopTerminal",
        "enableDockerAIInference",
        "autoStart",
        "openUIOnStartupDisabled",
        "vpnkitCIDR",
        "useVpnkit",
        "enableIntegrityCheck",
        "runWinServiceInWslMode",
        "noWindowsContainers",
        "updateHostsFile",
        "settingsManagement",
    }
)

ECI_KEY = "enhancedContainerIsolation"
ECI_FIELDS = ("value", "locked", "dockerSocketMount")
SOCKET_FIELDS = ("imageList", "commandList")
IMAGE_LIST_FIELDS = ("images", "allowDerivedImages")
COMMAND_LIST_FIELDS = ("type", "commands")
#: eci-agent's own top-level key: Docker Desktop ignores it, so the file stays valid there.
EXTENSION_KEY = "eciAgent"
EXTENSION_FIELDS = ("commandLists", "isolationExceptions", "auditMode")
ISOLATION_EXCEPTION_FIELDS = ("images", "allow")
IMAGE_COMMAND_LIST_FIELDS = ("images", "type", "commands")


@dataclass(frozen=True, slots=True)
class SettingsProblem:
    """Why a file is refused: where (`json_path`, or line/column for syntax) and what."""

    json_path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.json_path or "(file)"
        if self.line is not None:
            where += f" (line {self.line}, column {self.column})"
        return f"{where}: {self.message}"


class SettingsInvalid(ValueError):
    """The settings file is refused; `problems` lists every reason found."""

    def __init__(self, problems: tuple[SettingsProblem, ...], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{where}invalid admin settings ({len(problems)} problem(s)):\n{lines}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, GoObject):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


class _Reader:
    """Walks the parsed JSON, collecting problems and notes with their JSON paths."""

    def __init__(self) -> None:
        self.problems: list[SettingsProblem] = []
        self.notes: list[SettingsNote] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(SettingsProblem(path, message))

    def note(self, path: str, message: str, severity: Severity = Severity.WARNING) -> None:
        self.notes.append(SettingsNote(path, message, severity))

    def obj(self, value: Any, path: str) -> GoObject | None:
        if value is MISSING or value is None:
            return None
        if not isinstance(value, GoObject):
            self.problem(path, f"expected an object, got {_describe(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {_describe(value)}")
            return default
        return value

    def string_list(self, value: Any, path: str) -> list[tuple[int, str]]:
        if value is MISSING or value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, f"expected an array of strings, got {_describe(value)}")
            return []
        items: list[tuple[int, str]] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{path}[{i}]", f"expected a string, got {_describe(item)}")
            else:
                items.append((i, item))
        return items

    def unknown_fields(self, obj: GoObject, path: str, known: tuple[str, ...]) -> None:
        folded = {gojson.fold(k) for k in known}
        for key in obj.keys():
            if gojson.fold(key) in folded:
                continue
            guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            self.note(
                f"{path}.{key}", f"unknown key, ignored (Docker Desktop ignores it too){hint}"
            )
        for key in obj.duplicate_keys():
            self.note(
                f"{path}.{key}",
                "key given more than once (names match case-insensitively); the last one counts",
            )


def _image_list(r: _Reader, obj: GoObject | None, path: str) -> ImageList:
    if obj is None:
        return ImageList()
    r.unknown_fields(obj, path, IMAGE_LIST_FIELDS)
    patterns: list[ImagePattern] = []
    for i, text in r.string_list(obj.field("images"), f"{path}.images"):
        try:
            pattern = parse_image_pattern(text)
        except InvalidReference as err:
            r.problem(f"{path}.images[{i}]", f"expected an image reference, {err}")
            continue
        if pattern.has_path_wildcard:
            r.note(
                f"{path}.images[{i}]",
                f"{text!r}: a '*' repository path component matches any one component; Docker "
                "Desktop documents only tag wildcards and may not honour it",
                Severity.NOTICE,
            )
        patterns.append(pattern)
    derived = r.boolean(obj.field("allowDerivedImages"), f"{path}.allowDerivedImages", False)
    everything = any(p.is_everything for p in patterns)
    if everything and len(patterns) > 1:
        r.note(f"{path}.images", '"*" allows every image; the other entries add nothing')
    return ImageList(tuple(patterns), derived)


def _command_list(
    r: _Reader,
    obj: GoObject | None,
    path: str,
    *,
    known: tuple[str, ...] = COMMAND_LIST_FIELDS,
    docker_desktop: bool = True,
) -> CommandList:
    if obj is None:
        return CommandList()
    r.unknown_fields(obj, path, known)
    kind = CommandListType.DENY
    raw_type = obj.field("type")
    if raw_type is not MISSING and raw_type is not None:
        if raw_type in ("allow", "deny"):
            kind = CommandListType(raw_type)
        else:
            r.problem(f"{path}.type", f'expected "allow" or "deny", got {_describe(raw_type)}')
    patterns: list[CommandPattern] = []
    for i, text in r.string_list(obj.field("commands"), f"{path}.commands"):
        try:
            pattern = parse_command_pattern(text)
        except UnknownCommand as err:
            r.problem(f"{path}.commands[{i}]", str(err))
            continue
        why = UNSUPPORTED_BY_DOCKER_DESKTOP.get(text.strip())
        if why is not None and docker_desktop:
            r.note(
                f"{path}.commands[{i}]",
                f"Docker Desktop does not support {text!r} in the command list; here: {why}",
            )
        patterns.append(pattern)
    return CommandList(kind, tuple(patterns))


def _eci(r: _Reader, root: GoObject) -> EnhancedContainerIsolation:
    raw = root.field(ECI_KEY)
    if raw is MISSING or raw is None:
        r.note(
            ECI_KEY,
            "not set: the built-in default applies (ECI on, no image may mount the engine "
            "socket, not locked)",
            Severity.NOTICE,
        )
        return EnhancedContainerIsolation()
    obj = r.obj(raw, ECI_KEY)
    if obj is None:
        return EnhancedContainerIsolation()
    r.unknown_fields(obj, ECI_KEY, ECI_FIELDS)
    raw_value = obj.field("value")
    if raw_value is MISSING or raw_value is None:
        r.problem(f"{ECI_KEY}.value", "expected true or false, but it is missing")
    value = r.boolean(raw_value, f"{ECI_KEY}.value", True)
    locked = r.boolean(obj.field("locked"), f"{ECI_KEY}.locked", False)
    if obj.field("locked") is MISSING:
        r.note(f"{ECI_KEY}.locked", "not set: users may switch ECI off", Severity.NOTICE)
    socket_path = f"{ECI_KEY}.dockerSocketMount"
    socket = r.obj(obj.field("dockerSocketMount"), socket_path)
    if socket is None:
        return EnhancedContainerIsolation(value, locked)
    r.unknown_fields(socket, socket_path, SOCKET_FIELDS)
    images = _image_list(
        r, r.obj(socket.field("imageList"), f"{socket_path}.imageList"), f"{socket_path}.imageList"
    )
    commands = _command_list(
        r,
        r.obj(socket.field("commandList"), f"{socket_path}.commandList"),
        f"{socket_path}.commandList",
    )
    return EnhancedContainerIsolation(value, locked, SocketMountPolicy(images, commands))


def _image_command_list(r: _Reader, entry: GoObject, path: str) -> ImageCommandList | None:
    patterns: list[ImagePattern] = []
    texts = r.string_list(entry.field("images"), f"{path}.images")
    for i, text in texts:
        try:
            patterns.append(parse_image_pattern(text))
        except InvalidReference as err:
            r.problem(f"{path}.images[{i}]", f"expected an image reference, {err}")
    if not texts and not any(p.json_path.startswith(f"{path}.images") for p in r.problems):
        r.problem(
            f"{path}.images",
            'expected at least one image reference (such as "docker.io/testcontainers/ryuk:*"); '
            "an entry without images applies to no container",
        )
    # `_command_list` notes the entry's unknown keys (it knows `images` too).
    command_list = _command_list(
        r, entry, path, known=IMAGE_COMMAND_LIST_FIELDS, docker_desktop=False
    )
    if command_list.type is CommandListType.DENY and not command_list.commands:
        r.note(
            path,
            "an empty deny list: containers of these images may send every command, whatever "
            f"{ECI_KEY}.dockerSocketMount.commandList says",
        )
    if not patterns:
        return None
    return ImageCommandList(tuple(patterns), command_list)


def _extensions(r: _Reader, root: GoObject) -> AgentExtensions:
    obj = r.obj(root.field(EXTENSION_KEY), EXTENSION_KEY)
    if obj is None:
        return AgentExtensions()
    r.unknown_fields(obj, EXTENSION_KEY, EXTENSION_FIELDS)
    path = f"{EXTENSION_KEY}.commandLists"
    raw = obj.field("commandLists")
    if raw is MISSING or raw is None:
        return AgentExtensions()
    if not isinstance(raw, list):
        r.problem(path, f"expected an array of objects, got {_describe(raw)}")
        return AgentExtensions()
    entries: list[ImageCommandList] = []
    for i, item in enumerate(raw):
        if not isinstance(item, GoObject):
            r.problem(f"{path}[{i}]", f"expected an object, got {_describe(item)}")
            continue
        entry = _image_command_list(r, item, f"{path}[{i}]")
        if entry is not None:
            entries.append(entry)
    return AgentExtensions(tuple(entries))


def _isolation_exception(r: _Reader, entry: GoObject, path: str) -> IsolationException | None:
    r.unknown_fields(entry, path, ISOLATION_EXCEPTION_FIELDS)
    patterns: list[ImagePattern] = []
    texts = r.string_list(entry.field("images"), f"{path}.images")
    for i, text in texts:
        try:
            pattern = parse_image_pattern(text)
        except InvalidReference as err:
            r.problem(f"{path}.images[{i}]", f"expected an image reference, {err}")
            continue
        if pattern.is_everything:
            r.problem(
                f"{path}.images[{i}]",
                '"*" would lift isolation for every image; name the images that need it',
            )
            continue
        patterns.append(pattern)
    if not texts:
        r.problem(f"{path}.images", "expected at least one image reference")
    allow: set[str] = set()
    tokens = r.string_list(entry.field("allow"), f"{path}.allow")
    for i, text in tokens:
        try:
            allow.add(normalize_allow_token(text))
        except ValueError as err:
            r.problem(f"{path}.allow[{i}]", str(err))
    if not tokens:
        r.problem(f"{path}.allow", 'expected at least one option, such as "--pid=host"')
    if not patterns or not allow:
        return None
    return IsolationException(tuple(patterns), frozenset(allow))


def _audit_mode(r: _Reader, root: GoObject, ext: AgentExtensions) -> AgentExtensions:
    """`eciAgent.auditMode`: only the admin's file can turn it on; users have no switch."""
    obj = root.field(EXTENSION_KEY)
    if not isinstance(obj, GoObject):
        return ext
    path = f"{EXTENSION_KEY}.auditMode"
    audit = r.boolean(obj.field("auditMode"), path, False)
    if audit:
        r.note(
            path,
            "audit mode: eci-agent records what it would deny and lets it through; this "
            "machine is NOT protected while it is on",
        )
    return dataclasses.replace(ext, audit_mode=audit)


def _isolation_exceptions(r: _Reader, root: GoObject, ext: AgentExtensions) -> AgentExtensions:
    """`eciAgent.isolationExceptions`: named host powers per image (see `IsolationException`)."""
    obj = root.field(EXTENSION_KEY)
    if not isinstance(obj, GoObject):
        return ext
    path = f"{EXTENSION_KEY}.isolationExceptions"
    raw = obj.field("isolationExceptions")
    if raw is MISSING or raw is None:
        return ext
    if not isinstance(raw, list):
        r.problem(path, f"expected an array of objects, got {_describe(raw)}")
        return ext
    entries: list[IsolationException] = []
    for i, item in enumerate(raw):
        if not isinstance(item, GoObject):
            r.problem(f"{path}[{i}]", f"expected an object, got {_describe(item)}")
            continue
        entry = _isolation_exception(r, item, f"{path}[{i}]")
        if entry is not None:
            entries.append(entry)
    return dataclasses.replace(ext, isolation_exceptions=tuple(entries))


def _version(r: _Reader, root: GoObject) -> int | None:
    raw = root.field("configurationFileVersion")
    if raw is MISSING or raw is None:
        r.note(
            "configurationFileVersion",
            f"missing; Docker Desktop expects {SUPPORTED_FILE_VERSION}",
        )
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        r.problem(
            "configurationFileVersion", f"expected {SUPPORTED_FILE_VERSION}, got {_describe(raw)}"
        )
        return None
    if raw != SUPPORTED_FILE_VERSION:
        r.problem(
            "configurationFileVersion",
            f"expected {SUPPORTED_FILE_VERSION}, got {raw}"
            + (" (version 1 is the retired Docker Desktop Enterprise format)" if raw == 1 else ""),
        )
    return raw


def parse_settings(data: bytes, source: str | None = None) -> AdminSettings:
    """Validate the bytes of an admin-settings.json; raises `SettingsInvalid` listing why not."""
    try:
        root_value = gojson.loads_bytes(data)
    except gojson.JSONSyntaxError as err:
        problem = SettingsProblem("", err.message, err.line, err.column)
        raise SettingsInvalid((problem,), source) from None
    if not isinstance(root_value, GoObject):
        raise SettingsInvalid(
            (SettingsProblem("", f"expected a JSON object, got {_describe(root_value)}"),), source
        )
    r = _Reader()
    version = _version(r, root_value)
    eci = _eci(r, root_value)
    extensions = _audit_mode(
        r, root_value, _isolation_exceptions(r, root_value, _extensions(r, root_value))
    )
    ours = {gojson.fold(k) for k in (ECI_KEY, "configurationFileVersion", EXTENSION_KEY)}
    ignored: list[str] = []
    known = {gojson.fold(k) for k in DOCKER_DESKTOP_KEYS}
    for key in dict.fromkeys(root_value.keys()):
        folded = gojson.fold(key)
        if folded in ours:
            continue
        ignored.append(key)
        if folded not in known:
            guess = difflib.get_close_matches(
                key, [ECI_KEY, "configurationFileVersion", EXTENSION_KEY], n=1
            )
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            r.note(key, f"not a Docker Desktop setting we know; ignored{hint}")
    for key in root_value.duplicate_keys():
        r.note(key, "key given more than once (names match case-insensitively); the last counts")
    if r.problems:
        raise SettingsInvalid(tuple(r.problems), source)
    return AdminSettings(
        eci=eci,
        configuration_file_version=version,
        ignored_keys=tuple(ignored),
        notes=tuple(r.notes),
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        extensions=extensions,
    )
