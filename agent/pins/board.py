"""Holding a bind source open, pinning it at a root-only path, and the pins' life cycle.

Blocking file-system work throughout (a client's path may be on a slow mount): the gate calls
it in a worker thread. Linux only (mount(2)); the agent runs as root there.

- `hold(source)`: open the path once (`O_PATH`, following links as the engine's mount does).
  What the fd is, not what the path says a moment later, is judged.
- `PinBoard.pin(held)`: bind-mount that open file at `<pins>/<token>` (a folder only root can
  change), with a record in the state folder naming the source, its inode and when.
- `PinBoard.sweep(referenced)`: pins no container, service or volume names any more are
  unmounted and forgotten (young ones are kept: their create may still be on its way).
- `PinBoard.restore()`: after a reboot (the pins live under /run), each recorded pin is mounted
  again, but only if its source still leads to the very same file (device and inode): what
  was judged. Anything else stays unpinned, and the engine then finds an empty folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.policy.mounts import ResolvedPath, clean_host_path, parse_mountinfo
from agent.proxy.host_paths import described, only_root_can_change

log = logging.getLogger(__name__)

#: A pin younger than this is never swept: the create it was made for may still be on its way.
SWEEP_GRACE = 120.0

#: Pins kept at most (each is a mount; the host's mount table is bounded, fs.mount-max).
MAX_PINS = 4096


def _is_at_or_below(path: str, folder: str) -> bool:
    path, folder = clean_host_path(path), clean_host_path(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class PinError(Exception):
    """A bind source that cannot be held or pinned; the message says what to do."""


class MissingSource(PinError):
    """The bind source does not exist (and was not to be made)."""


@dataclass(frozen=True, slots=True)
class Held:
    """A bind source opened once: `found` describes the open file, `fd` keeps it."""

    source: str
    fd: int
    found: ResolvedPath
    born: tuple[int, int] | None = None  # birth time (s, ns), where the filesystem keeps one


@dataclass(frozen=True, slots=True)
class PinRecord:
    token: str
    pin: str  # the path the engine is given
    source: str  # the path the client gave
    resolved: str  # where it led when pinned
    inode: tuple[int, int]
    is_dir: bool
    made: float
    #: The file's birth time (s, ns): with the inode, what tells the very file after a reboot
    #: (a filesystem hands a freed inode number to the next file made). None: not kept there.
    born: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PinRecord:
        raw = json.loads(text)
        return cls(
            token=str(raw["token"]),
            pin=str(raw["pin"]),
            source=str(raw["source"]),
            resolved=str(raw["resolved"]),
            inode=(int(raw["inode"][0]), int(raw["inode"][1])),
            is_dir=bool(raw["is_dir"]),
            made=float(raw["made"]),
            born=(int(raw["born"][0]), int(raw["born"][1])) if raw.get("born") else None,
        )

    def same_file(self, held: Held) -> bool:
        """Whether `held` is the very file this pin holds: where it resolves, its device and
        inode, its type and (where kept) its birth time."""
        found = held.found
        return (
            found.inode == self.inode
            and found.is_dir == self.is_dir
            and found.resolved == self.resolved
            and held.born == self.born
        )


def needs_pin(source: str) -> bool:
    """Whether someone other than root could change where `source` leads (see
    `only_root_can_change`): only such a source is held and pinned."""
    return not only_root_can_change(source)


def hold(source: str, *, make_missing: bool) -> Held:
    """Open `source` (links followed) and describe the open file.

    `make_missing`: create a missing folder as the engine does for a `Binds` entry (root's,
    0755, parents too) rather than raise `MissingSource`.
    """
    path = clean_host_path(source)
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        if not make_missing:
            raise MissingSource(f"bind source path does not exist: {source}") from None
        fd = _make_missing(path, source)
    except OSError as err:
        raise PinError(f"cannot open the bind source {source}: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        resolved = os.readlink(f"/proc/self/fd/{fd}")
        mount_id = _mount_id(fd)
        born = _birth_time(fd)
    except OSError as err:
        os.close(fd)
        raise PinError(f"cannot read the bind source {source}: {err.strerror}") from None
    if mount_id is None or mount_id not in mount_ids():
        # Reached through another mount namespace (/proc/<pid>/root/...): its path read back
        # is the name there, which says nothing about what it is here.
        os.close(fd)
        raise PinError(
            f"the bind source {source} is on a mount of another mount namespace; bind a "
            "path of the host itself"
        )
    return Held(source, fd, described(source, resolved, st), born)


def _birth_time(fd: int) -> tuple[int, int] | None:
    from agent.pins import syscalls  # ctypes, loaded only once something is held

    return syscalls.birth_time(fd)


def _mount_id(fd: int) -> int | None:
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return None


def mount_ids() -> set[int]:
    """The IDs of the mounts in this process's mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {int(line.split(" ", 1)[0]) for line in f if line.strip()}


def _make_missing(path: str, source: str) -> int:
    """Create the missing folders of `path` as the engine would (root's, 0755), one at a
    time below the nearest folder that exists, never following a link among the new ones.
    Only where a user other than root could have made them: inside a folder owned by such a
    user or writable by others (root's own folders are root's to fill). Returns an O_PATH fd
    of the last one."""
    parts = [p for p in path.split("/") if p]
    missing: list[str] = []
    while parts:
        try:
            fd = os.open("/" + "/".join(parts), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            break
        except FileNotFoundError:
            missing.insert(0, parts.pop())
        except OSError as err:
            raise PinError(f"cannot create the bind source {source}: {err.strerror}") from None
    else:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        where = os.readlink(f"/proc/self/fd/{fd}")
        if st.st_uid == 0 and not st.st_mode & 0o022:
            raise PinError(
                f"the bind source {source} does not exist, and {where}, where it would be "
                "made, belongs to root: eci-agent does not make folders there for a client; "
                "create it first"
            )
        for name in missing:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
        return fd
    except OSError as err:
        os.close(fd)
        raise PinError(f"cannot create the bind source {source}: {err.strerror}") from None
    except PinError:
        os.close(fd)
        raise


def release_all(held: Iterable[Held]) -> None:
    for h in held:
        try:
            os.close(h.fd)
        except OSError:
            pass


def _mount_fd(fd: int, target: str) -> None:
    from agent.pins import syscalls

    syscalls.bind_fd(fd, target)


def unmount(target: str) -> None:
    """Detach the mount at `target` (nothing mounted there: nothing to do)."""
    from agent.pins import syscalls

    syscalls.unmount(target)


def mount_points() -> set[str]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return set()
    return {entry.mount_point for entry in parse_mountinfo(text)}


class PinBoard:
    """The pins (mount points under `root`) and their records (JSON files under `records`)."""

    def __init__(self, root: Path, records: Path, grace: float = SWEEP_GRACE) -> None:
        self.root = root
        self.records_dir = records
        self.grace = grace

    def _ready(self) -> None:
        for folder in (self.root, self.records_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)

    def pin(self, held: Held, now: float | None = None) -> PinRecord:
        """Mount the held file at a new pin path, recorded first (a crash leaves a record the
        sweep finds, never a mount no one knows of)."""
        self._ready()
        root = str(self.root)
        found = held.found
        if any(_is_at_or_below(a, b) for a, b in ((found.resolved, root), (root, found.resolved))):
            raise PinError(f"{held.source} is, or holds, eci-agent's pins folder: never pinned")
        if len(os.listdir(self.records_dir)) >= MAX_PINS:
            raise PinError(
                f"eci-agent holds {MAX_PINS} pins already (each a mount on the host); remove "
                "containers, services or volumes that bind folders users can change"
            )
        token = secrets.token_hex(12)
        target = self.root / token
        assert found.inode is not None
        record = PinRecord(
            token=token,
            pin=str(target),
            source=held.source,
            resolved=found.resolved,
            inode=found.inode,
            is_dir=found.is_dir,
            made=time.time() if now is None else now,
            born=held.born,
        )
        self._write(record)
        try:
            self._mount_at(held.fd, target, found.is_dir)
        except OSError as err:
            self._forget(record)
            raise PinError(
                f"cannot pin the bind source {held.source} (eci-agent holds a source a user "
                f"can change still with a bind mount, which needs root): {err.strerror}"
            ) from None
        return record

    def record_of(self, pin: str) -> PinRecord | None:
        """The record of a pin path of this board (None: not one, or not recorded)."""
        parent, token = os.path.split(clean_host_path(pin))
        if parent != str(self.root) or not token or token.startswith("."):
            return None
        try:
            return PinRecord.from_json((self.records_dir / f"{token}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            log.warning("pins: unreadable record of %s: %s", pin, err)
            return None

    def moved(self, record: PinRecord) -> Held | None:
        """The file the pin's source leads to now, held, if it is another than the pinned
        one (None: the same file, or nothing there: the pin stays as it is)."""
        try:
            held = hold(record.source, make_missing=False)
        except PinError:
            return None
        if record.same_file(held):
            release_all([held])
            return None
        return held

    def repin(self, record: PinRecord, held: Held) -> PinRecord:
        """Point an existing pin at the held file instead (judged by the caller), as the
        engine would follow a source that now leads elsewhere."""
        assert held.found.inode is not None
        new = dataclasses.replace(
            record,
            resolved=held.found.resolved,
            inode=held.found.inode,
            is_dir=held.found.is_dir,
            born=held.born,
        )
        # Mounted on a side path first: a file that cannot be pinned leaves the pin as it is.
        trial = self.root / f".{record.token}.new"
        try:
            self._mount_at(held.fd, trial, new.is_dir)
        except OSError as err:
            self._remove_target(trial)
            raise PinError(
                f"cannot pin the bind source {record.source} again: {err.strerror}"
            ) from None
        try:
            target = Path(record.pin)
            unmount(record.pin)
            if new.is_dir != record.is_dir:
                self._remove_target(target)
            self._mount_at(held.fd, target, new.is_dir)
        except OSError as err:
            raise PinError(
                f"cannot pin the bind source {record.source} again: {err.strerror}"
            ) from None
        finally:
            unmount(str(trial))
            self._remove_target(trial)
        self._write(new)
        return new

    def records(self) -> list[PinRecord]:
        out = []
        try:
            names = sorted(os.listdir(self.records_dir))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                out.append(PinRecord.from_json((self.records_dir / name).read_text()))
            except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
                log.warning("pins: unreadable record %s: %s", name, err)
        return out

    def sweep(self, referenced: set[str], now: float | None = None) -> list[PinRecord]:
        """Unmount and forget the pins older than `grace` seconds that `referenced` (every
        source path the engine's containers, services and volumes name) does not hold."""
        now = time.time() if now is None else now
        gone = []
        for record in self.records():
            if record.pin in referenced or now - record.made < self.grace:
                continue
            try:
                self.release(record)
            except OSError as err:
                log.warning("pins: cannot unmount %s: %s", record.pin, err)
                continue
            gone.append(record)
        return gone

    def release(self, record: PinRecord) -> None:
        unmount(record.pin)
        self._forget(record)

    def restore(self) -> list[tuple[PinRecord, str | None]]:
        """Mount every recorded pin that is not mounted, if its source still leads to the
        file that was pinned. Returns each record with None (in place) or why not."""
        self._ready()
        mounted = mount_points()
        out: list[tuple[PinRecord, str | None]] = []
        for record in self.records():
            if record.pin in mounted:
                out.append((record, None))
                continue
            try:
                held = hold(record.source, make_missing=False)
            except PinError as err:
                out.append((record, str(err)))
                continue
            try:
                if not record.same_file(held):
                    out.append((record, f"{record.source} now leads to another file"))
                    continue
                self._mount_at(held.fd, Path(record.pin), record.is_dir)
                out.append((record, None))
            except OSError as err:
                out.append((record, f"cannot mount: {err.strerror}"))
            finally:
                release_all([held])
        return out

    # -- files -----------------------------------------------------------------------------------

    def _mount_at(self, fd: int, target: Path, is_dir: bool) -> None:
        """Make the mount point (a folder or an empty file, as the held file is) and bind
        the held file there. Raises OSError."""
        self._make_target(target, is_dir)
        _mount_fd(fd, str(target))

    def _make_target(self, target: Path, is_dir: bool) -> None:
        if is_dir:
            target.mkdir(mode=0o700, exist_ok=True)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            os.close(fd)

    def _write(self, record: PinRecord) -> None:
        final = self.records_dir / f"{record.token}.json"
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _forget(self, record: PinRecord) -> None:
        self._remove_target(Path(record.pin))
        try:
            (self.records_dir / f"{record.token}.json").unlink()
        except FileNotFoundError:
            pass

    def _remove_target(self, target: Path) -> None:
        try:
            if target.is_dir() and not target.is_symlink():
                target.rmdir()
            else:
                target.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("pins: cannot remove %s: %s", target, err)
