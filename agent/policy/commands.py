"""The docker CLI's command names, as `commandList.commands` may spell them.

Facts about the docker CLI's command tree (docker/cli `cli/command/**`, see
`../shared/engine-api/cli-commands.tsv`), kept as reviewed constants. Each canonical command
(the management form, `container ls`) lists the other spellings that name the same command
(`container list`, `container ps`, `ps`). Which Engine API requests each command sends is the
command list issue's table; this module only knows names.
"""

from __future__ import annotations

from dataclasses import dataclass

#: canonical command -> the other spellings of the same command (top-level short forms too).
CANONICAL_COMMANDS: dict[str, tuple[str, ...]] = {
    "container attach": ("attach",),
    "container commit": ("commit",),
    "container cp": ("cp",),
    "container create": ("create",),
    "container diff": ("diff",),
    "container exec": ("exec",),
    "container export": ("export",),
    "container inspect": (),
    "container kill": ("kill",),
    "container logs": ("logs",),
    "container ls": ("container list", "container ps", "ps"),
    "container pause": ("pause",),
    "container port": ("port",),
    "container prune": (),
    "container rename": ("rename",),
    "container restart": ("restart",),
    "container rm": ("container remove", "rm"),
    "container run": ("run",),
    "container start": ("start",),
    "container stats": ("stats",),
    "container stop": ("stop",),
    "container top": ("top",),
    "container unpause": ("unpause",),
    "container update": ("update",),
    "container wait": ("wait",),
    "image build": ("build", "builder build"),
    "image history": ("history",),
    "image import": ("import",),
    "image inspect": (),
    "image load": ("load",),
    "image ls": ("image list", "images"),
    "image prune": (),
    "image pull": ("pull",),
    "image push": ("push",),
    "image rm": ("image remove", "rmi"),
    "image save": ("save",),
    "image tag": ("tag",),
    "builder prune": (),
    "bake": ("buildx bake",),
    "checkpoint create": (),
    "checkpoint ls": ("checkpoint list",),
    "checkpoint rm": ("checkpoint remove",),
    "config create": (),
    "config inspect": (),
    "config ls": ("config list",),
    "config rm": ("config remove",),
    "context create": (),
    "context export": (),
    "context import": (),
    "context inspect": (),
    "context ls": ("context list",),
    "context rm": ("context remove",),
    "context show": (),
    "context update": (),
    "context use": (),
    "manifest annotate": (),
    "manifest create": (),
    "manifest inspect": (),
    "manifest push": (),
    "manifest rm": (),
    "network connect": (),
    "network create": (),
    "network disconnect": (),
    "network inspect": (),
    "network ls": ("network list",),
    "network prune": (),
    "network rm": ("network remove",),
    "node demote": (),
    "node inspect": (),
    "node ls": ("node list",),
    "node promote": (),
    "node ps": (),
    "node rm": ("node remove",),
    "node update": (),
    "plugin create": (),
    "plugin disable": (),
    "plugin enable": (),
    "plugin inspect": (),
    "plugin install": (),
    "plugin ls": ("plugin list",),
    "plugin push": (),
    "plugin rm": ("plugin remove",),
    "plugin set": (),
    "plugin upgrade": (),
    "login": (),
    "logout": (),
    "search": (),
    "secret create": (),
    "secret inspect": (),
    "secret ls": ("secret list",),
    "secret rm": ("secret remove",),
    "service create": (),
    "service inspect": (),
    "service logs": (),
    "service ls": ("service list",),
    "service ps": (),
    "service rm": ("service remove",),
    "service rollback": (),
    "service scale": (),
    "service update": (),
    "stack config": (),
    "stack deploy": ("stack up",),
    "stack ls": ("stack list",),
    "stack ps": (),
    "stack rm": ("stack remove", "stack down"),
    "stack services": (),
    "swarm ca": (),
    "swarm init": (),
    "swarm join": (),
    "swarm join-token": (),
    "swarm leave": (),
    "swarm unlock": (),
    "swarm unlock-key": (),
    "swarm update": (),
    "system df": (),
    "system dial-stdio": (),
    "system events": ("events",),
    "system info": ("info",),
    "system prune": (),
    "inspect": (),
    "version": (),
    "volume create": (),
    "volume inspect": (),
    "volume ls": ("volume list",),
    "volume prune": (),
    "volume rm": ("volume remove",),
    "volume update": (),
    # Plugins and Docker Desktop commands that `docker --help` lists on many machines.
    "buildx": (),
    "compose": (),
    "scout": (),
    "sbom": (),
    "init": (),
    "dev": (),
    "extension": (),
    "feedback": (),
    "debug": (),
    "trust": (),
    "ai": (),
    "model": (),
    "mcp": (),
    "desktop": (),
    "offload": (),
}

#: The management groups: `docker <group> <sub>`; `<group>*` names every command in it.
GROUPS: tuple[str, ...] = (
    "container",
    "image",
    "builder",
    "checkpoint",
    "config",
    "context",
    "manifest",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "stack",
    "swarm",
    "system",
    "volume",
    "trust",
)

#: The wildcards the seeds document; the other groups' wildcards are our extension.
DOCUMENTED_WILDCARDS: tuple[str, ...] = (
    "container*",
    "image*",
    "volume*",
    "network*",
    "build*",
    "system*",
)

#: `build*` is "all docker build ... commands": image build and its builder/buildx/bake forms.
BUILD_FAMILY: frozenset[str] = frozenset({"image build", "builder prune", "bake", "buildx"})

#: Names the seeds say Docker Desktop cannot enforce in the command list, and what we do.
UNSUPPORTED_BY_DOCKER_DESKTOP: dict[str, str] = {
    "compose": "Compose is a client plugin; the engine sees only the container, network and "
    "volume requests it makes, which are judged under their own command names",
    "dev": "Dev Environments is a Docker Desktop feature with no Engine API of its own",
    "extension": "Docker Extensions run outside the engine socket; nothing to enforce there",
    "feedback": "client-only: it makes no Engine API request",
    "init": "client-only: it writes files on the client and makes no Engine API request",
    "manifest": "client-only: it talks to registries directly, never to the engine",
    "plugin": "plugin requests go to the engine's /plugins API, so eci-agent can enforce "
    "it as the plugin commands",
    "sbom": "client-only: it reads images through registries or the image store client-side",
    "scout": "Docker Scout talks to its own service; the engine sees only image reads",
    "trust": "client-only: signing talks to the Notary server; the push it triggers is "
    "judged as push",
}


def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for canonical, aliases in CANONICAL_COMMANDS.items():
        index[canonical] = canonical
        for alias in aliases:
            index[alias] = canonical
    return index


#: every accepted spelling -> its canonical command
SPELLINGS: dict[str, str] = _alias_index()


def group_members(group: str) -> frozenset[str]:
    """The canonical commands a `<group>*` wildcard names."""
    if group == "build":
        return BUILD_FAMILY
    prefix = group + " "
    members = {c for c in CANONICAL_COMMANDS if c.startswith(prefix)}
    if group == "image":
        members.add("image build")
    return frozenset(members)


class UnknownCommand(ValueError):
    """A command-list entry that names no docker CLI command or documented wildcard."""

    def __init__(self, text: str, suggestions: tuple[str, ...]) -> None:
        hint = f" (did you mean {', '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
        super().__init__(
            f"unknown docker command {text!r}{hint}; expected a name from `docker --help` "
            f'such as "ps" or "image push", or a wildcard such as "container*"'
        )
        self.text = text
        self.suggestions = suggestions


@dataclass(frozen=True, slots=True)
class CommandPattern:
    """One `commandList.commands` entry: the name as written and the commands it stands for."""

    text: str
    commands: frozenset[str]
    is_wildcard: bool = False

    def __str__(self) -> str:
        return self.text


def _suggest(text: str) -> tuple[str, ...]:
    import difflib

    candidates = list(SPELLINGS) + [g + "*" for g in GROUPS] + ["build*"]
    return tuple(difflib.get_close_matches(text, candidates, n=3, cutoff=0.7))


def parse_command_pattern(text: str) -> CommandPattern:
    """Read one entry: a CLI spelling (`push`, `image push`), or a group wildcard (`image*`)."""
    name = " ".join(text.split())
    if name.startswith("docker "):
        name = name[len("docker ") :]
    if name.endswith("*") and " " not in name:
        group = name[:-1]
        if group in GROUPS or group == "build":
            return CommandPattern(text, group_members(group) | {group}, is_wildcard=True)
        raise UnknownCommand(text, _suggest(text))
    if name in GROUPS:
        # A bare group ("container") names no command of its own; read it as its wildcard.
        return CommandPattern(text, group_members(name) | {name}, is_wildcard=True)
    canonical = SPELLINGS.get(name)
    if canonical is None:
        raise UnknownCommand(text, _suggest(text))
    return CommandPattern(text, frozenset({canonical}))
