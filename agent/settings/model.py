"""The admin settings vocabulary: small frozen values, parsed once at the edge.

Nothing here reads files; `agent.settings.parse` turns JSON text into these values and
`agent.settings.loader` decides which file to read and whether to trust it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent.policy.commands import CommandPattern
from agent.policy.imageref import ImagePattern


class CommandListType(enum.Enum):
    """How `commandList.commands` is read: the listed commands are denied, or only they pass."""

    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class ImageList:
    """`dockerSocketMount.imageList`: the images allowed to bind-mount the engine socket."""

    images: tuple[ImagePattern, ...] = ()
    allow_derived_images: bool = False

    @property
    def allows_everything(self) -> bool:
        return any(p.is_everything for p in self.images)


@dataclass(frozen=True, slots=True)
class CommandList:
    """`dockerSocketMount.commandList`: what a socket-mounting container may ask the engine."""

    type: CommandListType = CommandListType.DENY
    commands: tuple[CommandPattern, ...] = ()


@dataclass(frozen=True, slots=True)
class SocketMountPolicy:
    image_list: ImageList = field(default_factory=ImageList)
    command_list: CommandList = field(default_factory=CommandList)


@dataclass(frozen=True, slots=True)
class ImageCommandList:
    """One `eciAgent.commandLists` entry: the command list for containers of these images.

    Our extension: Docker Desktop applies one command list to every socket-mounting container.
    `images` admit a container's image as the socket image list does, by digest; the first
    entry that admits it applies (`agent.proxy.gate.Gate._command_list_of`).
    """

    images: tuple[ImagePattern, ...]
    command_list: CommandList


@dataclass(frozen=True, slots=True)
class IsolationException:
    """One `eciAgent.isolationExceptions` entry: host powers these images may still ask for.

    Our extension: `allow` holds normalized tokens (`--pid=host`, `--cap-add=SYS_PTRACE`,
    `--volume=/sys`; see `agent.policy.isolation.normalize_allow_token`). An entry applies to
    an image whose name and tag match one of `images` and whose digest the registry serves for
    that name (as for the socket image list), and only when it names every power asked for.
    """

    images: tuple[ImagePattern, ...]
    allow: frozenset[str]


@dataclass(frozen=True, slots=True)
class AgentExtensions:
    """The top-level `eciAgent` object: eci-agent's own settings, which Docker Desktop ignores."""

    image_command_lists: tuple[ImageCommandList, ...] = ()
    isolation_exceptions: tuple[IsolationException, ...] = ()
    #: `eciAgent.auditMode`: record what would be denied, let it through (tuning, not safety).
    audit_mode: bool = False


@dataclass(frozen=True, slots=True)
class EnhancedContainerIsolation:
    """`enhancedContainerIsolation`: `value` turns ECI on, `locked` stops users changing it."""

    value: bool = True
    locked: bool = False
    socket_mount: SocketMountPolicy = field(default_factory=SocketMountPolicy)


class Severity(enum.Enum):
    WARNING = "warning"
    NOTICE = "notice"


@dataclass(frozen=True, slots=True)
class SettingsNote:
    """Something about a valid file worth telling the admin (e.g. a command we cannot enforce)."""

    json_path: str
    message: str
    severity: Severity = Severity.WARNING

    def __str__(self) -> str:
        return f"{self.json_path}: {self.message}"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """A validated admin-settings.json (or the built-in default when there is no file).

    `source` is the file it came from, or None for the built-in default; `sha256` is the hash of
    the exact bytes read (None for the default), so events and status can name the policy.
    """

    eci: EnhancedContainerIsolation = field(default_factory=EnhancedContainerIsolation)
    configuration_file_version: int | None = None
    ignored_keys: tuple[str, ...] = ()
    notes: tuple[SettingsNote, ...] = ()
    source: str | None = None
    sha256: str | None = None
    extensions: AgentExtensions = field(default_factory=AgentExtensions)

    @property
    def is_builtin_default(self) -> bool:
        return self.source is None


#: The policy in force when no settings file exists: ECI on, no image may mount the socket,
#: and the user may switch ECI off (unlocked), as Docker Desktop does without a file.
BUILTIN_DEFAULT = AdminSettings()

#: The policy in force when a settings file exists but none was ever read from it in this run
#: (a typo, a file caught half-written at boot): the built-in default, LOCKED. The admin meant
#: some policy, and a file that cannot be read must not hand users the switch it may lock.
UNREADABLE_FILE_DEFAULT = AdminSettings(eci=EnhancedContainerIsolation(locked=True))


@dataclass(frozen=True, slots=True)
class Effective:
    """What is enforced right now: the admin's settings plus the user's choice, when allowed.

    `locked: true` means nothing but the file decides; with `locked: false` the user's choice
    (made through the agent's control API) overrides `value`.
    """

    settings: AdminSettings
    user_choice: bool | None = None

    @property
    def eci_enabled(self) -> bool:
        if self.settings.eci.locked or self.user_choice is None:
            return self.settings.eci.value
        return self.user_choice

    def with_user_choice(self, enabled: bool | None) -> Effective:
        """The user's switch; raises `SettingsLocked` when the admin has locked ECI."""
        if self.settings.eci.locked and enabled is not None:
            raise SettingsLocked(
                self.settings.source, unreadable=self.settings is UNREADABLE_FILE_DEFAULT
            )
        return Effective(self.settings, enabled)


class SettingsLocked(Exception):
    """The admin locked Enhanced Container Isolation: only the settings file can change it."""

    def __init__(self, source: str | None, *, unreadable: bool = False) -> None:
        if unreadable:
            super().__init__(
                "enhanced container isolation is on and locked because the admin settings file "
                "could not be read (eci-agent status says why); ask your administrator to fix it"
            )
            return
        where = source or "the admin settings"
        super().__init__(
            "enhanced container isolation is locked by the administrator "
            f"(enhancedContainerIsolation.locked is true in {where}); ask your administrator "
            "to change it there"
        )
