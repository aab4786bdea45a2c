"""A blocking client for the control API, for the admin's commands (`eci-agent status`, ...)."""

from __future__ import annotations

import errno
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any


class ControlError(Exception):
    """The control API could not be used; `str()` is a sentence for the admin."""


class AgentNotRunning(ControlError):
    pass


class AccessDenied(ControlError):
    pass


class Refused(ControlError):
    """The agent answered with an error status (its message is the text)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
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


class ControlClient:
    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _explain(self, err: OSError) -> ControlError:
        if isinstance(err, FileNotFoundError | ConnectionRefusedError) or err.errno in (
            errno.ENOENT,
            errno.ECONNREFUSED,
        ):
            return AgentNotRunning(
                f"eci-agent is not running (nothing answers on its control socket {self.path})"
            )
        if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(
                f"permission denied on {self.path}: run as root or as a member of the agent's "
                "control group (eci-agent run --control-group)"
            )
        return ControlError(f"cannot talk to eci-agent on {self.path}: {err}")

    def _open(
        self, method: str, route: str, body: Any = None
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, self.timeout)
        headers = {"Host": "eci-agent"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, route, body=data, headers=headers)
            resp = conn.getresponse()
        except OSError as err:
            conn.close()
            raise self._explain(err) from err
        except http.client.HTTPException as err:
            conn.close()
            raise ControlError(f"eci-agent on {self.path} sent no valid answer: {err}") from err
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            raise Refused(resp.status, _message(raw, resp.status))
        return conn, resp

    def request(self, method: str, route: str, body: Any = None) -> Any:
        conn, resp = self._open(method, route, body)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise ControlError(f"eci-agent on {self.path} broke off its answer: {err}") from err
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ControlError(f"eci-agent sent an unreadable answer for {route}") from err

    def get(self, route: str) -> Any:
        return self.request("GET", route)

    def post(self, route: str, body: Any) -> Any:
        return self.request("POST", route, body)

    def lines(self, route: str) -> Iterator[dict[str, Any]]:
        """A streamed JSON-lines answer, one object at a time, until the agent ends it."""
        conn, resp = self._open("GET", route)
        if conn.sock is not None:
            conn.sock.settimeout(None)  # a follow waits as long as nothing happens
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as err:
                    raise ControlError(f"eci-agent on {self.path} ended the stream: {err}") from err
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def _message(raw: bytes, status: int) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return f"eci-agent answered HTTP {status}"
