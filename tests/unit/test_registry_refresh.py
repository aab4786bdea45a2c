"""The refresh schedule's arithmetic and the Docker Hub name rules."""

from __future__ import annotations

import pytest

from agent.policy.imageref import parse_image_pattern
from agent.policy.images import RegistryQuery
from agent.registry.client import canonical_domain, registry_host, repository_path
from agent.registry.refresh import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    Schedule,
    backoff_delay,
    clamp_interval,
    is_fresh,
    next_refresh,
    tag_queries,
)
from agent.settings.model import ImageList

S = Schedule(interval=900.0, jitter=0.1, backoff_base=5.0, backoff_max=600.0, negative_ttl=60.0)


def test_next_refresh_spreads_around_the_interval() -> None:
    assert next_refresh(1000.0, S, 0.5) == pytest.approx(1900.0)
    assert next_refresh(1000.0, S, 0.0) == pytest.approx(1000.0 + 810.0)
    assert next_refresh(1000.0, S, 0.999999) == pytest.approx(1000.0 + 990.0, abs=0.01)


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(0, 0.0, 0.0), (1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (10, 300.0, 600.0),
     (1000, 300.0, 600.0)],
)  # fmt: skip
def test_backoff_grows_exponentially_and_is_capped(failures: int, low: float, high: float) -> None:
    assert backoff_delay(failures, S, 0.0) == pytest.approx(low)
    assert backoff_delay(failures, S, 0.999999) == pytest.approx(high, rel=1e-5)


def test_interval_bounds() -> None:
    assert clamp_interval(1) == MIN_INTERVAL
    assert clamp_interval(10**9) == MAX_INTERVAL
    assert clamp_interval(600) == 600.0


def test_freshness() -> None:
    assert is_fresh(1000.0, True, 1000.0 + 900.0, S)
    assert not is_fresh(1000.0, True, 1000.0 + S.fresh_for + 1, S)
    # "no such tag" is believed only briefly
    assert is_fresh(1000.0, False, 1059.0, S)
    assert not is_fresh(1000.0, False, 1061.0, S)
    # a clock that went back makes the age meaningless: ask again
    assert not is_fresh(1000.0, True, 999.0, S)


def test_tag_queries_only_concrete_tags() -> None:
    images = tuple(
        parse_image_pattern(t)
        for t in (
            "docker:cli",
            "alpine",
            "docker.io/localstack/localstack:*",
            "ghcr.io/x/y@sha256:" + "a" * 64,
            "*",
            "your-registry.com/ci-tools/*:3",
            "localhost:5000/a/b:1",
            "docker:cli",
        )
    )
    assert tag_queries(ImageList(images)) == (
        RegistryQuery("docker.io", "library/docker", "cli"),
        RegistryQuery("docker.io", "library/alpine", "latest"),
        RegistryQuery("localhost:5000", "a/b", "1"),
    )


@pytest.mark.parametrize(
    ("name", "domain", "host"),
    [
        ("docker.io", "docker.io", "registry-1.docker.io"),
        ("index.docker.io", "docker.io", "registry-1.docker.io"),
        ("registry-1.docker.io", "docker.io", "registry-1.docker.io"),
        ("Registry.Example:5000", "registry.example:5000", "registry.example:5000"),
        ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_docker_hub_names(name: str, domain: str, host: str) -> None:
    assert canonical_domain(name) == domain
    assert registry_host(name) == host


def test_official_images_live_under_library() -> None:
    assert repository_path("docker.io", "alpine") == "library/alpine"
    assert repository_path("docker.io", "library/alpine") == "library/alpine"
    assert repository_path("docker.io", "bitnami/redis") == "bitnami/redis"
    assert repository_path("ghcr.io", "alpine") == "alpine"
