"""Image references, parsed and normalized the way the docker CLI does it.

Theory of operation
-------------------
The docker CLI (distribution's `reference.ParseNormalizedNamed`) reads `docker:cli` as
`docker.io/library/docker:cli`: the first path component is a registry host only when it
contains a `.` or a `:` or is `localhost` (or has upper-case letters, which then makes the
reference invalid as a name), `index.docker.io` is spelled `docker.io`, and official images
live under `library/`. No tag means `latest`, unless a digest pins the image.

`ImageRef` is a concrete reference (what a container create names). `ImagePattern` is an entry
of `imageList.images`: a reference whose tag may be `*` ("any tag"), whose repository path may
use `*` for one whole path component (`testcontainers/*:*`, as the seeds' examples do), or the
lone `"*"` (every image, local-only ones included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


class InvalidReference(ValueError):
    """A string that is not an image reference the docker CLI would accept."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {why}")
        self.text = text
        self.why = why


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalized, concrete image reference: `domain/path[:tag][@digest]`.

    `tag` is None only when a digest pins the image and no tag was given.
    """

    domain: str
    path: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository name without tag or digest, as the seeds' denial messages show it."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short form the CLI prints (`docker`, `localhost:5000/x`)."""
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            if path.startswith(OFFICIAL_REPO_PREFIX) and path.count("/") == 1:
                path = path[len(OFFICIAL_REPO_PREFIX) :]
            return path
        return self.name

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_digest(text: str, original: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, digest = text.rsplit("@", 1)
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(original, f"malformed digest {digest!r}")
    algorithm, hexpart = digest.split(":", 1)
    if algorithm == "sha256" and not _SHA256_RE.fullmatch(digest):
        raise InvalidReference(
            original, "a sha256 digest must be 'sha256:' followed by 64 lower-case hex digits"
        )
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InvalidReference(original, f"unsupported digest algorithm {algorithm!r}")
    lengths = {"sha256": 64, "sha384": 96, "sha512": 128}
    if len(hexpart) != lengths[algorithm] or hexpart != hexpart.lower():
        raise InvalidReference(
            original, f"a {algorithm} digest needs {lengths[algorithm]} lower-case hex digits"
        )
    return rest, digest


def _split_tag(text: str) -> tuple[str, str | None]:
    # A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        return text[:colon], text[colon + 1 :]
    return text, None


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, remainder
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _parse(text: str, *, wildcards: bool) -> tuple[str, str, str | None, str | None]:
    if not text:
        raise InvalidReference(text, "empty reference")
    if text != text.strip():
        raise InvalidReference(text, "leading or trailing white space")
    if "://" in text:
        raise InvalidReference(text, "a reference has no scheme (drop 'https://')")
    rest, digest = _split_digest(text, text)
    name, tag = _split_tag(rest)
    if tag is not None and not (wildcards and tag == "*") and not _TAG_RE.fullmatch(tag):
        raise InvalidReference(text, f"malformed tag {tag!r}")
    if not name:
        raise InvalidReference(text, "missing repository name")
    if _HEX64_RE.fullmatch(name):
        raise InvalidReference(text, "a 64-hex string is an image ID, not a repository name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(text, f"repository name longer than {NAME_TOTAL_LENGTH_MAX}")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain):
        if domain.lower() == domain:
            raise InvalidReference(text, f"malformed registry host {domain!r}")
        raise InvalidReference(text, "repository name must be lowercase")
    if path.lower() != path:
        raise InvalidReference(text, "repository name must be lowercase")
    components = path.split("/")
    for component in components:
        if wildcards and component == "*":
            continue
        if not _PATH_RE.fullmatch(component):
            raise InvalidReference(text, f"malformed repository path component {component!r}")
    if wildcards and "*" in components and digest is not None:
        raise InvalidReference(text, "a repository wildcard cannot be pinned to a digest")
    if wildcards and tag == "*" and digest is not None:
        raise InvalidReference(text, "a tag wildcard cannot be pinned to a digest")
    return domain, path, tag, digest


def parse_image_ref(text: str) -> ImageRef:
    """Parse and normalize a concrete reference (`alpine` -> `docker.io/library/alpine:latest`).

    Raises `InvalidReference` with the CLI's reason when the text is not a reference.
    """
    domain, path, tag, digest = _parse(text, wildcards=False)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(domain, path, tag, digest)


@dataclass(frozen=True, slots=True)
class ImagePattern:
    """One `imageList.images` entry, normalized.

    - `is_everything`: the lone `"*"`;
    - `tag` is `"*"` for any tag, a tag, or None when only a digest pins the image;
    - `path` may contain whole `*` components, each matching exactly one path component.
    """

    text: str
    domain: str = ""
    path: str = ""
    tag: str | None = None
    digest: str | None = None
    is_everything: bool = False

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if not self.is_everything else "*"

    @property
    def any_tag(self) -> bool:
        return self.tag == "*"

    @property
    def has_path_wildcard(self) -> bool:
        return "*" in self.path.split("/")

    @property
    def needs_registry(self) -> bool:
        """Whether matching needs the registry's digest (not for `*` or `name@digest`)."""
        return not self.is_everything and self.digest is None

    def normalized(self) -> str:
        if self.is_everything:
            return "*"
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def matches_name(self, ref: ImageRef) -> bool:
        """Whether `ref`'s repository name and tag fall under this entry (digests not checked)."""
        if not self.matches_repository(ref.domain, ref.path):
            return False
        if self.tag is None or self.tag == "*":
            return True
        return ref.tag == self.tag

    def matches_repository(self, domain: str, path: str) -> bool:
        """Whether repository `domain/path` falls under this entry, whatever the tag."""
        if self.is_everything:
            return True
        if domain != self.domain:
            return False
        if not self.has_path_wildcard:
            return path == self.path
        mine = self.path.split("/")
        theirs = path.split("/")
        if len(mine) != len(theirs):
            return False
        return all(m == "*" or m == t for m, t in zip(mine, theirs, strict=True))

    def __str__(self) -> str:
        return self.normalized()


def parse_image_pattern(text: str) -> ImagePattern:
    """Parse an `imageList.images` entry; raises `InvalidReference` when it is malformed."""
    if text == "*":
        return ImagePattern(text=text, is_everything=True)
    domain, path, tag, digest = _parse(text, wildcards=True)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImagePattern(text=text, domain=domain, path=path, tag=tag, digest=digest)
