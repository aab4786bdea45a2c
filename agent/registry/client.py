"""The registry HTTP API v2, just enough to learn which digest a tag points to.

`manifest_digest` sends `HEAD /v2/<name>/manifests/<reference>` accepting manifest lists, OCI
indexes and image manifests, so a multi-arch tag answers with its index digest, which is what
`docker pull` records in RepoDigests. A 401 with a Bearer challenge is answered with a token
from the challenge's realm (anonymous unless credentials are given); Basic challenges use the
credentials. Docker Hub is reached at its registry host with official images under `library/`.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
TIMEOUT = 10.0


class RegistryError(Exception):
    """The registry could not answer (unreachable, refused our credentials, or spoke nonsense)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def registry_host(domain: str) -> str:
    return DOCKER_HUB_REGISTRY if domain == DOCKER_HUB else domain


def is_loopback(domain: str) -> bool:
    host = domain.rsplit(":", 1)[0] if not domain.startswith("[") else domain[1:].split("]")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """A small blocking client; call it from a worker thread."""

    def __init__(
        self,
        credentials: dict[str, Credentials] | None = None,
        insecure: frozenset[str] = frozenset(),
        timeout: float = TIMEOUT,
    ) -> None:
        self.credentials = credentials or {}
        self.insecure = insecure
        self.timeout = timeout
        self._tokens: dict[tuple[str, str], str] = {}

    def _scheme(self, domain: str) -> str:
        return "http" if domain in self.insecure or is_loopback(domain) else "https"

    def _request(
        self, method: str, url: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read() if method != "HEAD" else b""
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except (OSError, http.client.HTTPException) as err:
            raise RegistryError(f"cannot reach {parts.netloc}: {err}") from err
        finally:
            conn.close()

    def _token(self, domain: str, challenge: str) -> str:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise RegistryError(f"{domain}: bearer challenge without a realm")
        key = (domain, params.get("scope", ""))
        if key in self._tokens:
            return self._tokens[key]
        url = realm + "?" + urllib.parse.urlencode(params)
        headers = {}
        cred = self.credentials.get(domain)
        if cred is not None:
            raw = f"{cred.username}:{cred.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        status, _, body = self._request("GET", url, headers)
        if status != 200:
            raise RegistryError(f"{domain}: the token service answered {status}")
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise RegistryError(f"{domain}: unreadable token response") from err
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(f"{domain}: the token service gave no token")
        self._tokens[key] = token
        return token

    def manifest_digest(self, domain: str, path: str, reference: str) -> str | None:
        """The digest served for `reference` (tag or digest), or None when there is none."""
        host = registry_host(domain)
        url = f"{self._scheme(domain)}://{host}/v2/{path}/manifests/{reference}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        for _attempt in range(2):
            status, resp_headers, _ = self._request("HEAD", url, headers)
            if status == 401:
                challenge = resp_headers.get("www-authenticate", "")
                scheme = challenge.split(" ", 1)[0].lower()
                if scheme == "bearer" and "Authorization" not in headers:
                    headers["Authorization"] = "Bearer " + self._token(domain, challenge)
                    continue
                cred = self.credentials.get(domain)
                if scheme == "basic" and cred is not None and "Authorization" not in headers:
                    raw = f"{cred.username}:{cred.password}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                    continue
                raise RegistryError(f"{domain}: not authorized to read {path}")
            if status == 404:
                return None
            if status != 200:
                raise RegistryError(f"{domain}: HEAD {path}:{reference} answered {status}")
            digest = resp_headers.get("docker-content-digest")
            if not digest:
                raise RegistryError(f"{domain}: no Docker-Content-Digest for {path}:{reference}")
            return digest
        raise RegistryError(f"{domain}: not authorized to read {path}")
