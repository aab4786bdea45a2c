"""What the host's file system says about paths: resolved forms, inodes, the mount table.

The I/O shell the gate asks for host facts (the policy only reads the answers). Everything
here is read afresh for every judgement: the mount table (parsed again only when its text
changed) and the protected sockets' resolution. Neither may be kept on a cheaper sign of "no
change": poll(2) on mountinfo stays silent when a folder holding a mount point is renamed
(the table's text changes all the same), and a stat that finds the same file cannot tell that
a path which was the socket itself became a symlink to a new hard link of it (session 6's
review, `tests/e2e/test_review_session6.py`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from agent.policy.mounts import (
    MountEntry,
    ProtectedSocket,
    ResolvedPath,
    parse_mountinfo,
    socket_aliases,
)

MOUNTINFO = "/proc/self/mountinfo"


def resolve(path: str) -> ResolvedPath:
    """The path resolved (symlinks followed) and stat'ed; `inode` None when it does not exist.
    May block (a client's path can be on a network or FUSE file system)."""
    return resolve_counting_links(path)[0]


def resolve_all(paths: Iterable[str]) -> dict[str, ResolvedPath]:
    return {p: resolve(p) for p in paths}


def resolve_counting_links(path: str) -> tuple[ResolvedPath, int]:
    """`resolve(path)` and the file's number of hard links (1 when it does not exist)."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError:
        return ResolvedPath(path, resolved), 1
    return described(path, resolved, st), st.st_nlink


def described(source: str, resolved: str, st: os.stat_result) -> ResolvedPath:
    """`source`, found to be the file `st` describes, at `resolved`."""
    return ResolvedPath(
        source,
        resolved,
        (st.st_dev, st.st_ino),
        stat.S_ISSOCK(st.st_mode),
        stat.S_ISDIR(st.st_mode),
    )


class MountTable:
    """This process's mount table (the engine's too, when both run in the host namespace).

    Read afresh at every `current()`; parsed again only when its text changed."""

    def __init__(self, path: str = MOUNTINFO) -> None:
        self.path = path
        self._raw = b""
        self._table: tuple[MountEntry, ...] = ()

    def current(self) -> tuple[MountEntry, ...]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = _read_all(fd)
            finally:
                os.close(fd)
        except OSError:
            self._raw, self._table = b"", ()
            return ()
        if raw and raw == self._raw:
            return self._table
        self._raw, self._table = raw, parse_mountinfo(raw.decode("utf-8", "surrogateescape"))
        return self._table


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def only_root_can_change(path: str) -> bool:
    """Whether no one but root can change where `path` leads, so that resolving it cannot be
    made to block (a FUSE or network mount slipped in) by anyone else, nor lead elsewhere
    later: every folder and link on the way, as written and as resolved, is owned by root, no
    folder is writable by others unless it is sticky (others then cannot move or replace
    root's entries in it), and the last name, in a folder others may write to, is root's too
    (in a sticky folder its owner may replace it). The file itself, or the folders from some
    point on, may be missing. Blocks like any path walk: ask it off the loop."""
    return all(_root_held(chain) for chain in (path, os.path.realpath(path)))


def _root_held(path: str) -> bool:
    names = [p for p in os.path.normpath(path).split("/") if p]
    current = "/"
    shared = False  # whether the folder `current` is in may be written to by others
    for i, part in enumerate(["", *names]):
        current = os.path.join(current, part) if part else current
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return True  # made later, if at all, in a folder only root can write to
        except OSError:
            return False
        if i == len(names):  # the last name: only who may replace it matters
            return st.st_uid == 0 or not shared
        if st.st_uid != 0:
            return False
        if stat.S_ISLNK(st.st_mode):
            shared = False  # the resolved chain checks where it leads
            continue
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return False
        shared = bool(st.st_mode & 0o022)
    return True


#: (path, label): a protected socket as configured.
Protected = tuple[tuple[str, str], ...]


def protected_sockets(
    paths: Protected, table: tuple[MountEntry, ...]
) -> tuple[tuple[ProtectedSocket, ...], dict[str, ResolvedPath]]:
    """The protected sockets resolved now, and each configured path's resolution (a mount
    naming the same path is judged on that very answer)."""
    sockets: list[ProtectedSocket] = []
    resolved_paths: dict[str, ResolvedPath] = {}
    for path, label in paths:
        if path in resolved_paths:
            continue
        resolved, links = resolve_counting_links(path)
        resolved_paths[path] = resolved
        aliases: tuple[str, ...] = ()
        if resolved.inode is not None:
            dev = resolved.inode[0]
            aliases = socket_aliases(resolved.resolved, (os.major(dev), os.minor(dev)), table)
        sockets.append(
            ProtectedSocket(
                path, resolved.resolved, resolved.inode, label, links=links, aliases=aliases
            )
        )
    return tuple(sockets), resolved_paths
