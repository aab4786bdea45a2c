"""The registry HTTP API v2, just enough to learn which digest a tag points to.

`manifest_digest` sends `HEAD /v2/<name>/manifests/<reference>` accepting manifest lists, OCI
indexes and image manifests, so a multi-arch tag answers with its index digest, which is what
`docker pull` records in RepoDigests. A registry that sends no `Docker-Content-Digest` is asked
with a GET and the digest is computed from the raw manifest bytes.

Authentication: a 401 with a Bearer challenge is answered with a token from the challenge's
realm (anonymous unless credentials are known for the registry); tokens are kept per
(registry, service, scope) until shortly before they expire, and a 401 with a kept token drops
it and asks once more. A Basic challenge is answered with the credentials. Docker Hub is reached
at its registry host, with official images under `library/`.

Transport: HTTPS with certificate checks, except for loopback registries and the hosts an
admin lists as insecure, which are spoken to over plain HTTP. Credentials are never sent in
clear text to any other host (a token realm included).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import h11

from agent.registry.cache import DIGEST

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
#: Names that all mean Docker Hub (in image references, config.json keys, or login commands).
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
TIMEOUT = 10.0
#: A whole answer must be in within this many times `timeout` (each read gets `timeout`).
READ_DEADLINE = 3
#: The distribution spec's default token lifetime when the token service does not say.
DEFAULT_TOKEN_LIFETIME = 60.0
#: A kept token is not used within this many seconds of its expiry.
TOKEN_EXPIRY_MARGIN = 5.0
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class RegistryError(Exception):
    """The registry could not answer (unreachable, refused our credentials, or spoke nonsense)."""


class RegistryUnreachable(RegistryError):
    """No HTTP answer at all (connection refused, DNS, TLS, timeout)."""


class RegistryAuthError(RegistryError):
    """The registry (or its token service) refused us."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


#: Where the client finds credentials: a registry domain (as in image references) -> them.
CredentialLookup = Callable[[str], Credentials | None]


def canonical_domain(name: str) -> str:
    """A registry name as image references spell it (`index.docker.io` -> `docker.io`)."""
    name = name.strip().lower()
    return DOCKER_HUB if name in DOCKER_HUB_ALIASES else name


def registry_host(domain: str) -> str:
    """The host:port the API is served at (Docker Hub's API lives at registry-1.docker.io)."""
    canonical = canonical_domain(domain)
    return DOCKER_HUB_REGISTRY if canonical == DOCKER_HUB else canonical


def repository_path(domain: str, path: str) -> str:
    """The repository as the registry names it: Docker Hub's official images are `library/x`."""
    if canonical_domain(domain) == DOCKER_HUB and "/" not in path:
        return "library/" + path
    return path


def _host_only(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def is_loopback(domain: str) -> bool:
    host = _host_only(domain)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {realm, service, …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


def token_lifetime(doc: Mapping[str, object]) -> float:
    """Seconds a token response is good for (`expires_in`, at least the spec's 60 s)."""
    value = doc.get("expires_in")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return max(float(value), DEFAULT_TOKEN_LIFETIME)
    return DEFAULT_TOKEN_LIFETIME


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float


class RegistryClient:
    """A small blocking client; call it from a worker thread (it is thread-safe)."""

    def __init__(
        self,
        credentials: Mapping[str, Credentials] | CredentialLookup | None = None,
        insecure: frozenset[str] = frozenset(),
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if credentials is None:
            self._lookup: CredentialLookup = lambda _domain: None
        elif callable(credentials):
            self._lookup = credentials
        else:
            table = {canonical_domain(k): v for k, v in credentials.items()}
            self._lookup = lambda domain: table.get(canonical_domain(domain))
        self.insecure = frozenset(canonical_domain(h) for h in insecure)
        self.timeout = timeout
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryClient(insecure={sorted(self.insecure)!r}, timeout={self.timeout})"

    def credentials_for(self, domain: str) -> Credentials | None:
        return self._lookup(canonical_domain(domain))

    def _plain_http_ok(self, netloc: str) -> bool:
        return canonical_domain(netloc) in self.insecure or is_loopback(netloc)

    def _scheme(self, domain: str) -> str:
        return "http" if self._plain_http_ok(domain) else "https"

    def _request(
        self, method: str, url: str, headers: Mapping[str, str], *, read_limit: int = 0
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on its own connection: (status, lower-cased headers, body).

        The body is read only when `read_limit` is set (up to that many bytes); otherwise the
        connection is closed once the answer's head is in. HTTP is read with h11 (the control
        API's parser too) rather than http.client, which with the email package it loads is
        ~1.5 MiB of the agent's memory.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise RegistryError(f"unsupported URL scheme {parts.scheme!r}")
        authority = parts.netloc.rpartition("@")[2]
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as err:
            raise RegistryError(f"{authority}: {err}") from None
        host = parts.hostname or ""
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fields = [("Host", authority), *headers.items(), ("Connection", "close")]
        try:
            with socket.create_connection((host, port), timeout=self.timeout) as raw:
                sock = raw
                if parts.scheme == "https":
                    sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                with sock:
                    return self._exchange(sock, method, target, fields, authority, read_limit)
        except (OSError, h11.ProtocolError) as err:
            raise RegistryUnreachable(
                f"the registry {authority} could not be reached: {err}"
            ) from err

    def _exchange(
        self,
        sock: socket.socket,
        method: str,
        target: str,
        fields: list[tuple[str, str]],
        authority: str,
        read_limit: int,
    ) -> tuple[int, dict[str, str], bytes]:
        # `timeout` bounds each read; the whole answer must come within READ_DEADLINE reads'
        # worth too, so a registry that sends a byte now and then cannot hold a lookup forever.
        deadline = time.monotonic() + self.timeout * READ_DEADLINE
        conn = h11.Connection(h11.CLIENT)
        sock.sendall(
            conn.send(h11.Request(method=method, target=target, headers=fields))
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        status = 0
        answer: dict[str, str] = {}
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(min(left, self.timeout))
                    data = sock.recv(65536)
                except TimeoutError:
                    raise RegistryUnreachable(
                        f"the registry {authority} did not answer in time (each read may take "
                        f"{self.timeout:g} s, the whole answer {self.timeout * READ_DEADLINE:g} s)"
                    ) from None
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                if method == "HEAD" or not read_limit:
                    return status, answer, b""
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > read_limit:
                    raise RegistryError(f"{authority}: answer larger than {read_limit} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return status, answer, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise RegistryUnreachable(f"the registry {authority} closed the connection")

    # -- tokens ----------------------------------------------------------------------------------

    def _token(self, domain: str, params: dict[str, str], *, fresh: bool) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{domain}: bearer challenge without a realm")
        realm_parts = urllib.parse.urlsplit(realm)
        cred = self.credentials_for(domain)
        if "@" in realm_parts.netloc:
            # `http://127.0.0.1:x@other/` reads as loopback but is sent to `other`.
            raise RegistryAuthError(f"{domain}: token service URL with user information; refused")
        if realm_parts.scheme != "https" and not (
            realm_parts.scheme == "http" and self._plain_http_ok(realm_parts.netloc)
        ):
            raise RegistryAuthError(
                f"{domain}: token service {realm_parts.scheme}://{realm_parts.netloc} is not "
                "HTTPS; refused"
            )
        key = (domain, params.get("service", ""), params.get("scope", ""))
        now = self._clock()
        with self._lock:
            kept = self._tokens.get(key)
            if kept is not None and (fresh or kept.expires_at - TOKEN_EXPIRY_MARGIN <= now):
                del self._tokens[key]
                kept = None
        if kept is not None:
            return kept.value
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        url = realm + ("&" if realm_parts.query else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": cred.basic()} if cred is not None else {}
        status, _, body = self._request("GET", url, headers, read_limit=1024 * 1024)
        if status in (401, 403):
            who = "our credentials" if cred is not None else "an anonymous token request"
            raise RegistryAuthError(f"{domain}: the token service refused {who} ({status})")
        if status != 200:
            raise RegistryError(f"{domain}: the token service answered {status}")
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise RegistryError(f"{domain}: unreadable token response") from err
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{domain}: the token service gave no token")
        with self._lock:
            self._tokens[key] = _Token(token, now + token_lifetime(doc))
        return token

    def _authorize(
        self, domain: str, path: str, challenge: str, tried: dict[str, int]
    ) -> str | None:
        """The Authorization header to retry with, or None when there is nothing left to try."""
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer":
            count = tried.get("bearer", 0)
            if count >= 2:
                return None
            tried["bearer"] = count + 1
            return "Bearer " + self._token(domain, params, fresh=count > 0)
        cred = self.credentials_for(domain)
        if scheme == "basic" and cred is not None and not tried.get("basic"):
            tried["basic"] = 1
            return cred.basic()
        return None

    # -- the question ----------------------------------------------------------------------------

    def manifest_digest(self, domain: str, path: str, reference: str) -> str | None:
        """The digest served for `reference` (tag or digest), or None when there is none."""
        host = registry_host(domain)
        repo = repository_path(domain, path)
        url = f"{self._scheme(domain)}://{host}/v2/{repo}/manifests/{reference}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        tried: dict[str, int] = {}
        method = "HEAD"
        while True:
            limit = MAX_MANIFEST_BYTES if method == "GET" else 0
            status, resp_headers, body = self._request(method, url, headers, read_limit=limit)
            if status == 401:
                auth = self._authorize(
                    domain, repo, resp_headers.get("www-authenticate", ""), tried
                )
                if auth is None:
                    who = "with our credentials" if self.credentials_for(domain) else "anonymously"
                    raise RegistryAuthError(
                        f"the registry {domain} refused to let us read {repo} {who} (401)"
                    )
                headers["Authorization"] = auth
                continue
            if status == 404:
                return None
            if status == 429:
                raise RegistryError(f"the registry {domain} is rate-limiting us (429)")
            if status == 403:
                raise RegistryAuthError(f"the registry {domain} forbids reading {repo} (403)")
            if status != 200:
                raise RegistryError(f"{domain}: {method} {repo}:{reference} answered {status}")
            digest = resp_headers.get("docker-content-digest")
            if digest:
                if not DIGEST.fullmatch(digest):
                    raise RegistryError(
                        f"{domain}: {repo}:{reference} answered with a malformed digest "
                        f"{digest[:80]!r}"
                    )
                return digest
            if method == "HEAD":
                method = "GET"  # no digest header: compute it from the manifest bytes
                continue
            return "sha256:" + hashlib.sha256(body).hexdigest()

    def check_login(self, domain: str) -> None:
        """Raise RegistryAuthError unless the registry accepts the credentials we have for it."""
        host = registry_host(domain)
        url = f"{self._scheme(domain)}://{host}/v2/"
        status, resp_headers, _ = self._request("GET", url, {})
        if status == 200:
            return
        if status != 401:
            raise RegistryError(f"{domain}: GET /v2/ answered {status}")
        scheme, params = parse_challenge(resp_headers.get("www-authenticate", ""))
        cred = self.credentials_for(domain)
        if cred is None:
            raise RegistryAuthError(f"{domain}: no credentials to log in with")
        if scheme == "bearer":
            params.pop("scope", None)
            self._token(domain, params, fresh=True)
            return
        status, _, _ = self._request("GET", url, {"Authorization": cred.basic()})
        if status != 200:
            raise RegistryAuthError(f"{domain}: the registry refused the credentials ({status})")
