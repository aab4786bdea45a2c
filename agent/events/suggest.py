"""From recorded would-be denials to the smallest policy that would have let them through (pure).

Audit mode records what the policy WOULD refuse and lets it pass; `eci-agent suggest` reads
those `would-deny` events (as the control API gives them: JSON objects) and proposes:

* images to add to `dockerSocketMount.imageList` (each reference as the create named it);
* for an allow-type command list, the fewest commands that cover every blocked request (a
  greedy set cover over the commands that send each request); for a deny list, the entries
  that blocked real traffic, to remove or narrow;
* `eciAgent.isolationExceptions` for the host powers each image asked for.

It proposes, never applies: the admin reviews the result before putting it in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.policy.isolation import normalize_allow_token

IMAGE_RULES = frozenset({"socket-mount-image", "socket-mount-image-unknown", "container-peer"})


@dataclass
class Suggestion:
    images: list[str] = field(default_factory=list)
    allow_commands: list[str] = field(default_factory=list)  # add to an allow list
    deny_entries_hit: dict[str, int] = field(default_factory=dict)  # deny entry -> requests
    per_image_lists: dict[str, list[str]] = field(default_factory=dict)  # image -> commands
    isolation: dict[str, list[str]] = field(default_factory=dict)  # image -> option tokens
    other: dict[str, int] = field(default_factory=dict)  # rule -> count, not expressible
    events: int = 0

    def as_settings(self) -> dict[str, Any]:
        """The proposal as admin-settings.json fragments (to review and merge by hand)."""
        out: dict[str, Any] = {}
        socket: dict[str, Any] = {}
        if self.images:
            socket["imageList"] = {"images": list(self.images)}
        if self.allow_commands:
            socket["commandList"] = {"type": "allow", "commands": list(self.allow_commands)}
        if socket:
            out["enhancedContainerIsolation"] = {"dockerSocketMount": socket}
        agent: dict[str, Any] = {}
        if self.per_image_lists:
            agent["commandLists"] = [
                {"images": [image], "type": "allow", "commands": commands}
                for image, commands in sorted(self.per_image_lists.items())
            ]
        if self.isolation:
            agent["isolationExceptions"] = [
                {"images": [image], "allow": tokens}
                for image, tokens in sorted(self.isolation.items())
            ]
        if agent:
            out["eciAgent"] = agent
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "add": self.as_settings(),
            "denyEntriesThatBlockedTraffic": dict(sorted(self.deny_entries_hit.items())),
            "notExpressible": dict(sorted(self.other.items())),
        }


def cover(requests: Iterable[frozenset[str]]) -> list[str]:
    """The fewest commands (greedy) such that every request is sent by one of them.

    Ties go to the name that sorts first, so the answer is stable."""
    todo = [r for r in requests if r]
    chosen: list[str] = []
    while todo:
        counts: dict[str, int] = {}
        for request in todo:
            for command in request:
                counts[command] = counts.get(command, 0) + 1
        best = min(counts, key=lambda c: (-counts[c], len(c), c))
        chosen.append(best)
        todo = [r for r in todo if best not in r]
    return sorted(chosen)


def _commands(event: Mapping[str, Any]) -> frozenset[str]:
    raw = event.get("commands") or ()
    if isinstance(raw, str):
        raw = raw.split(",")
    return frozenset(str(c) for c in raw if c)


def suggest(events: Iterable[Mapping[str, Any]]) -> Suggestion:
    out = Suggestion()
    global_allow: list[frozenset[str]] = []
    per_image: dict[str, list[frozenset[str]]] = {}
    for event in events:
        if event.get("kind") != "would-deny":
            continue
        out.events += 1
        rule = str(event.get("rule") or "")
        extra = event.get("extra") or {}
        image = str(event.get("image") or "")
        if rule in IMAGE_RULES and image:
            if image not in out.images:
                out.images.append(image)
        elif rule == "command-blocked":
            commands = _commands(event)
            if extra.get("list_type") == "deny":
                for entry in str(extra.get("matched") or "").split(","):
                    if entry:
                        out.deny_entries_hit[entry] = out.deny_entries_hit.get(entry, 0) + 1
            elif extra.get("list_source") == "eciAgent.commandLists" and image:
                per_image.setdefault(image, []).append(commands)
            else:
                global_allow.append(commands)
        elif rule.startswith("isolation") and image and extra.get("options"):
            for token in str(extra["options"]).split(","):
                if not token:
                    continue
                try:
                    normalize_allow_token(token)
                except ValueError:  # e.g. a --cgroup-parent naming a container: never waived
                    key = f"{rule}: {token}"
                    out.other[key] = out.other.get(key, 0) + 1
                    continue
                tokens = out.isolation.setdefault(image, [])
                if token not in tokens:
                    tokens.append(token)
        else:
            out.other[rule or "unknown"] = out.other.get(rule or "unknown", 0) + 1
    out.allow_commands = cover(global_allow)
    out.per_image_lists = {image: cover(reqs) for image, reqs in per_image.items()}
    return out
