"""Extra loopback registries for registry-auth tests: a bearer-token registry and its issuer.

`start_token_registry(stack, users)` starts a small token service (Python http.server in a
thread) and a docker-registry configured for token auth, trusting a certificate generated with
the `openssl` CLI in the stack's dir. Anonymous token requests get `pull` only; requests with
a user's Basic credentials get what they ask for (so `docker login` + `docker push` work).
Basic-auth (htpasswd) registries come from `Stack.start_registry(auth_htpasswd=...)`.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.env import _sys

if TYPE_CHECKING:
    from tests.env.stack import Registry, Stack

SERVICE = "eci-test-registry"
ISSUER = "eci-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    user: str | None  # None: anonymous
    scopes: tuple[str, ...]
    granted: tuple[dict[str, Any], ...]


@dataclass
class TokenIssuer:
    """Issues RS256 JWTs that docker-registry's token auth accepts (x5c = our cert)."""

    directory: Path
    users: dict[str, str]
    lifetime: int = 60
    requests: list[TokenRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def cert_path(self) -> Path:
        return self.directory / "token-cert.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "token-key.pem"

    @property
    def realm(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/token"

    def start(self) -> TokenIssuer:
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(self.key_path), "-out", str(self.cert_path),
                "-days", "2", "-subj", "/CN=eci-test-token-issuer",
            ],
            check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != "/token":
                    self.send_error(404)
                    return
                query = urllib.parse.parse_qs(parts.query)
                user = issuer._authenticate(self.headers.get("Authorization"))
                if user is False:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = tuple(query.get("scope", []))
                granted = issuer._grant(user or None, scopes)
                issuer.requests.append(TokenRequest(user or None, scopes, granted))
                token = issuer._jwt(key, x5c, user or "", granted)
                body = json.dumps(
                    {"token": token, "access_token": token, "expires_in": issuer.lifetime}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _authenticate(self, header: str | None) -> str | bool:
        """'' anonymous, the user name, or False for wrong credentials."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        if self.users.get(user) == password:
            return user
        return False

    def _grant(self, user: str | None, scopes: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
        out = []
        for scope in scopes:
            for one in scope.split(" "):
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                wanted = [a for a in actions.split(",") if a]
                allowed = wanted if user else [a for a in wanted if a == "pull"]
                out.append({"type": "repository", "name": name, "actions": allowed})
        return tuple(out)

    def _jwt(self, key: Any, x5c: str, subject: str, access: tuple[dict[str, Any], ...]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": list(access),
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_token_registry(stack: Stack, users: dict[str, str]) -> tuple[Registry, TokenIssuer]:
    """A docker-registry with bearer-token auth plus its issuer (stop both when done)."""
    from tests.env.stack import Registry, StackError, _spawn

    exe = _sys.which("docker-registry")
    if not exe:
        raise StackError("docker-registry not found")
    root = stack.tmpdir / "registries" / f"token-{secrets.token_hex(3)}"
    (root / "storage").mkdir(parents=True)
    issuer = TokenIssuer(root / "issuer", dict(users)).start()
    address = f"127.0.0.1:{_sys.free_tcp_port()}"
    config = {
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": address, "secret": secrets.token_hex(16)},
        "auth": {
            "token": {
                "realm": issuer.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(issuer.cert_path),
            }
        },
    }
    (root / "config.yml").write_text(json.dumps(config, indent=2))
    popen = _spawn(
        [exe, "serve", str(root / "config.yml")],
        root / "registry.log",
        detached=stack.detached,
        env=stack._daemon_env(),
    )
    reg = Registry(address, root, popen.pid, None, popen)
    stack.registries.append(reg)  # stack.stop() stops it too
    deadline = time.monotonic() + 15
    while True:
        if not reg.alive():
            issuer.stop()
            raise StackError("token registry exited:\n" + _sys.log_tail(reg.log))
        try:
            if reg.request("GET", "/v2/", timeout=2.0).status == 401:
                return reg, issuer
        except OSError:
            pass
        if time.monotonic() > deadline:
            issuer.stop()
            raise StackError("token registry not answering:\n" + _sys.log_tail(reg.log))
        time.sleep(0.05)
