"""Pull a fresh copy of an allowed image through the engine, then drop the stale one.

The I/O half of `eci-agent repull` and of the control API's `POST /v1/repull` (the tray's
re-pull prompt): the engine pulls (with the registry credentials the agent holds), progress
lines go to a callback, and the image ID the tag pointed at before is removed only when no
container uses it and no other tag names it. Blocking (docker-py); run it in a thread from
asyncio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.policy.imageref import InvalidReference, parse_image_ref
from agent.registry.client import Credentials

ENGINE_API = "1.41"


class RepullError(Exception):
    """The pull could not be done; the message says why in words a user can act on."""


@dataclass(frozen=True, slots=True)
class RepullOutcome:
    reference: str  # name:tag as pulled
    old_id: str | None
    new_id: str
    removed_old: bool
    kept_because: str | None = None  # why the old image stayed, when it did

    def summary(self) -> str:
        if self.old_id is None or self.old_id == self.new_id:
            return f"{self.reference} is {self.new_id} (nothing stale to remove)"
        if self.removed_old:
            return f"{self.reference} is now {self.new_id}; removed the stale image {self.old_id}"
        return (
            f"{self.reference} is now {self.new_id}; kept the stale image {self.old_id}: "
            f"{self.kept_because}"
        )


def repull_reference(text: str) -> tuple[str, str, str]:
    """(domain, name, tag) of a `name:tag` to re-pull; RepullError for anything else."""
    try:
        ref = parse_image_ref(text)
    except InvalidReference as err:
        raise RepullError(str(err)) from err
    if ref.digest is not None or ref.tag is None:
        raise RepullError(f"{text}: give a name:tag (an image pinned by digest never moves)")
    return ref.domain, ref.name, ref.tag


def progress_line(event: dict[str, Any], last: dict[str, str]) -> str | None:
    """One line per layer and status of the engine's pull stream, not one per tick."""
    status = str(event.get("status") or "")
    layer = str(event.get("id") or "")
    progress = str(event.get("progress") or "")
    if progress and last.get(layer) == status:
        return None
    last[layer] = status
    line = f"{layer}: {status}" if layer else status
    return line + (f" {progress}" if progress else "")


def pull_fresh(
    engine_socket: str,
    text: str,
    credentials: Credentials | None,
    progress: Callable[[str], None] = lambda _line: None,
) -> RepullOutcome:
    import docker
    import docker.errors

    _domain, name, tag = repull_reference(text)
    reference = f"{name}:{tag}"
    api = docker.APIClient(base_url="unix://" + engine_socket, version=ENGINE_API, timeout=600)
    try:
        try:
            old_id: str | None = api.inspect_image(reference)["Id"]
        except docker.errors.ImageNotFound:
            old_id = None
        auth = (
            {"username": credentials.username, "password": credentials.password}
            if credentials is not None
            else None
        )
        progress(f"Pulling {reference} through the engine at {engine_socket}")
        last: dict[str, str] = {}
        for event in api.pull(name, tag=tag, stream=True, decode=True, auth_config=auth):
            if event.get("error"):
                raise RepullError(f"the engine could not pull {reference}: {event['error']}")
            line = progress_line(event, last)
            if line is not None:
                progress(line)
        new_id = api.inspect_image(reference)["Id"]
        if old_id is None or old_id == new_id:
            return RepullOutcome(reference, old_id, new_id, removed_old=False)
        users = [c for c in api.containers(all=True) if c.get("ImageID") == old_id]
        if users:
            names = ", ".join((c.get("Names") or [c["Id"][:12]])[0].lstrip("/") for c in users)
            return RepullOutcome(reference, old_id, new_id, False, f"used by {names}")
        try:
            api.remove_image(old_id)
        except docker.errors.APIError as err:
            return RepullOutcome(reference, old_id, new_id, False, str(err.explanation or err))
        return RepullOutcome(reference, old_id, new_id, removed_old=True)
    except docker.errors.APIError as err:
        raise RepullError(f"the engine answered: {err.explanation or err}") from err
    except docker.errors.DockerException as err:
        raise RepullError(str(err)) from err
    finally:
        api.close()
