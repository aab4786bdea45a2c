"""The three system calls pins need that Python does not wrap: mount(2) of a bind from an
open file, umount2(2) and statx(2)'s birth time. Imported only when something is held (ctypes
costs the agent about 0.3 MiB, and most agents in front of a busy engine never pin)."""

from __future__ import annotations

import ctypes
import errno
import os

MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_LIBC = ctypes.CDLL(None, use_errno=True)


def bind_fd(fd: int, target: str) -> None:
    """Bind-mount (recursively, as the engine binds) the open file `fd` at `target`."""
    if _LIBC.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def unmount(target: str) -> None:
    """Detach the mount at `target`, never following a link there."""
    if _LIBC.umount2(target.encode(), MNT_DETACH | UMOUNT_NOFOLLOW):
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(err, os.strerror(err), target)


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_r", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("_rest", ctypes.c_uint8 * 128),
    ]


AT_EMPTY_PATH = 0x1000
STATX_BTIME = 0x800


def birth_time(fd: int) -> tuple[int, int] | None:
    """statx(2)'s birth time of the open file, or None where the filesystem keeps none."""
    buf = _Statx()
    statx = getattr(_LIBC, "statx", None)
    if statx is None or statx(fd, b"", AT_EMPTY_PATH, STATX_BTIME, ctypes.byref(buf)) != 0:
        return None
    if not buf.stx_mask & STATX_BTIME:
        return None
    return (int(buf.stx_btime.tv_sec), int(buf.stx_btime.tv_nsec))
