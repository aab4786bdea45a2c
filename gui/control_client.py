"""The tray's only way to the agent: its control API (HTTP + JSON over a unix socket).

The GUI never talks to the engine or reads the settings file itself.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

DEFAULT_CONTROL_SOCKET = "/run/eci-agent/control.sock"


class AgentUnavailable(Exception):
    """The agent's control socket does not answer (agent stopped, or no access)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ControlClient:
    def __init__(self, path: str = DEFAULT_CONTROL_SOCKET, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout

    def get(self, route: str) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", route)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as err:
            raise AgentUnavailable(f"eci-agent is not reachable at {self.path}: {err}") from err
        finally:
            conn.close()
        if resp.status != 200:
            raise AgentUnavailable(f"eci-agent answered {resp.status} for {route}")
        try:
            return json.loads(body)
        except ValueError as err:
            raise AgentUnavailable(f"eci-agent sent an unreadable answer for {route}") from err

    def status(self) -> dict[str, Any]:
        doc = self.get("/v1/status")
        if not isinstance(doc, dict):
            raise AgentUnavailable("eci-agent sent a status that is not an object")
        return doc
