"""Which docker CLI commands send each Engine API request, and how a command list judges it.

Theory of operation
-------------------
`commandList.commands` names docker CLI commands (`push`, `container*`), but the engine only
ever sees requests (`POST /v1.43/images/x/push?tag=latest`). One request is shared by several
commands: `GET /containers/{id}/json` is `docker inspect`, and also the look-up `docker exec`,
`docker logs` and `docker attach` make before doing their own work. So every route has two
sets of canonical command names (the keys of `agent.policy.commands.CANONICAL_COMMANDS`):

- `owners`: the commands whose work this request *is*: denying one of them must stop it
  (`POST /containers/create` is owned by `container create` and `container run`);
- `helpers`: commands that also send it, as a look-up or a step they need (pull on demand,
  the inspect before an exec, the resize of a TTY, the kill that forwards a signal).

An allow list lets a request through when it names any sender (owner or helper): allowing
`run` must let `docker run` work, and that is create, attach, wait, start, and a pull when
the image is missing. A deny list blocks a request when it names an owner: denying `logs`
stops log reads without breaking `docker inspect` or `docker exec`, which read the same
container JSON the logs command looks up first. `/_ping` is allowed whatever the list says:
every command negotiates the API version with it before its first request.

The table is reviewed data, written from `../shared/engine-api/cli-commands.tsv` (the docker
CLI's command tree, read from docker/cli) and `endpoints.tsv` (the swagger routes and the
commands that call them); it is not read from those files at run time. A route no docker CLI
command sends (swarm-only internals, the websocket attach, pprof) is owned by the command that
manages the same object, and says so in a comment.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.commands import CANONICAL_COMMANDS, CommandPattern
from agent.policy.gojson import GoObject
from agent.settings.model import CommandList, CommandListType

#: Routes allowed whatever the command list says. Every docker CLI process that talks to the
#: engine first sends `HEAD /_ping` (and `GET /_ping` when that fails) to negotiate the API
#: version, so without these even an allowed command could not run. `OPTIONS` reaches only the
#: engine's CORS pre-flight handler, which answers 200 and does nothing else.
ALWAYS_ALLOWED_KEYS: frozenset[str] = frozenset(
    {"GET /_ping", "HEAD /_ping", "OPTIONS /{anyroute}"}
)

#: The creates a compose label makes count as the `compose` command too.
LABELLED_CREATE_KEYS: frozenset[str] = frozenset(
    {"POST /containers/create", "POST /volumes/create", "POST /networks/create"}
)

#: The label prefix docker compose puts on every container, network and volume it creates.
COMPOSE_LABEL_PREFIX = "com.docker.compose."


@dataclass(frozen=True, slots=True)
class RouteCommands:
    """The commands behind one route: `owners` (its own work) and `helpers` (also send it)."""

    owners: frozenset[str]
    helpers: frozenset[str] = frozenset()

    @property
    def senders(self) -> frozenset[str]:
        return self.owners | self.helpers


def _r(owners: tuple[str, ...], helpers: tuple[str, ...] = ()) -> RouteCommands:
    return RouteCommands(frozenset(owners), frozenset(helpers) - frozenset(owners))


# Command names used more than once below, spelled once.
_RUN = "container run"
_CREATE = "container create"
_START = "container start"
_ATTACH = "container attach"
_INSPECT = "inspect"  # the top-level `docker inspect`, which tries every object type in turn
_SYSTEM_PRUNE = "system prune"
_STACK_DEPLOY = "stack deploy"
_STACK_RM = "stack rm"
_BUILDS = ("image build", "bake", "buildx")
# Swarm service commands that poll progress (GET /services/{id}, /tasks, /nodes) unless -d.
_SERVICE_WRITERS = ("service create", "service rollback", "service scale", "service update")

#: "METHOD template" (spelled as `agent.policy.routes.ROUTE_TEMPLATES` spells it) -> commands.
#: `POST /images/create` is not here: its query decides (see `_images_create`).
ROUTE_COMMANDS: dict[str, RouteCommands] = {
    # -- system --------------------------------------------------------------------------------
    "GET /version": _r(("version",)),
    "GET /info": _r(
        ("system info",),
        # look-ups: node self-resolution, swarm state checks, `docker inspect`'s manager check
        (
            "node inspect",
            "node ls",
            "node ps",
            "service ps",
            _STACK_DEPLOY,
            "swarm join",
            "swarm join-token",
            "swarm unlock",
            _INSPECT,
        ),
    ),
    "GET /events": _r(("system events",), ("container stats",)),
    "GET /system/df": _r(("system df",)),
    "POST /auth": _r(("login",)),
    # The debug router (expvar, pprof) is registered by every engine; no CLI command calls it.
    # It describes the daemon itself, so it goes with `docker info`.
    "GET /debug/vars": _r(("system info",)),
    "GET /debug/pprof/": _r(("system info",)),
    "GET /debug/pprof/cmdline": _r(("system info",)),
    "GET /debug/pprof/profile": _r(("system info",)),
    "GET /debug/pprof/symbol": _r(("system info",)),
    "GET /debug/pprof/trace": _r(("system info",)),
    "GET /debug/pprof/{name}": _r(("system info",)),
    # -- containers ----------------------------------------------------------------------------
    "GET /containers/json": _r(("container ls",), ("container stats",)),
    "POST /containers/create": _r((_CREATE, _RUN)),
    "POST /containers/prune": _r(("container prune", _SYSTEM_PRUNE)),
    # `docker port` has no request of its own: it reads the ports out of this inspect.
    "GET /containers/{id}/json": _r(
        ("container inspect", "container port", _INSPECT),
        (_ATTACH, "container exec", "container logs", _START),  # start: only with -a/-i
    ),
    "GET /containers/{id}/top": _r(("container top",)),
    "GET /containers/{id}/logs": _r(("container logs",)),
    "GET /containers/{id}/changes": _r(("container diff",)),
    "GET /containers/{id}/export": _r(("container export",)),
    "GET /containers/{id}/stats": _r(("container stats",)),
    # No CLI command uses the websocket attach; it is an attach all the same.
    "GET /containers/{id}/attach/ws": _r((_ATTACH,)),
    "GET /containers/{id}/archive": _r(("container cp",)),
    "HEAD /containers/{id}/archive": _r(("container cp",)),
    # create/run --use-api-socket write a docker config.json into the new container this way.
    "PUT /containers/{id}/archive": _r(("container cp",), (_CREATE, _RUN)),
    # Checkpoints: experimental engine routes, not in swagger.
    "GET /containers/{id}/checkpoints": _r(("checkpoint ls",)),
    "POST /containers/{id}/checkpoints": _r(("checkpoint create",)),
    "DELETE /containers/{id}/checkpoints/{checkpoint}": _r(("checkpoint rm",)),
    # A TTY resize has no command of its own: it belongs to the commands that attach a TTY.
    "POST /containers/{id}/resize": _r((_ATTACH, _RUN, _START)),
    # `docker run` is create + start (+ attach + wait when attached); denying `run` stops the
    # create and the start, while attach and wait stay with their own commands.
    "POST /containers/{id}/start": _r((_START, _RUN)),
    "POST /containers/{id}/stop": _r(("container stop",)),
    "POST /containers/{id}/restart": _r(("container restart",)),
    # attach, run and start -a forward the signals the CLI receives (--sig-proxy, default on).
    "POST /containers/{id}/kill": _r(("container kill",), (_ATTACH, _RUN, _START)),
    "POST /containers/{id}/update": _r(("container update",)),
    "POST /containers/{id}/rename": _r(("container rename",)),
    "POST /containers/{id}/pause": _r(("container pause",)),
    "POST /containers/{id}/unpause": _r(("container unpause",)),
    "POST /containers/{id}/attach": _r((_ATTACH,), (_RUN, _START)),
    "POST /containers/{id}/wait": _r(("container wait",), (_ATTACH, _RUN, _START)),
    "DELETE /containers/{id}": _r(("container rm",)),
    "POST /commit": _r(("container commit",)),
    # -- exec ----------------------------------------------------------------------------------
    "POST /containers/{id}/exec": _r(("container exec",)),
    "POST /exec/{id}/start": _r(("container exec",)),
    "POST /exec/{id}/resize": _r(("container exec",)),
    "GET /exec/{id}/json": _r(("container exec",)),
    # -- images --------------------------------------------------------------------------------
    "GET /images/json": _r(("image ls",)),
    "GET /images/search": _r(("search",)),
    "GET /images/get": _r(("image save",)),
    # The single-image export is not used by today's CLI (it sends GET /images/get?names=).
    "GET /images/{name}/get": _r(("image save",)),
    "POST /images/load": _r(("image load",)),
    "POST /images/prune": _r(("image prune", _SYSTEM_PRUNE)),
    "GET /images/{name}/json": _r(("image inspect", _INSPECT)),
    # No docker/cli command reads attestations yet; it is an image read like inspect.
    "GET /images/{name}/attestations": _r(("image inspect",)),
    "GET /images/{name}/history": _r(("image history",)),
    # `docker trust sign` pushes through this route too: it is judged as push.
    "POST /images/{name}/push": _r(("image push",)),
    "POST /images/{name}/tag": _r(("image tag",)),
    "DELETE /images/{name}": _r(("image rm",)),
    # -- build ---------------------------------------------------------------------------------
    # The legacy builder (DOCKER_BUILDKIT=0, or no buildx plugin).
    "POST /build": _r(("image build",)),
    "POST /build/cancel": _r(("image build",)),
    "POST /build/prune": _r(("builder prune", _SYSTEM_PRUNE)),
    # BuildKit: `docker build` and `docker builder ...` are forwarded to the buildx plugin,
    # which reaches the engine's BuildKit through these two HTTP upgrades (h2c).
    "POST /session": _r(_BUILDS),
    "POST /grpc": _r((*_BUILDS, "builder prune")),
    # -- volumes -------------------------------------------------------------------------------
    "GET /volumes": _r(("volume ls",)),
    "POST /volumes/create": _r(("volume create",)),
    "POST /volumes/prune": _r(("volume prune", _SYSTEM_PRUNE)),  # system prune --volumes
    "GET /volumes/{name}": _r(("volume inspect", _INSPECT), ("volume update",)),
    "PUT /volumes/{name}": _r(("volume update",)),
    "DELETE /volumes/{name}": _r(("volume rm",)),
    # -- networks ------------------------------------------------------------------------------
    "GET /networks": _r(("network ls",), (_STACK_DEPLOY, _STACK_RM)),
    # The engine's trailing-slash alias of GET /networks.
    "GET /networks/": _r(("network ls",), (_STACK_DEPLOY, _STACK_RM)),
    "POST /networks/create": _r(("network create", _STACK_DEPLOY)),
    "POST /networks/prune": _r(("network prune", _SYSTEM_PRUNE)),
    "GET /networks/{id}": _r(
        ("network inspect", _INSPECT),
        ("network rm", "service create", "service inspect", "service update", _STACK_DEPLOY),
    ),
    "DELETE /networks/{id}": _r(("network rm", _STACK_RM)),
    "POST /networks/{id}/connect": _r(("network connect",)),
    "POST /networks/{id}/disconnect": _r(("network disconnect",)),
    # -- plugins -------------------------------------------------------------------------------
    "GET /plugins": _r(("plugin ls",)),
    "GET /plugins/privileges": _r(("plugin install", "plugin upgrade")),
    "POST /plugins/pull": _r(("plugin install",)),
    "POST /plugins/create": _r(("plugin create",)),
    "GET /plugins/{name}/json": _r(("plugin inspect", _INSPECT), ("plugin upgrade",)),
    # install removes what it pulled when a later step fails.
    "DELETE /plugins/{name}": _r(("plugin rm",), ("plugin install",)),
    "POST /plugins/{name}/enable": _r(("plugin enable", "plugin install")),
    "POST /plugins/{name}/disable": _r(("plugin disable",)),
    "POST /plugins/{name}/upgrade": _r(("plugin upgrade",)),
    "POST /plugins/{name}/push": _r(("plugin push",)),
    "POST /plugins/{name}/set": _r(("plugin set", "plugin install")),  # install KEY=VALUE
    # -- swarm: nodes --------------------------------------------------------------------------
    "GET /nodes": _r(("node ls",), ("node inspect", *_SERVICE_WRITERS, _STACK_DEPLOY, "swarm ca")),
    "GET /nodes/{id}": _r(
        ("node inspect", _INSPECT),
        (
            "node demote",
            "node promote",
            "node ps",
            "node update",
            "service logs",
            "service ps",
            "stack ps",
            "swarm init",
            "swarm join-token",
        ),
    ),
    "DELETE /nodes/{id}": _r(("node rm",)),
    "POST /nodes/{id}/update": _r(("node demote", "node promote", "node update")),
    # -- swarm: the swarm itself ---------------------------------------------------------------
    # `swarm ca` and `swarm join-token` print what GET /swarm returns: it is their work.
    "GET /swarm": _r(
        ("swarm ca", "swarm join-token"), ("swarm init", "swarm unlock-key", "swarm update")
    ),
    "POST /swarm/init": _r(("swarm init",)),
    "POST /swarm/join": _r(("swarm join",)),
    "POST /swarm/leave": _r(("swarm leave",)),
    # One request carries the whole swarm spec, whatever the rotate flags in its query say, so
    # every command that sends it owns it.
    "POST /swarm/update": _r(("swarm update", "swarm ca", "swarm join-token", "swarm unlock-key")),
    "GET /swarm/unlockkey": _r(("swarm unlock-key",), ("swarm init", "swarm update")),
    "POST /swarm/unlock": _r(("swarm unlock",)),
    # -- swarm: services and tasks -------------------------------------------------------------
    "GET /services": _r(
        ("service ls", "stack ls", "stack services"), ("service ps", _STACK_DEPLOY, _STACK_RM)
    ),
    "POST /services/create": _r(("service create", _STACK_DEPLOY)),
    "GET /services/{id}": _r(
        ("service inspect", _INSPECT),
        ("node ps", *_SERVICE_WRITERS, "service logs", "service ps", _STACK_DEPLOY, "stack ps"),
    ),
    "DELETE /services/{id}": _r(("service rm", _STACK_RM, _STACK_DEPLOY)),  # deploy --prune
    # The body is a whole service spec, whatever `rollback=` says: every sender owns it.
    "POST /services/{id}/update": _r(
        ("service update", "service rollback", "service scale", _STACK_DEPLOY)
    ),
    "GET /services/{id}/logs": _r(("service logs",)),
    "GET /tasks": _r(
        ("service ps", "node ps", "stack ps"), (*_SERVICE_WRITERS, _STACK_DEPLOY, _STACK_RM)
    ),
    # Tasks have no inspect command of their own; `docker inspect` reads them.
    "GET /tasks/{id}": _r((_INSPECT,), ("service logs",)),
    "GET /tasks/{id}/logs": _r(("service logs",)),
    "GET /distribution/{name}/json": _r(("service create", "service update", _STACK_DEPLOY)),
    # -- swarm: secrets and configs ------------------------------------------------------------
    "GET /secrets": _r(
        ("secret ls",), ("service create", "service update", _STACK_DEPLOY, _STACK_RM)
    ),
    "POST /secrets/create": _r(("secret create", _STACK_DEPLOY)),
    "GET /secrets/{id}": _r(("secret inspect", _INSPECT), (_STACK_DEPLOY,)),
    "DELETE /secrets/{id}": _r(("secret rm", _STACK_RM)),
    # There is no `docker secret update`; only a stack deploy updates a secret (its labels).
    "POST /secrets/{id}/update": _r((_STACK_DEPLOY,)),
    "GET /configs": _r(
        ("config ls",), ("service create", "service update", _STACK_DEPLOY, _STACK_RM)
    ),
    "POST /configs/create": _r(("config create", _STACK_DEPLOY)),
    "GET /configs/{id}": _r(("config inspect", _INSPECT), (_STACK_DEPLOY,)),
    "DELETE /configs/{id}": _r(("config rm", _STACK_RM)),
    "POST /configs/{id}/update": _r((_STACK_DEPLOY,)),
}

#: `POST /images/create` pulls when `fromImage` is set (what `docker pull` sends, and what
#: `docker run`/`docker create` send when the image is missing or `--pull=always`), and imports
#: otherwise (`docker import`: `fromSrc` names a URL, or `-` for the body).
IMAGES_CREATE_KEY = "POST /images/create"
IMAGES_CREATE_PULL: RouteCommands = _r(("image pull",), (_CREATE, _RUN))
IMAGES_CREATE_IMPORT: RouteCommands = _r(("image import",))

#: Every route the command list classifies, query-dependent ones included.
CLASSIFIED_KEYS: frozenset[str] = frozenset(ROUTE_COMMANDS) | {IMAGES_CREATE_KEY}


class UnclassifiedRoute(LookupError):
    """A route the command map has no entry for (a table gap: the gate must fail closed)."""

    def __init__(self, method: str, template: str) -> None:
        super().__init__(f"no docker command is known to send {method} {template}")
        self.method = method
        self.template = template


def _images_create(query: Mapping[str, str]) -> RouteCommands:
    # moby's postImagesCreate: `if r.Form.Get("fromImage") != ""` pulls, anything else imports.
    return IMAGES_CREATE_PULL if query.get("fromImage", "") != "" else IMAGES_CREATE_IMPORT


def route_commands(method: str, template: str, query: Mapping[str, str]) -> RouteCommands:
    """The owners and helpers of a route; `query` holds the values Go's `r.Form.Get` reads
    (the first of each name). Raises `UnclassifiedRoute` for a route the table lacks; an
    always-allowed route (`ALWAYS_ALLOWED_KEYS`) has no commands."""
    key = f"{method} {template}"
    if key == IMAGES_CREATE_KEY:
        return _images_create(query)
    found = ROUTE_COMMANDS.get(key)
    if found is not None:
        return found
    if key in ALWAYS_ALLOWED_KEYS:
        return RouteCommands(frozenset())
    raise UnclassifiedRoute(method, template)


def commands_for(method: str, template: str, query: Mapping[str, str]) -> frozenset[str]:
    """Every canonical command that sends this request (owners and helpers)."""
    return route_commands(method, template, query).senders


def owners_for(method: str, template: str, query: Mapping[str, str]) -> frozenset[str]:
    """The canonical commands whose own work this request is (what a deny list matches)."""
    return route_commands(method, template, query).owners


@dataclass(frozen=True, slots=True)
class CommandVerdict:
    """`matched`: the list entries, as the admin wrote them, that decided (empty when an allow
    list names none of the request's commands, and when a deny list names none)."""

    allowed: bool
    matched: tuple[str, ...]


def _naming(patterns: tuple[CommandPattern, ...], commands: frozenset[str]) -> tuple[str, ...]:
    return tuple(p.text for p in patterns if p.commands & commands)


def judge_commands(
    command_list: CommandList,
    commands: frozenset[str],
    *,
    owners: frozenset[str] | None = None,
) -> CommandVerdict:
    """Judge a request sent by `commands` under `command_list`.

    Allow list: allowed when an entry names any of `commands`. Deny list: blocked when an entry
    names any of `owners` (all of `commands` when `owners` is not given). An empty deny list
    allows everything; an empty allow list allows nothing (but `ALWAYS_ALLOWED_KEYS`, which
    the caller checks first: `judge_request` does).
    """
    if command_list.type is CommandListType.ALLOW:
        matched = _naming(command_list.commands, commands)
        return CommandVerdict(bool(matched), matched)
    matched = _naming(command_list.commands, commands if owners is None else owners)
    return CommandVerdict(not matched, matched)


ALWAYS_ALLOWED = CommandVerdict(True, ())


def judge_request(
    command_list: CommandList,
    method: str,
    template: str,
    query: Mapping[str, str],
    *,
    extra: frozenset[str] = frozenset(),
) -> CommandVerdict:
    """The whole check for one routed request: always-allowed routes pass; otherwise the
    route's commands are judged, `extra` (e.g. `compose` for a compose-labelled create)
    counting as both a sender and an owner. Raises `UnclassifiedRoute`."""
    if f"{method} {template}" in ALWAYS_ALLOWED_KEYS:
        return ALWAYS_ALLOWED
    rc = route_commands(method, template, query)
    return judge_commands(command_list, rc.senders | extra, owners=rc.owners | extra)


@functools.lru_cache(maxsize=256)
def within(inner: CommandList, outer: CommandList) -> bool:
    """Whether `inner` allows nothing `outer` does not: every request the table knows (each
    route's commands, with and without a compose label) that `inner` allows, `outer` allows
    too. What a container may hand its own code to run under another list (a child with the
    socket, an exec into a socket holder) must be within its own list."""
    if inner == outer:
        return True
    labelled = [ROUTE_COMMANDS[key] for key in LABELLED_CREATE_KEYS]
    for rc in (*ROUTE_COMMANDS.values(), IMAGES_CREATE_PULL, IMAGES_CREATE_IMPORT):
        for extra in (frozenset(), frozenset({"compose"})):
            if extra and rc not in labelled:
                continue  # only a labelled create counts as `compose`
            senders, owners = rc.senders | extra, rc.owners | extra
            if (
                judge_commands(inner, senders, owners=owners).allowed
                and not judge_commands(outer, senders, owners=owners).allowed
            ):
                return False
    return True


def compose_labelled(body: GoObject) -> bool:
    """Whether a container, network or volume create body carries a docker compose label.

    All three bodies keep their labels in a top-level `Labels` map. The field name matches
    case-insensitively and repeated `Labels` objects merge, as Go decodes them; label keys are
    map keys, compared exactly (`COM.DOCKER.COMPOSE.PROJECT` is not a compose label).
    """
    labels: Any = body.field("Labels")
    if not isinstance(labels, GoObject):
        return False
    return any(key.startswith(COMPOSE_LABEL_PREFIX) for key in labels.entries())


def command_blocked_message(raw_target: str, settings_where: str) -> str:
    """The words of a command-list refusal (`decide.deny` adds the ECI prefix)."""
    return (
        f'docker command "{raw_target}" is blocked; if you wish to allow it, configure the '
        f"docker socket command list in {settings_where}"
    )


def _check_table() -> None:
    unknown = {
        name
        for rc in (*ROUTE_COMMANDS.values(), IMAGES_CREATE_PULL, IMAGES_CREATE_IMPORT)
        for name in rc.senders
        if name not in CANONICAL_COMMANDS
    }
    if unknown:  # pragma: no cover - a typo in the table above
        raise AssertionError(f"command_map names unknown commands: {sorted(unknown)}")


_check_table()
