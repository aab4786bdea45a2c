"""The tray's only way to the agent: its control API (HTTP + JSON over a unix socket).

The GUI never talks to the engine or reads the settings file itself. Every call blocks (with a
timeout), so the tray makes them from worker threads (`gui.runner`), never from the UI thread.
"""

from __future__ import annotations

import errno
import grp
import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

DEFAULT_CONTROL_SOCKET = "/run/eci-agent/control.sock"
#: The group the packaged service gives read access to (`--control-group eci-agent`); the
#: hint names the control socket's own group instead whenever it can be read.
CONTROL_GROUP = "eci-agent"

READ_TIMEOUT = 6.0  # status and features ask the engine too (its own timeout is 3 s)
ACTION_TIMEOUT = 15.0
REPULL_TIMEOUT = 900.0  # a pull of a big image can take minutes


class AgentUnavailable(Exception):
    """The agent's control socket does not answer usably; `str()` says why, `hint` what to do."""

    title = "eci-agent: not reachable"
    hint = "It keeps being retried; `eci-agent doctor` (as root) tells more."


class AgentNotRunning(AgentUnavailable):
    title = "eci-agent: not running"
    hint = "Start it, or ask your administrator to: sudo systemctl start eci-agent"


class NoAccess(AgentUnavailable):
    """Permission denied: the socket's mode, or the agent's own check (SO_PEERCRED)."""

    title = "eci-agent: no access for you"

    def __init__(self, message: str, group: str | None = CONTROL_GROUP) -> None:
        super().__init__(message)
        if group is None:
            self.hint = (
                "The agent gives its control API to no group here: ask your administrator to "
                "start it with --control-group and to add you to that group."
            )
        else:
            self.hint = (
                f"Ask your administrator to add you to the {group} group "
                f"(sudo usermod -aG {group} $USER), then log in again."
            )


def socket_group(path: str) -> str | None:
    """The group that may use the control socket (the agent chowns it to its
    `--control-group`); None when only root may (group root), CONTROL_GROUP if unknown."""
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return CONTROL_GROUP
    if gid == 0:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class ActionFailed(Exception):
    """The agent refused or failed an action (`status` is its HTTP status, `str()` its words)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _message(raw: bytes, status: int) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return f"eci-agent answered HTTP {status}"


class ControlClient:
    def __init__(self, path: str = DEFAULT_CONTROL_SOCKET, timeout: float = READ_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def _unavailable(self, err: OSError) -> AgentUnavailable:
        if isinstance(err, FileNotFoundError | ConnectionRefusedError) or err.errno in (
            errno.ENOENT,
            errno.ECONNREFUSED,
        ):
            return AgentNotRunning(f"nothing answers on the control socket {self.path}")
        if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
            return NoAccess(f"permission denied on {self.path}", socket_group(self.path))
        return AgentUnavailable(f"eci-agent is not reachable at {self.path}: {err}")

    def request(
        self, method: str, route: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """The JSON answer; AgentUnavailable when the agent cannot be asked (or refuses to let
        this user read), ActionFailed when it answers an action with an error."""
        conn = _UnixConnection(self.path, timeout if timeout is not None else self.timeout)
        headers = {"Host": "eci-agent"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, route, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as err:
            raise self._unavailable(err) from err
        except http.client.HTTPException as err:
            raise AgentUnavailable(f"eci-agent on {self.path} sent no valid answer: {err}") from err
        finally:
            conn.close()
        if resp.status >= 400:
            message = _message(raw, resp.status)
            if resp.status == 403 and method == "GET":
                # reads are refused only for who is asking
                raise NoAccess(message, socket_group(self.path))
            if method == "GET":
                raise AgentUnavailable(f"eci-agent answered {resp.status} for {route}: {message}")
            raise ActionFailed(resp.status, message)
        try:
            return json.loads(raw)
        except ValueError as err:
            raise AgentUnavailable(f"eci-agent sent an unreadable answer for {route}") from err

    def get(self, route: str) -> Any:
        return self.request("GET", route)

    def _object(self, route: str, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise AgentUnavailable(f"eci-agent sent an answer for {route} that is not an object")
        return doc

    # -- what the tray asks -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._object("/v1/status", self.get("/v1/status"))

    def features(self) -> dict[str, Any]:
        return self._object("/v1/features", self.get("/v1/features"))

    def events(
        self,
        after: int | None = None,
        limit: int = 100,
        kinds: Sequence[str] = (),
        newest: bool = False,
    ) -> dict[str, Any]:
        """One page of `GET /v1/events`: {"events": [...], "lastId": n, "more": bool}."""
        query: dict[str, str] = {"limit": str(limit)}
        if after is not None:
            query["after"] = str(after)
        if kinds:
            query["kind"] = ",".join(kinds)
        if newest:
            query["newest"] = "1"
        route = "/v1/events?" + urllib.parse.urlencode(query, safe=",")
        return self._object(route, self.get(route))

    def set_eci(self, enabled: bool | None) -> dict[str, Any]:
        """`POST /v1/eci`: on, off, or None to follow the administrator's setting again."""
        doc = self.request("POST", "/v1/eci", {"enabled": enabled}, timeout=ACTION_TIMEOUT)
        return self._object("/v1/eci", doc)

    def repull(self, image: str) -> dict[str, Any]:
        """`POST /v1/repull`; blocks for as long as the pull takes."""
        doc = self.request("POST", "/v1/repull", {"image": image}, timeout=REPULL_TIMEOUT)
        return self._object("/v1/repull", doc)
