"""agent.proxy.host_paths: the mount table read only after the kernel reports a change, and the
protected sockets' resolution kept only while every cheap check says it would come out the same.

Each "kept" test also counts the resolutions, so a reader that resolves every time (safe but
slow) fails here as surely as one that keeps a stale answer (fast but unsafe)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.proxy.host_paths as host_paths
from agent.proxy.host_paths import PROTECTED_TTL, MountTable, ProtectedPaths

LINE = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"


# -- MountTable --------------------------------------------------------------------------------


def test_a_plain_file_is_read_every_time_and_parsed_when_it_changed(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(LINE)
    table = MountTable(str(info))
    first = table.current()
    assert [e.mount_point for e in first] == ["/mnt2"]
    generation = table.generation
    assert table.current() is first  # same text: the same parse
    assert table.generation == generation
    info.write_text(LINE + LINE.replace("/mnt2", "/a\rb"))
    second = table.current()
    assert [e.mount_point for e in second] == ["/mnt2", "/a\rb"]
    assert table.generation == generation + 1
    os.unlink(info)
    assert table.current() == ()
    assert table.generation == generation + 2


NAMESPACE_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, tempfile
    from agent.proxy.host_paths import MountTable

    reads = 0
    table = MountTable()
    real_read = table._read
    def counting():
        global reads
        reads += 1
        return real_read()
    table._read = counting

    def points():
        return {e.mount_point for e in table.current()}

    where = tempfile.mkdtemp()
    before = points()
    assert where not in before
    generation, first = table.generation, reads
    for _ in range(5):
        assert points() == before
    assert reads == first, f"read again with no change: {reads - first} times"
    assert table.generation == generation
    subprocess.run(["mount", "-t", "tmpfs", "eci-test", where], check=True)
    assert where in points(), "a new mount was not seen"
    assert table.generation == generation + 1
    subprocess.run(["umount", where], check=True)
    assert where not in points(), "an unmount was not seen"
    assert table.generation == generation + 2
    os.rmdir(where)
    print("ok")
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
def test_procfs_is_read_again_exactly_when_the_kernel_reports_a_mount_change() -> None:
    # In a private mount namespace of its own, so the test's mounts touch nothing else.
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", NAMESPACE_SCRIPT],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- ProtectedPaths ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = tmp_path / "run"
        self.dir.mkdir()
        self.sock_path = self.dir / "engine.sock"
        self.socks = [self.listen(self.sock_path)]
        self.link = tmp_path / "docker.sock"
        self.link.symlink_to(self.sock_path)
        self.missing = tmp_path / "nothing" / "docker.sock"
        self.clock = Clock()
        self.resolutions = 0
        real = host_paths.resolve_counting_links

        def counting(path: str) -> tuple[host_paths.ResolvedPath, int]:
            self.resolutions += 1
            return real(path)

        monkeypatch.setattr(host_paths, "resolve_counting_links", counting)
        self.paths = ProtectedPaths(
            (
                (str(self.link), "engine socket"),
                (str(self.sock_path), "engine socket"),
                (str(self.missing), "engine socket"),
            ),
            clock=self.clock,
        )
        self.generation = 1

    def listen(self, path: Path) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        return s

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def current(self) -> tuple[tuple[host_paths.ProtectedSocket, ...], int]:
        """The sockets, and how many paths were resolved (again) to give them."""
        before = self.resolutions
        sockets, _ = self.paths.current((), self.generation)
        return sockets, self.resolutions - before

    def inode(self, path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    r = Rig(tmp_path, monkeypatch)
    yield r
    r.close()


def test_unchanged_sockets_are_kept_not_resolved_again(rig: Rig) -> None:
    first, resolved = rig.current()
    assert resolved == 3
    by_path = {s.path: s for s in first}
    assert by_path[str(rig.link)].resolved == str(rig.sock_path)
    assert by_path[str(rig.link)].inode == rig.inode(rig.sock_path)
    assert by_path[str(rig.missing)].inode is None
    again, resolved = rig.current()
    assert again == first and resolved == 0


def test_each_path_is_handed_its_own_resolution(rig: Rig) -> None:
    _, known = rig.paths.current((), rig.generation)
    assert set(known) == {str(rig.link), str(rig.sock_path), str(rig.missing)}
    assert known[str(rig.link)].resolved == str(rig.sock_path)
    known.clear()  # the caller's copy: what is kept is not touched
    _, again = rig.paths.current((), rig.generation)
    assert str(rig.link) in again


def test_a_socket_made_anew_is_resolved_again(rig: Rig) -> None:
    rig.current()
    os.unlink(rig.sock_path)  # the engine restarted: a new socket, a new inode
    rig.socks.append(rig.listen(rig.sock_path))
    sockets, resolved = rig.current()
    assert resolved == 3
    assert {s.inode for s in sockets if s.inode} == {rig.inode(rig.sock_path)}


def test_a_new_hard_link_is_resolved_again(rig: Rig, tmp_path: Path) -> None:
    rig.current()
    os.link(rig.sock_path, tmp_path / "another-name")
    sockets, resolved = rig.current()
    assert resolved == 3
    assert all(s.links == 2 for s in sockets if s.inode)


def test_a_symlink_pointed_elsewhere_is_resolved_again(rig: Rig, tmp_path: Path) -> None:
    rig.current()
    other = tmp_path / "other.sock"
    rig.socks.append(rig.listen(other))
    os.unlink(rig.link)
    rig.link.symlink_to(other)
    sockets, resolved = rig.current()
    assert resolved == 3
    assert {s.path: s.resolved for s in sockets}[str(rig.link)] == str(other)


def test_a_folder_renamed_on_the_way_is_resolved_again(rig: Rig, tmp_path: Path) -> None:
    # The same file under a new name: its resolved path is what a parent-folder bind is
    # compared with, so a stat of the configured path alone (same inode) must not keep the
    # old one. Only the symlink is configured here: nothing else gives the rename away.
    only_link = ProtectedPaths(((str(rig.link), "engine socket"),), clock=rig.clock)
    only_link.current((), 1)
    os.rename(rig.dir, tmp_path / "moved")
    os.unlink(rig.link)
    rig.link.symlink_to(tmp_path / "moved" / "engine.sock")
    before = rig.resolutions
    sockets, _ = only_link.current((), 1)
    assert rig.resolutions - before == 1
    assert sockets[0].resolved == str(tmp_path / "moved" / "engine.sock")


def test_a_socket_removed_is_resolved_again(rig: Rig) -> None:
    rig.current()
    os.unlink(rig.sock_path)
    sockets, resolved = rig.current()
    assert resolved == 3
    assert all(s.inode is None for s in sockets)


def test_a_missing_socket_that_appears_is_resolved_again(rig: Rig) -> None:
    rig.current()
    rig.missing.parent.mkdir()
    rig.socks.append(rig.listen(rig.missing))
    sockets, resolved = rig.current()
    assert resolved == 3
    assert {s.path: s.inode for s in sockets}[str(rig.missing)] == rig.inode(rig.missing)


def test_a_changed_mount_table_resolves_again(rig: Rig) -> None:
    rig.current()
    rig.generation += 1
    assert rig.current()[1] == 3
    assert rig.current()[1] == 0


def test_nothing_is_kept_longer_than_the_ttl(rig: Rig) -> None:
    rig.current()
    rig.clock.now += PROTECTED_TTL - 0.01
    assert rig.current()[1] == 0
    rig.clock.now += 0.02
    assert rig.current()[1] == 3
