"""Socket mount permissions through the real agent, engine, registry and docker CLI.

Every refusal is checked twice: the client sees the seeds' error, and the ENGINE has no such
container (asked directly, not through the agent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, settings_with

pytestmark = pytest.mark.engine

DENIED = "enhanced container isolation: docker socket mount denied for container with image"
NOT_LISTED = "image is not in the allowed list; if you wish to allow it, configure the docker "
NOT_LISTED += "socket image list in the admin settings file "


def exists(direct: Any, name: str) -> bool:
    out = direct("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}", check=True)
    return name in out.stdout.split()


def mounts_of(direct: Any, name: str) -> list[dict[str, Any]]:
    out = direct("inspect", "--format", "{{json .Mounts}}", name, check=True)
    return json.loads(out.stdout)


def registry_ref(stack: Any, image: str) -> str:
    return stack.images[image]


def repo_digest(direct: Any, ref: str) -> str:
    out = direct("image", "inspect", "--format", "{{json .RepoDigests}}", ref, check=True)
    digests = json.loads(out.stdout)
    repo = ref.rsplit(":", 1)[0]
    return next(d for d in digests if d.startswith(repo + "@"))


# -- denied by default, whatever the route -----------------------------------------------------


def test_default_policy_refuses_with_the_seed_wording(via_agent, direct, stack, agent, name):
    ref = registry_ref(stack, "busybox")
    r = via_agent(
        "run", "--rm", "--name", name, "--network", "none",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", ref, "true",
    )  # fmt: skip
    assert r.returncode != 0
    image = ref.rsplit(":", 1)[0]
    expected = f'Error response from daemon: {DENIED} "{image}"; {NOT_LISTED}{agent.settings_path}'
    assert expected in r.stderr
    assert not exists(direct, name)


def _mount_variants(stack: Any, agent: AgentProcess, tmp: Path) -> dict[str, list[str]]:
    engine = stack.engine_socket
    link = tmp / "link.sock"
    link.symlink_to(engine)
    hard = tmp / "hard.sock"
    os.link(agent.listen, hard)
    linkdir = tmp / "linkdir"
    linkdir.symlink_to(os.path.dirname(engine))
    return {
        "var-run-sock": ["-v", "/var/run/docker.sock:/s"],
        "run-sock": ["-v", "/run/docker.sock:/s"],
        "engine-sock": ["-v", f"{engine}:/s"],
        "agent-sock": ["-v", f"{agent.listen}:/s"],
        "container-sock": ["-v", f"{agent.container_socket}:/s"],
        "mount-bind": ["--mount", f"type=bind,source={engine},target=/s"],
        "mount-bind-ro": ["--mount", f"type=bind,source={engine},target=/s,readonly"],
        "var-run-folder": ["-v", "/var/run:/x"],
        "run-folder": ["-v", "/run:/x"],
        "root-folder": ["-v", "/:/host"],
        "engine-folder": ["-v", f"{os.path.dirname(engine)}:/x"],
        "dotdot": ["-v", "/var/run/../run/docker.sock:/s"],
        "symlink": ["-v", f"{link}:/s"],
        "symlinked-folder": ["-v", f"{linkdir}:/x"],
        "hard-link": ["-v", f"{hard}:/s"],
        "second-bind": ["-v", "/tmp:/t", "-v", f"{engine}:/s:ro"],
    }


VARIANTS = [
    "var-run-sock", "run-sock", "engine-sock", "agent-sock", "container-sock", "mount-bind",
    "mount-bind-ro", "var-run-folder", "run-folder", "root-folder", "engine-folder", "dotdot",
    "symlink", "symlinked-folder", "hard-link", "second-bind",
]  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_mount_route_is_refused(variant, via_agent, direct, stack, agent, name, tmp_path):
    args = _mount_variants(stack, agent, tmp_path)[variant]
    try:
        r = via_agent(
            "create", "--name", name, "--network", "none", *args, registry_ref(stack, "busybox")
        )
        assert r.returncode != 0, r.stdout
        assert "enhanced container isolation: docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        # An extra hard link makes every later folder bind on that filesystem unjudgeable.
        (tmp_path / "hard.sock").unlink()


def test_volumes_from_a_socket_container_is_refused(via_agent, direct, stack, name):
    holder = name + "-holder"
    ref = registry_ref(stack, "busybox")
    # Made straight on the engine, as if it existed before the agent.
    direct("create", "--name", holder, "-v", f"{stack.engine_socket}:/s", ref, check=True)
    try:
        r = via_agent("create", "--name", name, "--volumes-from", holder, ref)
        assert r.returncode != 0 and DENIED.split(":")[0] in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        direct("rm", "-f", holder)


def test_named_volume_binding_the_socket_folder_is_refused(via_agent, direct, stack, name):
    vol = name + "-vol"
    folder = os.path.dirname(stack.engine_socket)
    direct(
        "volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt",
        f"device={folder}", vol, check=True,
    )  # fmt: skip
    try:
        r = via_agent("create", "--name", name, "-v", f"{vol}:/x", registry_ref(stack, "busybox"))
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
        r = via_agent(
            "create", "--name", name, "--mount", f"type=volume,source={vol},target=/x",
            registry_ref(stack, "busybox"),
        )  # fmt: skip
        assert r.returncode != 0 and not exists(direct, name)
    finally:
        direct("volume", "rm", "-f", vol)


def test_inline_local_volume_and_volume_create_are_refused(via_agent, direct, stack, name):
    vol = name + "-inline"
    r = via_agent(
        "create", "--name", name, "--mount",
        f"type=volume,source={vol},target=/x,volume-driver=local,volume-opt=type=none,"
        f"volume-opt=o=bind,volume-opt=device={stack.engine_socket}",
        registry_ref(stack, "busybox"),
    )  # fmt: skip
    assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
    assert not exists(direct, name)
    r = via_agent(
        "volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt",
        f"device={os.path.dirname(stack.engine_socket)}", vol,
    )  # fmt: skip
    assert r.returncode != 0 and "volumes cannot carry the engine socket" in r.stderr
    listed = direct("volume", "ls", "-q", check=True).stdout.split()
    assert vol not in listed


def test_old_api_start_with_a_hostconfig_body_is_refused(agent, direct, stack, name):
    ref = registry_ref(stack, "busybox")
    direct("create", "--name", name, "--network", "none", ref, "sleep", "30", check=True)
    try:
        body = json.dumps({"Binds": [f"{stack.engine_socket}:/s"]}).encode()
        reply = _raw(agent, "POST", f"/v1.23/containers/{name}/start", body)
        assert reply.startswith(b"HTTP/1.1 403"), reply
        state = direct("inspect", "--format", "{{.State.Running}}", name, check=True).stdout
        assert state.strip() == "false"
    finally:
        direct("rm", "-f", name)


# -- allowed images, by digest -----------------------------------------------------------------


def _run_cli_inside(via_agent: Any, name: str, ref: str, *extra: str) -> Any:
    return via_agent(
        "run", "--name", name, "--network", "none", *extra,
        "-v", "/var/run/docker.sock:/var/run/docker.sock", ref,
        "docker", "version", "--format", "{{.Server.Version}}",
    )  # fmt: skip


@pytest.mark.parametrize("form", ["tag", "any-tag", "digest", "everything", "no-tag-latest"])
def test_allowed_image_forms(form, agent, via_agent, direct, stack, name):
    ref = registry_ref(stack, "dockercli")
    repo = ref.rsplit(":", 1)[0]
    entry = {
        "tag": ref,
        "any-tag": repo + ":*",
        "digest": repo_digest(direct, ref),
        "everything": "*",
        "no-tag-latest": repo,
    }[form]
    run_ref = repo + ":latest" if form == "no-tag-latest" else ref
    agent.set_settings(settings_with([entry]))
    try:
        r = _run_cli_inside(via_agent, name, run_ref)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip(), "the docker CLI inside reached the engine"
        (mount,) = [
            m for m in mounts_of(direct, name) if m["Destination"] == "/var/run/docker.sock"
        ]
        assert mount["Source"] == agent.container_socket, "the raw socket must never be given"
    finally:
        direct("rm", "-f", name)


def test_other_images_stay_refused_when_one_is_allowed(agent, via_agent, direct, stack, name):
    agent.set_settings(settings_with([registry_ref(stack, "dockercli")]))
    r = _run_cli_inside(via_agent, name, registry_ref(stack, "busybox"))
    assert r.returncode != 0 and NOT_LISTED in r.stderr
    assert not exists(direct, name)


def test_retagging_a_refused_image_as_an_allowed_one_is_refused(
    agent, via_agent, direct, stack, name
):
    allowed = registry_ref(stack, "dockercli")
    agent.set_settings(settings_with([allowed]))
    fake = allowed.rsplit(":", 1)[0] + ":retagged"
    agent.set_settings(settings_with([allowed, fake]))
    direct("tag", registry_ref(stack, "busybox"), fake, check=True)
    try:
        r = via_agent("create", "--name", name, "-v", "/var/run/docker.sock:/s", fake, "true")
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, name)
    finally:
        direct("rmi", fake)


# -- the agent reuses what the engine said an image name was (Gate._resolved): try to defeat it


def image_id(direct: Any, ref: str) -> str:
    return str(direct("image", "inspect", "--format", "{{.Id}}", ref, check=True).stdout.strip())


def socket_containers(direct: Any, stack: Any, agent: AgentProcess) -> dict[str, str]:
    """Every container ON THE ENGINE that mounts a socket leading to it: name -> image ID."""
    ids = direct("ps", "-aq", "--no-trunc", check=True).stdout.split()
    if not ids:
        return {}
    out = direct("inspect", "--format", "{{json .}}", *ids, check=True).stdout
    sockets = {agent.container_socket, agent.listen, stack.engine_socket, "/var/run/docker.sock"}
    found = {}
    for line in out.splitlines():
        info = json.loads(line)
        if any(m.get("Source") in sockets for m in info.get("Mounts") or []):
            found[info["Name"].lstrip("/")] = info["Image"]
    return found


def _create_socket(via_agent: Any, name: str, ref: str) -> Any:
    return via_agent(
        "create", "--name", name, "--network", "none", "-v", "/var/run/docker.sock:/s", ref, "true"
    )


def test_a_name_retagged_between_two_creates_gets_no_socket_container(
    agent, via_agent, direct, stack, name
):
    allowed, refused = registry_ref(stack, "dockercli"), registry_ref(stack, "busybox")
    moving = f"local/moving-{name}:1"
    agent.set_settings(settings_with([allowed]))
    direct("tag", allowed, moving, check=True)
    try:
        r = _create_socket(via_agent, name + "-1", moving)
        assert r.returncode == 0, r.stderr  # judged: the name is the allowed image
        direct("tag", refused, moving, check=True)  # the name now is another image
        for i in range(2, 5):
            r = _create_socket(via_agent, f"{name}-{i}", moving)
            assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        bad = image_id(direct, refused)
        assert bad not in socket_containers(direct, stack, agent).values()
        assert socket_containers(direct, stack, agent) == {name + "-1": image_id(direct, allowed)}
    finally:
        direct("rm", "-f", *(f"{name}-{i}" for i in range(1, 5)))
        direct("rmi", moving)


def test_a_name_removed_and_built_again_gets_no_socket_container(
    agent, via_agent, direct, stack, name, tmp_path
):
    allowed = registry_ref(stack, "dockercli")
    moving = f"local/rebuilt-{name}:1"
    agent.set_settings(settings_with([allowed]))
    direct("tag", allowed, moving, check=True)
    ctx = tmp_path / "evil"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry_ref(stack, 'busybox')}\nLABEL evil=1\n")
    try:
        r = _create_socket(via_agent, name + "-1", moving)
        assert r.returncode == 0, r.stderr
        direct("rmi", moving, check=True)
        direct("build", "-q", "-t", moving, str(ctx), check=True)
        r = _create_socket(via_agent, name + "-2", moving)
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        r = via_agent(
            "run", "--rm", "--network", "none", "-v", "/var/run/docker.sock:/s", moving, "true"
        )  # fmt: skip
        assert r.returncode != 0 and "docker socket mount denied" in r.stderr, r.stderr
        evil = image_id(direct, moving)
        assert evil not in socket_containers(direct, stack, agent).values()
        assert socket_containers(direct, stack, agent) == {name + "-1": image_id(direct, allowed)}
    finally:
        direct("rm", "-f", name + "-1", name + "-2")
        direct("rmi", "-f", moving)


def test_a_name_moved_to_another_allowed_image_is_served_with_that_image(
    agent, via_agent, direct, stack, name
):
    first, second = registry_ref(stack, "dockercli"), registry_ref(stack, "busybox")
    moving = f"local/moved-{name}:1"
    agent.set_settings(settings_with([first, second]))
    direct("tag", first, moving, check=True)
    try:
        assert _create_socket(via_agent, name + "-1", moving).returncode == 0
        direct("tag", second, moving, check=True)
        r = _create_socket(via_agent, name + "-2", moving)
        assert r.returncode == 0, r.stderr  # no refusal because of the earlier answer
        assert socket_containers(direct, stack, agent) == {
            name + "-1": image_id(direct, first),
            name + "-2": image_id(direct, second),
        }
        (mount,) = mounts_of(direct, name + "-2")
        assert mount["Source"] == agent.container_socket
    finally:
        direct("rm", "-f", name + "-1", name + "-2")
        direct("rmi", moving)


def _build(via_agent: Any, tmp: Path, ref: str, dockerfile: str) -> None:
    ctx = tmp / ref.replace("/", "_").replace(":", "_")
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    via_agent("build", "-q", "-t", ref, str(ctx), check=True)


def test_stale_local_copy_is_refused_with_the_fix(agent, via_agent, direct, stack, name, tmp_path):
    repo = f"{stack.registry}/fixtures/moving-{name}"
    tag = repo + ":1"
    base = registry_ref(stack, "busybox")
    old, new = f"local/{name}-old:1", f"local/{name}-new:1"
    _build(via_agent, tmp_path, old, f"FROM {base}\nLABEL version=old\n")
    _build(via_agent, tmp_path, new, f"FROM {base}\nLABEL version=new\n")
    direct("tag", old, tag, check=True)
    direct("push", tag, check=True)
    direct("tag", new, tag, check=True)
    direct("push", tag, check=True)  # the registry's tag moves to another image
    direct("tag", old, tag, check=True)  # the local copy is the old one
    agent.set_settings(settings_with([tag]))
    try:
        r = via_agent("create", "--name", name, "-v", "/var/run/docker.sock:/s", tag, "true")
        assert r.returncode != 0
        assert "no longer matches the registry's digest" in r.stderr, r.stderr
        assert f"docker image rm {tag}" in r.stderr and f"docker pull {tag}" in r.stderr
        assert not exists(direct, name)
        # The fix the message gives works: remove, pull again, and the mount is allowed.
        direct("rmi", tag, check=True)
        direct("pull", tag, check=True)
        r = via_agent("create", "--name", name, "-v", "/var/run/docker.sock:/s", tag, "true")
        assert r.returncode == 0, r.stderr
        assert exists(direct, name)
    finally:
        direct("rm", "-f", name)
        direct("rmi", "-f", tag, old, new)


def test_derived_images(agent, via_agent, direct, stack, name, tmp_path):
    base = registry_ref(stack, "dockercli")
    ctx = tmp_path / "derived"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nLABEL eci.test=derived\n")
    derived = "local/derived-" + name + ":1"
    via_agent("build", "-q", "-t", derived, str(ctx), check=True)
    unrelated = "local/unrelated-" + name + ":1"
    ctx2 = tmp_path / "unrelated"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text(f"FROM {registry_ref(stack, 'busybox')}\nLABEL x=y\n")
    via_agent("build", "-q", "-t", unrelated, str(ctx2), check=True)
    try:
        agent.set_settings(settings_with([base], allowDerivedImages=False))
        r = _run_cli_inside(via_agent, name, derived)
        assert r.returncode != 0 and NOT_LISTED in r.stderr and not exists(direct, name)

        agent.set_settings(settings_with([base], allowDerivedImages=True))
        r = _run_cli_inside(via_agent, name, derived)
        assert r.returncode == 0, r.stderr
        direct("rm", "-f", name, check=True)

        r = _run_cli_inside(via_agent, name, unrelated)
        assert r.returncode != 0 and NOT_LISTED in r.stderr and not exists(direct, name)
    finally:
        direct("rm", "-f", name)
        direct("rmi", derived, unrelated)


def test_eci_off_is_a_pure_pass_through(agent, via_agent, direct, stack, name):
    agent.set_settings(
        {"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": False}}
    )
    try:
        r = via_agent(
            "create", "--name", name, "-v", f"{stack.engine_socket}:/s",
            registry_ref(stack, "busybox"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        (mount,) = mounts_of(direct, name)
        assert mount["Source"] == stack.engine_socket
    finally:
        direct("rm", "-f", name)


def test_a_container_cannot_create_a_socket_container_the_host_could_not(
    agent, via_agent, direct, stack, name
):
    cli = registry_ref(stack, "dockercli")
    agent.set_settings(settings_with([cli]))
    inner = name + "-inner"
    try:
        r = via_agent(
            "run", "--name", name, "--network", "none",
            "-v", "/var/run/docker.sock:/var/run/docker.sock", cli,
            "docker", "create", "--name", inner, "-v", "/var/run/docker.sock:/s",
            registry_ref(stack, "busybox"),
        )  # fmt: skip
        assert r.returncode != 0
        assert "docker socket mount denied" in r.stderr, r.stderr
        assert not exists(direct, inner)
    finally:
        direct("rm", "-f", name, inner)


# -- raw requests: the bypass attempts ---------------------------------------------------------


def _raw(agent: AgentProcess, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, *, chunked: bool = False,
         content_type: str | None = "application/json") -> bytes:  # fmt: skip
    from tests.e2e.agent_process import http_over_unix

    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close"]
    if content_type and body is not None:
        lines.append(f"Content-Type: {content_type}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                payload += b"%x\r\n" % len(part) + part + b"\r\n"
            payload += b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return http_over_unix(agent.listen, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


def _create_body(stack: Any, raw_host_config: str) -> bytes:
    image = json.dumps(stack.images["busybox"])
    return ('{"Image": ' + image + ', "HostConfig": ' + raw_host_config + "}").encode()


def _json_tricks(sock: str) -> dict[str, str]:
    bind = json.dumps(f"{sock}:/s")
    return {
        "plain": '{"Binds": [' + bind + "]}",
        "lowercase-keys": '{"binds": [' + bind + "]}",
        "escaped-key": '{"\\u0042inds": [' + bind + "]}",
        "kelvin-sign": '{"\u212aernelMemory": 0, "Binds": [' + bind + "]}",
        "last-duplicate-wins": '{"Binds": ["/tmp:/t"], "BINDS": [' + bind + "]}",
        "null-does-not-erase": '{"Binds": [' + bind + '], "Binds": null}',
        "mounts-bind": '{"Mounts": [{"Type": "bind", "Source": ' + json.dumps(sock) + ', "Target": "/s"}]}',
        "mounts-lowercase": '{"mounts": [{"type": "bind", "source": ' + json.dumps(sock) + ', "target": "/s"}]}',
    }  # fmt: skip


@pytest.mark.parametrize(
    "trick",
    ["plain", "lowercase-keys", "escaped-key", "kelvin-sign", "last-duplicate-wins",
     "null-does-not-erase", "mounts-bind", "mounts-lowercase"],
)  # fmt: skip
def test_json_spellings_the_engine_accepts_are_all_judged(trick, agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)[trick])
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert not exists(direct, name)


def test_duplicate_hostconfig_objects_merge_as_in_go(agent, direct, stack, name):
    image = json.dumps(stack.images["busybox"])
    bind = json.dumps(f"{stack.engine_socket}:/s")
    body = (
        '{"Image": ' + image + ', "HostConfig": {"Binds": [' + bind + "]}, "
        '"hostConfig": {"NetworkMode": "none"}}'
    ).encode()
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert not exists(direct, name)


@pytest.mark.parametrize(
    "target",
    [
        "/containers/create?name={n}",
        "/v1.41./containers/create?name={n}",
        "/v1.41/containers%2Fcreate?name={n}",
        "/v1.41/%63ontainers/create?name={n}",
        "http://localhost/v1.41/containers/create?name={n}",
    ],
)
def test_path_spellings_reach_the_same_judgement(target, agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    reply = _raw(agent, "POST", target.format(n=name), body)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert not exists(direct, name)


@pytest.mark.parametrize(
    "target",
    [
        "/v1.41//containers/create?name={n}",
        "/v1.41/./containers/create?name={n}",
        "/v1.41/x/../containers/create?name={n}",
        "/v1.41/containers/create%00?name={n}",
        "/v1.41/containers/create?name={n};x=1",
    ],
)
def test_unclean_paths_are_refused_not_guessed(target, agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    reply = _raw(agent, "POST", target.format(n=name), body)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert not exists(direct, name)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_content_type_variants_are_judged(content_type, agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body,
                 content_type=content_type)  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert not exists(direct, name)


def test_body_without_json_content_type_is_refused(agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    for ctype in (None, "text/plain"):
        reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body,
                     content_type=ctype)  # fmt: skip
        assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert not exists(direct, name)


def test_chunked_body_is_judged(agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body, chunked=True)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    assert not exists(direct, name)


def test_pipelined_second_request_is_judged(agent, direct, stack, name):
    from tests.e2e.agent_process import http_over_unix

    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    first = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
    second = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    reply = http_over_unix(agent.listen, first + second)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b"HTTP/1.1 403" in reply, reply
    assert not exists(direct, name)


def test_content_length_and_transfer_encoding_together_are_refused(agent, direct, stack, name):
    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", body,
                 headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert not exists(direct, name)


def test_short_body_is_never_forwarded(agent, direct, stack, name):
    from tests.e2e.agent_process import http_over_unix

    body = _create_body(stack, _json_tricks(stack.engine_socket)["plain"])
    head = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 50}\r\n\r\n"
    ).encode()
    reply = http_over_unix(agent.listen, head + body, timeout=1.0)
    assert b"201" not in reply.split(b"\r\n", 1)[0]
    assert not exists(direct, name)


def test_oversized_body_is_refused_not_skipped(agent, direct, stack, name):
    padded = _create_body(
        stack, " " * (5 * 1024 * 1024) + _json_tricks(stack.engine_socket)["plain"]
    )
    reply = _raw(agent, "POST", f"/v1.41/containers/create?name={name}", padded)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert not exists(direct, name)


def test_policy_reload_applies_to_open_connections(agent, direct, stack, name):
    import socket

    import h11

    ref = stack.images["busybox"]
    bind = f"{stack.engine_socket}:/s"

    def create(sock: socket.socket, conn: h11.Connection, cname: str) -> int:
        body = json.dumps({"Image": ref, "HostConfig": {"Binds": [bind]}}).encode()
        req = h11.Request(
            method="POST", target=f"/v1.41/containers/create?name={cname}",
            headers=[("Host", "d"), ("Content-Type", "application/json"),
                     ("Content-Length", str(len(body)))],
        )  # fmt: skip
        sock.sendall(
            conn.send(req) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            if isinstance(event, h11.EndOfMessage):
                conn.start_next_cycle()
                return status

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(agent.listen)
        conn = h11.Connection(h11.CLIENT)
        assert create(sock, conn, name + "-a") == 403
        agent.set_settings(settings_with(["*"]))
        assert create(sock, conn, name + "-b") == 201
        agent.set_settings(settings_with([]))
        assert create(sock, conn, name + "-c") == 403
    assert not exists(direct, name + "-a") and not exists(direct, name + "-c")
    assert exists(direct, name + "-b")
    direct("rm", "-f", name + "-b")


def test_sigterm_stops_the_agent_cleanly_and_removes_its_sockets(tmp_path, stack):
    a = AgentProcess(tmp_path, stack.engine_socket)
    a.start({"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": True}})
    assert os.path.exists(a.listen) and os.path.exists(a.container_socket)
    assert a.stop() == 0, a.log()
    assert not os.path.exists(a.listen) and not os.path.exists(a.container_socket)
