"""agent.policy.command_map: Engine API routes -> the docker CLI commands that send them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from agent.policy import gojson
from agent.policy.command_map import (
    ALWAYS_ALLOWED_KEYS,
    CLASSIFIED_KEYS,
    IMAGES_CREATE_IMPORT,
    IMAGES_CREATE_PULL,
    ROUTE_COMMANDS,
    CommandVerdict,
    UnclassifiedRoute,
    command_blocked_message,
    commands_for,
    compose_labelled,
    judge_commands,
    judge_request,
    owners_for,
    route_commands,
)
from agent.policy.commands import CANONICAL_COMMANDS, parse_command_pattern
from agent.policy.decide import deny
from agent.policy.routes import ROUTE_TEMPLATES, canonical_target, match_route
from agent.settings.model import CommandList, CommandListType
from agent.settings.parse import parse_settings
from tests.unit.engine_routes import route_list

ENGINE_API = Path(__file__).parents[3] / "shared" / "engine-api"
NO_ENGINE_API = f"the Engine API reference tables are not in {ENGINE_API}"

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def clist(kind: str, *commands: str) -> CommandList:
    return CommandList(CommandListType(kind), tuple(parse_command_pattern(c) for c in commands))


def judge_target(command_list: CommandList, method: str, raw: str) -> CommandVerdict:
    """Route a raw target as the gate does and judge it."""
    target = canonical_target(raw)
    match = match_route(method, target.path)
    assert match is not None, raw
    query: dict[str, str] = {}
    for name, value in reversed(target.query):
        query[name] = value
    return judge_request(command_list, match.route.method, match.route.template, query)


_PARAM = re.compile(r"\{[^}]*\}")


def _shape(path: str) -> str:
    return _PARAM.sub("{}", path)


#: The route key each path shape stands for, spelled as routes.ROUTE_TEMPLATES spells it.
KEY_BY_SHAPE: dict[tuple[str, str], str] = {
    (m, _shape(t)): f"{m} {t}" for m, t in ROUTE_TEMPLATES
} | {("OPTIONS", "/{}"): "OPTIONS /{anyroute}"}


def tsv_rows(name: str) -> list[dict[str, str]]:
    path = ENGINE_API / name
    if not path.exists():
        pytest.skip(NO_ENGINE_API)
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --------------------------------------------------------------------------------------------
# the table covers every route
# --------------------------------------------------------------------------------------------


def test_every_documented_route_is_classified() -> None:
    # The engine's routes as kept in the tree (tests/unit/data/engine_routes.tsv, checked
    # against the engine-api notes by test_routes), so every checkout runs this.
    rows = route_list()
    assert len(rows) > 200
    missing: list[str] = []
    for _list, method, path in rows:
        key = KEY_BY_SHAPE.get((method, _shape(path)))
        if key is None:
            missing.append(f"{method} {path} (not in ROUTE_TEMPLATES)")
        elif key not in CLASSIFIED_KEYS and key not in ALWAYS_ALLOWED_KEYS:
            missing.append(key)
    assert missing == []


def test_every_route_template_is_classified() -> None:
    keys = {f"{m} {t}" for m, t in ROUTE_TEMPLATES}
    assert sorted(keys - CLASSIFIED_KEYS - ALWAYS_ALLOWED_KEYS) == []
    # and the table has no entry the router can never produce
    assert sorted(CLASSIFIED_KEYS - keys) == []
    for method, template in ROUTE_TEMPLATES:
        commands_for(method, template, {})  # does not raise


def test_every_name_is_a_canonical_command() -> None:
    used = {n for rc in ROUTE_COMMANDS.values() for n in rc.senders}
    used |= IMAGES_CREATE_PULL.senders | IMAGES_CREATE_IMPORT.senders
    assert sorted(used - set(CANONICAL_COMMANDS)) == []


def test_every_route_has_an_owner() -> None:
    """So a deny list can always name something that stops it."""
    owned = [k for k, rc in ROUTE_COMMANDS.items() if not rc.owners]
    assert owned == []
    assert all(not (rc.owners & rc.helpers) for rc in ROUTE_COMMANDS.values())


def test_unknown_route_raises() -> None:
    with pytest.raises(UnclassifiedRoute, match="GET /frobnicate"):
        commands_for("GET", "/frobnicate", {})
    with pytest.raises(UnclassifiedRoute):
        judge_request(clist("deny"), "PATCH", "/containers/{id}", {})


def test_always_allowed_routes_have_no_commands() -> None:
    assert ALWAYS_ALLOWED_KEYS >= {"GET /_ping", "HEAD /_ping"}
    assert commands_for("HEAD", "/_ping", {}) == frozenset()


# --------------------------------------------------------------------------------------------
# the table agrees with the docker CLI's own (cli-commands.tsv, endpoints.tsv)
# --------------------------------------------------------------------------------------------

_ENDPOINT = re.compile(r"\b(GET|HEAD|POST|PUT|DELETE) (/[A-Za-z0-9_{}./-]*)(\?[^\s;,)]*)?")


def _canonical(cli: str) -> str | None:
    name = cli.removeprefix("docker ").removesuffix(" ...").strip()
    return name if name in CANONICAL_COMMANDS else None


def _requests(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, template, query) for each request a cli-commands.tsv cell names."""
    found: list[tuple[str, str, dict[str, str]]] = []
    for method, path, query in _ENDPOINT.findall(text):
        key = KEY_BY_SHAPE.get((method, _shape(path)))
        assert key is not None, f"{method} {path}"
        q: dict[str, str] = {}
        for part in query.lstrip("?").split("&"):
            if part:
                k, _, v = part.partition("=")
                q[k] = v or "x"
        if path == "/images/create" and not q:
            q = {"fromImage": "x"}  # `--pull=always: POST /images/create first`: a pull
        found.append((method, key.split(" ", 1)[1], q))
    return found


def cli_rows() -> list[tuple[str, dict[str, str]]]:
    rows = []
    for row in tsv_rows("cli-commands.tsv"):
        canonical = _canonical(row["command"])
        if canonical is not None:
            rows.append((canonical, row))
    return rows


def test_every_request_a_command_sends_names_that_command() -> None:
    wrong: list[str] = []
    for canonical, row in cli_rows():
        for method, template, query in _requests(
            row["endpoints"] + " " + row["conditional_endpoints"]
        ):
            if f"{method} {template}" in ALWAYS_ALLOWED_KEYS:
                continue
            if canonical not in commands_for(method, template, query):
                wrong.append(f"{canonical}: {method} {template} {query}")
    assert wrong == []


#: Routes the table gives a command the engine-api tables do not list for it (our choice for
#: routes no docker CLI command sends, and the BuildKit upgrades the buildx plugin opens).
NEAREST_COMMAND = {
    "GET /containers/{id}/attach/ws",
    "GET /images/{name}/attestations",
    "GET /images/{name}/get",
    "POST /build/cancel",
    "POST /grpc",
    "POST /session",
    "GET /networks/",
    "GET /debug/vars",
    "GET /debug/pprof/",
    "GET /debug/pprof/cmdline",
    "GET /debug/pprof/profile",
    "GET /debug/pprof/symbol",
    "GET /debug/pprof/trace",
    "GET /debug/pprof/{name}",
    "GET /containers/{id}/checkpoints",
    "POST /containers/{id}/checkpoints",
    "DELETE /containers/{id}/checkpoints/{checkpoint}",
}


def test_every_command_the_table_names_sends_that_request() -> None:
    """The reverse: endpoints.tsv's cli_commands column lists each sender we name."""
    extra: list[str] = []
    for row in tsv_rows("endpoints.tsv"):
        key = KEY_BY_SHAPE[(row["method"], _shape(row["path"]))]
        if key in NEAREST_COMMAND or key in ALWAYS_ALLOWED_KEYS:
            continue
        listed = {
            c
            for c in (
                _canonical(p.strip().removesuffix("(cond)")) for p in row["cli_commands"].split(",")
            )
            if c is not None
        }
        if key == "POST /images/create":
            ours = IMAGES_CREATE_PULL.senders | IMAGES_CREATE_IMPORT.senders
        else:
            ours = ROUTE_COMMANDS[key].senders
        if ours - listed:
            extra.append(f"{key}: {sorted(ours - listed)}")
    assert extra == []


#: Commands that send nothing a deny list could stop: they never reach the engine API.
CLIENT_ONLY = {
    "context create",
    "context export",
    "context import",
    "context inspect",
    "context ls",
    "context rm",
    "context show",
    "context update",
    "context use",
    "manifest annotate",
    "manifest create",
    "manifest inspect",
    "manifest push",
    "manifest rm",
    "logout",
    "stack config",  # renders the compose file locally (it still pings)
    "system dial-stdio",  # a raw connection, no HTTP request of its own
    "compose",  # a plugin: enforced through labels, see test_compose_*
}


def test_every_command_works_under_an_allow_list_of_itself() -> None:
    """`allow [X]` lets every request X sends through, conditional ones included."""
    blocked: list[str] = []
    for canonical, row in cli_rows():
        allow = clist("allow", canonical)
        for method, template, query in _requests(
            row["endpoints"] + " " + row["conditional_endpoints"]
        ):
            if not judge_request(allow, method, template, query).allowed:
                blocked.append(f"{canonical}: {method} {template}")
    assert blocked == []


def test_every_command_is_stopped_by_a_deny_list_of_itself() -> None:
    """`deny [X]` blocks at least one request of X's normal flow, unless X is client-only."""
    unstoppable: set[str] = set()
    for canonical, row in cli_rows():
        deny_it = clist("deny", canonical)
        requests = [
            r for r in _requests(row["endpoints"]) if f"{r[0]} {r[1]}" not in ALWAYS_ALLOWED_KEYS
        ]
        if not any(not judge_request(deny_it, m, t, q).allowed for m, t, q in requests):
            unstoppable.add(canonical)
    assert unstoppable == CLIENT_ONLY


# --------------------------------------------------------------------------------------------
# query-decided routes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "owners", "senders"),
    [
        (
            {"fromImage": "alpine", "tag": "latest"},
            {"image pull"},
            {"image pull", "container create", "container run"},
        ),
        ({"fromSrc": "-", "repo": "x"}, {"image import"}, {"image import"}),
        ({"fromSrc": "http://example.test/x.tar"}, {"image import"}, {"image import"}),
        ({"fromImage": "", "fromSrc": "-"}, {"image import"}, {"image import"}),  # empty: import
        ({"fromImage": "a", "fromSrc": "-"}, {"image pull"}, None),  # fromImage wins, as in moby
        ({}, {"image import"}, {"image import"}),
    ],
)
def test_images_create_is_decided_by_its_query(
    query: dict[str, str], owners: set[str], senders: set[str] | None
) -> None:
    assert owners_for("POST", "/images/create", query) == owners
    if senders is not None:
        assert commands_for("POST", "/images/create", query) == senders


# --------------------------------------------------------------------------------------------
# judging concrete requests
# --------------------------------------------------------------------------------------------

P = "/v1.43"

# (list type, entries, method, raw target, allowed)
CASES: list[tuple[str, tuple[str, ...], str, str, bool]] = [
    # deny ["push"]: the seed example
    ("deny", ("push",), "POST", f"{P}/images/myimage/push?tag=latest", False),
    ("deny", ("push",), "POST", "/images/docker.io%2Fx%2Fy/push", False),
    ("deny", ("push",), "POST", f"{P}/images/create?fromImage=alpine&tag=3", True),
    ("deny", ("push",), "GET", f"{P}/containers/json", True),
    ("deny", ("push",), "POST", f"{P}/plugins/x/push", True),  # a plugin push is not push
    ("deny", ("push",), "HEAD", "/_ping", True),
    # deny ["build", "push"]: the other seed example
    ("deny", ("build", "push"), "POST", f"{P}/build?t=x", False),
    ("deny", ("build", "push"), "POST", f"{P}/grpc", False),
    ("deny", ("build", "push"), "POST", f"{P}/session", False),
    ("deny", ("build", "push"), "POST", f"{P}/images/x/push", False),
    ("deny", ("build", "push"), "POST", f"{P}/build/prune", True),  # builder prune
    ("deny", ("build", "push"), "POST", f"{P}/containers/create", True),
    ("deny", ("build*",), "POST", f"{P}/build/prune", False),
    # deny ["image*"]
    ("deny", ("image*",), "POST", f"{P}/images/create?fromImage=alpine", False),
    ("deny", ("image*",), "POST", f"{P}/images/create?fromSrc=-", False),
    ("deny", ("image*",), "GET", f"{P}/images/json", False),
    ("deny", ("image*",), "DELETE", f"{P}/images/alpine", False),
    ("deny", ("image*",), "POST", f"{P}/build", False),
    ("deny", ("image*",), "GET", f"{P}/images/search?term=x", True),  # `docker search`
    ("deny", ("image*",), "POST", f"{P}/containers/create", True),
    ("deny", ("image*",), "GET", f"{P}/_ping", True),
    # deny ["container*"]
    ("deny", ("container*",), "POST", f"{P}/containers/create?name=x", False),
    ("deny", ("container*",), "GET", f"{P}/containers/json?all=1", False),
    ("deny", ("container*",), "POST", f"{P}/containers/abc/resize?h=1&w=2", False),
    ("deny", ("container*",), "POST", f"{P}/exec/abc/start", False),
    ("deny", ("container*",), "POST", f"{P}/commit?container=abc", False),
    ("deny", ("container*",), "GET", f"{P}/containers/abc/checkpoints", True),  # checkpoint ls
    ("deny", ("container*",), "POST", f"{P}/images/create?fromImage=alpine", True),  # a pull
    ("deny", ("container*",), "POST", f"{P}/volumes/create", True),
    ("deny", ("container*",), "GET", f"{P}/containers/abc/json", False),  # container inspect
    # deny ["create"]: no new containers; `docker run` fails too; `docker pull` still works
    ("deny", ("create",), "POST", f"{P}/containers/create", False),
    ("deny", ("create",), "POST", f"{P}/images/create?fromImage=alpine", True),
    ("deny", ("create",), "POST", f"{P}/containers/abc/start", True),
    # deny ["logs"] stops log reads, not the inspect `docker exec` and `docker inspect` need
    ("deny", ("logs",), "GET", f"{P}/containers/abc/logs?stdout=1", False),
    ("deny", ("logs",), "GET", f"{P}/containers/abc/json", True),
    # deny ["run"]: create and start are run's work; attach and wait are not
    ("deny", ("run",), "POST", f"{P}/containers/create", False),
    ("deny", ("run",), "POST", f"{P}/containers/abc/start", False),
    ("deny", ("run",), "POST", f"{P}/containers/abc/attach?stream=1", True),
    ("deny", ("run",), "POST", f"{P}/containers/abc/wait", True),
    # deny ["kill"]: a kill is a kill, even the one `docker run` forwards
    ("deny", ("kill",), "POST", f"{P}/containers/abc/kill?signal=INT", False),
    # deny ["plugin"] / ["plugin*"]: enforced through /plugins
    ("deny", ("plugin",), "POST", f"{P}/plugins/pull?remote=x", False),
    ("deny", ("plugin*",), "POST", f"{P}/plugins/x/enable", False),
    ("deny", ("plugin*",), "GET", f"{P}/plugins", False),
    ("deny", ("plugin install",), "POST", f"{P}/plugins/x/set", False),
    ("deny", ("plugin install",), "POST", f"{P}/plugins/x/disable", True),
    # allow ["ps", "container*"]
    ("allow", ("ps", "container*"), "GET", f"{P}/containers/json", True),
    ("allow", ("ps", "container*"), "POST", f"{P}/containers/create", True),
    ("allow", ("ps", "container*"), "POST", f"{P}/containers/x/start", True),
    ("allow", ("ps", "container*"), "POST", f"{P}/images/create?fromImage=alpine", True),
    ("allow", ("ps", "container*"), "POST", f"{P}/volumes/create", False),
    ("allow", ("ps", "container*"), "POST", f"{P}/networks/create", False),
    ("allow", ("ps", "container*"), "POST", f"{P}/images/create?fromSrc=-", False),
    ("allow", ("ps", "container*"), "GET", f"{P}/version", False),
    ("allow", ("ps", "container*"), "POST", f"{P}/images/x/push", False),
    ("allow", ("ps", "container*"), "HEAD", "/_ping", True),
    ("allow", ("ps", "container*"), "GET", "/_ping", True),
    ("allow", ("ps", "container*"), "OPTIONS", f"{P}/anything", True),
    # allow ["ps"]
    ("allow", ("ps",), "GET", f"{P}/containers/json?all=1", True),
    ("allow", ("ps",), "GET", f"{P}/containers/abc/json", False),
    ("allow", ("ps",), "GET", f"{P}/info", False),
    # an empty allow list allows only the ping; an empty deny list everything
    ("allow", (), "GET", f"{P}/containers/json", False),
    ("allow", (), "HEAD", "/_ping", True),
    ("deny", (), "POST", f"{P}/images/x/push", True),
]


@pytest.mark.parametrize(
    ("kind", "entries", "method", "raw", "allowed"),
    CASES,
    ids=[f"{c[0]}{list(c[1])}-{c[2]} {c[3]}" for c in CASES],
)
def test_command_list_cases(
    kind: str, entries: tuple[str, ...], method: str, raw: str, allowed: bool
) -> None:
    verdict = judge_target(clist(kind, *entries), method, raw)
    assert verdict.allowed is allowed


def test_matched_names_the_entries_as_written() -> None:
    cl = clist("deny", "docker  push", "build", "image*")
    v = judge_target(cl, "POST", f"{P}/images/x/push")
    assert v == CommandVerdict(False, ("docker  push", "image*"))
    assert judge_target(cl, "GET", f"{P}/containers/json") == CommandVerdict(True, ())
    allow = clist("allow", "ps", "container ls", "run")
    assert judge_target(allow, "GET", f"{P}/containers/json").matched == ("ps", "container ls")
    assert judge_target(allow, "POST", f"{P}/volumes/create") == CommandVerdict(False, ())


def test_judge_commands_without_owners_matches_any_sender() -> None:
    """Called without owners, a deny list blocks when it names any sender at all."""
    senders = commands_for("GET", "/containers/{id}/json", {})
    assert not judge_commands(clist("deny", "logs"), senders).allowed
    owners = owners_for("GET", "/containers/{id}/json", {})
    assert judge_commands(clist("deny", "logs"), senders, owners=owners).allowed
    assert judge_commands(clist("allow", "logs"), senders, owners=owners).allowed


# The requests `docker ps` and `docker run` send, written out by hand from the CLI's source
# (cli/command/container/list.go, run.go), conditional ones included.
DOCKER_PS = [
    ("HEAD", "/_ping"),
    ("GET", "/_ping"),
    ("GET", f"{P}/containers/json?all=1&filters=%7B%7D"),
]
DOCKER_RUN = [
    ("HEAD", "/_ping"),
    ("GET", "/_ping"),
    ("HEAD", f"{P}/_ping"),
    ("POST", f"{P}/containers/create?name=x"),
    ("POST", f"{P}/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=latest"),
    ("POST", f"{P}/containers/abc/attach?stderr=1&stdin=1&stdout=1&stream=1"),
    ("POST", f"{P}/containers/abc/wait?condition=next-exit"),
    ("POST", f"{P}/containers/abc/start"),
    ("POST", f"{P}/containers/abc/resize?h=40&w=120"),
    ("POST", f"{P}/containers/abc/kill?signal=SIGINT"),
    ("PUT", f"{P}/containers/abc/archive?path=%2F"),
]


@pytest.mark.parametrize(("method", "raw"), DOCKER_PS)
def test_docker_ps_works_under_allow_ps(method: str, raw: str) -> None:
    assert judge_target(clist("allow", "ps"), method, raw).allowed


@pytest.mark.parametrize(("method", "raw"), DOCKER_RUN)
def test_docker_run_works_under_allow_run(method: str, raw: str) -> None:
    assert judge_target(clist("allow", "run"), method, raw).allowed


@pytest.mark.parametrize("command", ["container ls", "container run"])
def test_tsv_request_set_works_under_allow_of_itself(command: str) -> None:
    """The same, from cli-commands.tsv (ping included: every command sends it)."""
    row = next(r for c, r in cli_rows() if c == command)
    requests = _requests(row["endpoints"] + " " + row["conditional_endpoints"])
    requests += [("HEAD", "/_ping", {}), ("GET", "/_ping", {})]
    short = "ps" if command == "container ls" else "run"
    assert len(requests) > 2
    for method, template, query in requests:
        assert judge_request(clist("allow", short), method, template, query).allowed, template


def test_docker_run_is_blocked_by_deny_create() -> None:
    cl = clist("deny", "create")
    outcomes = [judge_target(cl, m, raw).allowed for m, raw in DOCKER_RUN]
    assert not all(outcomes)
    assert not judge_target(cl, "POST", f"{P}/containers/create").allowed


# --------------------------------------------------------------------------------------------
# compose: the gate adds "compose" for a compose-labelled create
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "labelled"),
    [
        ('{"Image": "x", "Labels": {"com.docker.compose.project": "p"}}', True),
        ('{"Name": "n", "Labels": {"com.docker.compose.network": "default"}}', True),
        ('{"Name": "v", "Labels": {"com.docker.compose.volume": "data"}}', True),
        ('{"labels": {"com.docker.compose.project": "p"}}', True),  # field names fold
        ('{"LABELS": {"com.docker.compose.service": "s"}}', True),
        ('{"Labelz": {"com.docker.compose.service": "s"}}', False),
        ('{"Label\u017f": {"com.docker.compose.service": "s"}}', True),  # long s folds to s
        ('{"Labels": {"com.docker.compose.project": "p"}, "Labels": {"a": "b"}}', True),  # merged
        ('{"Labels": {"a": "b"}, "labels": {"com.docker.compose.project": "p"}}', True),
        ('{"Labels": {"com.docker.compose.project": "p"}, "Labels": null}', True),
        ('{"Labels": {"COM.DOCKER.COMPOSE.PROJECT": "p"}}', False),  # map keys are exact
        ('{"Labels": {"com.docker.composer": "p"}}', False),
        ('{"Labels": {"com.docker.compose": "p"}}', False),
        ('{"Labels": ["com.docker.compose.project=p"]}', False),
        ('{"Labels": null}', False),
        ('{"Image": "x"}', False),
        ('{"Config": {"Labels": {"com.docker.compose.project": "p"}}}', False),
        ("{}", False),
    ],
)
def test_compose_labelled(body: str, labelled: bool) -> None:
    doc = gojson.loads(body)
    assert isinstance(doc, gojson.GoObject)
    assert compose_labelled(doc) is labelled


def test_compose_in_a_list() -> None:
    create = commands_for("POST", "/networks/create", {})
    assert judge_request(clist("deny", "compose"), "POST", "/networks/create", {}).allowed
    v = judge_request(
        clist("deny", "compose"), "POST", "/networks/create", {}, extra=frozenset({"compose"})
    )
    assert v == CommandVerdict(False, ("compose",))
    assert judge_commands(clist("allow", "compose"), create | {"compose"}).allowed
    assert not judge_commands(clist("allow", "compose"), create).allowed


# --------------------------------------------------------------------------------------------
# the refusal's words
# --------------------------------------------------------------------------------------------


def test_blocked_message_is_the_seed_wording() -> None:
    where = "the Docker Desktop settings or admin-settings."
    decision = deny(
        403, command_blocked_message("/v1.43/images/myimage/push?tag=latest", where), "command"
    )
    assert decision.message == (
        'enhanced container isolation: docker command "/v1.43/images/myimage/push?tag=latest" '
        "is blocked; if you wish to allow it, configure the docker socket command list in the "
        "Docker Desktop settings or admin-settings."
    )


# --------------------------------------------------------------------------------------------
# per-image command lists (eciAgent.commandLists)
# --------------------------------------------------------------------------------------------

SETTINGS = b"""{
  "configurationFileVersion": 2,
  "enhancedContainerIsolation": {
    "value": true, "locked": true,
    "dockerSocketMount": {
      "imageList": {"images": ["docker.io/testcontainers/ryuk:*", "docker:cli", "alpine:3.20"]},
      "commandList": {"type": "deny", "commands": ["push"]}
    }
  },
  "eciAgent": {
    "commandLists": [
      {"images": ["docker.io/testcontainers/ryuk:*"], "type": "allow",
       "commands": ["container ls", "container stop", "container rm"]},
      {"images": ["docker:cli", "alpine:3.20"], "type": "deny", "commands": ["image*"]},
      {"images": ["docker:*"], "type": "allow", "commands": ["ps"]}
    ]
  }
}"""


def test_per_image_list_judges_requests() -> None:
    settings = parse_settings(SETTINGS)
    ryuk = settings.extensions.image_command_lists[0].command_list
    assert judge_target(ryuk, "GET", f"{P}/containers/json?filters=x").allowed
    assert judge_target(ryuk, "DELETE", f"{P}/containers/abc?force=1").allowed
    assert not judge_target(ryuk, "POST", f"{P}/containers/create").allowed
    assert not judge_target(ryuk, "POST", f"{P}/images/x/push").allowed
    other = settings.eci.socket_mount.command_list
    assert not judge_target(other, "POST", f"{P}/images/x/push").allowed
    assert judge_target(other, "POST", f"{P}/containers/create").allowed


def test_route_commands_helpers_are_not_owners() -> None:
    rc = route_commands("GET", "/containers/{id}/json", {})
    assert "container exec" in rc.helpers and "container exec" not in rc.owners
    assert {"container inspect", "inspect"} <= rc.owners
