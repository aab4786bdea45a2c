"""Review session 9a: attacks on the IMAGE IDENTITY part of the policy (the socket image list
by digest, derived images, and what is chosen by an image's identity: per-image command lists,
the container-facing socket's clients).

Each test attempts an attack through the agent and then asks the ENGINE directly (the `direct`
CLI on the raw engine socket) whether the forbidden thing exists; it fails with a message
starting "BYPASS:" if the attack worked, "BROKEN:" if a legitimate workflow fails.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.agent_process import settings_with
from tests.e2e.test_command_list import exists, inside, pushed_cli_image, with_commands
from tests.e2e.test_socket_mount import (
    image_id,
    registry_ref,
    repo_digest,
    socket_containers,
)

pytestmark = pytest.mark.engine

__all__ = ["inside"]  # a fixture, used by name

SOCK = "/var/run/docker.sock"


def _repo(ref: str) -> str:
    return ref.rsplit(":", 1)[0]


def _container_exists(direct: Any, name: str) -> bool:
    out = direct("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}", check=True)
    return name in out.stdout.split()


# -- 1. per-image command lists are chosen by the container's image NAME, not its identity -------


def test_a_per_image_command_list_is_not_borrowed_by_retagging_another_allowed_image(
    agent, via_agent, stack, inside, direct, name
):
    """Two allowed images: `dockercli` (a shell with the docker CLI: held to the strict global
    list, which denies `volume*`) and a "reaper" (its own looser list: only `push` denied).
    The user tags the dockercli image under the reaper's name and runs it with the socket: the
    socket check passes (the image's digest is dockercli's, which is allowed), and the
    container's Config.Image is the reaper's name. Its requests must still be held to the
    dockercli image's list (the global one), not the reaper's."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    direct("tag", stack.images["busybox"], reaper, check=True)
    direct("push", reaper, check=True)  # the real, trusted reaper (no docker CLI in it)
    fake = _repo(reaper) + ":fake"
    volume = name + "-vol"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], _repo(reaper) + ":*"],
                "deny",
                ["volume*"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(reaper) + ":*"], "type": "deny", "commands": ["push"]}
                    ]
                },
            )
        )
        # Control: the dockercli image under its own name is held to the global list.
        plain = inside()
        r = plain.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        # The attack: the same image under the reaper's name (a local tag, never pushed).
        via_agent("tag", stack.images["dockercli"], fake, check=True)
        borrowed = inside(fake, suffix="-borrowed")
        r = borrowed.docker("volume", "create", volume)
        assert not exists(direct, "volume", volume), (
            "BYPASS: the dockercli image, tagged locally under the reaper's name, got the "
            f"reaper's looser command list and created volume {volume}: {r.stdout}{r.stderr}"
        )
    finally:
        direct("volume", "rm", "-f", volume)
        direct("rmi", fake, reaper)


def test_a_container_held_to_the_strict_list_cannot_escape_it_by_naming_a_new_container_after_another_image(
    agent, via_agent, stack, inside, direct, name
):
    """The same from INSIDE: a process in the dockercli container (held to the global list,
    which denies `volume*` but lets it tag and run) tags its own image under the reaper's name
    and runs a socket-mounting container from it: that child must not get the reaper's list."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    direct("tag", stack.images["busybox"], reaper, check=True)
    direct("push", reaper, check=True)
    fake = _repo(reaper) + ":fake"
    volume = name + "-vol"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], _repo(reaper) + ":*"],
                "deny",
                ["volume*"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(reaper) + ":*"], "type": "deny", "commands": ["push"]}
                    ]
                },
            )
        )
        box = inside()
        r = box.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        r = box.docker("tag", stack.images["dockercli"], fake)
        assert r.returncode == 0, r.stderr
        r = box.docker(
            "run", "--rm", "--network", "none", "-v", f"{SOCK}:{SOCK}", fake,
            "docker", "volume", "create", volume,
        )  # fmt: skip
        assert not exists(direct, "volume", volume), (
            "BYPASS: a container held to the global list (volume* denied) made a child from its "
            "own image tagged under the reaper's name; the child got the reaper's list and "
            f"created volume {volume}: {r.stdout}{r.stderr}"
        )
    finally:
        direct("volume", "rm", "-f", volume)
        direct("rmi", fake, reaper)


@pytest.mark.parametrize("spelling", ["image-id", "other-name"])
def test_a_container_held_to_its_own_strict_list_cannot_escape_to_the_global_one(
    spelling, agent, stack, inside, direct, name
):
    """The dockercli image has its own per-image list (`volume*` denied, running containers
    allowed); the global list is looser (only `push` denied). A process inside runs a
    socket-mounting child from its own image, named by its image ID (documented to fall back
    to the global list) or by a local tag with no per-image entry. The socket check passes
    (same digest); the child must still be held to the dockercli image's own list."""
    cli = stack.images["dockercli"]
    volume = name + "-vol"
    other = f"local/other-{name}:1"
    try:
        agent.set_settings(
            with_commands(
                [cli],
                "deny",
                ["push"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(cli) + ":*"], "type": "deny", "commands": ["volume*"]}
                    ]
                },
            )  # fmt: skip
        )
        box = inside()
        r = box.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        if spelling == "image-id":
            ref = image_id(direct, cli)
        else:
            assert box.docker("tag", cli, other).returncode == 0
            ref = other
        r = box.docker(
            "run", "--rm", "--network", "none", "-v", f"{SOCK}:{SOCK}", ref,
            "docker", "volume", "create", volume,
        )  # fmt: skip
        assert not exists(direct, "volume", volume), (
            f"BYPASS: a container held to its image's own list (volume* denied) ran a child of "
            f"the same image named by {spelling} ({ref}); the child got the looser global list "
            f"and created volume {volume}: {r.stdout}{r.stderr}"
        )
    finally:
        direct("volume", "rm", "-f", volume)
        direct("rmi", other)


# -- 2. the container-facing socket serves any container that reaches it, whatever its image ----


def test_a_refused_image_cannot_use_an_allowed_containers_socket_through_a_shared_pid_namespace(
    agent, via_agent, stack, direct, name
):
    """Only the busybox image may mount the socket. A container of the (refused) dockercli
    image joins the allowed container's PID namespace (`--pid container:<allowed>`, not a host
    namespace) and reaches the allowed container's socket at /proc/1/root/var/run/docker.sock.
    The agent's container-facing listener then serves a container whose image may not mount
    the socket."""
    allowed = registry_ref(stack, "busybox")
    refused = registry_ref(stack, "dockercli")
    agent.set_settings(settings_with([allowed]))
    holder, intruder, proof = name + "-holder", name + "-intruder", name + "-proof"
    try:
        # Control: the refused image cannot mount the socket itself.
        r = via_agent("run", "--rm", "--network", "none", "-v", f"{SOCK}:{SOCK}", refused,
                      "docker", "version")  # fmt: skip
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        via_agent("run", "-d", "--name", holder, "--network", "none", "-v", f"{SOCK}:{SOCK}",
                  allowed, "sleep", "600", check=True)  # fmt: skip
        r = via_agent(
            "run", "--name", intruder, "--network", "none", f"--pid=container:{holder}",
            refused, "docker", "-H", f"unix:///proc/1/root{SOCK}",
            "create", "--name", proof, "--network", "none", allowed, "true",
        )  # fmt: skip
        assert not _container_exists(direct, proof), (
            "BYPASS: a container of an image that may not mount the socket used the agent's "
            "container-facing socket of another container (via --pid=container:, /proc/1/root)"
            f" and created {proof}: {r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", holder, intruder, proof)


# -- 3. giving a refused image the allowed image's repo digest (RepoDigests spoofing) ----------


def _api(agent: Any, method: str, target: str, body: bytes = b"", ctype: str = "") -> tuple:
    from tests.e2e.agent_process import http_over_unix

    head = f"{method} {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    reply = http_over_unix(agent.listen, head.encode() + body, timeout=60)
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return status, reply


def _retarred(src: Path, edit: Any) -> bytes:
    """`src` (a `docker save` tar) with its manifest.json / index.json passed through `edit`."""
    out = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isfile() else None
            if member.name in ("manifest.json", "index.json") and data is not None:
                data = json.dumps(edit(member.name, json.loads(data))).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _busybox_tar(tmp_path: Path) -> bytes:
    """A minimal root filesystem tar (for import): one file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        data = b"evil\n"
        info = tarfile.TarInfo("evil.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return out.getvalue()


TRICKS = ["tag-api", "load-manifest", "load-manifest-tagged", "load-index", "import", "commit",
          "build"]  # fmt: skip


@pytest.mark.parametrize("trick", TRICKS)
def test_a_refused_image_cannot_be_given_the_allowed_images_repo_digest(
    trick, agent, via_agent, stack, direct, name, tmp_path
):
    """Only dockercli (by its repo digest) may mount the socket. The busybox image (or an import,
    a commit, a build) is given the reference `<dockercli repo>@<dockercli digest>` by an engine
    route that names images; then a socket create names that reference (and the dockercli
    name:tag). No socket container may carry an image other than dockercli's."""
    allowed = registry_ref(stack, "dockercli")
    refused = registry_ref(stack, "busybox")
    canonical = repo_digest(direct, allowed)  # <repo>@sha256:...
    digest = canonical.split("@", 1)[1]
    good_id = image_id(direct, allowed)
    agent.set_settings(settings_with([_repo(allowed) + ":*"]))
    box = name + "-box"
    try:
        if trick == "tag-api":
            for repo, tag in ((canonical, ""), (_repo(allowed), f"x@{digest}"),
                              (f"{_repo(allowed)}:x@{digest}", "")):  # fmt: skip
                _api(agent, "POST", f"/v1.41/images/{image_id(direct, refused)}/tag?repo="
                     f"{quote(repo, safe='')}&tag={quote(tag, safe='')}")  # fmt: skip
        elif trick.startswith("load"):
            saved = tmp_path / "busybox.tar"
            direct("save", "-o", str(saved), refused, check=True)

            def edit(member: str, doc: Any) -> Any:
                if member == "manifest.json" and trick != "load-index":
                    doc[0]["RepoTags"] = [
                        canonical if trick == "load-manifest" else f"{_repo(allowed)}:x@{digest}"
                    ]
                if member == "index.json":
                    for m in doc.get("manifests", []):
                        ann = m.setdefault("annotations", {})
                        ann["io.containerd.image.name"] = canonical
                        ann["org.opencontainers.image.ref.name"] = digest
                return doc

            _api(agent, "POST", "/v1.41/images/load?quiet=1", _retarred(saved, edit),
                 "application/x-tar")  # fmt: skip
        elif trick == "import":
            _api(agent, "POST", f"/v1.41/images/create?fromSrc=-&repo={quote(canonical, safe='')}",
                 _busybox_tar(tmp_path), "application/x-tar")  # fmt: skip
        elif trick == "commit":
            direct("create", "--name", box, "--network", "none", refused, "true", check=True)
            _api(agent, "POST", f"/v1.41/commit?container={box}&repo={quote(canonical, safe='')}",
                 b"{}", "application/json")  # fmt: skip
        elif trick == "build":
            ctx = io.BytesIO()
            with tarfile.open(fileobj=ctx, mode="w") as t:
                df = f"FROM {refused}\nLABEL evil=1\n".encode()
                info = tarfile.TarInfo("Dockerfile")
                info.size = len(df)
                t.addfile(info, io.BytesIO(df))
            _api(agent, "POST", f"/v1.41/build?t={quote(canonical, safe='')}&q=1", ctx.getvalue(),
                 "application/x-tar")  # fmt: skip
        holders = direct("images", "--digests", "--no-trunc", "--format",
                         "{{.ID}} {{.Repository}}@{{.Digest}}", check=True).stdout  # fmt: skip
        spoofed = [line for line in holders.splitlines()
                   if line.endswith(canonical) and not line.startswith(good_id)]  # fmt: skip
        for i, ref in enumerate((canonical, allowed, _repo(allowed) + ":x")):
            via_agent("create", "--name", f"{name}-{i}", "--network", "none",
                      "-v", f"{SOCK}:{SOCK}", ref, "true")  # fmt: skip
        bad = {n: i for n, i in socket_containers(direct, stack, agent).items() if i != good_id}
        assert not bad and not spoofed, (
            f"BYPASS ({trick}): an image other than the allowed one carries its repo digest "
            f"{spoofed} / got a socket container {bad}"
        )
    finally:
        direct("rm", "-f", box, *(f"{name}-{i}" for i in range(3)))
        direct("rmi", _repo(allowed) + ":x")


# -- 4. the check after the create (Gate.verify) when the client goes away --------------------


def _create_and_reset(agent: Any, name: str, image: str, delay: float) -> None:
    """Send a socket-mounting create on the agent's socket, wait `delay`, then reset the
    connection (SO_LINGER 0: an RST, not a FIN) without reading the answer."""
    body = json.dumps({
        "Image": image, "Cmd": ["true"],
        "HostConfig": {"Binds": [f"{SOCK}:{SOCK}"], "NetworkMode": "none",
                       "RestartPolicy": {"Name": "always"}},
    }).encode()  # fmt: skip
    head = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent.listen)
    s.sendall(head + body)
    time.sleep(delay)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_a_client_that_resets_after_a_raced_create_leaves_no_socket_container(
    agent, via_agent, stack, direct, name
):
    """The name is judged allowed (kept for 10 s, `Gate._resolved`), then moved to a refused
    image; the next create naming it is forwarded on the kept answer and the engine creates the
    container with the refused image. `Gate.verify` must remove it. Here the client resets its
    connection after sending the create, before the engine's answer: the container must still
    be checked (and removed), not left with the socket and the refused image (with
    `--restart always` the engine itself starts it when it next starts)."""
    allowed, refused = registry_ref(stack, "dockercli"), registry_ref(stack, "busybox")
    moving = f"local/reset-{name}:1"
    agent.set_settings(settings_with([allowed]))
    bad_id = image_id(direct, refused)
    made: list[str] = []
    left: dict[str, str] = {}
    try:
        for attempt, delay in enumerate((0.0, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25)):
            direct("tag", allowed, moving, check=True)
            seed = f"{name}-s{attempt}"
            made.append(seed)
            r = via_agent("create", "--name", seed, "--network", "none",
                          "-v", f"{SOCK}:{SOCK}", moving, "true")  # fmt: skip
            assert r.returncode == 0, r.stderr
            direct("tag", refused, moving, check=True)
            raced = f"{name}-r{attempt}"
            made.append(raced)
            _create_and_reset(agent, raced, moving, delay)
            time.sleep(1.0)
            left = {n: i for n, i in socket_containers(direct, stack, agent).items() if i == bad_id}
            if left:
                break
        assert not left, (
            "BYPASS: a socket-mounting container with the refused image was left on the engine "
            f"(the client reset its connection after the create, so no check after it): {left}"
        )
    finally:
        direct("rm", "-f", *made)
        direct("rmi", moving)


# -- 5. the command list follows the process's container: exec into a looser one --------------


def test_a_container_held_to_the_strict_list_cannot_borrow_a_looser_containers_list_by_exec(
    agent, stack, inside, direct, name
):
    """The reaper (its own image, pushed, allowed, with its own looser list) runs with the
    socket. A process in the dockercli container (global list: `volume*` denied, `exec` not)
    runs `docker exec <reaper> docker volume create`: the exec'd process is in the reaper's
    cgroup, so the agent judges it by the reaper's list. The request was the strict
    container's doing."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    # Its own image (with the docker CLI in it): by digest, not the dockercli image. (Pushing
    # the dockercli image itself under the reaper's name would make it a reaper image: the
    # lists are chosen by what the registry serves for each name.)
    pushed_cli_image(direct, stack, reaper)
    volume = name + "-vol"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], _repo(reaper) + ":*"],
                "deny",
                ["volume*"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(reaper) + ":*"], "type": "deny", "commands": ["push"]}
                    ]
                },
            )
        )
        box = inside()
        looser = inside(reaper, suffix="-reaper")
        # Control: the reaper's own processes are held to its looser list.
        r = looser.docker("volume", "create", volume + "-own")
        assert r.returncode == 0 and exists(direct, "volume", volume + "-own"), r.stderr
        r = box.docker("volume", "create", volume)
        assert r.returncode != 0 and not exists(direct, "volume", volume), r.stdout + r.stderr
        r = box.docker("exec", looser.name, "docker", "volume", "create", volume)
        assert not exists(direct, "volume", volume), (
            "BYPASS: a container held to the global list (volume* denied) ran `docker exec` in a "
            f"container with a looser per-image list and created volume {volume}: "
            f"{r.stdout}{r.stderr}"
        )
        assert "held to another command list" in r.stderr, r.stderr
    finally:
        direct("volume", "rm", "-f", volume, volume + "-own")
        direct("rmi", reaper)


# -- 6. allowDerivedImages: a base that only looks allowed ------------------------------------


@pytest.mark.parametrize("base_kind", ["local-tagged-as-allowed", "refused-registry-image"])
def test_an_image_derived_from_a_base_that_is_not_verified_is_refused(
    base_kind, agent, via_agent, stack, direct, name, tmp_path
):
    """allowDerivedImages with only dockercli allowed. The base the evil image is built FROM is
    (a) a local-only image tagged with the allowed name:tag, or (b) the busybox registry image
    (verified by its own repo digest, but not listed). Neither may give the evil image the
    socket."""
    allowed = registry_ref(stack, "dockercli")
    agent.set_settings(settings_with([allowed], allowDerivedImages=True))
    fake_base = _repo(allowed) + ":fakebase"
    evil = f"local/evil-{name}:1"
    try:
        if base_kind == "local-tagged-as-allowed":
            ctx = tmp_path / "base"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(f"FROM {registry_ref(stack, 'busybox')}\nLABEL b=1\n")
            via_agent("build", "-q", "-t", fake_base, str(ctx), check=True)
            base = fake_base
        else:
            base = registry_ref(stack, "busybox")
        ctx = tmp_path / "evil"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nLABEL evil=1\n")
        via_agent("build", "-q", "-t", evil, str(ctx), check=True)
        r = via_agent("create", "--name", name, "--network", "none", "-v", f"{SOCK}:{SOCK}",
                      evil, "true")  # fmt: skip
        assert not _container_exists(direct, name), (
            f"BYPASS: an image built FROM an unverified base ({base_kind}) got the socket: "
            f"{r.stdout}{r.stderr}"
        )
    finally:
        direct("rm", "-f", name)
        direct("rmi", evil, fake_base)


# -- 7. the registry client and the digest cache (no engine needed; a fake registry) ----------


def _serve(host: str, port: int, handler: Any) -> Any:
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            handler(self)

        def do_GET(self) -> None:
            handler(self)

    server = http.server.ThreadingHTTPServer((host, port), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_credentials_never_go_in_clear_text_to_a_token_realm_that_only_looks_loopback():
    """A loopback registry (spoken to over HTTP) answers 401 with a Bearer realm
    `http://127.0.0.1:x@<other host>/token`: its netloc reads as loopback to the client's
    plain-HTTP check, but the request goes to <other host> (the part after '@'), over plain
    HTTP, with the registry's credentials in a Basic header."""
    from agent.registry.client import Credentials, RegistryClient

    other = _non_loopback_ip()
    if other is None:
        pytest.skip("no non-loopback address to stand for another host")
    seen: list[str] = []

    def token(h: Any) -> None:
        seen.append(h.headers.get("Authorization") or "")
        body = b'{"token": "t"}'
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    try:
        token_server = _serve(other, 80, token)
    except OSError as err:
        pytest.skip(f"cannot listen on {other}:80: {err}")

    def registry(h: Any) -> None:
        if (h.headers.get("Authorization") or "").startswith("Bearer "):
            h.send_response(200)
            h.send_header("Docker-Content-Digest", "sha256:" + "a" * 64)
            h.send_header("Content-Length", "0")
        else:
            h.send_response(401)
            h.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:x@{other}/token",'
                          'service="reg"')  # fmt: skip
            h.send_header("Content-Length", "0")
        h.end_headers()

    reg = _serve("127.0.0.1", 0, registry)
    domain = f"127.0.0.1:{reg.server_address[1]}"
    try:
        client = RegistryClient({domain: Credentials("alice", "s3cret")}, timeout=5)
        try:
            client.manifest_digest(domain, "team/tool", "1")
        except Exception:  # noqa: BLE001 - refusing is the right answer
            pass
        leaked = [a for a in seen if a.startswith("Basic ")]
        assert not leaked, (
            "BYPASS (of the client's no-clear-text-credentials rule): the registry's credentials "
            f"were sent over plain HTTP to {other}:80, a token realm that only looked loopback "
            f"(http://127.0.0.1:x@{other}/token): {leaked}"
        )
    finally:
        reg.shutdown()
        token_server.shutdown()


def test_one_odd_digest_answer_does_not_throw_away_the_whole_digest_cache(tmp_path):
    """Two allowed tags on a (loopback) registry; one answers with a Docker-Content-Digest that
    is not a well-formed digest. The agent stores what the registry said; at its next start the
    cache must still hold the other tag's answer (the offline fallback), not be moved aside."""
    import asyncio

    from agent.policy.images import RegistryQuery
    from agent.registry.client import RegistryClient
    from agent.registry.digests import DigestService

    good = "sha256:" + "b" * 64

    def registry(h: Any) -> None:
        h.send_response(200)
        h.send_header("Docker-Content-Digest", good if "/good/" in h.path else "sha256:0dd")
        h.send_header("Content-Length", "0")
        h.end_headers()

    reg = _serve("127.0.0.1", 0, registry)
    domain = f"127.0.0.1:{reg.server_address[1]}"
    cache = tmp_path / "registry-digests.json"
    q_good, q_odd = RegistryQuery(domain, "good/x", "1"), RegistryQuery(domain, "odd/x", "1")
    try:

        async def first() -> None:
            svc = DigestService(RegistryClient(timeout=5), cache_path=cache)
            await svc.answers((q_good, q_odd))
            await svc.stop()

        asyncio.run(first())

        async def second() -> int | None:
            svc = DigestService(RegistryClient(timeout=5), cache_path=cache)
            await svc.start()
            try:
                return None if svc.cache_age(q_good) is None else 1
            finally:
                await svc.stop()

        kept = asyncio.run(second())
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert kept and not aside, (
            "BROKEN: one registry's malformed Docker-Content-Digest was cached as is, and at the "
            f"next start the whole digest cache was moved aside ({aside}): every allowed "
            "image's offline fallback is gone"
        )
    finally:
        reg.shutdown()


# -- 7. (follow-up) a child of another allowed image inherits that image's list --------------


def test_a_container_cannot_give_the_socket_to_a_child_held_to_a_looser_list(
    agent, stack, inside, direct, name
):
    """Per-image lists go with the image: a container held to the strict global list runs the
    reaper's own (real, pushed, allowed) image with the socket and its own command. The
    child would be judged by the reaper's looser list, so the create itself is refused; a
    child of the container's own image (the same list) is still allowed."""
    reaper = f"{stack.registry}/fixtures/reaper-{name}:1"
    pushed_cli_image(direct, stack, reaper)
    volume = name + "-vol"
    own_child = name + "-own"
    try:
        agent.set_settings(
            with_commands(
                [stack.images["dockercli"], _repo(reaper) + ":*"],
                "deny",
                ["volume*"],
                eciAgent={
                    "commandLists": [
                        {"images": [_repo(reaper) + ":*"], "type": "deny", "commands": ["push"]}
                    ]
                },
            )
        )
        box = inside()
        r = box.docker(
            "run", "--rm", "--network", "none", "-v", f"{SOCK}:{SOCK}", reaper,
            "docker", "volume", "create", volume,
        )  # fmt: skip
        assert not exists(direct, "volume", volume), (
            "BYPASS: a container held to the global list (volume* denied) ran a child of the "
            f"reaper's image with the socket, judged by the reaper's list: {r.stdout}{r.stderr}"
        )
        assert "within its own" in r.stderr, r.stderr
        r = box.docker(
            "create", "--name", own_child, "--network", "none", "-v", f"{SOCK}:{SOCK}",
            stack.images["dockercli"], "true",
        )  # fmt: skip
        assert r.returncode == 0 and _container_exists(direct, own_child), (
            f"BROKEN: a child of its own image refused: {r.stderr}"
        )
    finally:
        direct("rm", "-f", own_child)
        direct("volume", "rm", "-f", volume)
        direct("rmi", reaper)
