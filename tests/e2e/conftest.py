"""End-to-end fixtures: the real agent in front of the private engine that tests/env started."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import DEFAULT_SETTINGS, AgentProcess, http_over_unix


@pytest.fixture(scope="session")
def agent(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for the session; tests set the settings they need with `set_settings`."""
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), stack.engine_socket)
    proc.start(DEFAULT_SETTINGS)
    yield proc
    code = proc.stop()
    assert code == 0, f"eci-agent did not stop cleanly (exit {code}):\n{proc.log()[-4000:]}"


DockerRun = Callable[..., subprocess.CompletedProcess[str]]


def _docker(host: str, stack: Any) -> DockerRun:
    def run(*args: str, check: bool = False, input: str | None = None, timeout: float = 120):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = host
        env["DOCKER_CONFIG"] = os.path.join(stack.tmpdir, "docker-config")
        env["DOCKER_BUILDKIT"] = "0"
        proc = subprocess.run(
            ["docker", *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def via_agent(agent: AgentProcess, stack: Any) -> DockerRun:
    """The docker CLI pointed at the agent."""
    return _docker("unix://" + agent.listen, stack)


@pytest.fixture(scope="session")
def direct(stack: Any) -> DockerRun:
    """The docker CLI pointed straight at the engine (to check what really happened)."""
    return _docker("unix://" + stack.engine_socket, stack)


@pytest.fixture
def name() -> str:
    """A unique container name, so a test can ask the engine whether it exists."""
    return "eci-t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def box(direct: DockerRun, stack: Any, name: str) -> Iterator[str]:
    """A running busybox container named `name` (no network), removed afterwards."""
    direct("run", "-d", "--name", name, "--network", "none", stack.images["busybox"],
           "sleep", "600", check=True)  # fmt: skip
    yield name
    direct("rm", "-f", name)


@pytest.fixture(autouse=True)
def _default_policy_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "agent" in request.fixturenames:
        request.getfixturevalue("agent").set_settings(DEFAULT_SETTINGS)


# -- swarm (session 7's reviews): the private engine as a one-node swarm, offline ---------------


def _engine_json(stack: Any, target: str) -> Any:
    reply = http_over_unix(
        stack.engine_socket,
        f"GET {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            out += rest[:n]
            body = rest[n + 2 :]
        body = out
    return json.loads(body) if body.strip() else None


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free now, in the range swarm takes for its data path (1024-49151)."""
    for _ in range(200):
        port = random.randint(20000, 49000)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


@pytest.fixture(scope="module")
def swarm(direct: Any, stack: Any) -> Iterator[str]:
    """The private engine as a one-node swarm; yields the swarm-side ID of `host`."""
    joined = direct("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"
    # swarm init makes this bridge in the host's network namespace; swarm leave keeps it.
    had_bridge = os.path.exists("/sys/class/net/docker_gwbridge")
    if not joined:
        port, data_port = _free_port(), _free_port(socket.SOCK_DGRAM)
        direct("swarm", "init", "--advertise-addr", f"127.0.0.1:{port}",
               "--listen-addr", f"127.0.0.1:{port}", "--data-path-port", str(data_port),
               check=True, timeout=120)  # fmt: skip
    try:
        net = _engine_json(stack, "/v1.41/networks/host?scope=swarm")
        assert isinstance(net, dict) and net.get("Scope") == "swarm", net
        yield str(net["Id"])
    finally:
        for sid in direct("service", "ls", "-q").stdout.split():
            direct("service", "rm", sid)
        if not joined:
            direct("swarm", "leave", "--force", timeout=120)
            if not had_bridge:
                subprocess.run(["ip", "link", "delete", "docker_gwbridge"], check=False,
                               capture_output=True)  # fmt: skip


# -- a user's folder and the pins (session 8) ----------------------------------------------------

#: The user other than root who owns the folders of the pin tests (nobody).
NOBODY = 65534


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's folder (owned by nobody, so not only root can change paths in it), with a
    folder `project` holding a file `seed`."""
    os.chmod(tmp_path, 0o755)
    user = tmp_path / "home"
    (user / "project").mkdir(parents=True)
    (user / "project" / "seed").write_text("the user's own file\n")
    for p in (user, user / "project", user / "project" / "seed"):
        os.chown(p, NOBODY, NOBODY)
    return user


@pytest.fixture
def etc_folder(name: str) -> Any:
    """A folder of root's inside /etc (stands for /etc/cron.d, /etc/sudoers.d, ...)."""
    folder = Path("/etc") / f"eci-review8-{name}"
    folder.mkdir(mode=0o755)
    (folder / "root-only").write_text("root's configuration\n")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def own_agent(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent of the test's own, sweeping its pins every second (grace 2 s)."""
    proc = AgentProcess(tmp_path_factory.mktemp("pin-agent"), stack.engine_socket,
                        extra_args=("--pin-sweep", "1"))  # fmt: skip
    proc.start(DEFAULT_SETTINGS)
    try:
        yield proc
    finally:
        proc.stop()


def user_link(link: Path, to: str | Path) -> None:
    """What the folder's owner does: a symlink of their own at `link`, leading to `to`."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(to)
    os.lchown(link, NOBODY, NOBODY)


def swap_to(path: Path, to: str | Path) -> None:
    """What the folder's owner can do: move `path` aside and put a link to `to` there."""
    path.rename(path.with_name(path.name + ".old"))
    user_link(path, to)
