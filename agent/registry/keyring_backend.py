"""The root-only credentials file as a `keyring` backend (what `eci-agent login` writes with).

Why: the agent runs as root, usually with no desktop session, so no Secret Service (or other
keyring daemon) serves it; keyring would then fail, or with keyrings.alt fall back to a
"plaintext" file that is only base64. This backend is honest about what it is: a JSON file
that only root can read, like `/etc/shadow`, in a directory only root can enter (the file
rules are in `root_file`). Registered with keyring's backend discovery, viable only for root
on Linux. The running agent reads the same file through `root_file` without keyring.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.credentials import SimpleCredential
from keyring.errors import KeyringError, PasswordDeleteError

from agent.registry.root_file import (
    DIR_NAME,
    FILE_NAME,
    CredentialsFileError,
    RootCredentialsFile,
    UnsafeCredentialsFile,
    default_path,
)

__all__ = ["DIR_NAME", "FILE_NAME", "RootFileKeyring", "UnsafeKeyringFile", "default_path"]


class UnsafeKeyringFile(KeyringError):
    """The credentials file (or its directory) is not root-only; it is not used."""


class RootFileKeyring(KeyringBackend):
    """See the module doc. Entries: service -> username -> password."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.file = RootCredentialsFile(path)
        self.path = self.file.path

    @properties.classproperty
    def priority(cls) -> float:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            raise RuntimeError("the root file keyring is for root on Linux only")
        return 0.5  # below any real keyring service, above keyring's fail backend

    def __repr__(self) -> str:
        return f"RootFileKeyring({str(self.path)!r})"

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            return self.file.read()
        except UnsafeCredentialsFile as err:
            raise UnsafeKeyringFile(str(err)) from None
        except CredentialsFileError as err:
            raise KeyringError(str(err)) from None

    def _write(self, entries: dict[str, dict[str, str]]) -> None:
        try:
            self.file.write(entries)
        except UnsafeCredentialsFile as err:
            raise UnsafeKeyringFile(str(err)) from None

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
