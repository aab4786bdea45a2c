"""The root-only credentials file, without the keyring package (the agent's read path).

One 0600 JSON file owned by the agent's user, in a 0700 directory: refused when either could
be read or changed by anyone else, is owned by another user, or is a symlink; written
atomically. `keyring_backend.RootFileKeyring` exposes the same file through the `keyring`
API (what `eci-agent login`/`logout` use); the running agent reads it here directly, so it
does not load the keyring package (about 5 MiB) at all.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.registry.cache import atomic_write

FILE_NAME = "registry-credentials.json"
DIR_NAME = "credentials"
VERSION = 1


class CredentialsFileError(Exception):
    """The file cannot be used; the message says why."""


class UnsafeCredentialsFile(CredentialsFileError):
    """The credentials file (or its directory) is not private to its owner; it is not used."""


@dataclass(frozen=True, slots=True)
class StoredCredential:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"StoredCredential(username={self.username!r}, password=<hidden>)"


def default_path() -> Path:
    from agent import paths

    return paths.default_state_dir() / DIR_NAME / FILE_NAME


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeCredentialsFile(
            f"{what} {path} is owned by uid {st.st_uid}, not {euid}; refused"
        )
    if st.st_mode & 0o077:
        raise UnsafeCredentialsFile(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):o}; it must be accessible to its "
            "owner only (0600 for the file, 0700 for its directory); refused"
        )


class RootCredentialsFile:
    """Entries: service -> username -> password (see the module doc)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def __repr__(self) -> str:
        return f"RootCredentialsFile({str(self.path)!r})"

    def _check_dir(self, create: bool) -> bool:
        directory = self.path.parent
        if create and not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeCredentialsFile(f"{directory} is not a directory; refused")
        _check_private(directory, st, "credentials directory")
        return True

    def read(self) -> dict[str, dict[str, str]]:
        if not self._check_dir(create=False):
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise UnsafeCredentialsFile(f"cannot open {self.path}: {err.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeCredentialsFile(f"{self.path} is not a regular file; refused")
            _check_private(self.path, st, "credentials file")
            raw = f.read(1024 * 1024)
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            raise CredentialsFileError(
                f"{self.path} is not a credentials file this agent wrote"
            ) from None
        entries = doc.get("credentials") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("version") != VERSION
            or not isinstance(entries, dict)
        ):
            raise CredentialsFileError(f"{self.path} is not a credentials file this agent wrote")
        out: dict[str, dict[str, str]] = {}
        for service, users in entries.items():
            if isinstance(service, str) and isinstance(users, dict):
                out[service] = {
                    u: p for u, p in users.items() if isinstance(u, str) and isinstance(p, str)
                }
        return out

    def write(self, entries: dict[str, dict[str, str]]) -> None:
        self._check_dir(create=True)
        if self.path.is_symlink():
            raise UnsafeCredentialsFile(f"{self.path} is a symlink; refused")
        doc = {"version": VERSION, "credentials": {s: u for s, u in entries.items() if u}}
        atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)

    def get_credential(self, service: str, username: str | None) -> StoredCredential | None:
        """The same question keyring backends answer (duck-typed for `CredentialStore`)."""
        users = self.read().get(service, {})
        if username is not None:
            password = users.get(username)
            return StoredCredential(username, password) if password is not None else None
        for user, password in sorted(users.items()):
            return StoredCredential(user, password)
        return None
