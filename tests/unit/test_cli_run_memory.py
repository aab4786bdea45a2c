"""agent.cli.main: the malloc setting `eci-agent run` makes for itself (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from agent.cli.main import _fixed_mmap_threshold

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_mmap_threshold_is_fixed_and_buffers_are_given_back() -> None:
    """After a large buffer is freed, one of the same size is mapped again (and given back to
    the system when freed) instead of staying in the heap: RSS falls back after each."""
    code = (
        "import sys\n"
        "from agent.cli.main import _fixed_mmap_threshold\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1])\n"
        "if sys.argv[1] == 'fixed': assert _fixed_mmap_threshold()\n"
        "b = bytearray(4 << 20); del b\n"  # raises glibc's threshold when not fixed
        "before = rss()\n"
        "b = bytearray(2 << 20); b[:] = b'x' * len(b); del b\n"
        "print(rss() - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    grown = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", code, mode],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )  # fmt: skip
        for mode in ("fixed", "default")
    }
    page_mib = (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert grown["fixed"] < page_mib, grown  # the 2 MiB went back
    assert grown["default"] >= page_mib, grown  # the default keeps it (what the fix is for)


def test_an_admins_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert _fixed_mmap_threshold() is False
