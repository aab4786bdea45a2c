"""Where registry credentials come from, in this order (first match wins):

1. systemd credentials (`LoadCredential=`/`LoadCredentialEncrypted=` into
   `$CREDENTIALS_DIRECTORY`), read-only: a credential named `eci-registry.<domain>` (a `:`
   before a port written as `_`) holding `username:password`;
2. the keyring (`eci-agent login`/`logout` write it): service `eci-agent registry <domain>`,
   stored by default in the root-only file backend of `keyring_backend`;
3. an admin-provided docker `config.json` (`--registry-config`): its `auths` entries, base64
   `user:pass`. The file must be owned by root (the agent's user) and not writable by group or
   others. `credsStore`/`credHelpers` are never run: they name programs a user chose, and the
   agent runs as root.

Anonymous access is used for any registry none of them names. Nothing here logs or formats a
password; `Credentials.__repr__` hides it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.registry.client import Credentials, canonical_domain
from agent.registry.root_file import CredentialsFileError

if TYPE_CHECKING:  # the keyring package is loaded only by the commands that write to it
    import keyring.backend


class _Found(Protocol):
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...


class CredentialSource(Protocol):
    """What the agent asks a keyring backend (or the root-only file directly)."""

    def get_credential(self, service: str, username: str | None) -> _Found | None: ...


def _lookup_errors() -> tuple[type[BaseException], ...]:
    """The errors a backend raises for an unusable store (keyring's only once it is loaded)."""
    import sys

    errors: tuple[type[BaseException], ...] = (CredentialsFileError, OSError)
    keyring_errors = sys.modules.get("keyring.errors")
    if keyring_errors is not None:
        errors += (keyring_errors.KeyringError,)
    return errors


log = logging.getLogger("eci_agent.registry")

KEYRING_SERVICE_PREFIX = "eci-agent registry "
SYSTEMD_PREFIX = "eci-registry."


class CredentialsError(Exception):
    """A credentials source the admin named cannot be used (unsafe or unreadable)."""


def keyring_service(domain: str) -> str:
    return KEYRING_SERVICE_PREFIX + canonical_domain(domain)


def auth_key_domain(key: str) -> str:
    """A config.json `auths` key -> the registry domain image references use.

    `https://index.docker.io/v1/` -> `docker.io`; `http://host:5000/v2/` -> `host:5000`.
    """
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    return canonical_domain(text)


def systemd_credential_name(domain: str) -> str:
    return SYSTEMD_PREFIX + canonical_domain(domain).replace(":", "_")


def parse_user_pass(text: str) -> Credentials | None:
    user, sep, password = text.strip("\r\n").partition(":")
    if not sep or not user or not password:
        return None
    return Credentials(user, password)


def parse_docker_config(doc: Any) -> tuple[dict[str, Credentials], list[str]]:
    """The credentials in a docker config.json document, and warnings (never secrets)."""
    warnings: list[str] = []
    if not isinstance(doc, dict):
        raise CredentialsError("not a docker config.json (not a JSON object)")
    if doc.get("credsStore"):
        warnings.append(
            f"credsStore {doc['credsStore']!r} ignored: eci-agent never runs credential helpers"
        )
    if doc.get("credHelpers"):
        warnings.append(
            "credHelpers ignored for "
            + ", ".join(sorted(str(k) for k in doc["credHelpers"]))
            + ": eci-agent never runs credential helpers"
        )
    auths = doc.get("auths") or {}
    if not isinstance(auths, dict):
        raise CredentialsError("`auths` is not an object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        domain = auth_key_domain(str(key))
        if not isinstance(entry, dict):
            warnings.append(f"auths[{key!r}] ignored: not an object")
            continue
        cred: Credentials | None = None
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            try:
                cred = parse_user_pass(base64.b64decode(auth, validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError):
                cred = None
            if cred is None:
                warnings.append(f"auths[{key!r}].auth ignored: not base64 of user:password")
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            if entry["username"] and entry["password"]:
                cred = Credentials(entry["username"], entry["password"])
        elif entry.get("identitytoken"):
            warnings.append(f"auths[{key!r}] ignored: identity tokens are not supported")
        if cred is not None:
            out[domain] = cred
    return out, warnings


def check_admin_file(path: Path, st: os.stat_result) -> None:
    """Refuse a file another user owns or could change (the agent runs as root)."""
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise CredentialsError(
            f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: refused (another user "
            "could put credentials in it)"
        )
    if st.st_mode & 0o022:
        raise CredentialsError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):o}, writable by group or others: refused"
        )


def load_docker_config(path: Path) -> tuple[dict[str, Credentials], list[str]]:
    """Read an admin-provided config.json (see the module doc); raises CredentialsError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise CredentialsError(f"cannot open {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        check_admin_file(path, os.fstat(f.fileno()))
        raw = f.read(4 * 1024 * 1024)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CredentialsError(f"{path} is not JSON: {err.msg} at line {err.lineno}") from None
    except ValueError:
        raise CredentialsError(f"{path} is not UTF-8 JSON") from None
    creds, warnings = parse_docker_config(doc)
    if st_mode_readable_by_others(path):
        warnings.append(f"{path} is readable by group or others; make it 0600")
    return creds, warnings


def st_mode_readable_by_others(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o044)
    except OSError:
        return False


def read_systemd_credential(directory: Path, domain: str) -> Credentials | None:
    """`$CREDENTIALS_DIRECTORY/eci-registry.<domain>` (systemd makes it root-only)."""
    path = directory / systemd_credential_name(domain)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("cannot read systemd credential %s: %s", path.name, err.strerror)
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(64 * 1024)
    try:
        cred = parse_user_pass(raw.decode("utf-8"))
    except UnicodeDecodeError:
        cred = None
    if cred is None:
        log.warning("systemd credential %s is not username:password; ignored", path.name)
    return cred


class CredentialStore:
    """The credential lookup the registry client calls (see the module doc for the order)."""

    def __init__(
        self,
        backend: CredentialSource | None = None,
        *,
        systemd_dir: Path | None = None,
        docker_config: Mapping[str, Credentials] | None = None,
    ) -> None:
        self.backend = backend
        self.systemd_dir = systemd_dir
        self.docker_config = {canonical_domain(k): v for k, v in (docker_config or {}).items()}

    def __repr__(self) -> str:
        return (
            f"CredentialStore(backend={self.backend!r}, systemd_dir={self.systemd_dir!r}, "
            f"docker_config={sorted(self.docker_config)!r})"
        )

    def __call__(self, domain: str) -> Credentials | None:
        return self.get(domain)

    def get(self, domain: str) -> Credentials | None:
        domain = canonical_domain(domain)
        if self.systemd_dir is not None:
            cred = read_systemd_credential(self.systemd_dir, domain)
            if cred is not None:
                return cred
        if self.backend is not None:
            try:
                found = self.backend.get_credential(keyring_service(domain), None)
            except _lookup_errors() as err:
                log.error("keyring: %s", err)
                found = None
            if found is not None and found.username and found.password:
                return Credentials(found.username, found.password)
        return self.docker_config.get(domain)

    def source_of(self, domain: str) -> str | None:
        """Which source would answer for `domain` (for status; never the secret)."""
        domain = canonical_domain(domain)
        if self.systemd_dir is not None and read_systemd_credential(self.systemd_dir, domain):
            return "systemd-credentials"
        if self.backend is not None:
            try:
                if self.backend.get_credential(keyring_service(domain), None) is not None:
                    return "keyring"
            except _lookup_errors():
                pass
        return "docker-config" if domain in self.docker_config else None


def store_credentials(
    backend: keyring.backend.KeyringBackend, domain: str, cred: Credentials
) -> None:
    from keyring.errors import PasswordDeleteError

    service = keyring_service(domain)
    old = backend.get_credential(service, None)
    backend.set_password(service, cred.username, cred.password)
    if old is not None and old.username != cred.username:
        try:
            backend.delete_password(service, old.username)
        except PasswordDeleteError:
            pass


def remove_credentials(backend: keyring.backend.KeyringBackend, domain: str) -> bool:
    """Remove every stored login for `domain`; whether there was one."""
    from keyring.errors import PasswordDeleteError

    service = keyring_service(domain)
    removed = False
    while True:
        found = backend.get_credential(service, None)
        if found is None or not found.username:
            return removed
        try:
            backend.delete_password(service, found.username)
        except PasswordDeleteError:
            return removed
        removed = True


def systemd_credentials_dir() -> Path | None:
    value = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(value) if value else None
