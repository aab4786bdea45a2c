"""Which engine handler a request reaches: the Engine API's route table, matched like moby does.

Theory of operation
-------------------
moby registers every route twice, as `/v{version:[0-9.]+}/path` and as `/path`, and gorilla/mux
matches the *decoded* path (`%2F` is a slash) against patterns whose `{name:.*}` parameters may
span slashes; the first registered route that matches wins. A path that is not clean (`//`,
`/./`, `/../`) would be answered with a redirect rather than routed, so a proxy gains nothing by
guessing: `canonical_target` refuses it, and refuses what it cannot decode for certain.

`match_route` returns the `Route` (the swagger-style key such as `POST /containers/{id}/start`)
and its parameters, or None for a path the engine has no handler for.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

#: (method, template) in moby's registration order where it matters: literal routes such as
#: `/containers/json` come before `/containers/{id}/json`. `{...}` segments match like `.*`
#: (or one segment, `[^/]+`, where moby registers a bare `{id}`: see `_ONE_SEGMENT_PREFIXES`).
ROUTE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/version"), ("GET", "/info"),
    ("GET", "/events"), ("GET", "/system/df"), ("POST", "/auth"),
    ("GET", "/containers/json"), ("POST", "/containers/create"), ("POST", "/containers/prune"),
    ("GET", "/containers/{id}/json"), ("GET", "/containers/{id}/top"),
    ("GET", "/containers/{id}/logs"), ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/export"), ("GET", "/containers/{id}/stats"),
    ("GET", "/containers/{id}/attach/ws"), ("GET", "/containers/{id}/archive"),
    ("HEAD", "/containers/{id}/archive"), ("PUT", "/containers/{id}/archive"),
    ("GET", "/containers/{id}/checkpoints"), ("POST", "/containers/{id}/checkpoints"),
    ("DELETE", "/containers/{id}/checkpoints/{checkpoint}"),
    ("POST", "/containers/{id}/resize"), ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/stop"), ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/kill"), ("POST", "/containers/{id}/update"),
    ("POST", "/containers/{id}/rename"), ("POST", "/containers/{id}/pause"),
    ("POST", "/containers/{id}/unpause"), ("POST", "/containers/{id}/attach"),
    ("POST", "/containers/{id}/wait"), ("POST", "/containers/{id}/exec"),
    ("DELETE", "/containers/{id}"),
    ("GET", "/images/json"), ("GET", "/images/search"), ("GET", "/images/get"),
    ("POST", "/images/create"), ("POST", "/images/load"), ("POST", "/images/prune"),
    ("GET", "/images/{name}/json"), ("GET", "/images/{name}/attestations"),
    ("GET", "/images/{name}/history"), ("GET", "/images/{name}/get"),
    ("POST", "/images/{name}/push"), ("POST", "/images/{name}/tag"),
    ("DELETE", "/images/{name}"),
    ("POST", "/build"), ("POST", "/build/prune"), ("POST", "/build/cancel"),
    ("POST", "/commit"), ("POST", "/session"), ("POST", "/grpc"),
    ("POST", "/exec/{id}/start"), ("POST", "/exec/{id}/resize"), ("GET", "/exec/{id}/json"),
    ("GET", "/volumes"), ("POST", "/volumes/create"), ("POST", "/volumes/prune"),
    ("GET", "/volumes/{name}"), ("PUT", "/volumes/{name}"), ("DELETE", "/volumes/{name}"),
    ("GET", "/networks"), ("GET", "/networks/"), ("POST", "/networks/create"),
    ("POST", "/networks/prune"), ("GET", "/networks/{id}"), ("DELETE", "/networks/{id}"),
    ("POST", "/networks/{id}/connect"), ("POST", "/networks/{id}/disconnect"),
    ("GET", "/plugins"), ("GET", "/plugins/privileges"), ("POST", "/plugins/pull"),
    ("POST", "/plugins/create"), ("GET", "/plugins/{name}/json"),
    ("DELETE", "/plugins/{name}"), ("POST", "/plugins/{name}/enable"),
    ("POST", "/plugins/{name}/disable"), ("POST", "/plugins/{name}/upgrade"),
    ("POST", "/plugins/{name}/push"), ("POST", "/plugins/{name}/set"),
    ("GET", "/nodes"), ("GET", "/nodes/{id}"), ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/swarm"), ("POST", "/swarm/init"), ("POST", "/swarm/join"),
    ("POST", "/swarm/leave"), ("POST", "/swarm/update"), ("GET", "/swarm/unlockkey"),
    ("POST", "/swarm/unlock"),
    ("GET", "/services"), ("POST", "/services/create"), ("GET", "/services/{id}"),
    ("DELETE", "/services/{id}"), ("POST", "/services/{id}/update"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/tasks"), ("GET", "/tasks/{id}"), ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"), ("POST", "/secrets/create"), ("GET", "/secrets/{id}"),
    ("DELETE", "/secrets/{id}"), ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"), ("POST", "/configs/create"), ("GET", "/configs/{id}"),
    ("DELETE", "/configs/{id}"), ("POST", "/configs/{id}/update"),
    ("GET", "/distribution/{name}/json"),
    ("GET", "/debug/vars"), ("GET", "/debug/pprof/"), ("GET", "/debug/pprof/cmdline"),
    ("GET", "/debug/pprof/profile"), ("GET", "/debug/pprof/symbol"),
    ("GET", "/debug/pprof/trace"), ("GET", "/debug/pprof/{name}"),
)  # fmt: skip

_PARAM = re.compile(r"\{(\w+)\}")

#: moby registers most parameters as `{name:.*}`, but the swarm, checkpoint-delete and pprof
#: routes use a bare `{id}`, which gorilla/mux matches as one path segment (`[^/]+`): so
#: `GET /services/x/logs` is the logs route, not an inspect of a service named `x/logs`.
_ONE_SEGMENT_PREFIXES = ("/nodes/", "/services/", "/tasks/", "/secrets/", "/configs/", "/debug/")
_ONE_SEGMENT_TEMPLATES = frozenset({"/containers/{id}/checkpoints/{checkpoint}"})
_VERSION = re.compile(r"^/v([0-9.]+)(/.*)$")


@dataclass(frozen=True, slots=True)
class Route:
    """A handler of the engine: `key` is `METHOD /template` as the API reference spells it."""

    method: str
    template: str

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


def _compile(template: str) -> re.Pattern[str]:
    one_segment = template.startswith(_ONE_SEGMENT_PREFIXES) or template in _ONE_SEGMENT_TEMPLATES
    param = "[^/]+" if one_segment else ".*"
    parts = _PARAM.split(template)
    regex = ""
    for i, part in enumerate(parts):
        regex += re.escape(part) if i % 2 == 0 else f"(?P<{part}>{param})"
    return re.compile(f"^{regex}$", re.DOTALL)


_COMPILED: tuple[tuple[Route, re.Pattern[str]], ...] = tuple(
    (Route(m, t), _compile(t)) for m, t in ROUTE_TEMPLATES
)
_LITERAL: dict[tuple[str, str], Route] = {(m, t): Route(m, t) for m, t in ROUTE_TEMPLATES}


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: dict[str, str]


def match_route(method: str, path: str) -> RouteMatch | None:
    """The engine route `path` (decoded, version prefix removed) reaches, if any."""
    literal = _LITERAL.get((method, path))
    if literal is not None:
        return RouteMatch(literal, {})
    if method == "OPTIONS":
        return RouteMatch(Route("OPTIONS", "/{anyroute}"), {"anyroute": path})
    for route, pattern in _COMPILED:
        if route.method != method:
            continue
        m = pattern.match(path)
        if m is not None:
            return RouteMatch(route, m.groupdict())
    return None


class BadTarget(ValueError):
    """A request target the proxy cannot map to one engine route with certainty."""


@dataclass(frozen=True, slots=True)
class Target:
    """A request target split the way the engine reads it.

    `raw` is exactly what the client sent (and what the engine will receive); `path` is
    decoded with the version prefix removed; `version` is the prefix's number, if any.
    """

    raw: str
    path: str
    version: str | None
    query: tuple[tuple[str, str], ...]

    def query_values(self, name: str) -> tuple[str, ...]:
        return tuple(v for k, v in self.query if k == name)

    def query_value(self, name: str) -> str | None:
        """The value Go's `r.Form.Get` returns: the first one given."""
        values = self.query_values(name)
        return values[0] if values else None


_CONTROL_OR_SPACE = re.compile("[\x00-\x20\x7f]")
#: A '%' not followed by two hex digits.
_BAD_ESCAPE = re.compile("%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: Targets up to this long are remembered (a client asks for the same few again and again).
_CACHED_TARGET_LEN = 256


def _decode_path(raw_path: str) -> str:
    if _CONTROL_OR_SPACE.search(raw_path):
        raise BadTarget("the path contains control characters or spaces")
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("the path does not decode to UTF-8") from None
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw_path):
        raise BadTarget("the path has a malformed percent-escape")
    if _CONTROL.search(decoded):
        raise BadTarget("the path decodes to control characters")
    return decoded


def canonical_target(raw: str) -> Target:
    """Split and decode a request target; raises `BadTarget` for anything ambiguous.

    Accepted: an origin-form target (`/v1.41/containers/json?all=1`), or an absolute-form one
    for a unix-socket host (`http://localhost/...`, as some clients send); refused: paths that
    are not clean, that decode to control characters, or that carry a fragment.
    """
    if len(raw) <= _CACHED_TARGET_LEN:
        return _canonical_target_cached(raw)
    return _canonical_target(raw)


@functools.lru_cache(maxsize=512)
def _canonical_target_cached(raw: str) -> Target:
    return _canonical_target(raw)  # a Target is immutable; refusals (raised) are not cached


def _canonical_target(raw: str) -> Target:
    if "#" in raw:
        raise BadTarget("a request target cannot carry a fragment")
    if raw.startswith(("http://", "https://")):
        rest = raw.split("://", 1)[1]
        slash = rest.find("/")
        if slash < 0 or "?" in rest[:slash]:
            raise BadTarget("an absolute-form target with no path")
        raw_origin = rest[slash:]
    elif raw.startswith("/"):
        raw_origin = raw
    else:
        raise BadTarget(f"unsupported request target form {raw[:40]!r}")
    raw_path, _, raw_query = raw_origin.partition("?")
    path = _decode_path(raw_path)
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        raise BadTarget("the path is not clean (it has '//', '.' or '..' segments)")
    version = None
    m = _VERSION.match(path)
    if m is not None:
        version, path = m.group(1), m.group(2)
    try:
        query = tuple(parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False))
    except ValueError as err:  # pragma: no cover - parse_qsl is lenient
        raise BadTarget(f"unreadable query string: {err}") from None
    if raw_query and ";" in raw_query:
        raise BadTarget("';' in a query string is read differently by Go and Python")
    if raw_query and _BAD_ESCAPE.search(raw_query):
        # Go's url.ParseQuery drops a pair with a bad escape (`rollback=%zz&rollback=x` is
        # `x` to the engine); parse_qsl keeps it: the two would read different values.
        raise BadTarget("a malformed %-escape in the query string")
    return Target(raw, path, version, query)
