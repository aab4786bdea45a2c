"""agent.policy.images: is a local image one the imageList allows? By digest, never by tag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from agent.policy.imageref import parse_image_pattern
from agent.policy.images import (
    LocalImage,
    RegistryAnswer,
    RegistryQuery,
    judge_image,
    registry_queries,
)
from agent.settings.model import ImageList

# Real-looking values: repo digests, image IDs and layer diff IDs are all sha256 digests.
D_CLI = "sha256:9e2b7a6f1c4d3e5a8b0c2d4f6e8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a"
D_CLI_NEW = "sha256:1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
D_EVIL = "sha256:dead0beef1dead2beef3dead4beef5dead6beef7dead8beef9dead0beef1dea"
D_RYUK = "sha256:4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"
ID_CLI = "sha256:aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"
ID_DERIVED = "sha256:bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff0011223344aa"
ID_EVIL = "sha256:cc33dd44ee55ff6600112233445566778899aabbccddeeff0011223344aabb11"
ID_RYUK = "sha256:dd44ee55ff6600112233445566778899aabbccddeeff0011223344aabb11cc22"
L1 = "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
L2 = "sha256:1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a"
L3 = "sha256:2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"
LX = "sha256:3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c"

DOCKER = ("docker.io", "library/docker")

CLI = LocalImage(ID_CLI, ("docker:cli",), (f"docker@{D_CLI}",), (L1, L2))
#: `docker tag evil docker:cli`: the tag says docker:cli, the repo digest says where it came from.
RETAGGED = LocalImage(ID_EVIL, ("docker:cli",), (f"evil/payload@{D_EVIL}",), (L1, L2, L3))
#: the same digest, recorded under another repository
SAME_DIGEST_OTHER_REPO = LocalImage(ID_EVIL, ("docker:cli",), (f"evil/payload@{D_CLI}",), (L1,))
OTHER_REGISTRY = LocalImage(ID_EVIL, (), (f"localhost:5000/library/docker@{D_CLI}",), (L1,))
MULTI = LocalImage(ID_CLI, (), (f"evil/payload@{D_EVIL}", f"docker.io/library/docker@{D_CLI}"))
RYUK = LocalImage(ID_RYUK, (), (f"testcontainers/ryuk@{D_RYUK}",), (L1,))
DEEP = LocalImage(ID_RYUK, (), (f"testcontainers/a/ryuk@{D_RYUK}",), (L1,))
BAD_DIGEST_TEXT = LocalImage(ID_EVIL, (), ("not a reference", "docker@sha256:short"), (L1,))
#: built locally `FROM docker:cli`: no repo digest, layers start with docker:cli's
DERIVED = LocalImage(ID_DERIVED, ("mytool:latest",), (), (L1, L2, L3))
DERIVED_OTHER_BASE = LocalImage(ID_DERIVED, ("mytool:latest",), (), (L1, LX, L3))
DERIVED_SHORT = LocalImage(ID_DERIVED, ("mytool:latest",), (), (L1,))
DERIVED_SAME_LAYERS = LocalImage(ID_DERIVED, ("mytool:latest",), (), (L1, L2))
LOCAL_ONLY_UNRELATED = LocalImage(ID_DERIVED, ("scratchy:latest",), (), (LX,))
NO_LAYER_BASE = LocalImage(ID_CLI, ("docker:cli",), (f"docker@{D_CLI}",), ())


def q_tag(tag: str) -> RegistryQuery:
    return RegistryQuery(*DOCKER, tag)


def q_digest(digest: str) -> RegistryQuery:
    return RegistryQuery(*DOCKER, digest)


def image_list(*entries: str, derived: bool = False) -> ImageList:
    return ImageList(tuple(parse_image_pattern(e) for e in entries), derived)


@dataclass(frozen=True)
class Case:
    id: str
    entries: tuple[str, ...]
    image: LocalImage
    allowed: bool
    reason: str = ""  # a word the reason must contain
    answers: Mapping[RegistryQuery, RegistryAnswer] = field(default_factory=dict)
    bases: tuple[LocalImage, ...] = ()
    derived: bool = False
    entry: str | None = None  # the entry that admitted it
    stale: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()  # words each `unknown` item must contain, in order


CASES: list[Case] = [
    # "*" admits everything, local-only images included
    Case("star", ("*",), CLI, True, "*", entry="*"),
    Case("star, local-only", ("*",), DERIVED, True, "*", entry="*"),
    Case("star among others", ("alpine", "*"), RETAGGED, True, "*", entry="*"),
    # name@digest
    Case("pinned match", (f"docker@{D_CLI}",), CLI, True, "pinned", entry=f"docker@{D_CLI}"),
    Case("pinned, full name", (f"docker.io/library/docker@{D_CLI}",), CLI, True, "pinned"),
    Case("pinned mismatch", (f"docker@{D_CLI_NEW}",), CLI, False, "named"),
    Case("pinned, retagged image", (f"docker@{D_CLI}",), RETAGGED, False, "not listed"),
    Case("pinned digest, other repo", (f"docker@{D_CLI}",), SAME_DIGEST_OTHER_REPO, False),
    Case("pinned digest, other registry", (f"docker@{D_CLI}",), OTHER_REGISTRY, False),
    Case("one of several repo digests", (f"docker@{D_CLI}",), MULTI, True, "pinned"),
    Case("unreadable repo digests", (f"docker@{D_CLI}",), BAD_DIGEST_TEXT, False, "not listed"),
    # name:tag, judged by what the registry serves now
    Case(
        "tag, registry agrees",
        ("docker:cli",),
        CLI,
        True,
        "registry serves",
        answers={q_tag("cli"): RegistryAnswer(D_CLI)},
        entry="docker:cli",
    ),
    Case(
        "tag, registry moved on (stale)",
        ("docker:cli",),
        CLI,
        False,
        "stale",
        answers={q_tag("cli"): RegistryAnswer(D_CLI_NEW)},
        stale=("docker.io/library/docker:cli",),
    ),
    Case(
        "tag, not in the registry",
        ("docker:cli",),
        CLI,
        False,
        "named",
        answers={q_tag("cli"): RegistryAnswer(None)},
    ),
    Case(
        "tag, registry error",
        ("docker:cli",),
        CLI,
        False,
        "unverified",
        answers={q_tag("cli"): RegistryAnswer(error="connection refused")},
        unknown=("docker.io/library/docker:cli", "connection refused"),
    ),
    Case(
        "tag, not looked up",
        ("docker:cli",),
        CLI,
        False,
        "unverified",
        unknown=("docker.io/library/docker:cli", "not looked up"),
    ),
    Case(
        "tag, an answer for another tag does not count",
        ("docker:cli",),
        CLI,
        False,
        "unverified",
        answers={q_tag("latest"): RegistryAnswer(D_CLI)},
    ),
    Case(
        "tag, stale wins over unknown",
        ("docker:cli", "docker:27-cli"),
        CLI,
        False,
        "stale",
        answers={q_tag("cli"): RegistryAnswer(D_CLI_NEW)},
        stale=("docker.io/library/docker:cli",),
        unknown=("docker:27-cli", "not looked up"),
    ),
    Case(
        "second entry admits",
        ("docker:cli", "docker:27-cli"),
        CLI,
        True,
        answers={q_tag("cli"): RegistryAnswer(D_CLI_NEW), q_tag("27-cli"): RegistryAnswer(D_CLI)},
        entry="docker:27-cli",
    ),
    Case(
        "retagged: the registry's answer for docker:cli is not the image's digest",
        ("docker:cli",),
        RETAGGED,
        False,
        "not listed",
        answers={q_tag("cli"): RegistryAnswer(D_EVIL)},
    ),
    # name:* - the registry serves the image's digest under any tag
    Case(
        "any tag, known digest",
        ("docker:*",),
        CLI,
        True,
        "registry serves",
        answers={q_digest(D_CLI): RegistryAnswer(D_CLI)},
        entry="docker:*",
    ),
    Case(
        "any tag, unknown digest",
        ("docker:*",),
        CLI,
        False,
        "named",
        answers={q_digest(D_CLI): RegistryAnswer(None)},
    ),
    Case(
        "any tag, error",
        ("docker:*",),
        CLI,
        False,
        "unverified",
        answers={q_digest(D_CLI): RegistryAnswer(error="401 Unauthorized")},
        unknown=("401 Unauthorized",),
    ),
    Case("any tag, retagged image", ("docker:*",), RETAGGED, False, "not listed"),
    # path wildcards
    Case(
        "path wildcard",
        ("testcontainers/*:*",),
        RYUK,
        True,
        answers={RegistryQuery("docker.io", "testcontainers/ryuk", D_RYUK): RegistryAnswer(D_RYUK)},
        entry="testcontainers/*:*",
    ),
    Case(
        "path wildcard is one component",
        ("testcontainers/*:*",),
        DEEP,
        False,
        "not listed",
        answers={
            RegistryQuery("docker.io", "testcontainers/a/ryuk", D_RYUK): RegistryAnswer(D_RYUK)
        },
    ),
    Case("path wildcard, other org", ("testcontainers/*:*",), CLI, False, "not listed"),
    # allowDerivedImages
    Case("local-only, derived off", (f"docker@{D_CLI}",), DERIVED, False, "not listed"),
    Case(
        "derived off, even with a base",
        (f"docker@{D_CLI}",),
        DERIVED,
        False,
        bases=(CLI,),
    ),
    Case(
        "derived from a pinned base",
        (f"docker@{D_CLI}",),
        DERIVED,
        True,
        "derived from " + ID_CLI,
        bases=(CLI,),
        derived=True,
        entry=f"docker@{D_CLI}",
    ),
    Case(
        "derived from a tag base the registry confirms",
        ("docker:cli",),
        DERIVED,
        True,
        "derived from",
        answers={q_tag("cli"): RegistryAnswer(D_CLI)},
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, base is stale",
        ("docker:cli",),
        DERIVED,
        False,
        answers={q_tag("cli"): RegistryAnswer(D_CLI_NEW)},
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, base not verified",
        (f"docker@{D_CLI_NEW}",),
        DERIVED,
        False,
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, base is the retagged image",
        ("docker:cli",),
        DERIVED,
        False,
        answers={q_tag("cli"): RegistryAnswer(D_CLI)},
        bases=(RETAGGED,),
        derived=True,
    ),
    Case(
        "derived, layers are not a prefix",
        (f"docker@{D_CLI}",),
        DERIVED_OTHER_BASE,
        False,
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, image shorter than its base",
        (f"docker@{D_CLI}",),
        DERIVED_SHORT,
        False,
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, same layers (config-only change)",
        (f"docker@{D_CLI}",),
        DERIVED_SAME_LAYERS,
        True,
        "derived",
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, base with no layers is no base",
        (f"docker@{D_CLI}",),
        LOCAL_ONLY_UNRELATED,
        False,
        bases=(NO_LAYER_BASE,),
        derived=True,
    ),
    Case(
        "derived, base is the image itself",
        (f"docker@{D_CLI}",),
        LocalImage(ID_CLI, (), (), (L1, L2)),
        False,
        bases=(LocalImage(ID_CLI, (), (f"docker@{D_CLI}",), (L1, L2)),),
        derived=True,
    ),
    Case(
        "an image with repo digests is never derived",
        (f"docker@{D_CLI}",),
        RETAGGED,
        False,
        "not listed",
        bases=(CLI,),
        derived=True,
    ),
    Case(
        "derived, second base admits",
        (f"docker@{D_CLI}",),
        DERIVED,
        True,
        bases=(RYUK, CLI),
        derived=True,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_judge_image(case: Case) -> None:
    verdict = judge_image(
        image_list(*case.entries, derived=case.derived), case.image, case.answers, case.bases
    )
    assert verdict.allowed is case.allowed, verdict
    assert case.reason in verdict.reason
    if case.entry is not None:
        assert verdict.entry == case.entry
    if not case.allowed:
        assert verdict.entry is None
    assert verdict.stale == case.stale
    if case.unknown:
        assert verdict.unknown, verdict
        text = " | ".join(verdict.unknown)
        for word in case.unknown:
            assert word in text


# (case id, entries, images, the queries needed)
QUERY_CASES: list[
    tuple[str, tuple[str, ...], tuple[LocalImage, ...], tuple[RegistryQuery, ...]]
] = [
    ("star needs none", ("*",), (CLI,), ()),
    ("pinned needs none", (f"docker@{D_CLI}",), (CLI,), ()),
    ("tag asks by tag", ("docker:cli",), (CLI,), (q_tag("cli"),)),
    ("any tag asks by digest", ("docker:*",), (CLI,), (q_digest(D_CLI),)),
    (
        "path wildcard asks in the image's repository",
        ("testcontainers/*:*",),
        (RYUK,),
        (RegistryQuery("docker.io", "testcontainers/ryuk", D_RYUK),),
    ),
    ("unlisted repository needs none", ("docker:cli",), (RETAGGED,), ()),
    ("other registry needs none", ("docker:cli",), (OTHER_REGISTRY,), ()),
    ("local-only image needs none", ("docker:cli",), (DERIVED,), ()),
    ("several entries", ("docker:cli", "docker:*"), (CLI,), (q_tag("cli"), q_digest(D_CLI))),
    (
        "image and bases, deduplicated",
        ("docker:cli",),
        (DERIVED, CLI, CLI, MULTI),
        (q_tag("cli"),),
    ),
    (
        "entry on another registry",
        ("localhost:5000/library/docker:1",),
        (OTHER_REGISTRY,),
        (RegistryQuery("localhost:5000", "library/docker", "1"),),
    ),
]


@pytest.mark.parametrize(
    ("entries", "images", "queries"), [pytest.param(e, i, q, id=n) for n, e, i, q in QUERY_CASES]
)
def test_registry_queries(
    entries: tuple[str, ...], images: tuple[LocalImage, ...], queries: tuple[RegistryQuery, ...]
) -> None:
    assert registry_queries(image_list(*entries), images) == queries


def test_queries_answer_the_judgement() -> None:
    """The queries registry_queries lists are exactly the ones judge_image reads."""
    images = image_list("docker:cli")
    (query,) = registry_queries(images, (CLI,))
    assert judge_image(images, CLI, {query: RegistryAnswer(D_CLI)}).allowed


@pytest.mark.parametrize(
    ("query", "text"),
    [
        (q_tag("cli"), "docker.io/library/docker:cli"),
        (q_digest(D_CLI), f"docker.io/library/docker@{D_CLI}"),
        (RegistryQuery("localhost:5000", "a/b", "1.0"), "localhost:5000/a/b:1.0"),
    ],
)
def test_registry_query_str(query: RegistryQuery, text: str) -> None:
    assert str(query) == text


@pytest.mark.parametrize(
    ("image", "digests"),
    [
        (CLI, (("docker.io", "library/docker", D_CLI),)),
        (OTHER_REGISTRY, (("localhost:5000", "library/docker", D_CLI),)),
        (BAD_DIGEST_TEXT, ()),
        (LocalImage(ID_CLI, (), ("docker:cli",)), ()),  # a tag is not a repo digest
        (DERIVED, ()),
    ],
)
def test_local_image_digests(image: LocalImage, digests: tuple[tuple[str, str, str], ...]) -> None:
    assert image.digests() == digests


def test_local_only() -> None:
    assert DERIVED.is_local_only
    assert not CLI.is_local_only
    assert not BAD_DIGEST_TEXT.is_local_only  # unreadable repo digests still mean "pulled"
