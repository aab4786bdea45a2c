"""The agent's own sockets and the open-files limit its connections count against."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

from agent.service.sockets import listen_unix

PROBE = (
    "import resource; from agent.service.sockets import raise_open_files_limit as r; "
    "print(*r(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def _probe(soft: int, hard: int) -> list[int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", PROBE], preexec_fn=limit, capture_output=True, text=True, check=True
    ).stdout
    return [int(x) for x in out.split()]


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    before, after, soft_now, hard_now = _probe(256, top)
    assert (before, after, soft_now, hard_now) == (256, top, top, top)


def test_nothing_changes_when_soft_is_already_hard() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(hard, 2048) if hard != resource.RLIM_INFINITY else 2048
    assert _probe(top, top) == [top, top, top, top]


def test_listen_unix_is_never_open_to_others(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    sock = listen_unix(path, 0o660, os.getgid())
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
        assert not sock.getblocking()
    finally:
        sock.close()
