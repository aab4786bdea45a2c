"""Is this local image one the imageList allows? Decided by digest, never by tag.

Theory of operation
-------------------
A tag is a local, movable label (`docker tag evil docker:cli` succeeds), so the local image is
matched through its *repo digests*: the content digests the engine recorded when the image was
pulled from (or pushed to) a repository. An entry admits the image when:

- `"*"`: always (local-only images included);
- `name@sha256:...`: the image has that repo digest for that repository;
- `name:tag`: the registry currently serves exactly the image's repo digest for `name:tag`;
- `name:*`: the registry serves the image's repo digest in that repository (under any tag);
- `allowDerivedImages`: the image is local-only (no repo digest at all) and its layer chain
  starts with the whole layer chain of a local image that one of the entries admits.

The shell asks the registry the `registry_queries` this module lists and passes the answers
back; nothing here does I/O, and an unanswered query is never read as a yes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.policy.imageref import ImagePattern, InvalidReference, parse_image_ref
from agent.settings.model import ImageList


@dataclass(frozen=True, slots=True)
class LocalImage:
    """An image as the engine describes it (`GET /images/{name}/json`)."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()

    def digests(self) -> tuple[tuple[str, str, str], ...]:
        """(domain, path, digest) for every repo digest the engine recorded."""
        out: list[tuple[str, str, str]] = []
        for text in self.repo_digests:
            try:
                ref = parse_image_ref(text)
            except InvalidReference:
                continue
            if ref.digest is not None:
                out.append((ref.domain, ref.path, ref.digest))
        return tuple(out)

    @property
    def is_local_only(self) -> bool:
        return not self.repo_digests


@dataclass(frozen=True, slots=True)
class RegistryQuery:
    """Ask the registry for `reference` (a tag or a digest) in repository `domain/path`."""

    domain: str
    path: str
    reference: str

    def __str__(self) -> str:
        sep = "@" if ":" in self.reference else ":"
        return f"{self.domain}/{self.path}{sep}{self.reference}"


@dataclass(frozen=True, slots=True)
class RegistryAnswer:
    """The digest the registry serves for a query, None when it has none, or why we don't know."""

    digest: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    allowed: bool
    reason: str  # why not (or how yes), for messages and events
    entry: str | None = None  # the imageList entry that admitted it
    stale: tuple[str, ...] = ()  # references whose local copy no longer matches the registry
    unknown: tuple[str, ...] = ()  # registry queries that could not be answered


def _entries(image_list: ImageList) -> tuple[ImagePattern, ...]:
    return tuple(p for p in image_list.images if not p.is_everything)


def registry_queries(
    image_list: ImageList, images: Iterable[LocalImage]
) -> tuple[RegistryQuery, ...]:
    """The registry lookups needed to judge `images` (the image and any derived-image bases)."""
    queries: dict[RegistryQuery, None] = {}
    for image in images:
        for domain, path, digest in image.digests():
            for entry in _entries(image_list):
                if entry.digest is not None or not entry.matches_repository(domain, path):
                    continue
                if entry.any_tag:
                    queries[RegistryQuery(domain, path, digest)] = None
                elif entry.tag is not None:
                    queries[RegistryQuery(domain, path, entry.tag)] = None
    return tuple(queries)


def _direct(
    image_list: ImageList, image: LocalImage, answers: Mapping[RegistryQuery, RegistryAnswer]
) -> ImageVerdict:
    stale: list[str] = []
    unknown: list[str] = []
    named = False
    for domain, path, digest in image.digests():
        for entry in _entries(image_list):
            if not entry.matches_repository(domain, path):
                continue
            named = True
            if entry.digest is not None:
                if entry.digest == digest:
                    return ImageVerdict(True, f"repo digest {digest} is pinned", entry.text)
                continue
            if entry.tag is None:
                continue
            query = RegistryQuery(domain, path, digest if entry.any_tag else entry.tag)
            answer = answers.get(query)
            if answer is None or answer.error is not None:
                why = answer.error if answer is not None else "not looked up"
                unknown.append(f"{query}: {why}")
                continue
            if answer.digest == digest:
                return ImageVerdict(True, f"registry serves {digest} for {query}", entry.text)
            if not entry.any_tag and answer.digest is not None:
                stale.append(f"{domain}/{path}:{entry.tag}")
    if stale:
        return ImageVerdict(False, "stale", stale=tuple(stale), unknown=tuple(unknown))
    if unknown:
        return ImageVerdict(False, "unverified", unknown=tuple(unknown))
    return ImageVerdict(False, "named" if named else "not listed")


def judge_image(
    image_list: ImageList,
    image: LocalImage,
    answers: Mapping[RegistryQuery, RegistryAnswer],
    bases: Iterable[LocalImage] = (),
) -> ImageVerdict:
    """Whether `image` may mount the engine socket (see the module doc for the rules)."""
    if image_list.allows_everything:
        return ImageVerdict(True, 'the image list allows every image ("*")', "*")
    verdict = _direct(image_list, image, answers)
    if verdict.allowed or not image_list.allow_derived_images or not image.is_local_only:
        return verdict
    for base in bases:
        if base.id == image.id or not base.layers:
            continue
        if image.layers[: len(base.layers)] != base.layers:
            continue
        base_verdict = _direct(image_list, base, answers)
        if base_verdict.allowed:
            return ImageVerdict(
                True, f"derived from {base.id} ({base_verdict.reason})", base_verdict.entry
            )
    return verdict
