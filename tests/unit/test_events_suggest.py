"""`eci-agent suggest`: would-deny events -> the smallest policy that would have allowed them."""

from __future__ import annotations

from typing import Any

import pytest

from agent.events.suggest import cover, suggest


def would(rule: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "would-deny", "rule": rule, **fields}


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        ([], []),
        ([frozenset({"ps", "container ls"})], ["ps"]),
        # one command covering both beats two
        ([frozenset({"run", "create"}), frozenset({"run", "start"})], ["run"]),
        ([frozenset({"a"}), frozenset({"b"}), frozenset({"a", "b"})], ["a", "b"]),
        ([frozenset()], []),  # nothing sends it: nothing to add
    ],
)
def test_cover_is_small_and_stable(requests, expected) -> None:
    assert cover(requests) == expected


def test_images_commands_isolation_and_the_rest() -> None:
    events = [
        would("socket-mount-image", image="reg.example:5000/tools/cli:1"),
        would("socket-mount-image", image="reg.example:5000/tools/cli:1"),  # once only
        would("container-peer", image="docker.io/library/docker:cli"),
        would(
            "command-blocked",
            image="reg.example:5000/tools/cli:1",
            commands=["volume create", "compose"],
            extra={"list_type": "allow", "list_source": "global"},
        ),
        would(
            "command-blocked",
            image="reg.example:5000/tools/cli:1",
            commands=["volume ls"],
            extra={"list_type": "allow", "list_source": "global"},
        ),
        would(
            "command-blocked",
            image="docker.io/testcontainers/ryuk:0.5",
            commands=["network rm", "stack rm"],
            extra={"list_type": "allow", "list_source": "eciAgent.commandLists"},
        ),
        would(
            "command-blocked",
            image="x",
            commands=["image push", "push"],
            extra={"list_type": "deny", "matched": "push"},
        ),
        would("isolation", image="docker.io/library/debug:1", extra={"options": "--pid=host"}),
        would(
            "isolation",
            image="docker.io/library/debug:1",
            extra={"options": "--pid=host,SYS_PTRACE"},
        ),
        would("fail-closed"),
        {"kind": "denied", "rule": "socket-mount-image", "image": "not-audited"},
    ]
    result = suggest(events)
    assert result.events == 10
    assert result.images == ["reg.example:5000/tools/cli:1", "docker.io/library/docker:cli"]
    # one command per blocked request (no single one sends both), each from its request
    assert len(result.allow_commands) == 2 and "volume ls" in result.allow_commands
    assert {"compose", "volume create"} & set(result.allow_commands)
    ((image, commands),) = result.per_image_lists.items()
    assert image == "docker.io/testcontainers/ryuk:0.5"
    assert len(commands) == 1 and commands[0] in {"network rm", "stack rm"}
    assert result.deny_entries_hit == {"push": 1}
    assert result.isolation == {"docker.io/library/debug:1": ["--pid=host", "SYS_PTRACE"]}
    assert result.other == {"fail-closed": 1}
    doc = result.as_settings()
    socket = doc["enhancedContainerIsolation"]["dockerSocketMount"]
    assert socket["imageList"]["images"] == result.images
    assert socket["commandList"] == {"type": "allow", "commands": result.allow_commands}
    assert doc["eciAgent"]["isolationExceptions"] == [
        {"images": ["docker.io/library/debug:1"], "allow": ["--pid=host", "SYS_PTRACE"]}
    ]


def test_no_events_no_proposal() -> None:
    result = suggest([{"kind": "denied", "rule": "x"}])
    assert result.events == 0 and result.as_settings() == {}


def test_powers_no_exception_can_waive_are_not_proposed() -> None:
    result = suggest(
        [
            would(
                "isolation",
                image="docker.io/library/tool:1",
                extra={"options": "--cgroup-parent,--pid=host"},
            )
        ]
    )
    assert result.isolation == {"docker.io/library/tool:1": ["--pid=host"]}
    assert result.other == {"isolation: --cgroup-parent": 1}
