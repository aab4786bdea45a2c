"""The digest cache document, atomic writes, and what happens to a corrupted file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.policy.images import RegistryQuery
from agent.registry.cache import (
    CacheCorrupt,
    CacheEntry,
    atomic_write,
    load_cache,
    parse_cache,
    save_cache,
    serialize_cache,
)

D1 = "sha256:" + "1" * 64
Q1 = RegistryQuery("docker.io", "library/docker", "cli")
Q2 = RegistryQuery("127.0.0.1:5000", "a/b", D1)


def test_round_trip() -> None:
    entries = {
        Q1: CacheEntry(D1, 1700000000.5, "registry-1.docker.io"),
        Q2: CacheEntry(None, 1700000001.0, "127.0.0.1:5000"),
    }
    assert parse_cache(serialize_cache(entries)) == entries


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"version": 2, "entries": []}',
        '{"version": 1}',
        '{"version": 1, "entries": [1]}',
        '{"version": 1, "entries": [{"domain": "a", "path": "b", "reference": "c", '
        '"digest": null, "fetched_at": true, "registry": "a"}]}',
        '{"version": 1, "entries": [{"domain": "", "path": "b", "reference": "c", '
        '"digest": null, "fetched_at": 1, "registry": "a"}]}',
    ],
)
def test_corrupt_documents_are_refused(text: str) -> None:
    with pytest.raises(CacheCorrupt):
        parse_cache(text)


def test_save_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "registry-digests.json"
    save_cache(path, {Q1: CacheEntry(D1, 1.0, "r")})
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_cache(path).entries == {Q1: CacheEntry(D1, 1.0, "r")}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    atomic_write(path, b"old")

    def boom(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_missing_file_is_an_empty_cache(tmp_path: Path) -> None:
    loaded = load_cache(tmp_path / "nope.json")
    assert loaded.entries == {} and loaded.moved_aside is None


def test_corrupt_file_is_moved_aside_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "registry-digests.json"
    path.write_bytes(b'{"version": 1, "entries": [{"dom')
    loaded = load_cache(path, now=0.0)
    assert loaded.entries == {}
    assert loaded.moved_aside == tmp_path / "registry-digests.json.corrupt-19700101T000000"
    assert loaded.moved_aside.read_bytes() == b'{"version": 1, "entries": [{"dom'
    assert not path.exists() and loaded.problem
    # a second corruption at the same second does not overwrite the first one kept
    path.write_bytes(b"\xff\xfe")
    again = load_cache(path, now=0.0)
    assert again.moved_aside is not None and again.moved_aside.name.endswith(".1")
    assert json.loads(serialize_cache({}))["entries"] == []


def test_one_bad_digest_drops_that_answer_not_the_file() -> None:
    """An answer an older agent stored unchecked is asked again; the others stay."""
    text = serialize_cache({Q1: CacheEntry(D1, 1700000000.5, "registry-1.docker.io")})
    doc = json.loads(text)
    doc["entries"].append(
        {"domain": "a", "path": "b", "reference": "c", "digest": "nope", "fetched_at": 1,
         "registry": "a"}
    )  # fmt: skip
    assert parse_cache(json.dumps(doc)) == {
        Q1: CacheEntry(D1, 1700000000.5, "registry-1.docker.io")
    }
