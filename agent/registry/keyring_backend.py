"""A keyring backend for a root service: one 0600 root-owned file in a root-only directory.

Why: the agent runs as root, usually with no desktop session, so no Secret Service (or other
keyring daemon) serves it; keyring would then fail, or with keyrings.alt fall back to a
"plaintext" file that is only base64. This backend is honest about what it is: a JSON file
that only root can read, like `/etc/shadow`, in a directory only root can enter. It refuses to
read or write when the file or its directory could be read or changed by anyone else, or is
owned by another user, or is a symlink; it writes atomically (temp file, fsync, rename).

Use it through the `keyring` API (`keyring.set_keyring(RootFileKeyring(path))`); it is also
registered with keyring's backend discovery, viable only for root on Linux.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.credentials import SimpleCredential
from keyring.errors import KeyringError, PasswordDeleteError

from agent.registry.cache import atomic_write

FILE_NAME = "registry-credentials.json"
DIR_NAME = "credentials"
VERSION = 1


class UnsafeKeyringFile(KeyringError):
    """The credentials file (or its directory) is not root-only; it is not used."""


def default_path() -> Path:
    from agent import paths

    return paths.default_state_dir() / DIR_NAME / FILE_NAME


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeKeyringFile(f"{what} {path} is owned by uid {st.st_uid}, not {euid}; refused")
    if st.st_mode & 0o077:
        raise UnsafeKeyringFile(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):o}; it must be accessible to its "
            "owner only (0600 for the file, 0700 for its directory); refused"
        )


class RootFileKeyring(KeyringBackend):
    """See the module doc. Entries: service -> username -> password."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = Path(path) if path is not None else default_path()

    @properties.classproperty
    def priority(cls) -> float:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            raise RuntimeError("the root file keyring is for root on Linux only")
        return 0.5  # below any real keyring service, above keyring's fail backend

    def __repr__(self) -> str:
        return f"RootFileKeyring({str(self.path)!r})"

    # -- the file --------------------------------------------------------------------------------

    def _check_dir(self, create: bool) -> bool:
        directory = self.path.parent
        if create and not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeKeyringFile(f"{directory} is not a directory; refused")
        _check_private(directory, st, "credentials directory")
        return True

    def _read(self) -> dict[str, dict[str, str]]:
        if not self._check_dir(create=False):
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise UnsafeKeyringFile(f"cannot open {self.path}: {err.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeKeyringFile(f"{self.path} is not a regular file; refused")
            _check_private(self.path, st, "credentials file")
            raw = f.read(1024 * 1024)
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            raise KeyringError(f"{self.path} is not a credentials file this agent wrote") from None
        entries = doc.get("credentials") if isinstance(doc, dict) else None
        if doc.get("version") != VERSION or not isinstance(entries, dict):
            raise KeyringError(f"{self.path} is not a credentials file this agent wrote")
        out: dict[str, dict[str, str]] = {}
        for service, users in entries.items():
            if isinstance(service, str) and isinstance(users, dict):
                out[service] = {
                    u: p for u, p in users.items() if isinstance(u, str) and isinstance(p, str)
                }
        return out

    def _write(self, entries: dict[str, dict[str, str]]) -> None:
        self._check_dir(create=True)
        if self.path.is_symlink():
            raise UnsafeKeyringFile(f"{self.path} is a symlink; refused")
        doc = {"version": VERSION, "credentials": {s: u for s, u in entries.items() if u}}
        atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)

    # -- the keyring API -------------------------------------------------------------------------

    def get_password(self, service: str, username: str) -> str | None:
        return self._read().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._read()
        # One set of credentials per service: a new login replaces the old user's.
        entries[service] = {username: password}
        self._write(entries)

    def delete_password(self, service: str, username: str) -> None:
        entries = self._read()
        users = entries.get(service, {})
        if username not in users:
            raise PasswordDeleteError(f"no password for {username!r} in {service!r}")
        del users[username]
        self._write(entries)

    def get_credential(self, service: str, username: str | None) -> SimpleCredential | None:
        users = self._read().get(service, {})
        if username is not None:
            password = users.get(username)
            return SimpleCredential(username, password) if password is not None else None
        for user, password in sorted(users.items()):
            return SimpleCredential(user, password)
        return None
