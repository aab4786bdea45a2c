"""agent.proxy.host_paths: the mount table and the protected sockets, read afresh each time.

Session 6 kept both on cheaper signs of "no change" (poll(2) on mountinfo; a stat finding
the same file) and its attack review got the socket through twice (see
tests/e2e/test_review_session6.py). These tests pin the two changes those signs missed."""

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

from agent.policy.mounts import ProtectedSocket
from agent.proxy.host_paths import MountTable, only_root_can_change, protected_sockets

LINE = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"


# -- MountTable --------------------------------------------------------------------------------


def test_the_table_is_read_every_time_and_parsed_when_it_changed(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(LINE)
    table = MountTable(str(info))
    first = table.current()
    assert [e.mount_point for e in first] == ["/mnt2"]
    assert table.current() is first  # same text: the same parse
    info.write_text(LINE + LINE.replace("/mnt2", "/a\rb"))
    assert [e.mount_point for e in table.current()] == ["/mnt2", "/a\rb"]
    os.unlink(info)
    assert table.current() == ()


NAMESPACE_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, tempfile
    from agent.proxy.host_paths import MountTable

    table = MountTable()
    def points():
        return {e.mount_point for e in table.current()}

    top = tempfile.mkdtemp()
    a, b = os.path.join(top, "a"), os.path.join(top, "b")
    os.makedirs(os.path.join(a, "mnt"))
    assert os.path.join(a, "mnt") not in points()
    subprocess.run(["mount", "-t", "tmpfs", "eci-test", os.path.join(a, "mnt")], check=True)
    assert os.path.join(a, "mnt") in points(), "a new mount was not seen"
    # A rename moves the mount point without a mount event (poll(2) stays silent).
    os.rename(a, b)
    now = points()
    assert os.path.join(b, "mnt") in now and os.path.join(a, "mnt") not in now, now
    subprocess.run(["umount", os.path.join(b, "mnt")], check=True)
    assert os.path.join(b, "mnt") not in points(), "an unmount was not seen"
    print("ok")
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
def test_mounts_made_moved_and_removed_are_seen_at_once() -> None:
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


# -- protected_sockets -------------------------------------------------------------------------


class Host:
    """An engine socket E, a symlink L to it, and a path M where nothing is (yet)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.dir = tmp_path / "run"
        self.dir.mkdir()
        self.engine = self.dir / "engine.sock"
        self.socks = [self.listen(self.engine)]
        self.link = tmp_path / "docker.sock"
        self.link.symlink_to(self.engine)
        self.missing = tmp_path / "nothing" / "docker.sock"
        self.paths = tuple(
            (str(p), "engine socket") for p in (self.link, self.engine, self.missing)
        )

    def listen(self, path: Path) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        return s

    def sockets(self) -> dict[str, ProtectedSocket]:
        found, resolved = protected_sockets(self.paths, ())
        for s in found:
            assert resolved[s.path].resolved == s.resolved and resolved[s.path].inode == s.inode
        return {s.path: s for s in found}

    def inode(self, path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    for s in h.socks:
        s.close()


def test_each_path_is_resolved(host: Host) -> None:
    found = host.sockets()
    assert found[str(host.link)].resolved == str(host.engine)
    assert found[str(host.link)].inode == host.inode(host.engine)
    assert found[str(host.missing)].inode is None


def test_the_socket_turned_into_a_symlink_to_a_new_hard_link_is_seen(host: Host) -> None:
    # The review's first bypass: the same file, the same link count, the same inode behind
    # the configured path; only a fresh resolution shows the folder now holding the socket.
    host.sockets()
    hidden = host.tmp / "elsewhere"
    hidden.mkdir()
    os.link(host.engine, hidden / "docker.sock")
    os.unlink(host.engine)
    host.engine.symlink_to(hidden / "docker.sock")
    found = host.sockets()
    assert found[str(host.engine)].resolved == str(hidden / "docker.sock")
    assert found[str(host.link)].resolved == str(hidden / "docker.sock")


def test_a_socket_made_anew_a_hard_link_and_a_removal_are_seen(host: Host) -> None:
    host.sockets()
    os.unlink(host.engine)
    host.socks.append(host.listen(host.engine))
    assert host.sockets()[str(host.engine)].inode == host.inode(host.engine)
    os.link(host.engine, host.tmp / "another-name")
    assert host.sockets()[str(host.engine)].links == 2
    os.unlink(host.engine)
    assert host.sockets()[str(host.engine)].inode is None


def test_a_folder_renamed_on_the_way_and_a_socket_that_appears_are_seen(host: Host) -> None:
    host.sockets()
    os.rename(host.dir, host.tmp / "moved")
    os.unlink(host.link)
    host.link.symlink_to(host.tmp / "moved" / "engine.sock")
    host.missing.parent.mkdir()
    host.socks.append(host.listen(host.missing))
    found = host.sockets()
    assert found[str(host.link)].resolved == str(host.tmp / "moved" / "engine.sock")
    assert found[str(host.missing)].inode == host.inode(host.missing)


# -- only_root_can_change: may the protected sockets be resolved on the event loop? -------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners are changed)")
class TestOnlyRootCanChange:
    def test_root_owned_folders_and_a_sticky_one_on_the_way(self, tmp_path: Path) -> None:
        sticky = tmp_path / "sticky"
        sticky.mkdir()
        os.chmod(sticky, 0o1777)
        (sticky / "run").mkdir(mode=0o755)
        assert only_root_can_change(str(sticky / "run" / "docker.sock"))
        assert only_root_can_change(str(tmp_path / "not" / "made" / "yet.sock"))

    def test_a_folder_others_may_write_to(self, tmp_path: Path) -> None:
        (tmp_path / "open").mkdir()
        os.chmod(tmp_path / "open", 0o777)
        assert not only_root_can_change(str(tmp_path / "open" / "docker.sock"))
        os.chmod(tmp_path / "open", 0o775)  # the group too
        assert not only_root_can_change(str(tmp_path / "open" / "docker.sock"))

    def test_a_folder_or_a_link_another_user_owns(self, tmp_path: Path) -> None:
        (tmp_path / "user").mkdir()
        os.chown(tmp_path / "user", 1000, 1000)
        assert not only_root_can_change(str(tmp_path / "user" / "docker.sock"))
        (tmp_path / "root").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "root")
        assert only_root_can_change(str(tmp_path / "link" / "docker.sock"))
        os.lchown(tmp_path / "link", 1000, 1000)
        assert not only_root_can_change(str(tmp_path / "link" / "docker.sock"))

    def test_where_a_root_link_leads_counts_too(self, tmp_path: Path) -> None:
        (tmp_path / "user").mkdir()
        os.chown(tmp_path / "user", 1000, 1000)
        (tmp_path / "user" / "run").mkdir()
        (tmp_path / "innocent").symlink_to(tmp_path / "user" / "run")
        assert not only_root_can_change(str(tmp_path / "innocent" / "docker.sock"))

    @pytest.mark.parametrize("mode", [0o1777, 0o1770, 0o755])
    @pytest.mark.parametrize("kind", ["link", "folder", "file"])
    def test_the_last_name_counts_in_a_folder_others_may_write_to(
        self, tmp_path: Path, mode: int, kind: str
    ) -> None:
        """In a sticky folder others may write to, the owner of the last name may replace
        it (a link to a harmless folder swapped for one to /etc); in root's own folder not."""
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, mode)
        (tmp_path / "target").mkdir()
        last = shared / "mine"
        if kind == "link":
            last.symlink_to(tmp_path / "target")
        elif kind == "folder":
            last.mkdir()
        else:
            last.write_text("")
        assert only_root_can_change(str(last)), "root's own name: only root may replace it"
        os.lchown(last, 1000, 1000)
        assert only_root_can_change(str(last)) is (mode == 0o755)
