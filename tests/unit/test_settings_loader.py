"""agent.settings.loader: which file, whether to trust it (StrictModes), and what it says."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.settings.loader import (
    MAX_SETTINGS_BYTES,
    Loaded,
    LoadResult,
    Missing,
    Refused,
    load_settings,
    untrusted_reasons,
    walk_path,
)
from agent.settings.model import BUILTIN_DEFAULT

GOOD = json.dumps(
    {"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": True, "locked": True}}
).encode()
BAD = b'{"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": "yes"}}'

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
OTHER_UID = 1000


def test_missing_file_means_builtin_default(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    result = load_settings(path, strict_modes=False)
    assert result == Missing(str(path))
    assert isinstance(result, Missing)
    assert result.settings is BUILTIN_DEFAULT
    assert "built-in default policy applies" in str(result)


def test_missing_folder_means_builtin_default(tmp_path: Path) -> None:
    result = load_settings(tmp_path / "nope" / "admin-settings.json", strict_modes=False)
    assert isinstance(result, Missing)


def test_valid_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.write_bytes(GOOD)
    result = load_settings(path, strict_modes=False)
    assert isinstance(result, Loaded)
    assert result.settings.eci.locked is True
    assert result.settings.source == str(path)
    assert result.settings.sha256 == hashlib.sha256(GOOD).hexdigest()


def test_invalid_file_is_refused_with_problems(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.write_bytes(BAD)
    result = load_settings(path, strict_modes=False)
    assert isinstance(result, Refused)
    assert [p.json_path for p in result.problems] == ["enhancedContainerIsolation.value"]
    assert str(path) in result.reason
    assert str(result) == result.reason


def test_folder_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.mkdir()
    result = load_settings(path, strict_modes=False)
    assert isinstance(result, Refused)
    assert "is a folder" in result.reason


def test_file_in_place_of_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").write_bytes(b"")
    result = load_settings(tmp_path / "etc" / "admin-settings.json", strict_modes=False)
    assert isinstance(result, Refused)
    assert "Not a directory" in result.reason


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    os.mkfifo(path)
    results: list[LoadResult] = []
    reader = threading.Thread(
        target=lambda: results.append(load_settings(path, strict_modes=False)), daemon=True
    )
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the reader before failing
        with open(path, "wb"):
            pass
        pytest.fail("load_settings blocked opening a FIFO")
    (result,) = results
    assert isinstance(result, Refused)
    assert "not a regular file" in result.reason


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.write_bytes(GOOD[:-1] + b" " * MAX_SETTINGS_BYTES + b"}")
    result = load_settings(path, strict_modes=False)
    assert isinstance(result, Refused)
    assert "larger than" in result.reason


def test_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "admin-settings.json"
    path.write_bytes(GOOD[:-1] + b" " * (MAX_SETTINGS_BYTES - len(GOOD)) + b"}")
    assert path.stat().st_size == MAX_SETTINGS_BYTES
    assert isinstance(load_settings(path, strict_modes=False), Loaded)


# -- strict modes ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """<tmp>/root (0755) / etc (0755) / admin-settings.json (0644), all owned by root."""
    base = tmp_path / "root"
    etc = base / "etc"
    etc.mkdir(parents=True)
    os.chmod(base, 0o755)
    os.chmod(etc, 0o755)
    path = etc / "admin-settings.json"
    path.write_bytes(GOOD)
    os.chmod(path, 0o644)
    return path


def refusal(path: Path) -> str:
    result = load_settings(path, strict_modes=True)
    assert isinstance(result, Refused), result
    assert result.reason.startswith(f"refusing {path}: a non-root user could change it (")
    assert "chown root:root" in result.reason
    return result.reason


@needs_root
def test_strict_good_tree_is_accepted(tree: Path) -> None:
    assert untrusted_reasons(tree) == []
    result = load_settings(tree, strict_modes=True)
    assert isinstance(result, Loaded)


@needs_root
def test_strict_is_the_default_for_root(tree: Path) -> None:
    os.chmod(tree, 0o664)
    assert isinstance(load_settings(tree), Refused)
    assert isinstance(load_settings(tree, strict_modes=False), Loaded)


@needs_root
@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o664, "its group"), (0o646, "group and others"), (0o666, "group and others")],
)
def test_strict_refuses_writable_file(tree: Path, mode: int, who: str) -> None:
    os.chmod(tree, mode)
    reason = refusal(tree)
    assert f"file {tree} is writable by {who} (mode {mode:04o})" in reason


@needs_root
@pytest.mark.parametrize(("mode", "who"), [(0o757, "group and others"), (0o775, "its group")])
def test_strict_refuses_writable_parent(tree: Path, mode: int, who: str) -> None:
    os.chmod(tree.parent, mode)
    reason = refusal(tree)
    assert f"folder {tree.parent} is writable by {who} (mode {mode:04o})" in reason


@needs_root
def test_strict_refuses_writable_grandparent(tree: Path) -> None:
    os.chmod(tree.parent.parent, 0o777)
    assert f"folder {tree.parent.parent} is writable" in refusal(tree)


@needs_root
def test_strict_accepts_sticky_root_owned_parent(tree: Path) -> None:
    os.chmod(tree.parent, 0o1777)  # like /tmp: others cannot replace root's file in it
    assert isinstance(load_settings(tree, strict_modes=True), Loaded)


@needs_root
def test_strict_refuses_sticky_parent_owned_by_a_user(tree: Path) -> None:
    os.chmod(tree.parent, 0o1777)
    os.chown(tree.parent, OTHER_UID, OTHER_UID)
    reason = refusal(tree)
    assert f"folder {tree.parent} is owned by uid {OTHER_UID}, not root" in reason
    assert f"folder {tree.parent} is writable by group and others (mode 1777)" in reason


@needs_root
def test_strict_refuses_file_owned_by_a_user(tree: Path) -> None:
    os.chown(tree, OTHER_UID, OTHER_UID)
    assert f"file {tree} is owned by uid {OTHER_UID}, not root" in refusal(tree)


@needs_root
def test_strict_refuses_parent_owned_by_a_user(tree: Path) -> None:
    os.chown(tree.parent, OTHER_UID, 0)
    assert f"folder {tree.parent} is owned by uid {OTHER_UID}, not root" in refusal(tree)


@needs_root
def test_strict_lists_every_reason(tree: Path) -> None:
    os.chmod(tree, 0o666)
    os.chown(tree, OTHER_UID, OTHER_UID)
    os.chmod(tree.parent, 0o777)
    reasons = untrusted_reasons(tree)
    assert len(reasons) == 3
    assert all(str(tree) in r for r in reasons[:2])


@needs_root
def test_strict_refuses_symlink_into_user_writable_folder(tree: Path) -> None:
    userdir = tree.parent.parent / "userdir"
    userdir.mkdir()
    os.chmod(userdir, 0o777)
    target = userdir / "real.json"
    target.write_bytes(GOOD)
    os.chmod(target, 0o644)
    tree.unlink()
    tree.symlink_to(target)
    reason = refusal(tree)
    assert f"folder {userdir} is writable by group and others (mode 0777)" in reason


@needs_root
def test_strict_refuses_symlink_to_a_users_file(tree: Path) -> None:
    userdir = tree.parent.parent / "userdir"
    userdir.mkdir(mode=0o755)
    os.chmod(userdir, 0o755)
    os.chown(userdir, OTHER_UID, OTHER_UID)
    target = userdir / "real.json"
    target.write_bytes(GOOD)
    os.chmod(target, 0o644)
    tree.unlink()
    tree.symlink_to(target)
    assert f"folder {userdir} is owned by uid {OTHER_UID}, not root" in refusal(tree)


@needs_root
def test_strict_accepts_symlink_into_a_root_tree(tree: Path) -> None:
    other = tree.parent.parent / "share"
    other.mkdir()
    os.chmod(other, 0o755)
    target = other / "real.json"
    target.write_bytes(GOOD)
    os.chmod(target, 0o644)
    tree.unlink()
    tree.symlink_to(target)
    result = load_settings(tree, strict_modes=True)
    assert isinstance(result, Loaded)


@needs_root
def test_strict_refuses_symlink_owned_by_a_user(tree: Path) -> None:
    target = tree.parent / "real.json"
    tree.rename(target)
    tree.symlink_to(target.name)
    os.lchown(tree, OTHER_UID, OTHER_UID)
    assert f"symlink {tree} is owned by uid {OTHER_UID}, not root" in refusal(tree)


@needs_root
def test_strict_refusal_comes_before_parsing(tree: Path) -> None:
    tree.write_bytes(BAD)
    os.chmod(tree, 0o666)
    result = load_settings(tree, strict_modes=True)
    assert isinstance(result, Refused)
    assert result.problems == ()  # the file was not trusted enough to be read as settings
    assert "non-root user could change it" in result.reason


def test_untrusted_reasons_with_a_fake_lstat() -> None:
    def fake_lstat(path: str) -> os.stat_result:
        modes = {
            "/": (stat.S_IFDIR | 0o755, 0),
            "/etc": (stat.S_IFDIR | 0o755, 0),
            "/etc/eci": (stat.S_IFDIR | 0o775, 0),
            "/etc/eci/a.json": (stat.S_IFREG | 0o644, 501),
        }
        if path not in modes:
            raise FileNotFoundError(path)
        mode, uid = modes[path]
        return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))

    reasons = untrusted_reasons(Path("/etc/eci/a.json"), lstat=fake_lstat)
    assert reasons == [
        "file /etc/eci/a.json is owned by uid 501, not root",
        "folder /etc/eci is writable by its group (mode 0775)",
    ]
    assert untrusted_reasons(Path("/etc/eci/a.json"), lstat=fake_lstat, trusted_uid=501) == [
        "folder /etc/eci is owned by uid 0, not uid 501",
        "folder /etc/eci is writable by its group (mode 0775)",
        "folder /etc is owned by uid 0, not uid 501",
        "folder / is owned by uid 0, not uid 501",
    ]


def _fake_tree(entries: dict[str, tuple[int, int, str | None]]) -> tuple[Any, Any]:
    """lstat and readlink over `path -> (mode, uid, link target)`."""

    def lstat(path: str) -> os.stat_result:
        if path not in entries:
            raise FileNotFoundError(path)
        mode, uid, _ = entries[path]
        return os.stat_result((mode, hash(path) & 0xFFFF, 1, 1, uid, 0, 0, 0, 0, 0))

    def readlink(path: str) -> str:
        target = entries[path][2]
        assert target is not None
        return target

    return lstat, readlink


DIR, FILE, LINK = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777


def test_a_symlink_inside_a_links_target_is_checked_with_its_folder() -> None:
    """/etc/eci/a.json -> /srv/cfg/a.json, and /srv/cfg -> /data/strict: /srv is a user's, so
    they can repoint cfg; neither the given path nor the resolved one passes through it."""
    lstat, readlink = _fake_tree(
        {
            "/": (DIR, 0, None),
            "/etc": (DIR, 0, None),
            "/etc/eci": (DIR, 0, None),
            "/etc/eci/a.json": (LINK, 0, "/srv/cfg/a.json"),
            "/srv": (DIR, 65534, None),
            "/srv/cfg": (LINK, 65534, "../data/strict"),
            "/data": (DIR, 0, None),
            "/data/strict": (DIR, 0, None),
            "/data/strict/a.json": (FILE, 0, None),
        }
    )
    walked = [n for n, _ in walk_path(Path("/etc/eci/a.json"), lstat=lstat, readlink=readlink)]
    assert walked == ["/", "/etc", "/etc/eci", "/etc/eci/a.json", "/srv", "/srv/cfg", "/data",
                      "/data/strict", "/data/strict/a.json"]  # fmt: skip
    reasons = untrusted_reasons(Path("/etc/eci/a.json"), lstat=lstat, readlink=readlink)
    assert reasons == [
        "symlink /srv/cfg is owned by uid 65534, not root",
        "folder /srv is owned by uid 65534, not root",
    ]


def test_a_symlink_loop_is_refused_not_followed_forever() -> None:
    lstat, readlink = _fake_tree(
        {"/": (DIR, 0, None), "/a": (LINK, 0, "/b"), "/b": (LINK, 0, "/a")}
    )
    assert untrusted_reasons(Path("/a"), lstat=lstat, readlink=readlink) == [
        "/a passes through more than 40 symlinks"
    ]


def test_the_file_read_is_the_file_checked(tree: Path, monkeypatch: Any) -> None:
    """A link repointed between the check and the open is caught by the inode."""
    import agent.settings.loader as loader

    real_walk = loader.walk_path
    other = tree.parent / "other.json"
    other.write_bytes(tree.read_bytes())

    def walk_then_swap(path: Path, **kw: Any) -> Any:
        nodes = real_walk(path, **kw)
        os.replace(other, tree)  # another file at the path once it was checked
        return nodes

    monkeypatch.setattr(loader, "walk_path", walk_then_swap)
    result = load_settings(tree, strict_modes=True)
    assert isinstance(result, Refused) and "changed while it was being read" in result.reason
