"""Allowed-image digests over time, against real loopback registries and the private engine.

Each test runs its own agent (own state dir, own flags) in front of the session's engine.
Outcomes are checked through the engine (does the container exist, which image ID does a tag
name); the agent's log is read only for what has no other outlet yet (the needs-re-pull event
and the absence of secrets).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, http_over_unix, settings_with
from tests.env.registries import start_token_registry

pytestmark = pytest.mark.engine

DENIED = "docker socket mount denied"
PASSWORD = "s3cret-" + uuid.uuid4().hex  # grep-able: must never show up in a log
USER = "eci-user"
REPO_ROOT = Path(__file__).resolve().parents[2]


class RegistryAgent(AgentProcess):
    """`eci-agent run` with a chosen state dir and extra flags."""

    def __init__(self, workdir: Path, engine_socket: str, state_dir: Path) -> None:
        super().__init__(workdir, engine_socket)
        self.state_dir = state_dir

    def launch(self, settings: dict[str, Any], *extra: str, wait: bool = True) -> None:
        self.settings_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(self.workdir, 0o755)
        self._write(settings)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "agent", "run", "-v",
                    "--engine", self.engine_socket,
                    "--listen", self.listen,
                    "--settings", str(self.settings_path),
                    "--runtime-dir", str(self.runtime_dir),
                    "--state-dir", str(self.state_dir),
                    "--listen-mode", "666",
                    "--refresh-interval", "10",
                    *extra,
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            )  # fmt: skip
        if not wait:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eci-agent exited early:\n{self.log()}")
            try:
                ping = b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
                if http_over_unix(self.listen, ping, 2).startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"eci-agent did not answer /_ping in time:\n{self.log()}")


@pytest.fixture
def agents(tmp_path: Path, stack: Any) -> Iterator[Callable[..., RegistryAgent]]:
    """Start agents (stopped at the end); each call gets a fresh workdir."""
    made: list[RegistryAgent] = []

    def make(state_dir: Path, settings: dict[str, Any], *extra: str) -> RegistryAgent:
        work = Path(f"/tmp/eci-lc-{uuid.uuid4().hex[:8]}")  # short: unix socket paths
        work.mkdir(mode=0o755)
        agent = RegistryAgent(work, stack.engine_socket, state_dir)
        made.append(agent)
        agent.launch(settings, *extra)
        return agent

    yield make
    for agent in made:
        agent.stop()
        import shutil

        shutil.rmtree(agent.workdir, ignore_errors=True)


def docker(
    stack: Any, *args: str, host: str | None = None, config: Path | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = host or "unix://" + stack.engine_socket
    env["DOCKER_CONFIG"] = str(config or Path(stack.tmpdir) / "docker-config")
    env["DOCKER_BUILDKIT"] = "0"
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=120, **kw
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def build(stack: Any, tmp: Path, ref: str, label: str) -> str:
    """A small image FROM the busybox fixture, unique by its label; returns its ID."""
    ctx = tmp / ("ctx-" + uuid.uuid4().hex[:8])
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {stack.images['busybox']}\nLABEL eci.test={label}\n")
    ok(docker(stack, "build", "-q", "-t", ref, str(ctx)))
    return image_id(stack, ref)


def image_id(stack: Any, ref: str) -> str:
    return ok(docker(stack, "image", "inspect", "--format", "{{.Id}}", ref)).strip()


def exists(stack: Any, name: str) -> bool:
    out = ok(docker(stack, "ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}"))
    return name in out.split()


def create_via(stack: Any, agent: RegistryAgent, name: str, ref: str) -> Any:
    return docker(
        stack, "create", "--name", name, "--network", "none",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", ref, "true",
        host="unix://" + agent.listen,
    )  # fmt: skip


def agent_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def login_config(tmp: Path, registry: str, user: str, password: str, mode: int = 0o600) -> Path:
    """An admin's docker config.json with `auths` for `registry`."""
    path = tmp / f"config-{uuid.uuid4().hex[:6]}.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}, "credsStore": "evil"}))
    os.chmod(path, mode)
    return path


# -- a tag that moved after the pull -------------------------------------------------------


def test_moved_tag_is_flagged_denied_with_the_fix_and_repull_fixes_it(
    stack, agents, tmp_path, request
):
    name = "eci-lc-" + uuid.uuid4().hex[:8]
    tag = f"{stack.registry}/lc/moved-{name}:1"
    old = build(stack, tmp_path, tag, name + "-old")
    ok(docker(stack, "push", tag))
    new = build(stack, tmp_path, tag, name + "-new")
    ok(docker(stack, "push", tag))  # the registry's tag moves on
    ok(docker(stack, "tag", old, tag))  # the local copy is the old image
    request.addfinalizer(lambda: docker(stack, "rmi", "-f", tag, old, new))
    request.addfinalizer(lambda: docker(stack, "rm", "-f", name))
    assert image_id(stack, tag) == old

    state = tmp_path / "state"
    agent = agents(state, settings_with([tag]))
    # At start the agent compares the allowed images the engine holds with the registry.
    assert wait_for(lambda: '"event": "needs-repull"' in agent.log()), agent.log()
    event = next(
        json.loads(line.split(" WARNING ", 1)[1])
        for line in agent.log().splitlines()
        if '"needs-repull"' in line
    )
    assert event["image"] == tag and event["image_id"] == old
    assert event["fix"] == f"eci-agent repull {tag}"

    r = create_via(stack, agent, name, tag)
    assert r.returncode != 0 and DENIED in r.stderr, r.stderr
    assert "no longer matches the registry's digest" in r.stderr
    assert f"eci-agent repull {tag}" in r.stderr
    assert not exists(stack, name)

    fix = agent_cli("repull", tag, "--engine", stack.engine_socket, "--state-dir", str(state))
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "Pulling" in fix.stdout and "removed the stale image" in fix.stdout, fix.stdout
    assert image_id(stack, tag) == new  # the engine now holds the registry's image
    gone = docker(stack, "image", "inspect", old)
    assert gone.returncode != 0, "the stale image was removed"

    r = create_via(stack, agent, name, tag)
    assert r.returncode == 0, r.stderr
    info = json.loads(ok(docker(stack, "inspect", name)))[0]
    assert info["Image"] == new


# -- offline: the cache on disk ---------------------------------------------------------------


def test_cached_digest_survives_restart_and_serves_when_the_registry_is_down(
    stack, agents, tmp_path, request
):
    reg = stack.start_registry()
    name = "eci-lc-" + uuid.uuid4().hex[:8]
    tag = f"{reg.address}/lc/offline:1"
    build(stack, tmp_path, tag, name)
    ok(docker(stack, "push", tag))
    request.addfinalizer(lambda: docker(stack, "rmi", "-f", tag))
    request.addfinalizer(lambda: docker(stack, "rm", "-f", name))
    state = tmp_path / "state"
    settings = settings_with([tag])

    first = agents(state, settings)
    assert create_via(stack, first, name, tag).returncode == 0
    assert exists(stack, name)
    ok(docker(stack, "rm", name))
    cache = state / "registry-digests.json"
    assert wait_for(cache.exists)
    assert first.stop() == 0
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    assert reg.manifest_digest("lc/offline", "1") in cache.read_text()

    reg.stop()  # the registry is gone for good
    second = agents(state, settings)  # a restart: the cache is read back from disk
    r = create_via(stack, second, name, tag)
    assert r.returncode == 0, r.stderr + second.log()[-3000:]
    assert exists(stack, name)
    ok(docker(stack, "rm", name))
    second.stop()

    # No cache at all: refused, and the message says the registry could not be reached.
    third = agents(tmp_path / "empty-state", settings)
    r = create_via(stack, third, name, tag)
    assert r.returncode != 0 and DENIED in r.stderr
    assert "could not be reached" in r.stderr, r.stderr
    assert not exists(stack, name)
    third.stop()

    # A corrupted cache is moved aside (kept) and the agent starts empty: refused again.
    cache.write_bytes(b'{"version": 1, "entries": [{"domain": tru')
    fourth = agents(state, settings)
    aside = list(state.glob("registry-digests.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"version": 1, "entries"')
    r = create_via(stack, fourth, name, tag)
    assert r.returncode != 0 and "could not be reached" in r.stderr, r.stderr
    assert not exists(stack, name)


# -- credentials --------------------------------------------------------------------------------


def _push_with_login(stack: Any, tmp: Path, registry: str, ref: str, label: str) -> None:
    config = tmp / ("pushcfg-" + uuid.uuid4().hex[:6])
    config.mkdir()
    (config / "config.json").write_text("{}")
    build(stack, tmp, ref, label)
    login = docker(
        stack, "login", registry, "-u", USER, "--password-stdin", input=PASSWORD, config=config
    )
    ok(login)
    ok(docker(stack, "push", ref, config=config))


def test_basic_auth_registry_with_the_file_keyring_and_a_docker_config(
    stack, agents, tmp_path, request
):
    reg = stack.start_registry(auth_htpasswd={USER: PASSWORD})
    name = "eci-lc-" + uuid.uuid4().hex[:8]
    tag = f"{reg.address}/lc/private:1"
    _push_with_login(stack, tmp_path, reg.address, tag, name)
    request.addfinalizer(lambda: docker(stack, "rmi", "-f", tag))
    request.addfinalizer(lambda: docker(stack, "rm", "-f", name))
    settings = settings_with([tag])

    # No credentials: refused, with the registry's refusal as the reason.
    anonymous = agents(tmp_path / "s-anon", settings)
    r = create_via(stack, anonymous, name, tag)
    assert r.returncode != 0 and "refused to let us read" in r.stderr, r.stderr
    assert not exists(stack, name)
    anonymous.stop()

    # `eci-agent login` checks the password with the registry, then keeps it root-only.
    state = tmp_path / "s-keyring"
    bad = agent_cli(
        "login", reg.address, "-u", USER, "--password-stdin", "--state-dir", str(state),
        input="wrong\n",
    )  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    stored = state / "credentials" / "registry-credentials.json"
    assert not stored.exists()
    good = agent_cli(
        "login", reg.address, "-u", USER, "--password-stdin", "--state-dir", str(state),
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert PASSWORD not in good.stdout + good.stderr
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert oct(stored.parent.stat().st_mode & 0o777) == "0o700"
    with_login = agents(state, settings)
    r = create_via(stack, with_login, name, tag)
    assert r.returncode == 0, r.stderr + with_login.log()[-2000:]
    assert exists(stack, name)
    ok(docker(stack, "rm", name))
    with_login.stop()
    assert PASSWORD not in with_login.log()

    # A group-readable credentials file is refused (never read), so the create is refused.
    os.chmod(stored, 0o640)
    (state / "registry-digests.json").unlink()  # or the digest cached above would answer
    loose = agents(state, settings)
    r = create_via(stack, loose, name, tag)
    assert r.returncode != 0 and not exists(stack, name), r.stderr
    assert "refused" in loose.log()
    loose.stop()
    os.chmod(stored, 0o600)

    out = agent_cli("logout", reg.address, "--state-dir", str(state))
    assert out.returncode == 0 and "Removed" in out.stdout, out.stdout + out.stderr
    assert PASSWORD not in stored.read_text()

    # An admin's docker config.json (root-only) works the same; its credsStore is never run.
    config = login_config(tmp_path, reg.address, USER, PASSWORD)
    from_config = agents(tmp_path / "s-config", settings, "--registry-config", str(config))
    r = create_via(stack, from_config, name, tag)
    assert r.returncode == 0, r.stderr + from_config.log()[-2000:]
    assert exists(stack, name)
    ok(docker(stack, "rm", name))
    from_config.stop()
    assert "credsStore 'evil' ignored" in from_config.log()
    assert PASSWORD not in from_config.log()

    # ...but one that others could write is refused outright: the agent does not start.
    writable = login_config(tmp_path, reg.address, USER, PASSWORD, mode=0o666)
    refused = RegistryAgent(tmp_path / "w", stack.engine_socket, tmp_path / "s-w")
    refused.workdir.mkdir()
    request.addfinalizer(refused.stop)
    refused.launch(settings, "--registry-config", str(writable), wait=False)
    assert refused.proc is not None and refused.proc.wait(20) != 0
    assert "writable by group or others" in refused.log()


def test_bearer_token_registry_with_anonymous_tokens(stack, agents, tmp_path, request):
    reg, issuer = start_token_registry(stack, {USER: PASSWORD})
    request.addfinalizer(issuer.stop)
    name = "eci-lc-" + uuid.uuid4().hex[:8]
    tag = f"{reg.address}/lc/token:1"
    _push_with_login(stack, tmp_path, reg.address, tag, name)
    request.addfinalizer(lambda: docker(stack, "rmi", "-f", tag))
    request.addfinalizer(lambda: docker(stack, "rm", "-f", name))
    issuer.requests.clear()

    agent = agents(tmp_path / "state", settings_with([tag]))
    r = create_via(stack, agent, name, tag)
    assert r.returncode == 0, r.stderr + agent.log()[-2000:]
    assert exists(stack, name)
    asked = [q for q in issuer.requests if "repository:lc/token:pull" in q.scopes]
    assert asked and all(q.user is None for q in asked), issuer.requests

    # The same registry with a login: the token is asked for with the credentials.
    ok(docker(stack, "rm", name))
    state = tmp_path / "state-login"
    login = agent_cli(
        "login", reg.address, "-u", USER, "--password-stdin", "--state-dir", str(state),
        input=PASSWORD,
    )  # fmt: skip
    assert login.returncode == 0, login.stdout + login.stderr
    issuer.requests.clear()
    with_login = agents(state, settings_with([tag]))
    r = create_via(stack, with_login, name, tag)
    assert r.returncode == 0, r.stderr
    assert any(q.user == USER for q in issuer.requests), issuer.requests


def _control(agent: RegistryAgent, method: str, path: str, body: dict[str, Any] | None = None):
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    raw = http_over_unix(agent.control, head + data, timeout=120)
    status_line, _, rest = raw.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split(b" ")[1]), json.loads(payload or b"null")


def test_the_tray_prompt_path_status_events_and_repull_through_the_control_api(
    stack, agents, tmp_path, request
):
    name = "eci-lc-" + uuid.uuid4().hex[:8]
    tag = f"{stack.registry}/lc/prompt-{name}:1"
    old = build(stack, tmp_path, tag, name + "-old")
    ok(docker(stack, "push", tag))
    new = build(stack, tmp_path, tag, name + "-new")
    ok(docker(stack, "push", tag))
    ok(docker(stack, "tag", old, tag))
    request.addfinalizer(lambda: docker(stack, "rmi", "-f", tag, old, new))
    request.addfinalizer(lambda: docker(stack, "rm", "-f", name))

    agent = agents(tmp_path / "state", settings_with([tag]))

    def stale_items() -> list[dict[str, Any]]:
        status, doc = _control(agent, "GET", "/v1/status")
        assert status == 200, doc
        return list(doc["needsRepull"])

    assert wait_for(lambda: bool(stale_items())), agent.log()
    (item,) = stale_items()
    assert item["image"] == tag and item["image_id"] == old
    status, doc = _control(agent, "GET", "/v1/events?kind=needs-repull")
    assert status == 200 and [e["image"] for e in doc["events"]] == [tag], doc

    # Locked settings: the tray's prompt may not act, and nothing is pulled.
    status, doc = _control(agent, "POST", "/v1/repull", {"image": tag})
    assert status == 403 and "locked" in doc["message"], doc
    assert image_id(stack, tag) == old

    unlocked = settings_with([tag])
    unlocked["enhancedContainerIsolation"]["locked"] = False
    agent.set_settings(unlocked)
    status, doc = _control(agent, "POST", "/v1/repull", {"image": tag})
    assert status == 202, doc  # the control API answers actions with 202
    assert doc["newId"] == new and doc["removedOld"] is True, doc
    assert image_id(stack, tag) == new  # asked of the engine, not the agent
    assert docker(stack, "image", "inspect", old).returncode != 0
    assert stale_items() == []
    status, doc = _control(agent, "GET", "/v1/events?kind=repull-done")
    assert status == 200 and doc["events"][-1]["image"] == tag, doc
    r = create_via(stack, agent, name, tag)
    assert r.returncode == 0, r.stderr
