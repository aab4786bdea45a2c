"""agent.pins.board on the real file system and mount table (the suite runs as root)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.pins.board import (
    MissingSource,
    PinBoard,
    PinError,
    hold,
    mount_points,
    needs_pin,
    release_all,
    unmount,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pins are bind mounts: root only")

NOBODY = 65534


@pytest.fixture
def user(tmp_path: Path) -> Path:
    """A folder owned by a user other than root, with `project/seed`."""
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    (home / "project" / "seed").write_text("seed\n")
    for p in (home, home / "project", home / "project" / "seed"):
        os.chown(p, NOBODY, NOBODY)
    return home


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PinBoard]:
    b = PinBoard(tmp_path / "run" / "pins", tmp_path / "state" / "pins", grace=10.0)
    yield b
    for point in mount_points():
        if point.startswith(str(b.root) + "/"):
            unmount(point)


def _pin(board: PinBoard, path: Path, now: float = 1000.0):
    held = hold(str(path), make_missing=False)
    try:
        return board.pin(held, now=now)
    finally:
        release_all([held])


# -- what needs a pin, and holding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [("project", True), ("project/seed", True), ("", False), ("missing/below", True)],
    ids=["in-users-folder", "file-in-users-folder", "the-folder-itself", "missing-below"],
)
def test_needs_pin_when_a_user_can_change_the_way(user, relative, expected):
    """The user's folder itself sits in root's folder: only what is inside it can be swapped."""
    assert needs_pin(str(user / relative) if relative else str(user)) is expected


def test_needs_pin_follows_a_link_into_a_users_folder(tmp_path, user):
    link = tmp_path / "to-project"
    link.symlink_to(user / "project" / "seed")
    assert needs_pin(str(link)) is True


@pytest.mark.parametrize("kind", ["file", "folder", "socket", "link-to-file"])
def test_hold_describes_the_open_file(user, kind, tmp_path):
    path = {
        "file": user / "project" / "seed",
        "folder": user / "project",
        "socket": user / "s.sock",
        "link-to-file": user / "link",
    }[kind]
    if kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    if kind == "link-to-file":
        path.symlink_to(user / "project" / "seed")
    held = hold(str(path), make_missing=False)
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        assert held.found.resolved == real
        assert held.found.inode == (st.st_dev, st.st_ino)
        assert held.found.is_dir is (kind == "folder")
        assert held.found.is_socket is (kind == "socket")
        assert held.source == str(path)
    finally:
        release_all([held])


def test_hold_of_a_missing_path_raises_unless_asked_to_make_it(user):
    with pytest.raises(MissingSource, match="bind source path does not exist"):
        hold(str(user / "no" / "such"), make_missing=False)
    held = hold(str(user / "no" / "such"), make_missing=True)
    release_all([held])
    st = (user / "no" / "such").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)


def test_missing_folders_are_not_made_in_roots_folder_through_a_link(user, tmp_path):
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    (user / "to-roots").symlink_to(roots)
    with pytest.raises(PinError, match="belongs to root"):
        hold(str(user / "to-roots" / "new"), make_missing=True)
    assert not (roots / "new").exists()


def test_a_link_where_a_missing_folder_would_go_is_not_followed(user, tmp_path, monkeypatch):
    """Each folder made is opened with O_NOFOLLOW: a link slipped in where one is being made
    (here: made just before mkdir, which then finds it there) is refused, not followed."""
    import agent.pins.board as module

    real_mkdir = os.mkdir

    def racing_mkdir(name, mode=0o777, *, dir_fd=None):
        if name == "b":
            (user / "b").symlink_to(tmp_path)
        return real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(module.os, "mkdir", racing_mkdir)
    with pytest.raises(PinError, match="cannot create"):
        hold(str(user / "b" / "c"), make_missing=True)
    assert not (tmp_path / "c").exists()


# -- pins ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["project", "project/seed"])
def test_a_pin_is_the_held_file_whatever_the_path_does_next(board, user, what, tmp_path):
    source = user / what
    record = _pin(board, source)
    assert record.pin in mount_points()
    assert record.source == str(source) and record.made == 1000.0
    stored = json.loads((board.records_dir / f"{record.token}.json").read_text())
    assert stored["inode"] == list(record.inode)
    source.rename(source.with_name(source.name + ".old"))
    source.symlink_to("/etc")
    pinned = Path(record.pin)
    if record.is_dir:
        assert sorted(os.listdir(pinned)) == ["seed"]
    else:
        assert pinned.read_text() == "seed\n"
    assert board.record_of(record.pin) == record
    assert board.records() == [record]
    assert oct(board.root.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize(
    "pin",
    ["{root}/../state/pins/x", "/elsewhere/{token}", "{root}/.hidden", "{root}"],
)
def test_record_of_knows_only_this_boards_pins(board, user, pin):
    record = _pin(board, user / "project")
    asked = pin.format(root=board.root, token=record.token)
    assert board.record_of(asked) is None
    assert board.record_of(record.pin + "/") == record  # cleaned first


def test_sweep_releases_only_old_unreferenced_pins(board, user):
    used = _pin(board, user / "project", now=1000.0)
    old = _pin(board, user / "project" / "seed", now=1000.0)
    young = _pin(board, user / "project" / "seed", now=1008.0)
    gone = board.sweep({used.pin}, now=1012.0)
    assert [r.token for r in gone] == [old.token]
    points = mount_points()
    assert used.pin in points and young.pin in points and old.pin not in points
    assert not Path(old.pin).exists() and board.record_of(old.pin) is None
    assert (user / "project" / "seed").read_text() == "seed\n", "the user's file stays"


def test_restore_mounts_again_only_onto_the_same_file(board, user):
    same = _pin(board, user / "project")
    moved = _pin(board, user / "project" / "seed")
    (user / "other").mkdir()
    gone = _pin(board, user / "other")
    for record in (same, moved, gone):
        unmount(record.pin)  # the reboot
    (user / "project" / "seed").rename(user / "project" / "seed.old")
    (user / "project" / "seed").write_text("another file\n")
    (user / "other").rmdir()
    outcome = {r.token: why for r, why in board.restore()}
    assert outcome[same.token] is None and same.pin in mount_points()
    assert "another file" in str(outcome[moved.token]) or "now leads" in str(outcome[moved.token])
    assert "does not exist" in str(outcome[gone.token])
    assert moved.pin not in mount_points() and gone.pin not in mount_points()
    again = {r.token: why for r, why in board.restore()}
    assert again[same.token] is None, "a pin in place is left as it is"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    assert sum(line.split()[4] == same.pin for line in lines) == 1, "and not mounted twice"


def test_moved_and_repin_follow_a_replaced_file(board, user):
    seed = user / "project" / "seed"
    record = _pin(board, seed)
    assert board.moved(record) is None, "the same file: nothing to do"
    fresh = seed.with_name("seed.new")
    fresh.write_text("saved again\n")
    os.replace(fresh, seed)
    held = board.moved(record)
    assert held is not None
    try:
        new = board.repin(record, held)
    finally:
        release_all([held])
    assert Path(record.pin).read_text() == "saved again\n"
    assert new.inode != record.inode and board.record_of(record.pin) == new


def test_repin_changes_a_file_pin_into_a_folder_pin(board, user):
    seed = user / "project" / "seed"
    record = _pin(board, seed)
    seed.rename(seed.with_name("seed.old"))
    seed.mkdir()
    (seed / "inside").write_text("")
    held = board.moved(record)
    assert held is not None
    try:
        board.repin(record, held)
    finally:
        release_all([held])
    assert os.listdir(record.pin) == ["inside"]


def test_a_pin_that_cannot_be_mounted_leaves_no_record(board, user, monkeypatch):
    import agent.pins.board as module

    def refuse(fd: int, target: str) -> None:
        raise OSError(1, "Operation not permitted", target)

    monkeypatch.setattr(module, "_mount_fd", refuse)
    held = hold(str(user / "project"), make_missing=False)
    try:
        with pytest.raises(PinError, match="needs root"):
            board.pin(held)
    finally:
        release_all([held])
    assert board.records() == [] and os.listdir(board.root) == []


@pytest.mark.parametrize("field", ["born", "resolved"])
def test_restore_wants_the_very_file_not_just_its_inode_number(board, user, field):
    """A freed inode number goes to the next file made: the record's birth time and resolved
    path must match too (review 8b)."""
    record = _pin(board, user / "project")
    unmount(record.pin)
    changed = (
        dataclasses.replace(record, born=(1, 2))
        if field == "born"
        else dataclasses.replace(record, resolved=str(user / "elsewhere"))
    )
    (board.records_dir / f"{record.token}.json").write_text(changed.to_json())
    if field == "born" and record.born is None:
        pytest.skip("this filesystem keeps no birth time")
    (outcome,) = board.restore()
    assert outcome[1] is not None and record.pin not in mount_points()


def test_a_re_pin_that_cannot_be_mounted_leaves_the_pin_as_it_was(board, user, monkeypatch):
    import agent.pins.board as module

    seed = user / "project" / "seed"
    record = _pin(board, seed)
    fresh = seed.with_name("seed.new")
    fresh.write_text("saved again\n")
    os.replace(fresh, seed)
    held = board.moved(record)
    assert held is not None

    def refuse(fd: int, target: str) -> None:
        raise OSError(22, "Invalid argument", target)

    monkeypatch.setattr(module, "_mount_fd", refuse)
    try:
        with pytest.raises(PinError, match="again"):
            board.repin(record, held)
    finally:
        release_all([held])
    assert Path(record.pin).read_text() == "seed\n", "still the judged file"
    assert board.record_of(record.pin) == record
    assert sorted(os.listdir(board.root)) == [record.token], "no side path left"
