"""Run the real `eci-agent run` as a subprocess in front of the test engine."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SETTINGS: dict[str, Any] = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {"value": True, "locked": True},
}


def settings_with(images: list[str] | None = None, **eci: Any) -> dict[str, Any]:
    """A settings document: ECI on and locked, with the given image list and ECI keys."""
    doc: dict[str, Any] = {
        "configurationFileVersion": 2,
        "enhancedContainerIsolation": {"value": True, "locked": True},
    }
    if images is not None:
        derived = eci.pop("allowDerivedImages", False)
        doc["enhancedContainerIsolation"]["dockerSocketMount"] = {
            "imageList": {"images": images, "allowDerivedImages": derived}
        }
    doc["enhancedContainerIsolation"].update(eci)
    return doc


def http_over_unix(path: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (send `Connection: close`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: read its answer
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


class AgentProcess:
    """`eci-agent run` with its own settings file, sockets and log, in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        engine_socket: str,
        control: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.engine_socket = engine_socket
        #: The control API socket (`--control`); default: control.sock in the runtime dir.
        self.control = control or str(workdir / "run" / "control.sock")
        self.extra_args = extra_args
        self.settings_dir = workdir / "etc"
        self.settings_path = self.settings_dir / "admin-settings.json"
        self.listen = str(workdir / "agent.sock")
        self.runtime_dir = workdir / "run"
        self.container_socket = str(self.runtime_dir / "container" / "docker.sock")
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.current_sha: str | None = None

    def start(self, settings: dict[str, Any] | str | None = None) -> None:
        self.settings_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(self.workdir, 0o755)
        os.chmod(self.settings_dir, 0o755)
        if settings is not None:
            self.current_sha = hashlib.sha256(self._write(settings)).hexdigest()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "run",
                "--engine", self.engine_socket,
                "--listen", self.listen,
                "--settings", str(self.settings_path),
                "--runtime-dir", str(self.runtime_dir),
                "--state-dir", str(self.workdir / "state"),
                "--listen-mode", "666",
                "--control", self.control,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eci-agent exited early:\n{self.log()}")
            try:
                reply = http_over_unix(
                    self.listen, b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n", 2
                )
                if reply.startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"eci-agent did not answer /_ping in time:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write(self, settings: dict[str, Any] | str) -> bytes:
        text = settings if isinstance(settings, str) else json.dumps(settings, indent=2)
        data = text.encode()
        tmp = self.settings_dir / ".admin-settings.json.tmp"
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.settings_path)
        return data

    def set_settings(self, settings: dict[str, Any] | str, timeout: float = 5.0) -> None:
        """Replace the settings file and wait until the agent says it applied it."""
        before = len(self.log())
        data = self._write(settings)
        full = hashlib.sha256(data).hexdigest()
        if full == self.current_sha:
            return
        self.current_sha = full
        sha = full[:12]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail = self.log()[before:]
            if f"sha256 {sha}" in tail and "applied" in tail:
                return
            time.sleep(0.02)
        raise AssertionError(f"the agent did not apply settings {sha}:\n{self.log()[before:]}")

    def stop(self, unpin: bool = True) -> int | None:
        """SIGTERM, and (`unpin`) the pins it left unmounted: the agent keeps them for the
        containers using them, but a test's folders must not stay mounted (nor be removed
        through a mount later)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if unpin:
            self.unpin()
        return self.proc.returncode

    @property
    def pins_dir(self) -> Path:
        return self.runtime_dir / "pins"

    def pinned(self) -> list[str]:
        """The pin mount points this agent has now (from the mount table)."""
        from agent.pins.board import mount_points

        below = str(self.pins_dir) + "/"
        return sorted(p for p in mount_points() if p.startswith(below))

    def unpin(self) -> None:
        from agent.pins.board import unmount

        for pin in self.pinned():
            unmount(pin)


REPO = Path(__file__).resolve().parents[2]


def eci_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real `eci-agent` command line (status, events, suggest, ...), from this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
