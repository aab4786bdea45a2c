"""When to ask registries again: the pure arithmetic of the refresh schedule.

Every allowed `name:tag` of the image list in force is looked up again about every `interval`
seconds, spread by a random `jitter` so a fleet of agents does not ask at the same second. A
registry that fails is left alone for an exponentially growing back-off (capped), per
registry, so one dead registry neither slows the others nor gets hammered. `rand` arguments
are numbers in [0, 1) supplied by the shell, which keeps these functions deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.policy.images import RegistryQuery
from agent.settings.model import ImageList

MIN_INTERVAL = 10.0
MAX_INTERVAL = 24 * 3600.0
DEFAULT_INTERVAL = 15 * 60.0


@dataclass(frozen=True, slots=True)
class Schedule:
    interval: float = DEFAULT_INTERVAL
    jitter: float = 0.1  # +/- this fraction of the interval
    backoff_base: float = 5.0
    backoff_max: float = 10 * 60.0
    #: How long a "no such tag/manifest" answer is believed before asking again.
    negative_ttl: float = 60.0

    @property
    def fresh_for(self) -> float:
        """How old a positive answer may be and still be served from memory without asking.

        Longer than the interval (the refresh keeps tag answers younger than that), so a
        refresh that is a little late never sends the hot path to the registry.
        """
        return self.interval * (1.0 + self.jitter) + 60.0


def clamp_interval(seconds: float) -> float:
    """The refresh interval, bounded to [MIN_INTERVAL, MAX_INTERVAL]."""
    return min(max(float(seconds), MIN_INTERVAL), MAX_INTERVAL)


def next_refresh(fetched_at: float, schedule: Schedule, rand: float) -> float:
    """When an answer fetched at `fetched_at` is next looked up (interval +/- jitter)."""
    spread = (2.0 * rand - 1.0) * schedule.jitter
    return fetched_at + schedule.interval * (1.0 + spread)


def backoff_delay(failures: int, schedule: Schedule, rand: float) -> float:
    """How long to leave a registry alone after `failures` consecutive failures (>= 1)."""
    if failures <= 0:
        return 0.0
    raw = schedule.backoff_base * (2.0 ** min(failures - 1, 30))
    capped = min(raw, schedule.backoff_max)
    # "Equal jitter": between half and all of the capped delay.
    return capped * (0.5 + 0.5 * rand)


def is_fresh(fetched_at: float, has_digest: bool, now: float, schedule: Schedule) -> bool:
    """Whether a cached answer may be served from memory without asking the registry."""
    age = now - fetched_at
    if age < 0:  # the clock went back: do not trust the entry's age
        return False
    return age < (schedule.fresh_for if has_digest else schedule.negative_ttl)


def tag_queries(image_list: ImageList) -> tuple[RegistryQuery, ...]:
    """The lookups the refresh keeps warm: every allowed `name:tag` (no wildcard, no digest).

    `name:*` entries are looked up per image digest on demand; `name@digest` and `"*"` need
    no registry; a repository path with a `*` component names no repository to ask.
    """
    out: dict[RegistryQuery, None] = {}
    for pattern in image_list.images:
        if pattern.is_everything or pattern.digest is not None or pattern.tag is None:
            continue
        if pattern.any_tag or pattern.has_path_wildcard:
            continue
        out[RegistryQuery(pattern.domain, pattern.path, pattern.tag)] = None
    return tuple(out)
