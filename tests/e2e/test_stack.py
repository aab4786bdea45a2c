"""The real-engine test environment (tests/env) works and cleans up after itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.env import MANIFEST_ACCEPT, DockerCommandError, Stack
from tests.env._sys import elf_interpreter, pids_mentioning
from tests.env.images import build_dockercli_image

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_busybox_container_runs(stack: Stack) -> None:
    out = stack.docker(
        "run", "--rm", stack.images["busybox"], "sh", "-c", 'echo "hello $((6*7))"; id -u'
    ).stdout.split()
    assert out == ["hello", "42", "0"]
    applets = stack.docker("run", "--rm", stack.images["busybox"], "ls", "/bin").stdout.split()
    for a in ("busybox", "sh", "wget", "sha256sum", "grep", "readlink", "dd"):
        assert a in applets


def test_fixture_images_have_repo_digests(stack: Stack) -> None:
    assert set(stack.images) == {"busybox", "dockercli"}
    for name, ref in stack.images.items():
        assert ref == f"{stack.registry}/fixtures/{name}:1"
        for tag in ("1", "latest"):
            raw = stack.docker(
                "image", "inspect", "--format", "{{json .RepoDigests}}", ref[:-1] + tag
            ).stdout
            (digest,) = json.loads(raw)
            repo, _, sha = digest.partition("@")
            assert repo == f"{stack.registry}/fixtures/{name}"
            assert sha == stack.main_registry.manifest_digest(f"fixtures/{name}", tag)


def test_pull_from_private_registry_matches_manifest_digest(stack: Stack) -> None:
    repo = f"{stack.registry}/fixtures/busybox"
    stack.docker("rmi", f"{repo}:1", f"{repo}:latest")
    gone = stack.docker("image", "inspect", f"{repo}:1", check=False)
    assert gone.returncode != 0

    stack.docker("pull", f"{repo}:1")
    stack.docker("pull", f"{repo}:latest")  # restore the session fixture's second tag

    r = stack.main_registry.request(
        "HEAD", "/v2/fixtures/busybox/manifests/1", {"Accept": MANIFEST_ACCEPT}
    )
    assert r.status == 200
    header_digest = r.header("Docker-Content-Digest")
    assert header_digest and header_digest.startswith("sha256:")
    repo_digests = json.loads(
        stack.docker("image", "inspect", "--format", "{{json .RepoDigests}}", f"{repo}:1").stdout
    )
    assert repo_digests == [f"{repo}@{header_digest}"]
    out = stack.docker("run", "--rm", f"{repo}:1", "echo", "pulled").stdout
    assert out.strip() == "pulled"


def test_dockercli_image_runs_client(stack: Stack) -> None:
    image = stack.images["dockercli"]
    out = stack.docker("run", "--rm", image, "docker", "--version").stdout
    assert out.startswith("Docker version ")
    # The in-container client talks to the private engine through a mounted socket.
    server = stack.docker(
        "run", "--rm", "-v", f"{stack.engine_socket}:/var/run/docker.sock", image,
        "docker", "version", "--format", "{{.Server.Version}}",
    ).stdout.strip()  # fmt: skip
    info = stack.engine_request("GET", "/version").json()
    assert isinstance(info, dict)
    assert server == info["Version"]


def test_dynamic_docker_client_is_bundled_with_its_libraries(stack: Stack) -> None:
    client = Path("/usr/bin/docker")
    if not client.is_file() or elf_interpreter(client) is None:
        pytest.skip("no dynamically linked /usr/bin/docker on this machine")
    ref = f"{stack.registry}/fixtures/dockercli-dyn:1"
    build_dockercli_image(stack, [ref], base=stack.images["busybox"], client=client, name="dyn")
    try:
        out = stack.docker("run", "--rm", ref, "/usr/local/bin/docker", "--version").stdout
        assert out.startswith("Docker version ")
        ls = stack.docker("run", "--rm", ref, "ls", str(elf_interpreter(client))).stdout
        assert ls.strip() == str(elf_interpreter(client))
    finally:
        stack.docker("rmi", ref, check=False)


def test_engine_is_isolated(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    info = stack.engine_request("GET", "/info").json()
    assert isinstance(info, dict)
    root = Path(info["DockerRootDir"])
    assert root.is_relative_to(stack.tmpdir)
    assert stack.engine_socket.startswith(str(stack.tmpdir) + "/")
    # A hostile environment must not redirect the helper to another engine/config.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("DOCKER_CONTEXT", "nonexistent")
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    out = stack.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
    assert out == str(root)
    with pytest.raises(ValueError):
        stack.docker("info", env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert stack.docker_env()["DOCKER_CONFIG"] == str(stack.docker_config_dir)
    # docker-py client also targets only the private engine.
    client = stack.client()
    try:
        assert client.info()["DockerRootDir"] == str(root)
    finally:
        client.close()


def test_failed_docker_command_reports_stderr(stack: Stack) -> None:
    with pytest.raises(DockerCommandError) as ei:
        stack.docker("image", "inspect", "no-such-image:nope")
    assert "no-such-image" in str(ei.value)


def test_basic_auth_registry(stack: Stack) -> None:
    reg = stack.start_registry(auth_htpasswd={"alice": "s3cret-pw"})
    try:
        assert reg.address != stack.registry
        assert reg.request("GET", "/v2/").status == 401
        assert reg.request("GET", "/v2/", auth=("alice", "wrong")).status == 401
        assert reg.request("GET", "/v2/", auth=("alice", "s3cret-pw")).status == 200

        ref = f"{reg.address}/private/busybox:1"
        stack.docker("tag", stack.images["busybox"], ref)
        denied = stack.docker("push", ref, check=False)
        assert denied.returncode != 0
        stack.docker("login", "-u", "alice", "--password-stdin", reg.address, input="s3cret-pw")
        try:
            stack.docker("push", "-q", ref)
        finally:
            stack.docker("logout", reg.address)
        assert reg.manifest_digest("private/busybox", "1").startswith("sha256:")
        stack.docker("rmi", ref)
    finally:
        reg.stop()
    assert not reg.alive()


def test_stop_leaves_nothing_behind() -> None:
    s = Stack(build_images=False).start()
    try:
        assert s.timings["start"] < 30
        busybox = s.tmpdir / "bb"
        busybox.mkdir()
        (busybox / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
        os.link("/bin/busybox", busybox / "busybox")
        s.docker("build", "-q", "-t", "bb", str(busybox))
        s.docker("run", "-d", "bb", "/bin/busybox", "sleep", "1000")
        s.start_registry(auth_htpasswd={"u": "p"})
        pids = pids_mentioning(s.tmpdir)
        assert s.dockerd_pid in pids and s.containerd_pid in pids
        assert all(r.pid in pids for r in s.registries) and len(s.registries) == 2
        assert len(pids) >= 5  # + the container's shim
        assert s.leftovers()  # sanity: leftovers() does see a running stack
    finally:
        s.stop()
    assert s.leftovers() == []
    s.stop()  # idempotent


def test_cli_up_status_down() -> None:
    d = Path("/tmp") / f"eci-env-cli-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "ECI_ENV_DIR"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.env", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    attached: Stack | None = None
    up = cli("up", "--no-images", "--dir", str(d))
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert exports["ECI_ENV_DIR"] == str(d)
        assert exports["ECI_ENGINE_SOCKET"] == f"{d}/engine/docker.sock"
        # The `up` process has exited; the daemons must still be serving.
        status = cli("status", "--dir", str(d))
        assert status.returncode == 0, status.stdout + status.stderr
        attached = Stack.from_state(d)
        assert attached.registry == exports["ECI_REGISTRY"]
        assert attached.docker("version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
    finally:
        down = cli("down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    assert attached is not None and attached.leftovers() == []
    assert cli("status", "--dir", str(d)).returncode == 1
