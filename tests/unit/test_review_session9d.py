"""Review session 9d: `within` (command_map) and the denial limiter's sender key."""

from __future__ import annotations

import pytest

from agent.events.limiter import DenialLimiter, sender_of
from agent.policy.command_map import within
from agent.policy.commands import parse_command_pattern
from agent.settings.model import CommandList, CommandListType


def _list(kind: str, *commands: str) -> CommandList:
    return CommandList(CommandListType(kind), tuple(parse_command_pattern(c) for c in commands))


# (inner, outer, expected within(inner, outer))
WITHIN_TABLE = [
    # allow inside deny, wildcards, subsets
    (_list("allow", "container*"), _list("deny", "volume*"), True),
    (_list("allow", "container ls"), _list("allow", "container*"), True),
    (_list("allow", "container*"), _list("allow", "container ls"), False),
    (_list("deny", "push", "build*"), _list("deny", "push"), True),
    (_list("deny", "push"), _list("deny", "push", "build*"), False),
    (_list("deny"), _list("allow", "container*"), False),
    # a helper allowed by an allow list, owned by what the outer deny list names
    (_list("allow", "container exec"), _list("deny", "container inspect"), False),
    # ryuk's list inside the global one
    (
        _list("allow", "container ls", "container stop", "container rm", "network rm"),
        _list("deny", "push", "build*"),
        True,
    ),
    # `compose` only ever adds to the three labelled creates (gate.LABELLED_CREATES): an allow
    # list of [compose] allows exactly compose-labelled container/network/volume creates,
    # which an outer list allowing those creates allows too.
    (
        _list("allow", "compose"),
        _list("allow", "container create", "network create", "volume create"),
        True,
    ),
]


@pytest.mark.parametrize(("inner", "outer", "expected"), WITHIN_TABLE)
def test_within_table(inner: CommandList, outer: CommandList, expected: bool) -> None:
    got = within(inner, outer)
    if expected:
        assert got, (
            "BROKEN: within() says a list that allows nothing more is NOT within: "
            f"{inner} inside {outer}"
        )
    else:
        assert not got, f"BYPASS: within() says a looser list is within: {inner} inside {outer}"


def test_one_container_cannot_outrun_the_limiter_by_changing_uid() -> None:
    """The sender key was (uid, container, listener). Root in a container may setuid to any
    uid: each uid is a fresh bucket of `burst`, and past `max_senders` the quietest is
    forgotten (a fresh bucket again when it comes back). One container flooding one second
    through 5000 uids should not have (near) every refusal recorded one by one."""
    limiter = DenialLimiter()
    container = "c" * 64
    admitted = 0
    sent = 0
    now = 1000.0
    for round_ in range(3):
        for uid in range(5000):
            sender = sender_of(uid, container, "container")  # the gate's key for a peer
            ok, _owed = limiter.admit(sender, now + round_ * 0.3)
            admitted += ok
            sent += 1
    bound = limiter.burst + limiter.rate * 1.0 + 1
    assert admitted <= 10 * bound, (
        f"BYPASS: one container recorded {admitted} of {sent} refusals one by one in one second "
        f"by changing uid (a sender's bound is ~{bound:.0f}); a flood this way pushes other "
        "senders' denials out of the event store (max_rows 100000) and the journal"
    )
