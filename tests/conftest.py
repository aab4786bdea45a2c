"""Shared fixtures. The real-engine environment itself lives in tests/env."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.env import Stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """Private dockerd + registry + fixture images, once per session.

    Never skipped: if it cannot start, every test using it errors with the reason.
    """
    s = Stack().start()
    try:
        yield s
    finally:
        s.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `@pytest.mark.engine` implies the stack fixture; using `stack` implies the marker
    # (so `-m "not engine"` deselects everything that needs the real engine).
    for item in items:
        fixturenames = getattr(item, "fixturenames", None)
        if fixturenames is None:
            continue
        if item.get_closest_marker("engine") and "stack" not in fixturenames:
            fixturenames.append("stack")
        elif "stack" in fixturenames and not item.get_closest_marker("engine"):
            item.add_marker(pytest.mark.engine)
