"""agent.policy.imageref: references normalized as the docker CLI does, and imageList patterns."""

from __future__ import annotations

import pytest

from agent.policy.imageref import (
    ImagePattern,
    InvalidReference,
    parse_image_pattern,
    parse_image_ref,
)

D64 = "sha256:" + "0123456789abcdef" * 4
D64B = "sha256:" + "fedcba9876543210" * 4

# (text, domain, path, tag, digest, str(), familiar_name)
REF_CASES: list[tuple[str, str, str, str | None, str | None, str, str]] = [
    (
        "docker:cli",
        "docker.io",
        "library/docker",
        "cli",
        None,
        "docker.io/library/docker:cli",
        "docker",
    ),
    (
        "alpine",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "docker.io/library/alpine:latest",
        "alpine",
    ),
    (
        "alpine:3.20",
        "docker.io",
        "library/alpine",
        "3.20",
        None,
        "docker.io/library/alpine:3.20",
        "alpine",
    ),
    (
        "library/alpine",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "docker.io/library/alpine:latest",
        "alpine",
    ),
    (
        "docker.io/alpine",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "docker.io/library/alpine:latest",
        "alpine",
    ),
    (
        "index.docker.io/x",
        "docker.io",
        "library/x",
        "latest",
        None,
        "docker.io/library/x:latest",
        "x",
    ),
    (
        "index.docker.io/library/x:1",
        "docker.io",
        "library/x",
        "1",
        None,
        "docker.io/library/x:1",
        "x",
    ),
    (
        "testcontainers/ryuk:0.5.1",
        "docker.io",
        "testcontainers/ryuk",
        "0.5.1",
        None,
        "docker.io/testcontainers/ryuk:0.5.1",
        "testcontainers/ryuk",
    ),
    (
        "docker.io/library/a/b",
        "docker.io",
        "library/a/b",
        "latest",
        None,
        "docker.io/library/a/b:latest",
        "library/a/b",
    ),
    ("localhost/a", "localhost", "a", "latest", None, "localhost/a:latest", "localhost/a"),
    (
        "localhost:5000/a",
        "localhost:5000",
        "a",
        "latest",
        None,
        "localhost:5000/a:latest",
        "localhost:5000/a",
    ),
    (
        "registry.example:5000/a/b:t",
        "registry.example:5000",
        "a/b",
        "t",
        None,
        "registry.example:5000/a/b:t",
        "registry.example:5000/a/b",
    ),
    (
        "ghcr.io/org/team/app:v1.2-rc_3",
        "ghcr.io",
        "org/team/app",
        "v1.2-rc_3",
        None,
        "ghcr.io/org/team/app:v1.2-rc_3",
        "ghcr.io/org/team/app",
    ),
    ("[::1]:5000/a", "[::1]:5000", "a", "latest", None, "[::1]:5000/a:latest", "[::1]:5000/a"),
    (
        "[2001:db8::1]/x/y:2",
        "[2001:db8::1]",
        "x/y",
        "2",
        None,
        "[2001:db8::1]/x/y:2",
        "[2001:db8::1]/x/y",
    ),
    (
        "my-registry.local/a__b/c.d/e-f",
        "my-registry.local",
        "a__b/c.d/e-f",
        "latest",
        None,
        "my-registry.local/a__b/c.d/e-f:latest",
        "my-registry.local/a__b/c.d/e-f",
    ),
    (
        f"name@{D64}",
        "docker.io",
        "library/name",
        None,
        D64,
        f"docker.io/library/name@{D64}",
        "name",
    ),
    (
        f"name:tag@{D64}",
        "docker.io",
        "library/name",
        "tag",
        D64,
        f"docker.io/library/name:tag@{D64}",
        "name",
    ),
    (
        f"localhost:5000/a@{D64}",
        "localhost:5000",
        "a",
        None,
        D64,
        f"localhost:5000/a@{D64}",
        "localhost:5000/a",
    ),
    (
        f"x@sha512:{'ab' * 64}",
        "docker.io",
        "library/x",
        None,
        f"sha512:{'ab' * 64}",
        f"docker.io/library/x@sha512:{'ab' * 64}",
        "x",
    ),
]


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest", "text_out", "familiar"),
    REF_CASES,
    ids=[c[0][:40] for c in REF_CASES],
)
def test_parse_image_ref_normalizes(
    text: str,
    domain: str,
    path: str,
    tag: str | None,
    digest: str | None,
    text_out: str,
    familiar: str,
) -> None:
    ref = parse_image_ref(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == text_out
    assert ref.name == f"{domain}/{path}"
    assert ref.familiar_name == familiar
    # Normalizing is idempotent.
    assert parse_image_ref(str(ref)) == ref


# (text, a fragment of the reason)
INVALID_REFS: list[tuple[str, str]] = [
    ("", "empty reference"),
    ("Alpine", "must be lowercase"),
    ("UPPER:1", "must be lowercase"),
    ("library/Alpine", "must be lowercase"),
    ("docker.io/Library/alpine", "must be lowercase"),
    ("name@sha256:abc", "malformed digest"),
    (f"name@sha256:{'a' * 63}", "64 lower-case hex digits"),
    (f"name@sha256:{'a' * 65}", "64 lower-case hex digits"),
    (f"name@sha256:{'A' * 64}", "64 lower-case hex digits"),
    (f"name@md5:{'a' * 32}", "unsupported digest algorithm 'md5'"),
    ("name@", "malformed digest"),
    (" alpine", "white space"),
    ("alpine ", "white space"),
    ("al pine", "malformed repository path component"),
    ("http://x/y", "no scheme"),
    ("https://docker.io/library/alpine", "no scheme"),
    ("x:", "malformed tag"),
    ("x:-1", "malformed tag"),
    ("x:" + "a" * 129, "malformed tag"),
    ("x:*", "malformed tag"),
    ("x/*", "malformed repository path component"),
    (":tag", "missing repository name"),
    (f"@{D64}", "missing repository name"),
    ("0123456789abcdef" * 4, "image ID"),
    ("a//b", "malformed repository path component"),
    ("a/", "malformed repository path component"),
    ("-a", "malformed repository path component"),
    ("a-", "malformed repository path component"),
    ("a..b", "malformed repository path component"),
    ("host:port/a", "malformed registry host"),
    ("-host.io/a", "malformed registry host"),
    ("a" * 256, "longer than 255"),
]


@pytest.mark.parametrize(
    ("text", "why"), INVALID_REFS, ids=[c[0][:30] or "empty" for c in INVALID_REFS]
)
def test_parse_image_ref_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_image_ref(text)
    assert why in info.value.why
    assert info.value.text == text
    assert str(info.value).startswith(f"invalid image reference {text!r}: ")


# (text, normalized, domain, path, tag, digest, any_tag, has_path_wildcard, needs_registry)
PATTERN_CASES: list[tuple[str, str, str, str, str | None, str | None, bool, bool, bool]] = [
    ("*", "*", "", "", None, None, False, False, False),
    (
        "docker:cli",
        "docker.io/library/docker:cli",
        "docker.io",
        "library/docker",
        "cli",
        None,
        False,
        False,
        True,
    ),
    (
        "docker:dind",
        "docker.io/library/docker:dind",
        "docker.io",
        "library/docker",
        "dind",
        None,
        False,
        False,
        True,
    ),
    (
        "alpine",
        "docker.io/library/alpine:latest",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        False,
        False,
        True,
    ),
    (
        "name:*",
        "docker.io/library/name:*",
        "docker.io",
        "library/name",
        "*",
        None,
        True,
        False,
        True,
    ),
    (
        "docker.io/localstack/localstack:*",
        "docker.io/localstack/localstack:*",
        "docker.io",
        "localstack/localstack",
        "*",
        None,
        True,
        False,
        True,
    ),
    (
        "docker.io/testcontainers/ryuk:*",
        "docker.io/testcontainers/ryuk:*",
        "docker.io",
        "testcontainers/ryuk",
        "*",
        None,
        True,
        False,
        True,
    ),
    (
        "testcontainers/*:*",
        "docker.io/testcontainers/*:*",
        "docker.io",
        "testcontainers/*",
        "*",
        None,
        True,
        True,
        True,
    ),
    (
        "your-registry.com/ci-tools/*:*",
        "your-registry.com/ci-tools/*:*",
        "your-registry.com",
        "ci-tools/*",
        "*",
        None,
        True,
        True,
        True,
    ),
    (
        "paketobuildpacks/builder:base",
        "docker.io/paketobuildpacks/builder:base",
        "docker.io",
        "paketobuildpacks/builder",
        "base",
        None,
        False,
        False,
        True,
    ),
    (
        "localhost:5000/a/*",
        "localhost:5000/a/*:latest",
        "localhost:5000",
        "a/*",
        "latest",
        None,
        False,
        True,
        True,
    ),
    (
        f"name@{D64}",
        f"docker.io/library/name@{D64}",
        "docker.io",
        "library/name",
        None,
        D64,
        False,
        False,
        False,
    ),
    (
        f"name:tag@{D64}",
        f"docker.io/library/name:tag@{D64}",
        "docker.io",
        "library/name",
        "tag",
        D64,
        False,
        False,
        False,
    ),
]


@pytest.mark.parametrize(
    (
        "text",
        "normalized",
        "domain",
        "path",
        "tag",
        "digest",
        "any_tag",
        "path_wildcard",
        "needs_registry",
    ),
    PATTERN_CASES,
    ids=[c[0][:40] for c in PATTERN_CASES],
)
def test_parse_image_pattern(
    text: str,
    normalized: str,
    domain: str,
    path: str,
    tag: str | None,
    digest: str | None,
    any_tag: bool,
    path_wildcard: bool,
    needs_registry: bool,
) -> None:
    p = parse_image_pattern(text)
    assert p.text == text
    assert p.normalized() == normalized == str(p)
    assert (p.domain, p.path, p.tag, p.digest) == (domain, path, tag, digest)
    assert p.any_tag is any_tag
    assert p.has_path_wildcard is path_wildcard
    assert p.needs_registry is needs_registry
    assert p.is_everything is (text == "*")


INVALID_PATTERNS: list[tuple[str, str]] = [
    ("", "empty reference"),
    ("**", "malformed repository path component"),
    ("x:**", "malformed tag"),
    ("x:t*", "malformed tag"),
    ("x/a*:*", "malformed repository path component"),
    ("Docker:cli", "must be lowercase"),
    (f"x/*@{D64}", "cannot be pinned to a digest"),
    (f"x:*@{D64}", "cannot be pinned to a digest"),
    ("name@sha256:abc", "malformed digest"),
    (" docker:cli", "white space"),
    ("http://x/y", "no scheme"),
    ("* ", "white space"),
]


@pytest.mark.parametrize(
    ("text", "why"), INVALID_PATTERNS, ids=[c[0][:30] or "empty" for c in INVALID_PATTERNS]
)
def test_parse_image_pattern_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_image_pattern(text)
    assert why in info.value.why


# (pattern, reference, matches)
MATCH_CASES: list[tuple[str, str, bool]] = [
    ("*", "alpine", True),
    ("*", "localhost:5000/anything/at/all:v1", True),
    ("*", f"x@{D64}", True),
    ("docker:cli", "docker:cli", True),
    ("docker:cli", "docker.io/library/docker:cli", True),
    ("docker:cli", "index.docker.io/library/docker:cli", True),
    ("docker:cli", "docker:dind", False),
    ("docker:cli", "docker", False),  # no tag means latest
    ("docker", "docker:latest", True),
    ("docker", "docker:cli", False),
    ("docker:cli", "ghcr.io/library/docker:cli", False),  # the domain must match
    ("docker:cli", "someone/docker:cli", False),
    ("docker.io/testcontainers/ryuk:*", "testcontainers/ryuk:0.5.1", True),
    ("docker.io/testcontainers/ryuk:*", "testcontainers/ryuk", True),
    ("docker.io/testcontainers/ryuk:*", f"testcontainers/ryuk@{D64}", True),
    ("docker.io/testcontainers/ryuk:*", "testcontainers/ryuk-x:1", False),
    ("docker.io/testcontainers/ryuk:*", "testcontainers/ryuk/x:1", False),
    ("testcontainers/*:*", "testcontainers/ryuk:0.5.1", True),
    ("testcontainers/*:*", "testcontainers/sshd", True),
    ("testcontainers/*:*", "testcontainers/a/b:1", False),  # `*` is exactly one component
    ("testcontainers/*:*", "testcontainers:1", False),
    ("testcontainers/*:*", "other/ryuk:1", False),
    ("testcontainers/*:*", "ghcr.io/testcontainers/ryuk:1", False),
    ("your-registry.com/ci-tools/*:*", "your-registry.com/ci-tools/lint:3", True),
    ("your-registry.com/ci-tools/*:*", "your-registry.com/ci-tools/a/b:3", False),
    ("your-registry.com/ci-tools/*:*", "ci-tools/lint:3", False),
    ("your-registry.com/ci-tools/*:*", "your-registry.com:443/ci-tools/lint:3", False),
    ("localhost:5000/a/*", "localhost:5000/a/b", True),
    ("localhost:5000/a/*", "localhost:5000/a/b:v2", False),  # tag latest unless `:*`
    ("localhost:5000/a", "localhost:5000/a:latest", True),
    ("localhost:5000/a", "localhost:5001/a", False),
    ("localhost:5000/a", "localhost/a", False),
    (f"name@{D64}", "name:anything", True),  # names match; the digest is checked elsewhere
    (f"name@{D64}", "other:anything", False),
    (f"name:tag@{D64}", "name:tag", True),
    (f"name:tag@{D64}", "name:other", False),
    ("index.docker.io/x:*", "x:1", True),
    ("paketobuildpacks/builder:base", "docker.io/paketobuildpacks/builder:base", True),
    ("paketobuildpacks/builder:base", "paketobuildpacks/builder:full", False),
]


@pytest.mark.parametrize(
    ("pattern", "ref", "expected"),
    MATCH_CASES,
    ids=[f"{p[:25]}~{r[:25]}" for p, r, _ in MATCH_CASES],
)
def test_matches_name(pattern: str, ref: str, expected: bool) -> None:
    assert parse_image_pattern(pattern).matches_name(parse_image_ref(ref)) is expected


def test_everything_pattern_name() -> None:
    p = parse_image_pattern("*")
    assert isinstance(p, ImagePattern)
    assert p.name == "*"
    assert p.normalized() == "*"
