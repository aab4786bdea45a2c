"""End-to-end fixtures: the real agent in front of the private engine that tests/env started."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.agent_process import DEFAULT_SETTINGS, AgentProcess


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
