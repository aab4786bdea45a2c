"""agent.policy.commands: docker CLI command names as `commandList.commands` may spell them."""

from __future__ import annotations

import pytest

from agent.policy.commands import (
    CANONICAL_COMMANDS,
    DOCUMENTED_WILDCARDS,
    GROUPS,
    SPELLINGS,
    UNSUPPORTED_BY_DOCKER_DESKTOP,
    UnknownCommand,
    group_members,
    parse_command_pattern,
)

# Spellings from `docker --help` / `docker <group> --help` and the canonical command they name,
# written out by hand (not derived from the module's table).
ALIASES: list[tuple[str, str]] = [
    ("ps", "container ls"),
    ("container ps", "container ls"),
    ("container list", "container ls"),
    ("container ls", "container ls"),
    ("run", "container run"),
    ("create", "container create"),
    ("exec", "container exec"),
    ("rm", "container rm"),
    ("container remove", "container rm"),
    ("logs", "container logs"),
    ("attach", "container attach"),
    ("cp", "container cp"),
    ("commit", "container commit"),
    ("start", "container start"),
    ("stop", "container stop"),
    ("kill", "container kill"),
    ("wait", "container wait"),
    ("build", "image build"),
    ("builder build", "image build"),
    ("image build", "image build"),
    ("push", "image push"),
    ("pull", "image pull"),
    ("images", "image ls"),
    ("image list", "image ls"),
    ("rmi", "image rm"),
    ("image remove", "image rm"),
    ("tag", "image tag"),
    ("save", "image save"),
    ("load", "image load"),
    ("import", "image import"),
    ("history", "image history"),
    ("events", "system events"),
    ("info", "system info"),
    ("volume list", "volume ls"),
    ("volume remove", "volume rm"),
    ("network list", "network ls"),
    ("network remove", "network rm"),
    ("stack up", "stack deploy"),
    ("stack down", "stack rm"),
    ("buildx bake", "bake"),
    ("login", "login"),
    ("version", "version"),
    ("inspect", "inspect"),
    # Spelling variants the parser tolerates.
    ("docker push", "image push"),
    ("  image   push  ", "image push"),
    ("docker container ls", "container ls"),
]


@pytest.mark.parametrize(("text", "canonical"), ALIASES, ids=[a for a, _ in ALIASES])
def test_alias_maps_to_canonical(text: str, canonical: str) -> None:
    pattern = parse_command_pattern(text)
    assert pattern.commands == frozenset({canonical})
    assert not pattern.is_wildcard
    assert pattern.text == text
    assert str(pattern) == text


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    sorted((alias, c) for c, aliases in CANONICAL_COMMANDS.items() for alias in aliases),
)
def test_every_table_alias_parses_to_its_canonical(spelling: str, canonical: str) -> None:
    assert parse_command_pattern(spelling).commands == frozenset({canonical})
    assert SPELLINGS[spelling] == canonical


def test_no_spelling_names_two_commands() -> None:
    seen: dict[str, str] = {}
    for canonical, aliases in CANONICAL_COMMANDS.items():
        for spelling in (canonical, *aliases):
            assert spelling not in seen, f"{spelling!r} names {seen.get(spelling)} and {canonical}"
            seen[spelling] = canonical


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "trust"])
def test_group_wildcard_covers_exactly_its_group(group: str) -> None:
    pattern = parse_command_pattern(group + "*")
    assert pattern.is_wildcard
    members = {c for c in CANONICAL_COMMANDS if c.startswith(group + " ")}
    assert members, group
    assert members <= pattern.commands
    others = {c for c in CANONICAL_COMMANDS if c not in members and c != "image build"}
    assert not (pattern.commands & others)


# (wildcard, commands it must name, commands it must not)
WILDCARD_CASES: list[tuple[str, set[str], set[str]]] = [
    (
        "container*",
        {"container ls", "container run", "container rm", "container exec"},
        {"image push", "volume ls", "system prune"},
    ),
    (
        "image*",
        {"image push", "image pull", "image ls", "image build", "image rm"},
        {"container ls", "system events"},
    ),
    (
        "volume*",
        {"volume create", "volume ls", "volume rm", "volume prune"},
        {"container rm", "image rm"},
    ),
    ("network*", {"network create", "network connect", "network ls"}, {"container ls"}),
    ("build*", {"image build", "builder prune", "bake", "buildx"}, {"image push", "container run"}),
    (
        "system*",
        {"system df", "system events", "system info", "system prune"},
        {"container prune", "image prune"},
    ),
]


@pytest.mark.parametrize(
    ("text", "includes", "excludes"), WILDCARD_CASES, ids=[c[0] for c in WILDCARD_CASES]
)
def test_documented_wildcards(text: str, includes: set[str], excludes: set[str]) -> None:
    pattern = parse_command_pattern(text)
    assert pattern.is_wildcard
    assert includes <= pattern.commands
    assert not (excludes & pattern.commands)


def test_documented_wildcards_all_parse() -> None:
    assert {w for w, _, _ in WILDCARD_CASES} == set(DOCUMENTED_WILDCARDS)
    for text in DOCUMENTED_WILDCARDS:
        assert parse_command_pattern(text).is_wildcard


def test_bare_group_reads_as_wildcard() -> None:
    assert (
        parse_command_pattern("container").commands == parse_command_pattern("container*").commands
    )
    assert parse_command_pattern("volume").is_wildcard


def test_group_members_image_includes_build() -> None:
    assert "image build" in group_members("image")
    assert group_members("build") == frozenset({"image build", "builder prune", "bake", "buildx"})


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_BY_DOCKER_DESKTOP))
def test_names_docker_desktop_cannot_enforce_still_parse(name: str) -> None:
    assert parse_command_pattern(name).commands


# (text, a suggestion that must be offered, or None for no suggestion at all)
UNKNOWN_CASES: list[tuple[str, str | None]] = [
    ("pus", "push"),
    ("puhs", "push"),
    ("contaner*", "container*"),
    ("imagess", "images"),
    ("volumes*", "volume*"),
    ("image pussh", "image push"),
    ("builds*", "build*"),
    ("xyzzy", None),
    ("", None),
    ("*", None),
    ("docker", None),
    ("image push*", "image push"),
    ("PS", None),
]


@pytest.mark.parametrize(
    ("text", "suggestion"), UNKNOWN_CASES, ids=[c[0] or "empty" for c in UNKNOWN_CASES]
)
def test_unknown_names_are_refused_with_suggestions(text: str, suggestion: str | None) -> None:
    with pytest.raises(UnknownCommand) as info:
        parse_command_pattern(text)
    err = info.value
    assert err.text == text
    message = str(err)
    assert message.startswith(f"unknown docker command {text!r}")
    assert 'such as "ps" or "image push", or a wildcard such as "container*"' in message
    if suggestion is None:
        assert err.suggestions == ()
        assert "did you mean" not in message
    else:
        assert suggestion in err.suggestions
        assert f"(did you mean {', '.join(repr(s) for s in err.suggestions)}?)" in message
        assert len(err.suggestions) <= 3
