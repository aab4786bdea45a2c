"""Which local copies of allowed images no longer match the registry."""

from __future__ import annotations

from agent.policy.images import RegistryQuery
from agent.registry.repull import find_stale

OLD = "sha256:" + "0" * 64
NEW = "sha256:" + "1" * 64
Q = RegistryQuery("docker.io", "library/docker", "cli")
LOCAL = RegistryQuery("127.0.0.1:5000", "fixtures/x", "1")


def summary(image_id: str, tags: list[str], digests: list[str]) -> dict[str, object]:
    return {"Id": image_id, "RepoTags": tags, "RepoDigests": digests}


def test_a_moved_tag_is_stale_with_the_fix() -> None:
    images = [summary("sha256:aa", ["docker:cli"], [f"docker@{OLD}"])]
    (item,) = find_stale({Q: (NEW, 5.0)}, images)
    assert item.reference == "docker.io/library/docker:cli"
    assert item.image_id == "sha256:aa"
    assert item.local_digests == (OLD,) and item.registry_digest == NEW
    assert item.fix == "eci-agent repull docker.io/library/docker:cli"
    assert item.as_event()["registry_checked_at"] == 5.0


def test_up_to_date_copies_and_other_images_are_not_stale() -> None:
    images = [
        summary("sha256:aa", ["docker:cli"], [f"docker@{OLD}", f"docker@{NEW}"]),
        summary("sha256:bb", ["docker:dind"], [f"docker@{OLD}"]),  # another tag
        summary("sha256:cc", ["127.0.0.1:5000/fixtures/x:1"], []),  # local build / re-tag
        summary("sha256:dd", ["<none>:<none>"], [f"docker@{OLD}"]),
        {"RepoTags": ["docker:cli"]},  # no Id
    ]
    assert find_stale({Q: (NEW, 1.0), LOCAL: (NEW, 1.0)}, images) == []


def test_registry_with_port_and_full_names() -> None:
    images = [
        summary("sha256:ee", ["127.0.0.1:5000/fixtures/x:1"], [f"127.0.0.1:5000/fixtures/x@{OLD}"])
    ]
    (item,) = find_stale({LOCAL: (NEW, 1.0)}, images)
    assert item.reference == "127.0.0.1:5000/fixtures/x:1"
