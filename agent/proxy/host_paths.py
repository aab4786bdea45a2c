"""What the host's file system says about paths: resolved forms, inodes, the mount table.

The I/O shell the gate asks for host facts (the policy only reads the answers). Two readers
here are asked on every create that mounts something, so they avoid work that gives the same
answer again, but never at the price of a stale one:

- `MountTable` reads `/proc/self/mountinfo` again only after the kernel said it changed: an open
  mountinfo file reports each mount or unmount in this mount namespace as an exceptional
  condition to poll(2) (proc(5)), so an unchanged table costs one poll, not a read and parse.
- `ProtectedPaths` keeps the resolution of the sockets no container may reach (paths the
  admin and the agent chose, in root-owned folders) while the mount table is unchanged and a
  stat of each path, and of its resolved form, still finds the same file with the same number
  of hard links; and never longer than `PROTECTED_TTL`.
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Callable, Iterable

from agent.policy.mounts import (
    MountEntry,
    ProtectedSocket,
    ResolvedPath,
    parse_mountinfo,
    socket_aliases,
)

MOUNTINFO = "/proc/self/mountinfo"
#: How long a protected socket's resolution is kept at most, even when nothing seems changed.
PROTECTED_TTL = 10.0


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
    found = ResolvedPath(
        path,
        resolved,
        (st.st_dev, st.st_ino),
        stat.S_ISSOCK(st.st_mode),
        stat.S_ISDIR(st.st_mode),
    )
    return found, st.st_nlink


class MountTable:
    """This process's mount table (the engine's too, when both run in the host namespace).

    On procfs the file stays open and is read again only when poll(2) reports a change; a
    path elsewhere (tests) is read every time. Either way it is parsed again only when its
    text changed, and `generation` counts those changes. Not thread-safe: one event loop."""

    def __init__(self, path: str = MOUNTINFO) -> None:
        self.path = path
        self.generation = 0
        self._raw = b""
        self._table: tuple[MountEntry, ...] = ()
        self._fd: int | None = None
        self._poll: select.poll | None = None
        self._watch = path.startswith("/proc/")

    def current(self) -> tuple[MountEntry, ...]:
        if self._poll is not None and not self._poll.poll(0):
            return self._table  # the kernel reports no change since the last read
        raw = self._read()
        if raw is None:
            self._keep(b"", ())
            return ()
        if raw and raw == self._raw:
            return self._table
        self._keep(raw, parse_mountinfo(raw.decode("utf-8", "surrogateescape")))
        return self._table

    def close(self) -> None:
        self._poll = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _keep(self, raw: bytes, table: tuple[MountEntry, ...]) -> None:
        if raw != self._raw or table != self._table:
            self.generation += 1
        self._raw, self._table = raw, table

    def _read(self) -> bytes | None:
        """The file's text from its start (None: it cannot be read). The change event is
        consumed by the poll before the read, so a change during the read is seen next time."""
        try:
            if self._fd is None:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                if not self._watch:
                    try:
                        return _read_all(fd)
                    finally:
                        os.close(fd)
                self._fd = fd
                poller = select.poll()
                poller.register(fd, select.POLLPRI | select.POLLERR)
                self._poll = poller
            os.lseek(self._fd, 0, os.SEEK_SET)
            return _read_all(self._fd)
        except OSError:
            self.close()
            return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


#: (path, label): a protected socket as configured.
Protected = tuple[tuple[str, str], ...]


class ProtectedPaths:
    """The protected sockets, resolved: kept while provably the same (see the module doc).

    `current(table, generation)` gives the sockets and, for each configured path, the
    resolution it was judged on (a mount naming the same path is judged on that answer)."""

    def __init__(self, paths: Protected, clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = paths
        self.clock = clock
        self._kept: _Kept | None = None

    def current(
        self, table: tuple[MountEntry, ...], generation: int
    ) -> tuple[tuple[ProtectedSocket, ...], dict[str, ResolvedPath]]:
        kept = self._kept
        now = self.clock()
        if (
            kept is not None
            and kept.generation == generation
            and now - kept.since < PROTECTED_TTL
            and all(_unchanged(r, links) for r, links in kept.checks)
        ):
            return kept.sockets, dict(kept.resolved)
        sockets, resolved, checks = _resolve_protected(self.paths, table)
        self._kept = _Kept(generation, now, sockets, resolved, checks)
        return sockets, dict(resolved)


class _Kept:
    __slots__ = ("generation", "since", "sockets", "resolved", "checks")

    def __init__(
        self,
        generation: int,
        since: float,
        sockets: tuple[ProtectedSocket, ...],
        resolved: dict[str, ResolvedPath],
        checks: tuple[tuple[ResolvedPath, int], ...],
    ) -> None:
        self.generation = generation
        self.since = since
        self.sockets = sockets
        self.resolved = resolved
        self.checks = checks


def _resolve_protected(
    paths: Protected, table: tuple[MountEntry, ...]
) -> tuple[
    tuple[ProtectedSocket, ...], dict[str, ResolvedPath], tuple[tuple[ResolvedPath, int], ...]
]:
    sockets: list[ProtectedSocket] = []
    resolved_paths: dict[str, ResolvedPath] = {}
    checks: list[tuple[ResolvedPath, int]] = []
    for path, label in paths:
        if path in resolved_paths:
            continue
        resolved, links = resolve_counting_links(path)
        resolved_paths[path] = resolved
        checks.append((resolved, links))
        aliases: tuple[str, ...] = ()
        if resolved.inode is not None:
            dev = resolved.inode[0]
            aliases = socket_aliases(resolved.resolved, (os.major(dev), os.minor(dev)), table)
        sockets.append(
            ProtectedSocket(
                path, resolved.resolved, resolved.inode, label, links=links, aliases=aliases
            )
        )
    return tuple(sockets), resolved_paths, tuple(checks)


def _unchanged(resolved: ResolvedPath, links: int) -> bool:
    """Whether `resolved.source` would resolve the same now: it still finds the same file
    (device, inode, type) with the same hard-link count, and so does its resolved form (a
    folder on the way renamed or replaced would change that); or it still does not exist."""
    try:
        st = os.stat(resolved.source)
    except OSError:
        return resolved.inode is None
    if (
        resolved.inode != (st.st_dev, st.st_ino)
        or st.st_nlink != links
        or stat.S_ISSOCK(st.st_mode) != resolved.is_socket
        or stat.S_ISDIR(st.st_mode) != resolved.is_dir
    ):
        return False
    if resolved.resolved == resolved.source:
        return True
    try:
        there = os.stat(resolved.resolved, follow_symlinks=False)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == resolved.inode
