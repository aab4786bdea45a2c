"""Telling a containerized client from a host one, by its cgroup path (table-driven)."""

from __future__ import annotations

import pytest

from agent.policy.peers import container_of_cgroup, may_name_container

ID = "3f" * 32

CASES = [
    ("cgroupfs v1", f"12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n", ID),
    ("systemd v2", f"0::/system.slice/docker-{ID}.scope\n", ID),
    ("cgroup-parent", f"7:cpu:/eci-env-1a2b/{ID}\n", ID),
    ("host shell", "0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("host service", "0::/system.slice/docker.service\n", None),
    ("root", "0::/\n", None),
    ("short hex", "0::/docker/3f3f3f\n", None),
    ("sub-cgroup of a container", f"0::/docker/{ID}/init.scope\n", ID),
    ("upper-case hex is not an id", f"0::/docker/{ID.upper()}\n", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("label", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_container_of_cgroup(label: str, text: str, expected: str | None) -> None:
    assert container_of_cgroup(text) == expected


@pytest.mark.parametrize(("label", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_quick_look_never_misses_a_container(
    label: str, text: str, expected: str | None
) -> None:
    """`may_name_container` is what the agent asks first: False must mean no container."""
    quick = may_name_container(text.encode())
    if expected is not None:
        assert quick
    assert quick == (ID in text)  # a run of 64 lower-case hex digits, and only then


def test_the_quick_look_needs_64_hex_digits_in_a_row() -> None:
    assert not may_name_container(("0::/x/" + "a" * 63 + "/" + "b" * 63 + "\n").encode())
    assert may_name_container(("0::/x/" + "a" * 64 + "\n").encode())
    assert not may_name_container(("0::/x/" + "A" * 64 + "\n").encode())
