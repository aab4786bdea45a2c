"""Which container, if any, a client process runs in, from its `/proc/<pid>/cgroup` text.

The kernel tells the agent the pid of every client of its unix sockets (SO_PEERCRED). A
process inside a container sits in that container's cgroup, whose path ends in the
container's 64-hex ID with every cgroup driver the engine uses: `/docker/<id>` (cgroupfs),
`/system.slice/docker-<id>.scope` (systemd), or `<cgroup-parent>/<id>`; a process in a
sub-cgroup of a container (systemd or an engine inside it) is still in that container.
"""

from __future__ import annotations

import re

_ID_COMPONENT = re.compile(r"(?:^|/)(?:docker-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)")
#: Every byte to "." but the lower-case hex digits, which become "h".
_HEX_RUNS = bytes(ord("h") if chr(i) in "0123456789abcdef" else ord(".") for i in range(256))
_ID_RUN = b"h" * 64


def may_name_container(raw: bytes) -> bool:
    """Whether a `/proc/<pid>/cgroup` file holds a run of 64 hex digits, without which no
    line names a container: one table lookup per byte and one substring search, so a host
    process (the usual client) costs no regular expression at all."""
    return _ID_RUN in raw.translate(_HEX_RUNS)


def container_of_cgroup(text: str) -> str | None:
    """The container ID a `/proc/<pid>/cgroup` file names, or None for a host process."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        match = _ID_COMPONENT.search(parts[2].strip())
        if match is not None:
            return match.group(1)
    return None
