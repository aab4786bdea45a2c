"""Which local copies of allowed images no longer match what the registry serves (pure).

After a tag moves in its repository (a new `:latest`), the image a user pulled earlier still
carries the old repo digest, so the image list no longer admits it. Docker Desktop's docs list
this as a caveat after a restart; eci-agent finds such copies at start and after each refresh
and names them, with the command that fixes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.imageref import InvalidReference, parse_image_ref
from agent.policy.images import RegistryQuery

REPULL_COMMAND = "eci-agent repull"


@dataclass(frozen=True, slots=True)
class RepullItem:
    """A local image tagged `reference` whose repo digests no longer match the registry's."""

    reference: str  # domain/path:tag, normalized
    image_id: str
    local_digests: tuple[str, ...]
    registry_digest: str
    registry_checked_at: float  # when the registry said so (wall clock)

    @property
    def fix(self) -> str:
        return f"{REPULL_COMMAND} {self.reference}"

    def as_event(self) -> dict[str, Any]:
        return {
            "image": self.reference,
            "image_id": self.image_id,
            "local_digests": list(self.local_digests),
            "registry_digest": self.registry_digest,
            "registry_checked_at": self.registry_checked_at,
            "fix": self.fix,
        }


def _repo_digests(summary: Mapping[str, Any], domain: str, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for text in summary.get("RepoDigests") or ():
        try:
            ref = parse_image_ref(text)
        except (InvalidReference, TypeError):
            continue
        if ref.domain == domain and ref.path == path and ref.digest is not None:
            out.append(ref.digest)
    return tuple(out)


def find_stale(
    registry_digests: Mapping[RegistryQuery, tuple[str, float]],
    images: Iterable[Mapping[str, Any]],
) -> list[RepullItem]:
    """Local images (engine `/images/json` summaries) tagged as an allowed `name:tag` whose repo
    digests for that repository do not include the digest the registry serves for it.

    `registry_digests`: tag query -> (digest, when it was learned). A local image with no repo
    digest for the repository (a local build or a re-tag) is not a stale copy: it never came
    from there, and the gate refuses it as not allowed.
    """
    wanted: dict[tuple[str, str, str], tuple[RegistryQuery, str, float]] = {}
    for query, (digest, when) in registry_digests.items():
        wanted[(query.domain, query.path, query.reference)] = (query, digest, when)
    out: list[RepullItem] = []
    for summary in images:
        image_id = summary.get("Id")
        if not isinstance(image_id, str):
            continue
        for tag_text in summary.get("RepoTags") or ():
            try:
                ref = parse_image_ref(tag_text)
            except (InvalidReference, TypeError):
                continue
            if ref.tag is None:
                continue
            hit = wanted.get((ref.domain, ref.path, ref.tag))
            if hit is None:
                continue
            query, digest, when = hit
            local = _repo_digests(summary, ref.domain, ref.path)
            if local and digest not in local:
                out.append(RepullItem(str(ref), image_id, local, digest, when))
    return out
