"""The agent's services around the proxy: the event store, the control API, engine health.

`AgentServices` is the real `ControlProvider`: it answers from the settings in force
(`SettingsState`), the event store and the engine itself, and records what happens as events.
`eci-agent run` creates it before the settings watcher starts (so the first load is recorded),
calls `settings_changed` from its settings hook, and starts the control socket once the proxy
listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agent
from agent import native
from agent.control.api import AccessPolicy, ActionRefused, Caller, ControlApp, NotAvailable
from agent.control.server import ControlServer
from agent.events.model import Kind, format_time
from agent.events.store import EventStore, Retention
from agent.proxy.engine_client import EngineClient, EngineError
from agent.registry.digests import DigestService
from agent.registry.puller import RepullError, pull_fresh, repull_reference
from agent.registry.repull import RepullItem
from agent.settings.model import UNREADABLE_FILE_DEFAULT, SettingsLocked
from agent.settings.state import Change, ChangeKind, SettingsState

log = logging.getLogger("eci_agent.services")

EVENTS_FILE = "events.db"
CONTROL_SOCKET = "control.sock"
ENGINE_TIMEOUT = 3.0
ENGINE_PROBE_INTERVAL = 30.0


def agent_version() -> str:
    return agent.__version__


def _code() -> dict[str, Any]:
    """Whether this process runs the mypyc-compiled hot modules (agent/native.py)."""
    code = native.status()
    return {"compiled": code.compiled, "stale": code.stale, "summary": code.describe()}


def _when(seconds: float | None) -> str | None:
    return format_time(seconds) if seconds is not None else None


@dataclass
class ServicesConfig:
    state_dir: Path
    control_path: str
    engine_socket: str
    settings_path: Path
    #: The agent's sockets by name (host, container), for status.
    listeners: Mapping[str, str] = field(default_factory=dict)
    control_group: int | None = None
    retention: Retention = field(default_factory=Retention)
    engine_probe_interval: float = ENGINE_PROBE_INTERVAL

    @property
    def control_mode(self) -> int:
        return 0o660 if self.control_group is not None else 0o600


#: How long the list of containers ECI would refuse to start is reused in status.
PREEXISTING_TTL = 10.0


class AgentServices:
    """See the module doc. Implements `agent.control.api.ControlProvider`."""

    def __init__(
        self, config: ServicesConfig, state: SettingsState, store: EventStore | None = None
    ) -> None:
        self.config = config
        self.state = state
        self.store = (
            store
            if store is not None
            else EventStore(config.state_dir / EVENTS_FILE, retention=config.retention)
        )
        self.engine = EngineClient(config.engine_socket, keep=1, timeout=ENGINE_TIMEOUT)
        self.started_at = time.time()
        self.app = ControlApp(
            self, AccessPolicy(owner_uid=os.geteuid(), group=config.control_group)
        )
        self.server: ControlServer | None = None
        self._engine_ok: bool | None = None
        self._engine_error: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self.digests: DigestService | None = None
        self.gate: Any = None  # the proxy's Gate: isolation facts and pre-existing containers
        self._preexisting: tuple[float, list[dict[str, Any]]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve the control API (on `sock` when given, e.g. from socket activation)."""
        self._socket_activated = sock is not None
        self.server = ControlServer(
            self.config.control_path,
            self.app,
            mode=self.config.control_mode,
            group=self.config.control_group,
            sock=sock,
        )
        await self.server.start()
        self.store.record(
            Kind.AGENT_STARTED, f"eci-agent {agent_version()} started", pid=os.getpid()
        )
        self._probe = asyncio.create_task(self._probe_engine())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.server is not None:
            await self.server.stop()
        await self.engine.close()
        self.store.record(Kind.AGENT_STOPPED, "eci-agent stopped", pid=os.getpid())
        await asyncio.to_thread(self.store.close)

    # -- what the rest of the agent reports ---------------------------------------------------

    @property
    def events(self) -> EventStore:
        return self.store

    def settings_changed(self, change: Change) -> None:
        """The settings hook: a reload that changed something, or a refused file."""
        if change.kind is ChangeKind.UNCHANGED:
            return
        effective = change.effective
        settings = effective.settings
        extra: dict[str, Any] = {
            "source": settings.source,
            "eciEnabled": effective.eci_enabled,
            "locked": settings.eci.locked,
        }
        if change.error is None:
            self.store.record(
                Kind.POLICY_RELOADED,
                change.message,
                settings_sha256=settings.sha256,
                extra=extra,
            )
        else:
            self.store.record(
                Kind.SETTINGS_REJECTED,
                change.message,
                settings_sha256=settings.sha256,  # the policy kept in force
                extra={**extra, "error": change.error, "file": str(self.config.settings_path)},
            )

    # -- ControlProvider ------------------------------------------------------------------------

    def lock_reason(self) -> str | None:
        settings = self.state.current.settings
        if not settings.eci.locked:
            return None
        return str(SettingsLocked(settings.source, unreadable=settings is UNREADABLE_FILE_DEFAULT))

    async def set_eci(self, enabled: bool | None, caller: Caller) -> dict[str, Any]:
        try:
            change = self.state.set_user_choice(enabled)
        except SettingsLocked as err:
            raise ActionRefused(str(err)) from err
        effective = change.effective
        if change.kind is not ChangeKind.UNCHANGED:
            self.store.record(
                Kind.ECI_SWITCHED,
                change.message,
                uid=caller.uid,
                pid=caller.pid,
                gid=caller.gid,
                listener=caller.listener,
                settings_sha256=effective.settings.sha256,
                extra={"userChoice": enabled, "eciEnabled": effective.eci_enabled},
            )
        return {
            "message": change.message,
            "enforcing": effective.eci_enabled,
            "userChoice": effective.user_choice,
        }

    def attach_gate(self, gate: Any) -> None:
        self.gate = gate

    async def _isolation(self) -> dict[str, Any] | None:
        """The host's isolation level, and containers ECI would not let start (cached 30 s)."""
        if self.gate is None:
            return None
        from agent.policy.isolation import isolation_status

        try:
            engine = await self.gate.engine_isolation()
        except (EngineError, OSError) as err:
            return {"error": f"cannot ask the engine: {err}"}
        now = time.monotonic()
        if self._preexisting is None or now - self._preexisting[0] > PREEXISTING_TTL:
            try:
                found = await self.gate.preexisting_containers()
            except (EngineError, OSError) as err:
                return {"text": isolation_status(engine), "error": str(err)}
            listed = [
                {
                    "id": cid,
                    "name": cname,
                    "image": image,
                    "refused": [v.option for v in violations],
                    "fix": f"docker rm {cname or cid[:12]}, then create it again",
                }
                for cid, cname, image, violations in found
            ]
            self._preexisting = (now, listed)
        text = isolation_status(engine)
        return {
            "level": text.split("\n", 1)[0].removeprefix("isolation: ").split(" - ", 1)[0],
            "text": text,
            "sysbox": engine.has_sysbox,
            "usernsRemap": engine.userns_remap,
            "rootless": engine.rootless,
            "refusedToStart": self._preexisting[1],
        }

    def attach_digests(self, digests: DigestService) -> None:
        """The registry digest service: its cache and stale copies go into status and events."""
        self.digests = digests

        def stale(item: RepullItem) -> None:
            self.store.record(
                Kind.NEEDS_REPULL,
                f"the local copy of {item.reference} no longer matches its registry; "
                f"fix: {item.fix}",
                image=item.reference,
                digest=item.registry_digest,
                extra=item.as_event(),
            )

        digests.on_stale = stale

    async def repull(self, image: str, caller: Caller) -> dict[str, Any]:
        reason = self.lock_reason()
        if reason is not None:
            raise ActionRefused(reason)
        if self.digests is None:
            raise NotAvailable("this agent has no registry digest service")
        try:
            domain, _name, _tag = repull_reference(image)
        except RepullError as err:
            raise ActionRefused(str(err)) from err
        credentials = self.digests.client.credentials_for(domain)
        try:
            outcome = await asyncio.to_thread(
                pull_fresh, self.config.engine_socket, image, credentials
            )
        except RepullError as err:
            raise ActionRefused(f"re-pull of {image} failed: {err}") from err
        self.store.record(
            Kind.REPULL_DONE,
            outcome.summary(),
            image=outcome.reference,
            uid=caller.uid,
            pid=caller.pid,
            gid=caller.gid,
            listener=caller.listener,
            extra={
                "oldId": outcome.old_id,
                "newId": outcome.new_id,
                "removedOld": outcome.removed_old,
            },
        )
        await self.digests.check_local_images()
        return {
            "message": outcome.summary(),
            "image": outcome.reference,
            "oldId": outcome.old_id,
            "newId": outcome.new_id,
            "removedOld": outcome.removed_old,
        }

    async def features(self) -> dict[str, Any]:
        """What this machine and the settings in force give (`agent.control.features`), with
        the agent's own services first."""
        from agent.control.features import evaluate, load_default_table, mode_of, platform_from
        from agent.policy.isolation import engine_isolation

        effective = self.state.current
        settings = effective.settings
        locked = settings.eci.locked
        version, info = await self._engine_facts()
        services = [
            _feature(
                "user-eci-switch",
                "locked" if locked else "available",
                "POST /v1/eci; only while enhancedContainerIsolation.locked is false",
            ),
            _feature("event-store", "enabled", str(self.store.path)),
            _feature("control-api", "enabled", self.config.control_path),
            _feature(
                "repull",
                "available" if self.digests is not None and not locked else "locked",
                "POST /v1/repull; only while enhancedContainerIsolation.locked is false "
                "(root can always run `eci-agent repull`)",
            ),
            _feature(
                "socket-activation",
                "in use" if getattr(self, "_socket_activated", False) else "available",
                "systemd units eci-agent.socket, eci-agent-container.socket and "
                "eci-agent-control.socket hand the agent its sockets, which outlive restarts",
            ),
        ]
        report = evaluate(
            load_default_table(),
            settings,
            platform=platform_from(version, info),
            engine=engine_isolation(info) if info is not None else None,
            mode=mode_of(effective.eci_enabled, settings.extensions.audit_mode),
            extra_rows=[{**row, "kind": "service"} for row in services],
        )
        return report.to_dict()

    async def _engine_facts(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """`GET /version` and `GET /info`, each None when the engine does not answer it."""
        version: dict[str, Any] | None = None
        info: dict[str, Any] | None = None
        try:
            version = await self.engine.version()
            answer = await self.engine.get_json("/info")
            info = answer if isinstance(answer, dict) else None
        except (EngineError, TypeError, ValueError):
            pass
        return version, info

    async def status(self) -> dict[str, Any]:
        effective = self.state.current
        settings = effective.settings
        engine = await self._engine_status()
        error = self.state.error
        return {
            "agent": {
                "version": agent_version(),
                "pid": os.getpid(),
                "startedAt": _when(self.started_at),
                "code": _code(),
            },
            "enforcing": effective.eci_enabled and not settings.extensions.audit_mode,
            "audit": effective.eci_enabled and settings.extensions.audit_mode,
            "mode": (
                "off"
                if not effective.eci_enabled
                else "audit"
                if settings.extensions.audit_mode
                else "enforcing"
            ),
            "locked": settings.eci.locked,
            "settingsError": error,
            "eci": {
                "enabled": effective.eci_enabled,
                "value": settings.eci.value,
                "locked": settings.eci.locked,
                "userChoice": effective.user_choice,
            },
            "settings": {
                "path": str(self.config.settings_path),
                "source": settings.source,
                "sha256": settings.sha256,
                "builtinDefault": settings.is_builtin_default,
                "lastReload": _when(self.state.last_reload),
                "lastGood": _when(self.state.last_good_at),
                "error": error,
            },
            "engine": engine,
            "listeners": {**self.config.listeners, "control": self.config.control_path},
            "isolation": await self._isolation(),
            "registry": self.digests.status() if self.digests is not None else None,
            "needsRepull": (
                [i.as_event() for i in self.digests.needs_repull()]
                if self.digests is not None
                else []
            ),
            "events": {
                "path": str(self.store.path),
                "lastId": self.store.last_id,
                "pending": self.store.pending,
                "dropped": self.store.dropped,
                "retention": {
                    "maxAgeDays": self.store.retention.max_age_days,
                    "maxRows": self.store.retention.max_rows,
                },
            },
        }

    # -- the engine -----------------------------------------------------------------------------

    async def _engine_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"socket": self.config.engine_socket}
        try:
            version = await self.engine.version()
        except (EngineError, TypeError, ValueError) as err:
            message = err.message if isinstance(err, EngineError) else f"bad answer: {err}"
            self._engine_seen(False, message)
            return {**doc, "reachable": False, "error": message}
        self._engine_seen(True, None)
        return {
            **doc,
            "reachable": True,
            "version": version.get("Version"),
            "apiVersion": version.get("ApiVersion"),
            "minApiVersion": version.get("MinAPIVersion"),
            "os": version.get("Os"),
            "arch": version.get("Arch"),
        }

    def _engine_seen(self, ok: bool, error: str | None) -> None:
        before, self._engine_ok, self._engine_error = self._engine_ok, ok, error
        if ok and before is False:
            self.store.record(Kind.ENGINE_REACHABLE, "the engine answers again")
        elif not ok and before is not False:
            self.store.record(
                Kind.ENGINE_UNREACHABLE,
                f"the engine at {self.config.engine_socket} does not answer: {error}",
                extra={"socket": self.config.engine_socket},
            )

    async def _probe_engine(self) -> None:
        while True:
            await self._engine_status()
            await asyncio.sleep(self.config.engine_probe_interval)


def _feature(name: str, state: str, detail: str = "") -> dict[str, str]:
    doc = {"name": name, "state": state}
    if detail:
        doc["detail"] = detail
    return doc
