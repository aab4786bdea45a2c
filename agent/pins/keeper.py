"""The agent's side of the pins' life: restore at start, sweep the unused ones now and then.

A pin is in use while the engine names its path anywhere it could mount it again: a
container's mounts (any state), a service's mounts, a volume's `device` option.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.pins.board import PinBoard
from agent.proxy.engine_client import EngineClient, EngineError

log = logging.getLogger(__name__)

#: Seconds between sweeps (one engine round trip each for containers, services, volumes, and
#: only when there are pins at all).
SWEEP_EVERY = 60.0


async def referenced_paths(engine: EngineClient) -> set[str]:
    """Every host path the engine's containers, services and volumes name. Raises
    `EngineError` if the containers or volumes cannot be listed (then nothing is swept)."""
    found: set[str] = set()
    for container in await engine.get_json("/containers/json", all="1"):
        for mount in container.get("Mounts") or []:
            if isinstance(mount, dict) and isinstance(mount.get("Source"), str):
                found.add(mount["Source"])
    volumes = await engine.get_json("/volumes")
    for volume in (volumes or {}).get("Volumes") or []:
        device = (volume.get("Options") or {}).get("device")
        if isinstance(device, str):
            found.add(device)
    try:
        services = await engine.get_json("/services")
    except EngineError:
        services = []  # not a swarm manager: no services
    for service in services or []:
        found.update(_service_sources(service))
    return found


def _service_sources(service: dict[str, Any]) -> set[str]:
    spec = ((service.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    out: set[str] = set()
    for mount in spec.get("Mounts") or []:
        if isinstance(mount, dict) and isinstance(mount.get("Source"), str):
            out.add(mount["Source"])
    previous = (service.get("PreviousSpec") or {}).get("TaskTemplate") or {}
    for mount in (previous.get("ContainerSpec") or {}).get("Mounts") or []:
        if isinstance(mount, dict) and isinstance(mount.get("Source"), str):
            out.add(mount["Source"])
    return out


async def sweep_once(board: PinBoard, engine: EngineClient) -> int:
    """Sweep the pins no one names; returns how many went."""
    if not await asyncio.to_thread(board.records):
        return 0
    try:
        referenced = await referenced_paths(engine)
    except EngineError as err:
        log.warning("pins: not swept, the engine did not list what it holds: %s", err)
        return 0
    gone = await asyncio.to_thread(board.sweep, referenced)
    for record in gone:
        log.info("pins: released %s (was %s)", record.pin, record.source)
    return len(gone)


async def keep_pins(board: PinBoard, engine: EngineClient, every: float = SWEEP_EVERY) -> None:
    """Restore the recorded pins, then sweep every `every` seconds until cancelled."""
    for record, why in await asyncio.to_thread(board.restore):
        if why is not None:
            log.warning(
                "pins: %s not restored for %s: %s (a container using it gets an empty folder "
                "until it is created again)",
                record.pin,
                record.source,
                why,
            )
    while True:
        try:
            await sweep_once(board, engine)
        except Exception:  # never let a sweep stop the agent
            log.exception("pins: sweep failed")
        await asyncio.sleep(every)
