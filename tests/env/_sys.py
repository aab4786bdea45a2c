"""Low-level helpers for tests/env: ELF inspection, processes, mounts, cgroups, HTTP.

Everything here is stdlib-only and Linux-specific. Nothing in this module ever
touches a process, mount or cgroup that is not identified by a path the caller
owns (the stack's temp dir or its unique cgroup name).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------- ELF

_PT_INTERP = 3


def elf_interpreter(path: str | os.PathLike[str]) -> str | None:
    """Return the PT_INTERP path of an ELF file, or None if it has none (static).

    Raises ValueError if the file is not an ELF executable.
    """
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            # e_type..e_shstrndx after e_ident: HHIQQQIHHHHHH
            hdr = f.read(48)
            _t, _m, _v, _entry, phoff, _shoff, _flags, _ehs, phentsize, phnum = struct.unpack(
                endian + "HHIQQQIHHH", hdr[:42]
            )
        else:
            hdr = f.read(36)
            _t, _m, _v, _entry, phoff, _shoff, _flags, _ehs, phentsize, phnum = struct.unpack(
                endian + "HHIIIIIHHH", hdr[:30]
            )
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            (p_type,) = struct.unpack(endian + "I", ph[:4])
            if p_type != _PT_INTERP:
                continue
            if is64:
                _pt, _pf, p_offset, _va, _pa, p_filesz = struct.unpack(endian + "IIQQQQ", ph[:40])
            else:
                _pt, p_offset, _va, _pa, p_filesz = struct.unpack(endian + "IIIII", ph[:20])
            f.seek(p_offset)
            return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def is_static_elf(path: str | os.PathLike[str]) -> bool:
    """True if `path` is an ELF file without an ELF interpreter (statically linked)."""
    try:
        return elf_interpreter(path) is None
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------- lookup

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(name: str) -> str | None:
    """shutil.which, also searching the sbin dirs (missing from non-root PATHs)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    return shutil.which(name, path=path)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(path: str | os.PathLike[str], lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.splitlines()[-lines:])


# ------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> object:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def http_request(
    method: str,
    path: str,
    *,
    unix_socket: str | None = None,
    host: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP/1.1 request over a unix socket or TCP (`host` = "ip:port")."""
    conn: http.client.HTTPConnection
    if unix_socket is not None:
        conn = _UnixHTTPConnection(unix_socket, timeout)
    elif host is not None:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    else:
        raise ValueError("need unix_socket or host")
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# -------------------------------------------------------------------- processes


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_cmdline(pid: int) -> list[str] | None:
    raw = _read_proc(pid, "cmdline")
    if raw is None:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/PID/stat, None if the process does not exist."""
    raw = _read_proc(pid, "stat")
    if raw is None:
        return None
    # "pid (comm) S ..." – comm may contain spaces/parens, so split at the last ')'.
    rest = raw[raw.rfind(b")") + 2 :]
    return rest[:1].decode() or None


def _ppid(pid: int) -> int | None:
    raw = _read_proc(pid, "stat")
    if raw is None:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie. Reaps it first if it is our child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    except OSError:
        pass
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _own_ancestry() -> set[int]:
    pids: set[int] = set()
    pid: int | None = os.getpid()
    while pid and pid not in pids:
        pids.add(pid)
        pid = _ppid(pid)
    return pids


def _arg_mentions(arg: str, root: str) -> bool:
    return arg == root or (root + "/") in arg or arg.endswith("=" + root)


def pids_mentioning(root: str | os.PathLike[str]) -> list[int]:
    """Live pids (not us or our ancestors) whose argv mentions `root` or a path under it."""
    root_s = os.path.normpath(os.fspath(root))
    skip = _own_ancestry()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in skip:
            continue
        argv = proc_cmdline(pid)
        if not argv or not any(_arg_mentions(a, root_s) for a in argv):
            continue
        if pid_alive(pid):
            found.append(pid)
    return sorted(found)


def pid_matches(pid: int, root: str | os.PathLike[str]) -> bool:
    """Guard against pid reuse: the process' argv must mention our root dir."""
    argv = proc_cmdline(pid)
    root_s = os.path.normpath(os.fspath(root))
    return bool(argv) and any(_arg_mentions(a, root_s) for a in argv or [])


def wait_pids_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive after timeout."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        remaining = [p for p in remaining if pid_alive(p)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate_pids(pids: Iterable[int], timeout: float) -> list[int]:
    """SIGTERM, wait up to `timeout`, SIGKILL survivors. Returns pids that were killed."""
    pids = [p for p in pids if pid_alive(p)]
    for p in pids:
        send_signal(p, signal.SIGTERM)
    survivors = wait_pids_gone(pids, timeout)
    for p in survivors:
        send_signal(p, signal.SIGKILL)
    wait_pids_gone(survivors, 5.0)
    return survivors


# ----------------------------------------------------------------------- mounts


def _unescape_mount(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(path):
        octal = path[i + 1 : i + 4]
        if path[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts_under(root: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below `root`, in mount order (later mounts last)."""
    root_s = os.path.normpath(os.fspath(root))
    result = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 5:
            continue
        mp = _unescape_mount(parts[4])
        if mp == root_s or mp.startswith(root_s + "/"):
            result.append(mp)
    return result


_MNT_DETACH = 2
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def unmount_all_under(root: str | os.PathLike[str]) -> list[str]:
    """Lazily unmount everything at/below root, deepest/latest first. Returns what remains."""
    libc = _get_libc()
    for _ in range(5):
        mps = mounts_under(root)
        if not mps:
            return []
        # Reverse mount order handles stacked mounts; sort by depth as a tie-breaker.
        for mp in sorted(reversed(mps), key=lambda m: -m.count("/")):
            libc.umount2(os.fsencode(mp), _MNT_DETACH)
    return mounts_under(root)


# ---------------------------------------------------------------------- cgroups

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_dirs(name: str) -> list[Path]:
    """Top-level cgroup dirs called `name` in every mounted hierarchy (v1 and v2)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad cgroup name {name!r}")
    candidates = [_CGROUP_ROOT / name]
    try:
        candidates += [d / name for d in _CGROUP_ROOT.iterdir() if d.is_dir()]
    except OSError:
        pass
    return [c for c in candidates if c.is_dir()]


def _walk_bottom_up(top: Path) -> Iterator[Path]:
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        yield Path(dirpath)


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for d in _walk_bottom_up(top):
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
    return {p for p in pids if pid_alive(p)}


def remove_cgroup(name: str, timeout: float = 5.0) -> list[Path]:
    """SIGKILL every process in cgroup `name` (all hierarchies), then rmdir it.

    Returns the cgroup dirs that could not be removed.
    """
    deadline = time.monotonic() + timeout
    while True:
        for p in cgroup_pids(name):
            send_signal(p, signal.SIGKILL)
        left = []
        for top in cgroup_dirs(name):
            for d in _walk_bottom_up(top):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
