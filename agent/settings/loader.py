"""Reading the settings file: which file, whether to trust it, and what it says.

A root service must not take its policy from a file an ordinary user can change. Like sshd's
StrictModes, a file (or any folder above it, along the path as given and along the resolved
path) that is not owned by root, or is writable by group or others, is refused; the agent then
keeps the last good policy. A missing file means the built-in default policy, said so plainly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.settings.model import BUILTIN_DEFAULT, AdminSettings
from agent.settings.parse import SettingsInvalid, SettingsProblem, parse_settings

#: Upper bound on the size of a settings file we read (a real one is a few KiB).
MAX_SETTINGS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: AdminSettings


@dataclass(frozen=True, slots=True)
class Missing:
    """No file: the built-in default policy applies."""

    path: str

    @property
    def settings(self) -> AdminSettings:
        return BUILTIN_DEFAULT

    def __str__(self) -> str:
        return (
            f"no settings file at {self.path}: the built-in default policy applies (ECI on, "
            "no image may mount the engine socket, not locked)"
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """The file exists but cannot be used; `reason` says why and how to fix it."""

    path: str
    reason: str
    problems: tuple[SettingsProblem, ...] = ()

    def __str__(self) -> str:
        return self.reason


LoadResult = Loaded | Missing | Refused


def untrusted_reasons(
    path: Path, *, lstat: Callable[[str], os.stat_result] = os.lstat, trusted_uid: int = 0
) -> list[str]:
    """Why `path` could be changed by someone other than `trusted_uid`; empty when it cannot.

    Checks the file and every folder above it, along the path as given and the resolved one.
    """
    reasons: list[str] = []
    chains = [Path(os.path.abspath(path))]
    resolved = Path(os.path.realpath(path))
    if resolved != chains[0]:
        chains.append(resolved)
    seen: set[Path] = set()
    owner = "root" if trusted_uid == 0 else f"uid {trusted_uid}"
    for chain in chains:
        for node in (chain, *chain.parents):
            if node in seen:
                continue
            seen.add(node)
            try:
                st = lstat(str(node))
            except FileNotFoundError:
                continue
            kind = "file" if node == chain else "folder"
            if stat.S_ISLNK(st.st_mode):
                kind = "symlink"
                if st.st_uid != trusted_uid:
                    reasons.append(f"{kind} {node} is owned by uid {st.st_uid}, not {owner}")
                continue
            if st.st_uid != trusted_uid:
                reasons.append(f"{kind} {node} is owned by uid {st.st_uid}, not {owner}")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
                if sticky and node != chain and st.st_uid == trusted_uid:
                    # /tmp-like: others cannot replace what root owns inside it.
                    continue
                who = "group and others" if st.st_mode & stat.S_IWOTH else "its group"
                reasons.append(
                    f"{kind} {node} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
                )
    return reasons


def load_settings(path: Path, *, strict_modes: bool | None = None) -> LoadResult:
    """Read and validate the settings file at `path`.

    `strict_modes` defaults to "running as root": the ownership/mode checks only make sense
    for a service whose users are not the file's owner.
    """
    if strict_modes is None:
        strict_modes = hasattr(os, "geteuid") and os.geteuid() == 0
    try:
        # O_NONBLOCK: opening a FIFO planted at `path` must not hang the reader; it is then
        # refused below as "not a regular file" (the flag does nothing for regular files).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return Missing(str(path))
    except IsADirectoryError:
        return Refused(str(path), f"{path} is a folder, not a settings file")
    except OSError as err:
        return Refused(str(path), f"cannot read {path}: {err.strerror or err}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return Refused(str(path), f"{path} is a folder, not a settings file")
        if not stat.S_ISREG(st.st_mode):
            return Refused(str(path), f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SETTINGS_BYTES:
            chunk = os.read(fd, MAX_SETTINGS_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        return Refused(str(path), f"cannot read {path}: {err.strerror or err}")
    finally:
        os.close(fd)
    if strict_modes:
        reasons = untrusted_reasons(path)
        if reasons:
            return Refused(
                str(path),
                f"refusing {path}: a non-root user could change it ("
                + "; ".join(reasons)
                + "). Make it owned by root and writable only by root "
                "(chown root:root, chmod 644 the file and chmod go-w its folders).",
            )
    if len(data) > MAX_SETTINGS_BYTES:
        return Refused(str(path), f"{path} is larger than {MAX_SETTINGS_BYTES} bytes")
    try:
        return Loaded(parse_settings(data, str(path)))
    except SettingsInvalid as err:
        return Refused(str(path), str(err), err.problems)
