"""agent.events.limiter: how many refusals a sender has recorded one by one, and the counts."""

from __future__ import annotations

from agent.events.limiter import DenialLimiter, Suppressed


def admitted(limiter: DenialLimiter, sender: str, times: list[float]) -> list[bool]:
    return [limiter.admit(sender, t)[0] for t in times]


def test_a_burst_then_the_rate() -> None:
    limiter = DenialLimiter(rate=10.0, burst=5, quiet=5.0)
    assert admitted(limiter, "a", [0.0] * 7) == [True] * 5 + [False] * 2
    assert limiter.pending() == 2
    # 0.1 s later one token is back; the two counted are owed before it.
    ok, owed = limiter.admit("a", 0.1)
    assert ok and owed == [Suppressed("a", 2, 0.0)]
    assert limiter.pending() == 0


def test_senders_are_counted_apart() -> None:
    limiter = DenialLimiter(rate=1.0, burst=2, quiet=5.0)
    assert admitted(limiter, "flood", [0.0] * 4) == [True, True, False, False]
    assert admitted(limiter, "other", [0.0, 0.0]) == [True, True]  # not starved by the flood


def test_a_quiet_sender_s_count_comes_due_once() -> None:
    limiter = DenialLimiter(rate=1.0, burst=1, quiet=5.0)
    assert admitted(limiter, "a", [0.0, 0.5, 1.0]) == [True, False, True]
    assert admitted(limiter, "a", [1.2, 1.4]) == [False, False]
    assert limiter.due(5.0) == []  # last refusal at 1.4: quiet for 3.6 s only
    assert limiter.due(6.4) == [Suppressed("a", 2, 1.2)]
    assert limiter.due(60.0) == []  # reported once
    assert limiter.pending() == 0


def test_nothing_is_lost_when_senders_are_forgotten_or_at_shutdown() -> None:
    limiter = DenialLimiter(rate=0.0, burst=1, quiet=5.0, max_senders=2)
    assert admitted(limiter, "a", [0.0, 0.0]) == [True, False]
    assert admitted(limiter, "b", [1.0, 1.0]) == [True, False]
    ok, owed = limiter.admit("c", 2.0)  # room is made by forgetting the quietest: "a"
    assert ok and owed == [Suppressed("a", 1, 0.0)]
    assert limiter.take_all() == [Suppressed("b", 1, 1.0)]
    assert limiter.pending() == 0
