"""The registry client against a small fake registry (loopback HTTP, in a thread)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.registry.client import (
    MANIFEST_TYPES,
    Credentials,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryUnreachable,
    parse_challenge,
    token_lifetime,
)

DIGEST = "sha256:" + "a" * 64
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}'
SECRET = "pa55-" + "x" * 12


@dataclass
class Fake:
    mode: str = "open"  # open | bearer | basic
    users: dict[str, str] = field(default_factory=lambda: {"u": SECRET})
    tokens: set[str] = field(default_factory=set)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    send_digest: bool = True
    expires_in: int = 300
    reject_next_token: bool = False
    port: int = 0


def _serve(fake: Fake) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _basic_user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Basic "):
                return None
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return user if fake.users.get(user) == pw else None

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/token"):
                user = self._basic_user()
                if self.headers.get("Authorization") and user is None:
                    self._reply(401, {})
                    return
                token = f"tok{len(fake.token_requests)}"
                fake.token_requests.append({"path": self.path, "user": user})
                fake.tokens.add(token)
                body = {"token": token, "expires_in": fake.expires_in}
                self._reply(200, {"Content-Type": "application/json"}, json.dumps(body).encode())
                return
            self._manifest()

        def do_HEAD(self) -> None:  # noqa: N802
            self._manifest()

        def _manifest(self) -> None:
            fake.seen.append((self.command, self.path, dict(self.headers)))
            auth = self.headers.get("Authorization", "")
            if fake.mode == "bearer":
                token = auth[7:] if auth.startswith("Bearer ") else None
                if fake.reject_next_token and token:
                    fake.reject_next_token = False
                    fake.tokens.discard(token)
                if token not in fake.tokens:
                    realm = f"http://127.0.0.1:{fake.port}/token"
                    scope = "repository:" + self.path.split("/manifests/")[0][4:] + ":pull"
                    challenge = f'Bearer realm="{realm}",service="fake",scope="{scope}"'
                    self._reply(401, {"WWW-Authenticate": challenge})
                    return
            elif fake.mode == "basic" and self._basic_user() is None:
                self._reply(401, {"WWW-Authenticate": 'Basic realm="fake"'})
                return
            if "/manifests/missing" in self.path:
                self._reply(404, {})
                return
            headers = {"Content-Type": MANIFEST_TYPES[0]}
            if fake.send_digest:
                headers["Docker-Content-Digest"] = DIGEST
            self._reply(200, headers, MANIFEST)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    server = _serve(f)
    yield f
    server.shutdown()
    server.server_close()


def domain(fake: Fake) -> str:
    return f"127.0.0.1:{fake.port}"


def test_head_accepts_indexes_lists_and_manifests(fake: Fake) -> None:
    assert RegistryClient().manifest_digest(domain(fake), "a/b", "1") == DIGEST
    method, path, headers = fake.seen[-1]
    assert (method, path) == ("HEAD", "/v2/a/b/manifests/1")
    assert [t.strip() for t in headers["Accept"].split(",")] == list(MANIFEST_TYPES)


def test_missing_tag_is_none(fake: Fake) -> None:
    assert RegistryClient().manifest_digest(domain(fake), "a/b", "missing") is None


def test_no_digest_header_falls_back_to_hashing_the_manifest(fake: Fake) -> None:
    fake.send_digest = False
    got = RegistryClient().manifest_digest(domain(fake), "a/b", "1")
    assert got == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert [m for m, _, _ in fake.seen] == ["HEAD", "GET"]


def test_anonymous_bearer_token_is_kept_until_it_expires(fake: Fake) -> None:
    fake.mode = "bearer"
    now = [1000.0]
    client = RegistryClient(clock=lambda: now[0])
    assert client.manifest_digest(domain(fake), "a/b", "1") == DIGEST
    assert client.manifest_digest(domain(fake), "a/b", "1") == DIGEST
    assert len(fake.token_requests) == 1 and fake.token_requests[0]["user"] is None
    assert "scope=repository%3Aa%2Fb%3Apull" in fake.token_requests[0]["path"]
    # another repository is another scope: another token
    client.manifest_digest(domain(fake), "c/d", "1")
    assert len(fake.token_requests) == 2
    now[0] += 300  # expired (with the safety margin): a new one
    client.manifest_digest(domain(fake), "a/b", "1")
    assert len(fake.token_requests) == 3


def test_a_401_with_a_kept_token_fetches_a_new_one_once(fake: Fake) -> None:
    fake.mode = "bearer"
    client = RegistryClient()
    client.manifest_digest(domain(fake), "a/b", "1")
    fake.reject_next_token = True
    assert client.manifest_digest(domain(fake), "a/b", "1") == DIGEST
    assert len(fake.token_requests) == 2


def test_bearer_token_with_credentials(fake: Fake) -> None:
    fake.mode = "bearer"
    client = RegistryClient({domain(fake): Credentials("u", SECRET)})
    assert client.manifest_digest(domain(fake), "a/b", "1") == DIGEST
    assert fake.token_requests[0]["user"] == "u"


def test_token_service_refusing_credentials(fake: Fake) -> None:
    fake.mode = "bearer"
    client = RegistryClient({domain(fake): Credentials("u", "wrong")})
    with pytest.raises(RegistryAuthError, match="refused our credentials"):
        client.manifest_digest(domain(fake), "a/b", "1")


def test_basic_auth(fake: Fake) -> None:
    fake.mode = "basic"
    with pytest.raises(RegistryAuthError, match="anonymously"):
        RegistryClient().manifest_digest(domain(fake), "a/b", "1")
    client = RegistryClient(lambda d: Credentials("u", SECRET) if d == domain(fake) else None)
    assert client.manifest_digest(domain(fake), "a/b", "1") == DIGEST
    with pytest.raises(RegistryAuthError, match="with our credentials"):
        RegistryClient({domain(fake): Credentials("u", "nope")}).manifest_digest(
            domain(fake), "a/b", "1"
        )


def test_check_login(fake: Fake) -> None:
    fake.mode = "basic"
    RegistryClient({domain(fake): Credentials("u", SECRET)}).check_login(domain(fake))
    with pytest.raises(RegistryAuthError):
        RegistryClient({domain(fake): Credentials("u", "bad")}).check_login(domain(fake))


def test_unreachable_registry() -> None:
    with pytest.raises(RegistryUnreachable, match="could not be reached"):
        RegistryClient(timeout=2).manifest_digest("127.0.0.1:9", "a/b", "1")


def test_https_except_loopback_and_listed_insecure_hosts() -> None:
    client = RegistryClient(insecure=frozenset({"Registry.Lan:5000"}))
    assert client._scheme("127.0.0.1:5000") == "http"
    assert client._scheme("localhost:5000") == "http"
    assert client._scheme("[::1]:5000") == "http"
    assert client._scheme("registry.lan:5000") == "http"
    assert client._scheme("registry.lan") == "https"
    assert client._scheme("docker.io") == "https"
    assert client._scheme("10.0.0.1:5000") == "https"


def test_credentials_never_go_to_a_cleartext_token_realm() -> None:
    client = RegistryClient({"registry.example": Credentials("u", SECRET)})
    params = {"realm": "http://auth.example/token", "service": "x"}
    with pytest.raises(RegistryAuthError, match="not HTTPS"):
        client._token("registry.example", params, fresh=False)


def test_challenges_and_lifetimes() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/docker:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:library/docker:pull",
    }
    assert token_lifetime({}) == 60.0
    assert token_lifetime({"expires_in": 10}) == 60.0
    assert token_lifetime({"expires_in": 3600}) == 3600.0
    assert token_lifetime({"expires_in": True}) == 60.0


def test_secrets_stay_out_of_reprs_errors_and_logs(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cred = Credentials("u", "wrong-" + SECRET)
    assert SECRET not in repr(cred) and SECRET not in str(cred)
    fake.mode = "basic"
    client = RegistryClient({domain(fake): cred})
    assert SECRET not in repr(client)
    with pytest.raises(RegistryError) as info:
        client.manifest_digest(domain(fake), "a/b", "1")
    logging.getLogger("eci_agent.registry").warning("lookup failed: %s (%r)", info.value, cred)
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


# -- the transport (h11 over a socket, TLS with certificate checks) ---------------------------


def _tls_server(tmp_path: Any, fake: Fake) -> tuple[ThreadingHTTPServer, str]:
    """The fake registry behind TLS, with a self-signed certificate for 127.0.0.1."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = _serve(fake)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, str(cert)


def test_https_checks_the_registry_certificate(tmp_path: Any, monkeypatch: Any) -> None:
    f = Fake()
    server, cert = _tls_server(tmp_path, f)
    url = f"https://127.0.0.1:{f.port}/v2/a/b/manifests/1"
    try:
        client = RegistryClient(timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
        with pytest.raises(RegistryUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            client._request("HEAD", url, {})
        assert f.seen == []  # nothing was sent before the certificate was checked
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        status, headers, body = client._request("GET", url, {}, read_limit=1024)
    finally:
        server.shutdown()
        server.server_close()
    assert (status, headers["docker-content-digest"], body) == (200, DIGEST, MANIFEST)
    assert f.seen[0][2]["Host"] == f"127.0.0.1:{f.port}"


def test_an_answer_over_the_read_limit_is_refused(fake: Fake) -> None:
    url = f"http://{domain(fake)}/v2/a/b/manifests/1"
    client = RegistryClient()
    assert client._request("GET", url, {}, read_limit=len(MANIFEST))[2] == MANIFEST
    with pytest.raises(RegistryError, match=f"larger than {len(MANIFEST) - 1} bytes"):
        client._request("GET", url, {}, read_limit=len(MANIFEST) - 1)


@pytest.mark.parametrize(
    "answer",
    [b"", b"HTTP/1.1 200 OK\r\nDocker-Content", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
     b"SSH-2.0-OpenSSH\r\n\r\n"],
    ids=["nothing", "half-a-head", "short-body", "not-http"],
)  # fmt: skip
def test_a_registry_that_hangs_up_or_speaks_no_http_is_unreachable(answer: bytes) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(answer)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(RegistryUnreachable, match=f"127.0.0.1:{port}"):
            RegistryClient(timeout=5)._request(
                "GET", f"http://127.0.0.1:{port}/v2/", {}, read_limit=100
            )
    finally:
        thread.join(5)
        listener.close()


def test_a_registry_that_dribbles_its_answer_is_given_up_on() -> None:
    """Each read gets the timeout; the whole answer gets three times it, so a byte every
    now and then cannot hold a lookup (and the create waiting on it) for ever."""
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(
            RegistryUnreachable, match=r"did not answer in time .*the whole answer 1.5 s"
        ):
            RegistryClient(timeout=0.5)._request("HEAD", f"http://127.0.0.1:{port}/v2/", {})
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(5)
        listener.close()
