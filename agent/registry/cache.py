"""The digest cache on disk: what registries answered, when, and which registry answered.

The document (`registry-digests.json` in the state dir) is JSON:

    {"version": 1, "entries": [{"domain": "docker.io", "path": "library/docker",
      "reference": "cli", "digest": "sha256:…" | null, "fetched_at": 1700000000.0,
      "registry": "registry-1.docker.io"}, …]}

`parse_cache` / `serialize_cache` are pure. `save_cache` writes atomically (temp file in the
same dir, fsync, rename, fsync of the dir), so a power cut leaves the old or the new file,
never half of one. `load_cache` moves a file it cannot read aside (kept for the admin) and
starts empty: a cache is only ever an optimisation and an offline fallback.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.policy.images import RegistryQuery

CACHE_FILE = "registry-digests.json"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 16 * 1024 * 1024
#: A content digest as the OCI spec writes one (`algorithm:hex`).
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}")


class CacheCorrupt(ValueError):
    """The cache document cannot be read as one this version wrote."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One answer: `digest` None means the registry said there is no such manifest."""

    digest: str | None
    fetched_at: float  # wall clock (seconds since the epoch)
    registry: str  # the host that answered

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)


def _string(item: Mapping[str, object], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise CacheCorrupt(f"entry without a valid {key!r}")
    return value


def parse_cache(text: str) -> dict[RegistryQuery, CacheEntry]:
    """The entries of a cache document; raises CacheCorrupt when it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise CacheCorrupt(f"not JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION:
        raise CacheCorrupt(f"not a version {CACHE_VERSION} cache document")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise CacheCorrupt("no entries list")
    out: dict[RegistryQuery, CacheEntry] = {}
    for item in items:
        if not isinstance(item, dict):
            raise CacheCorrupt("an entry is not an object")
        query = RegistryQuery(
            _string(item, "domain"), _string(item, "path"), _string(item, "reference")
        )
        digest = item.get("digest")
        if digest is not None and (not isinstance(digest, str) or not DIGEST.fullmatch(digest)):
            continue  # this answer only (written by an older agent): asked again when needed
        fetched = item.get("fetched_at")
        if not isinstance(fetched, int | float) or isinstance(fetched, bool) or fetched < 0:
            raise CacheCorrupt(f"bad fetched_at for {query}")
        out[query] = CacheEntry(digest, float(fetched), _string(item, "registry"))
    return out


def serialize_cache(entries: Mapping[RegistryQuery, CacheEntry]) -> str:
    items = [
        {
            "domain": q.domain,
            "path": q.path,
            "reference": q.reference,
            "digest": e.digest,
            "fetched_at": e.fetched_at,
            "registry": e.registry,
        }
        for q, e in sorted(entries.items(), key=lambda kv: (kv[0].domain, kv[0].path, str(kv[0])))
    ]
    return json.dumps({"version": CACHE_VERSION, "entries": items}, indent=1) + "\n"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old or the new file."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_cache(path: Path, entries: Mapping[RegistryQuery, CacheEntry]) -> None:
    atomic_write(path, serialize_cache(entries).encode())


@dataclass(frozen=True, slots=True)
class Loaded:
    entries: dict[RegistryQuery, CacheEntry]
    moved_aside: Path | None = None  # where an unreadable file was moved
    problem: str | None = None  # why it was unreadable


def load_cache(path: Path, now: float | None = None) -> Loaded:
    """Read the cache; an unreadable one is renamed to `<name>.corrupt-<time>` and ignored."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return Loaded({})
    try:
        if len(raw) > MAX_CACHE_BYTES:
            raise CacheCorrupt(f"larger than {MAX_CACHE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CacheCorrupt(f"not UTF-8: {err}") from err
        return Loaded(parse_cache(text))
    except CacheCorrupt as err:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
            n += 1
        os.replace(path, aside)
        return Loaded({}, aside, str(err))
