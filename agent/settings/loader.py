"""Reading the settings file: which file, whether to trust it, and what it says.

A root service must not take its policy from a file an ordinary user can change. Like sshd's
StrictModes, a file is refused when any name the kernel passes through to reach it (each
folder, each symlink, and the folders of every link's target, however deep the chain) is not
owned by root, or is writable by group or others; it is judged before it is opened, and the
file opened must be the one judged. The agent then keeps the last good policy. A missing file
means the built-in default policy, said so plainly.
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


#: As the kernel's own limit on the symlinks one path may pass through.
MAX_LINKS = 40


class _Unwalkable(Exception):
    pass


def walk_path(
    path: Path,
    *,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> list[tuple[str, os.stat_result | None]]:
    """Every name the kernel passes through to reach `path`, as it would: `/`, each folder,
    each symlink met (inside a link's target too) and the file, with what `lstat` says of it
    (None: it does not exist, and the walk ends there). Raises `_Unwalkable` on a loop."""
    nodes: list[tuple[str, os.stat_result | None]] = [("/", lstat("/"))]
    # Not os.path.abspath: it drops `link/..` by spelling, where the kernel follows the link
    # first and then goes to the parent of its target.
    todo = list(reversed(os.path.join(os.getcwd(), os.fspath(path)).split("/")))
    current = "/"
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current) or "/"
            continue
        node = os.path.join(current, name)
        try:
            st = lstat(node)
        except FileNotFoundError:
            nodes.append((node, None))
            return nodes
        nodes.append((node, st))
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise _Unwalkable(f"{path} passes through more than {MAX_LINKS} symlinks")
            target = readlink(node)
            if target.startswith("/"):
                current = "/"
            todo.extend(reversed(target.split("/")))
            continue
        current = node
    return nodes


def untrusted_reasons(
    path: Path,
    *,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
    trusted_uid: int = 0,
) -> list[str]:
    """Why `path` could be changed by someone other than `trusted_uid`; empty when it cannot.

    Checks every name the kernel passes through to reach the file (`walk_path`): the folders
    of the path as given, each symlink and the folders of its target, however deep the chain;
    the file last of all. Reasons are listed from the file up.
    """
    try:
        nodes = walk_path(path, lstat=lstat, readlink=readlink)
    except _Unwalkable as err:
        return [str(err)]
    return _reasons(nodes, trusted_uid)


def _reasons(nodes: list[tuple[str, os.stat_result | None]], trusted_uid: int) -> list[str]:
    final = nodes[-1][0]
    reasons: list[str] = []
    seen: set[str] = set()
    owner = "root" if trusted_uid == 0 else f"uid {trusted_uid}"
    for node, st in reversed(nodes):
        if st is None or node in seen:
            continue
        seen.add(node)
        kind = "file" if node == final else "folder"
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != trusted_uid:
                reasons.append(f"symlink {node} is owned by uid {st.st_uid}, not {owner}")
            continue
        if st.st_uid != trusted_uid:
            reasons.append(f"{kind} {node} is owned by uid {st.st_uid}, not {owner}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
            if sticky and node != final and st.st_uid == trusted_uid:
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
    expected: os.stat_result | None = None
    if strict_modes:
        # Judged before it is opened, and the file opened must be the file judged: a link
        # repointed between the two is caught by the inode (sshd's StrictModes, race-free).
        try:
            nodes = walk_path(path)
            reasons = _reasons(nodes, 0)
        except (_Unwalkable, OSError) as err:
            reasons = [str(err)]
            nodes = []
        if reasons:
            return _untrusted(path, reasons)
        expected = nodes[-1][1]
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
        opened = (st.st_dev, st.st_ino)
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
    if strict_modes and (expected is None or (expected.st_dev, expected.st_ino) != opened):
        return Refused(
            str(path),
            f"{path} changed while it was being read (the file opened is not the one whose "
            "path was checked); it is read again at its next change",
        )
    if len(data) > MAX_SETTINGS_BYTES:
        return Refused(str(path), f"{path} is larger than {MAX_SETTINGS_BYTES} bytes")
    try:
        return Loaded(parse_settings(data, str(path)))
    except SettingsInvalid as err:
        return Refused(str(path), str(err), err.problems)


def _untrusted(path: Path, reasons: list[str]) -> Refused:
    return Refused(
        str(path),
        f"refusing {path}: a non-root user could change it ("
        + "; ".join(reasons)
        + "). Make it owned by root and writable only by root "
        "(chown root:root, chmod 644 the file and chmod go-w its folders).",
    )
