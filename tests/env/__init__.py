"""Real-engine test environment: private dockerd + loopback registry + fixture images.

    from tests.env import Stack
    with Stack() as s:
        s.docker("run", "--rm", s.images["busybox"], "echo", "hi")

CLI: ``python -m tests.env up|down|status [--dir DIR]``.
"""

from tests.env.stack import (
    MANIFEST_ACCEPT,
    DockerCommandError,
    Registry,
    Stack,
    StackError,
    ensure_packages,
    missing_packages,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "DockerCommandError",
    "Registry",
    "Stack",
    "StackError",
    "ensure_packages",
    "missing_packages",
]
