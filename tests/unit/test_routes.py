"""agent.policy.routes: request targets decoded, and mapped to engine routes, as moby does it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from agent.policy.routes import ROUTE_TEMPLATES, BadTarget, canonical_target, match_route
from tests.unit.engine_routes import route_list

ENGINE_API = Path(__file__).parents[3] / "shared" / "engine-api"
TSV_FILES = ("endpoints.tsv", "endpoints-v1.41.tsv", "daemon-routes-not-in-swagger.tsv")

# --------------------------------------------------------------------------------------------
# canonical_target: accepted targets
# --------------------------------------------------------------------------------------------

# (raw target, decoded path without version, version prefix)
GOOD_TARGETS: list[tuple[str, str, str | None]] = [
    ("/containers/json", "/containers/json", None),
    ("/v1.41/containers/json", "/containers/json", "1.41"),
    ("/v1.41./containers/json", "/containers/json", "1.41."),
    ("/v1/containers/json", "/containers/json", "1"),
    ("/v1.56/containers/create", "/containers/create", "1.56"),
    ("/v1.41/", "/", "1.41"),
    ("/v1.41", "/v1.41", None),  # no slash after the version: not a prefix
    ("/v/containers/json", "/v/containers/json", None),  # `v` needs digits
    ("/vx1/containers/json", "/vx1/containers/json", None),
    ("/v1.41/v1.41/containers/json", "/v1.41/containers/json", "1.41"),  # only one is stripped
    ("/containers%2Fcreate", "/containers/create", None),
    ("/containers%2fcreate", "/containers/create", None),
    ("/v1.41%2Fcontainers%2Fcreate", "/containers/create", "1.41"),
    ("/%761.41/containers/create", "/containers/create", "1.41"),  # %76 is `v`
    ("/%63ontainers/create", "/containers/create", None),
    ("/containers%252Fcreate", "/containers%2Fcreate", None),  # decoded once, like Go
    ("/containers/%E2%9C%93/json", "/containers/\u2713/json", None),
    ("/containers/a%20b/json", "/containers/a b/json", None),
    ("/containers/json?all=1", "/containers/json", None),
    ("/containers/json?", "/containers/json", None),
    ("/containers/json?a=/../x", "/containers/json", None),  # the query is not a path
    ("http://localhost/v1.43/containers/json?all=1", "/containers/json", "1.43"),
    ("http://docker/containers/create", "/containers/create", None),
    ("https://localhost:2376/v1.41/_ping", "/_ping", "1.41"),
    ("http://localhost/", "/", None),
    ("http://localhost/containers%2Fcreate", "/containers/create", None),
    ("/", "/", None),
    ("/_ping", "/_ping", None),
]


@pytest.mark.parametrize(("raw", "path", "version"), GOOD_TARGETS)
def test_canonical_target_accepts(raw: str, path: str, version: str | None) -> None:
    target = canonical_target(raw)
    assert target.raw == raw
    assert target.path == path
    assert target.version == version


# --------------------------------------------------------------------------------------------
# canonical_target: refused targets
# --------------------------------------------------------------------------------------------

# (raw target, a word the refusal must contain)
BAD_TARGETS: list[tuple[str, str]] = [
    # not clean: gorilla/mux would redirect rather than route
    ("//containers/json", "clean"),
    ("/containers//json", "clean"),
    ("/v1.41//containers/create", "clean"),
    ("/./containers/json", "clean"),
    ("/containers/./json", "clean"),
    ("/images/../containers/create", "clean"),
    ("/containers/json/..", "clean"),
    ("/containers/json/.", "clean"),
    ("/v1.41/..", "clean"),
    ("/images/%2e%2e/containers/create", "clean"),
    ("/images/%2E%2E/containers/create", "clean"),
    ("/images/.%2e/containers/create", "clean"),
    ("/containers/%2e/create", "clean"),
    ("/containers%2F%2Fcreate", "clean"),
    ("/containers%2F..%2Fcreate", "clean"),
    ("http://localhost//containers/create", "clean"),
    ("http://localhost/a/../containers/create", "clean"),
    # control characters, raw or encoded
    ("/containers/create%00", "control"),
    ("/containers/a%00b/json", "control"),
    ("/containers/a%0ab/json", "control"),
    ("/containers/a%0Db/json", "control"),
    ("/containers/a%7f/json", "control"),
    ("/containers/a%09b/json", "control"),
    ("/containers/a b/json", "control"),
    ("/containers/a\tb/json", "control"),
    ("/containers/a\x00b/json", "control"),
    ("/containers/a\x7fb/json", "control"),
    # percent-escapes we cannot decode for certain
    ("/containers/%zz/json", "percent"),
    ("/containers/%2/json", "percent"),
    ("/containers/json%", "percent"),
    ("/containers/%g0/json", "percent"),
    ("/containers/%ff/json", "UTF-8"),
    ("/containers/%C0%AF/json", "UTF-8"),  # overlong `/`
    # fragments, wherever they hide
    ("/containers/json#x", "fragment"),
    ("/containers/json?all=1#x", "fragment"),
    ("http://localhost/containers/json#frag", "fragment"),
    ("http://localhost#x/containers/create", "fragment"),
    # absolute form without a path
    ("http://localhost", "no path"),
    ("http://localhost?/containers/create", "no path"),
    # `;` in the query: Go and Python split it differently
    ("/containers/json?all=1;size=1", "';'"),
    ("/containers/create?name=a;b", "';'"),
    # a bad %-escape in the query: Go drops the pair, parse_qsl keeps it (session 7b review)
    ("/services/x/update?rollback=%zz&rollback=previous", "malformed %-escape"),
    ("/build?networkmode=%G0&networkmode=host", "malformed %-escape"),
    ("/build?networkmode=host%&networkmode=x", "malformed %-escape"),
    ("/containers/json?%zz=1", "malformed %-escape"),
    ("/containers/json?all=%2", "malformed %-escape"),
    # other target forms
    ("*", "unsupported"),
    ("", "unsupported"),
    ("containers/json", "unsupported"),
    ("localhost:2375", "unsupported"),
    ("ftp://localhost/containers/json", "unsupported"),
    ("HTTP://localhost/containers/json", "unsupported"),
]


@pytest.mark.parametrize(("raw", "why"), BAD_TARGETS)
def test_canonical_target_refuses(raw: str, why: str) -> None:
    with pytest.raises(BadTarget) as err:
        canonical_target(raw)
    assert why in str(err.value)


# --------------------------------------------------------------------------------------------
# canonical_target: the query, read as Go's r.Form.Get reads it
# --------------------------------------------------------------------------------------------

# (raw target, name, query_value, query_values)
QUERY_CASES: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    ("/containers/json?all=1", "all", "1", ("1",)),
    ("/containers/json?all=1&all=0", "all", "1", ("1", "0")),
    ("/containers/json?all=0&size=1&all=1", "all", "0", ("0", "1")),
    ("/containers/json?all", "all", "", ("",)),
    ("/containers/json?all=", "all", "", ("",)),
    ("/containers/json?size=1", "all", None, ()),
    ("/containers/json", "all", None, ()),
    ("/containers/json?All=1", "all", None, ()),  # query names are case-sensitive
    ("/containers/create?name=a%2Fb", "name", "a/b", ("a/b",)),
    ("/containers/create?name=a+b", "name", "a b", ("a b",)),
    ("/containers/create?name=a%3Bb", "name", "a;b", ("a;b",)),
    ("/containers/create?na%6De=x", "name", "x", ("x",)),
    (
        "/containers/json?filters=%7B%22label%22%3A%5B%22x%22%5D%7D",
        "filters",
        '{"label":["x"]}',
        ('{"label":["x"]}',),
    ),
    ("http://localhost/v1.43/images/create?fromImage=alpine&tag=3", "tag", "3", ("3",)),
]


@pytest.mark.parametrize(("raw", "name", "first", "every"), QUERY_CASES)
def test_query_values(raw: str, name: str, first: str | None, every: tuple[str, ...]) -> None:
    target = canonical_target(raw)
    assert target.query_value(name) == first
    assert target.query_values(name) == every


def test_query_does_not_leak_into_path() -> None:
    target = canonical_target("/containers/json?x=/containers/create")
    assert target.path == "/containers/json"
    assert target.query == (("x", "/containers/create"),)


# --------------------------------------------------------------------------------------------
# match_route: every documented route is reachable under its own template
# --------------------------------------------------------------------------------------------

#: Sample values for path parameters, by the first path component of the template.
_SAMPLES: dict[str, dict[str, str]] = {
    "containers": {"id": "3f1c6a0e9b2d4f5a8c7e1b0d2a4f6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a"},
    "images": {"name": "localhost:5000/a/b:1.0"},
    "distribution": {"name": "localhost:5000/a/b:1.0"},
    "plugins": {"name": "vieux/sshfs:latest"},
    "volumes": {"name": "my-volume"},
    "networks": {"id": "7d9e8f1a2b3c"},
    "exec": {"id": "d2c1b0a9f8e7d6c5b4a3928170615243f2e1d0c9b8a7f6e5d4c3b2a190817263"},
    "nodes": {"id": "24ifsmvkjbyhk"},
    "services": {"id": "9mnpnzenvg8p8tdbtq4wvbkcz"},
    "tasks": {"id": "0kzzo1i0y4jz6027t0k7aezc7"},
    "secrets": {"id": "ktnbjxoalbkvbvedmg1urrz8h"},
    "configs": {"id": "ktnbjxoalbkvbvedmg1urrz8h"},
    "debug": {"name": "heap"},
}


def _template(path: str) -> str:
    """A route path as the TSVs spell it, with gorilla patterns (`{x:.*}`) dropped."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _sample(method: str, template: str) -> tuple[str, dict[str, str]]:
    first = template.split("/")[1]
    samples = dict(_SAMPLES.get(first, {}))
    samples.setdefault("checkpoint", "checkpoint-1")
    params: dict[str, str] = {}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if method == "OPTIONS":
            return "containers/create"
        params[name] = samples[name]
        return samples[name]

    return re.sub(r"\{(\w+)\}", fill, template), params


@pytest.mark.parametrize(
    ("source", "method", "path"),
    [pytest.param(*r, id=f"{r[0]}:{r[1]} {r[2]}") for r in route_list()],
)
def test_every_engine_route_matches_its_template(source: str, method: str, path: str) -> None:
    template = _template(path)
    concrete, params = _sample(method, template)
    match = match_route(method, concrete)
    assert match is not None, f"{source}: {method} {concrete} matched no route"
    assert match.route.method == method
    assert match.route.template == template, f"{method} {concrete} reached {match.route.key}"
    if method != "OPTIONS":
        assert match.params == params


def test_the_route_list_is_whole() -> None:
    rows = route_list()
    assert len(rows) == len(set(rows)) > 200  # 108 + 106 + 14 rows at the time of writing
    assert {r[0] for r in rows} == {n.removesuffix(".tsv") for n in TSV_FILES}


def test_the_route_list_says_what_the_engine_api_notes_say() -> None:
    if not ENGINE_API.is_dir():
        pytest.skip(f"{ENGINE_API} is absent (the list in the tree is checked on its own)")
    noted: list[tuple[str, str, str]] = []
    for name in TSV_FILES:
        with (ENGINE_API / name).open(newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                noted.append((name.removesuffix(".tsv"), row["method"], row["path"]))
    assert route_list() == noted


def test_every_route_template_is_unique() -> None:
    assert len(set(ROUTE_TEMPLATES)) == len(ROUTE_TEMPLATES)


# --------------------------------------------------------------------------------------------
# match_route: precedence, one-segment parameters, unknown paths
# --------------------------------------------------------------------------------------------

# (method, decoded path, expected route key, expected params)
ROUTE_CASES: list[tuple[str, str, str, dict[str, str]]] = [
    # literal routes win over templated ones
    ("GET", "/containers/json", "GET /containers/json", {}),
    ("GET", "/images/json", "GET /images/json", {}),
    ("GET", "/images/get", "GET /images/get", {}),
    ("GET", "/images/search", "GET /images/search", {}),
    ("POST", "/containers/create", "POST /containers/create", {}),
    ("POST", "/containers/prune", "POST /containers/prune", {}),
    ("POST", "/volumes/create", "POST /volumes/create", {}),
    ("GET", "/networks/", "GET /networks/", {}),
    ("GET", "/plugins/privileges", "GET /plugins/privileges", {}),
    ("GET", "/debug/pprof/cmdline", "GET /debug/pprof/cmdline", {}),
    ("GET", "/debug/pprof/", "GET /debug/pprof/", {}),
    ("POST", "/services/create", "POST /services/create", {}),
    # templated: `.*` parameters span slashes, like moby's `{name:.*}`
    ("GET", "/containers/json/json", "GET /containers/{id}/json", {"id": "json"}),
    ("POST", "/containers/create/start", "POST /containers/{id}/start", {"id": "create"}),
    ("POST", "/containers/a/b/start", "POST /containers/{id}/start", {"id": "a/b"}),
    ("DELETE", "/containers/create", "DELETE /containers/{id}", {"id": "create"}),
    ("GET", "/images/x/get", "GET /images/{name}/get", {"name": "x"}),
    (
        "GET",
        "/images/localhost:5000/a/b/json",
        "GET /images/{name}/json",
        {"name": "localhost:5000/a/b"},
    ),
    (
        "DELETE",
        "/images/localhost:5000/a/b@sha256:" + "ab" * 32,
        "DELETE /images/{name}",
        {"name": "localhost:5000/a/b@sha256:" + "ab" * 32},
    ),
    ("POST", "/images/a/b/tag", "POST /images/{name}/tag", {"name": "a/b"}),
    ("POST", "/exec/abc/start", "POST /exec/{id}/start", {"id": "abc"}),
    ("GET", "/networks/a/b", "GET /networks/{id}", {"id": "a/b"}),
    ("GET", "/volumes/create", "GET /volumes/{name}", {"name": "create"}),
    # one-segment parameters (moby's bare `{id}`): `/services/x/logs` is the logs route
    ("GET", "/services/x/logs", "GET /services/{id}/logs", {"id": "x"}),
    ("GET", "/tasks/x/logs", "GET /tasks/{id}/logs", {"id": "x"}),
    ("GET", "/services/x", "GET /services/{id}", {"id": "x"}),
    ("GET", "/debug/pprof/heap", "GET /debug/pprof/{name}", {"name": "heap"}),
    ("POST", "/nodes/n1/update", "POST /nodes/{id}/update", {"id": "n1"}),
    (
        "DELETE",
        "/containers/c1/checkpoints/cp1",
        "DELETE /containers/{id}/checkpoints/{checkpoint}",
        {"id": "c1", "checkpoint": "cp1"},
    ),
    (  # a container path with a slash cannot be a checkpoint delete (bare `{name}` in moby)
        "DELETE",
        "/containers/a/b/checkpoints/cp1",
        "DELETE /containers/{id}",
        {"id": "a/b/checkpoints/cp1"},
    ),
    # OPTIONS reaches the CORS handler whatever the path
    ("OPTIONS", "/containers/create", "OPTIONS /{anyroute}", {"anyroute": "/containers/create"}),
    ("OPTIONS", "/no/such/thing", "OPTIONS /{anyroute}", {"anyroute": "/no/such/thing"}),
    ("OPTIONS", "/", "OPTIONS /{anyroute}", {"anyroute": "/"}),
]


@pytest.mark.parametrize(("method", "path", "key", "params"), ROUTE_CASES)
def test_match_route(method: str, path: str, key: str, params: dict[str, str]) -> None:
    match = match_route(method, path)
    assert match is not None
    assert match.route.key == key
    assert match.params == params


UNKNOWN_ROUTES: list[tuple[str, str]] = [
    ("GET", "/"),
    ("GET", "/containers"),
    ("GET", "/containers/"),
    ("GET", "/Containers/json"),  # gorilla/mux is case-sensitive
    ("POST", "/Containers/create"),
    ("POST", "/containers/Create"),
    ("POST", "/containers/create/"),
    ("POST", "/containers/json"),  # wrong method for a literal
    ("GET", "/containers/create"),
    ("PATCH", "/containers/json"),
    ("HEAD", "/containers/json"),  # moby registers HEAD only for _ping and archive
    ("get", "/containers/json"),
    ("GET", "/v1.41/containers/json"),  # match_route takes the path without the version
    ("GET", "/_ping/"),
    ("GET", "/services/"),
    ("GET", "/services/a/b"),  # one segment only
    ("GET", "/tasks/a/b/logs"),
    ("DELETE", "/secrets/a/b"),
    ("GET", "/debug/pprof/a/b"),
    ("POST", "/containers/x/start/"),
    ("POST", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), UNKNOWN_ROUTES)
def test_unknown_routes(method: str, path: str) -> None:
    assert match_route(method, path) is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("/v1.41/containers%2Fcreate", "POST /containers/create"),
        ("/v1.41./containers/create?name=x", "POST /containers/create"),
        ("/v1/containers/create", "POST /containers/create"),
        ("http://localhost/v1.43/containers/create", "POST /containers/create"),
        ("/%76%31%2E%34%31/containers/create", "POST /containers/create"),
        ("/containers/abc%2Fstart", "POST /containers/{id}/start"),
    ],
)
def test_target_then_route(raw: str, key: str) -> None:
    match = match_route("POST", canonical_target(raw).path)
    assert match is not None
    assert match.route.key == key
