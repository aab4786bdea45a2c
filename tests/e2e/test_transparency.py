"""The user must not notice the proxy: the ordinary docker workflow gives the same results
through the agent as straight against the engine."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import docker
import pytest

pytestmark = pytest.mark.engine


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def sleeper(direct: Any, stack: Any, name: str) -> Any:
    direct(
        "run", "-d", "--name", name, "--network", "none", stack.images["busybox"],
        "sh", "-c", "i=0; while [ $i -lt 5 ]; do echo line$i; i=$((i+1)); sleep 0.2; done; sleep 300",
        check=True,
    )  # fmt: skip
    yield name
    direct("rm", "-f", name)


def test_run_and_interactive_stdin(via_agent, direct, stack):
    for cli in (via_agent, direct):
        r = cli(
            "run", "--rm", "--network", "none", stack.images["busybox"], "echo", "hi", check=True
        )
        assert r.stdout == "hi\n"
        data = "".join(f"row {i}\n" for i in range(2000))
        r = cli("run", "--rm", "-i", "--network", "none", stack.images["busybox"], "cat",
                input=data, check=True)  # fmt: skip
        assert r.stdout == data


def test_exec_with_and_without_stdin(via_agent, direct, sleeper):
    outputs = []
    for cli in (via_agent, direct):
        plain = cli("exec", sleeper, "ls", "/", check=True).stdout
        piped = cli("exec", "-i", sleeper, "wc", "-c", input="x" * 100_000, check=True).stdout
        big = cli("exec", sleeper, "sh", "-c", "dd if=/dev/zero bs=1024 count=4096 2>/dev/null | wc -c",
                  check=True).stdout  # fmt: skip
        outputs.append((plain, piped.strip(), big.strip()))
    assert outputs[0] == outputs[1]
    assert outputs[0][1] == "100000" and outputs[0][2] == "4194304"


def test_logs_follow_streams(via_agent, direct, sleeper):
    time.sleep(1.2)
    results = []
    for cli in (via_agent, direct):
        r = cli("logs", "--tail", "all", sleeper, check=True)
        results.append(r.stdout)
    assert results[0] == results[1] == "".join(f"line{i}\n" for i in range(5))


def test_logs_follow_delivers_lines_as_they_come(agent, stack, direct, name):
    """`logs -f` must stream, not wait for the end: read the first line while it still runs."""
    import subprocess

    direct("run", "-d", "--name", name, "--network", "none", stack.images["busybox"],
           "sh", "-c", "echo first; sleep 30; echo second", check=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = "unix://" + agent.listen
    proc = subprocess.Popen(["docker", "logs", "-f", name], stdout=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        start = time.monotonic()
        assert proc.stdout.readline() == "first\n"
        assert time.monotonic() - start < 20, "the first line must arrive before the container ends"
    finally:
        proc.kill()
        proc.wait()
        direct("rm", "-f", name)


def test_cp_both_ways_is_byte_exact(via_agent, sleeper, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(32 * 1024 * 1024))
    via_agent("cp", str(src), f"{sleeper}:/in.bin", check=True)
    out = tmp_path / "out.bin"
    via_agent("cp", f"{sleeper}:/in.bin", str(out), check=True)
    assert _sha(str(out)) == _sha(str(src))


def test_build_push_pull_through_the_agent(via_agent, direct, stack, tmp_path, name):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "payload.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    (ctx / "Dockerfile").write_text(f"FROM {stack.images['busybox']}\nCOPY payload.bin /p\n")
    ref = f"{stack.registry}/fixtures/built-{name}:1"
    via_agent("build", "-q", "-t", ref, str(ctx), check=True)
    pushed = via_agent("push", ref, check=True).stdout
    assert "digest: sha256:" in pushed
    digest = pushed.split("digest: ")[1].split()[0]
    via_agent("rmi", ref, check=True)
    via_agent("pull", ref, check=True)
    info = json.loads(direct("image", "inspect", ref, check=True).stdout)[0]
    assert any(d.endswith("@" + digest) for d in info["RepoDigests"])
    direct("rmi", ref)


def test_events_match(via_agent, direct, stack, name):
    since = str(int(time.time()) - 1)
    direct("run", "--rm", "--name", name, "--network", "none", stack.images["busybox"], "true",
           check=True)  # fmt: skip
    until = str(int(time.time()) + 1)
    streams = []
    for cli in (via_agent, direct):
        r = cli("events", "--since", since, "--until", until, "--filter", f"container={name}",
                "--format", "{{.Status}}", check=True, timeout=30)  # fmt: skip
        streams.append(r.stdout.split())
    assert streams[0] == streams[1]
    assert "start" in streams[0] and "destroy" in streams[0]


def test_sdk_client_through_the_agent(agent, stack):
    client = docker.DockerClient(base_url="unix://" + agent.listen, version="1.41")
    try:
        assert client.ping() is True
        out = client.containers.run(stack.images["busybox"], ["echo", "sdk"], remove=True,
                                    network_mode="none")  # fmt: skip
        assert out == b"sdk\n"
        assert any(stack.images["busybox"] in i.tags for i in client.images.list())
    finally:
        client.close()


def test_head_ping_and_version_negotiation(via_agent, direct):
    a = via_agent("version", "--format", "{{.Server.APIVersion}}", check=True).stdout
    b = direct("version", "--format", "{{.Server.APIVersion}}", check=True).stdout
    assert a == b and a.strip()


def test_a_client_leaving_mid_stream_frees_its_engine_connection(agent, direct, stack, name):
    """`logs -f` whose client goes away must not keep an engine connection (and task) alive."""
    import socket

    direct("run", "-d", "--name", name, "--network", "none", stack.images["busybox"],
           "sh", "-c", "while true; do echo tick; sleep 0.1; done", check=True)  # fmt: skip
    assert agent.proc is not None
    fds = f"/proc/{agent.proc.pid}/fd"
    try:
        before = len(os.listdir(fds))
        clients = []
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX)
            s.connect(agent.listen)
            s.sendall(
                f"GET /v1.41/containers/{name}/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\n".encode()
            )
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            clients.append(s)
        during = len(os.listdir(fds))
        assert during >= before + 20, "each follower holds a client and an engine connection"
        for s in clients:
            s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(os.listdir(fds)) > before + 8:
            time.sleep(0.1)
        assert len(os.listdir(fds)) <= before + 8, (before, during, len(os.listdir(fds)))
    finally:
        direct("rm", "-f", name)
