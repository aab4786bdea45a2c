"""How many refusals one sender may have recorded one by one (pure: the caller passes `now`).

A client can make the agent refuse as fast as it can send requests. Recorded one by one, a
flood would push older events (its own earlier attempt, say) out of the store's retention and
fill the journal. So each sender (a uid, and the container it runs in) has a token bucket:
`burst` refusals at once, then `rate` a second. What is over that is counted, not recorded,
and the count is recorded once as a summary: before the sender's next recorded refusal, or
when it has been quiet for `quiet` seconds (`due`), whichever comes first. Nothing is lost
without a trace.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

#: Refusals a second one sender may have recorded one by one, after the first `BURST`.
RATE = 10.0
BURST = 50
#: Seconds without a refusal after which a sender's count is due as a summary.
QUIET = 5.0
#: Senders kept at once; beyond, the quietest are forgotten (their counts reported first).
MAX_SENDERS = 4096


def sender_of(uid: int | None, container: str | None, listener: str) -> Hashable:
    """Who one bucket is for: a container (its processes may take any uid), or a host uid;
    per agent socket."""
    return (None if container else uid, container, listener)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float  # when tokens were last counted
    suppressed: int = 0
    since: float = 0.0  # when the first of `suppressed` came


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Refusals of `sender` not recorded one by one: `count` of them, from `since` on."""

    sender: Hashable
    count: int
    since: float


class DenialLimiter:
    def __init__(
        self,
        rate: float = RATE,
        burst: int = BURST,
        quiet: float = QUIET,
        max_senders: int = MAX_SENDERS,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.quiet = quiet
        self.max_senders = max_senders
        self._buckets: dict[Hashable, _Bucket] = {}

    def admit(self, sender: Hashable, now: float) -> tuple[bool, list[Suppressed]]:
        """Whether this refusal of `sender` is recorded one by one, and the summaries to
        record before it (this sender's count, and those of senders forgotten to make room)."""
        owed: list[Suppressed] = []
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders:
                owed.extend(self._forget_quietest())
            bucket = self._buckets[sender] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.last) * self.rate)
        bucket.last = now
        if bucket.tokens < 1.0:
            if bucket.suppressed == 0:
                bucket.since = now
            bucket.suppressed += 1
            return False, owed
        bucket.tokens -= 1.0
        if bucket.suppressed:
            owed.append(Suppressed(sender, bucket.suppressed, bucket.since))
            bucket.suppressed = 0
        return True, owed

    def due(self, now: float) -> list[Suppressed]:
        """The counts of senders quiet for `quiet` seconds, taken (each reported once)."""
        out: list[Suppressed] = []
        for sender, bucket in self._buckets.items():
            if bucket.suppressed and now - bucket.last >= self.quiet:
                out.append(Suppressed(sender, bucket.suppressed, bucket.since))
                bucket.suppressed = 0
        return out

    def take_all(self) -> list[Suppressed]:
        """Every count not yet reported (at shutdown), taken."""
        return self.due(float("inf"))

    def pending(self) -> int:
        """Refusals counted and not yet reported."""
        return sum(b.suppressed for b in self._buckets.values())

    def _forget_quietest(self) -> list[Suppressed]:
        sender = min(self._buckets, key=lambda s: self._buckets[s].last)
        bucket = self._buckets.pop(sender)
        if bucket.suppressed:
            return [Suppressed(sender, bucket.suppressed, bucket.since)]
        return []
