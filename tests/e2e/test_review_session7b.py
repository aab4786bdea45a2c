"""Review session 7b: attacks on the checks added after session 7, through the real agent,
each verified on the ENGINE.

Attacked:

1. `POST /services/{id}/update?rollback=previous` (the engine puts back the stored
   PreviousSpec): query spellings Python's `parse_qsl` and Go's `url.ParseQuery` read apart
   (a malformed percent-escape in an earlier `rollback` value: Go drops that pair, Python keeps
   it), duplicates, case, percent-encoding, old API version prefixes; an empty or blank body.
2. Service network targets the engine resolves to swarm's `host` network: case-folded names,
   the local host network's ID and ID prefix, the swarm host ID upper-cased, odd
   whitespace, duplicate / case-folded `Target` keys, a swarm-scoped network with the host
   driver.
3. `POST /containers/{id}/update` with a restart policy: duplicate / case-folded keys,
   `RestartPolicy` merged across duplicates, a `null`, a policy name the engine takes.
4. `docker cp` (PUT/GET/HEAD .../archive): a local volume whose device is a symlink swapped
   to /etc, /v1.x prefixes, percent-encoded names, HEAD and GET on one keep-alive connection
   (the known-heads cache), and the name the agent judged vs. the container the engine copies
   into (the archive is not pinned to the judged ID: a rename in the window).
5. Controls: ordinary `docker cp`, `docker update --restart`, `docker service
   create/update/rollback` still work through the agent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_review_session7 import (
    _service,
    _service_body,
    _spec_networks,
    _status,
    _task_evidence,
)
from tests.e2e.test_socket_mount import _raw

pytestmark = pytest.mark.engine


# -- 1. rollback query spellings -------------------------------------------------------------------


def _host_then_benign(direct: Any, stack: Any, name: str, swarm_host: str) -> dict[str, Any]:
    """A service made on the host network before enforcement, then moved off it (also before):
    its PreviousSpec is the host-network one."""
    direct("service", "create", "--detach", "--name", name, "--network", "host",
           "--replicas", "0", stack.images["busybox"], "sleep", "600", check=True)  # fmt: skip
    direct("service", "update", "--detach", "--network-rm", "host", name, check=True)
    svc = _service(stack, name)
    assert svc is not None and swarm_host not in _spec_networks(svc), svc
    prev = _spec_networks({"Spec": svc.get("PreviousSpec") or {}})
    assert swarm_host in prev, svc.get("PreviousSpec")
    return svc


@pytest.mark.parametrize(
    "prefix,query",
    [
        ("/v1.41", "rollback=%zz&rollback=previous"),  # Go skips the malformed pair
        ("/v1.41", "rollback=%G0&rollback=previous"),
        ("/v1.41", "rollback=previous%&rollback=previous"),
        ("/v1.41", "rollback%zz=1&rollback=previous"),
        ("/v1.41", "rollback=previous&rollback=x"),
        ("/v1.41", "rollback=%70revious"),
        ("/v1.41", "rollback=pre%76ious&x=%zz"),
        ("/v1.41", "rollb%61ck=previous"),
        ("/v1.41", "rollback=Previous"),
        ("/v1.41", "Rollback=previous"),
        ("/v1.41", "rollback=previous+"),
        ("/v1.30", "rollback=previous"),
        ("/v1.25", "rollback=previous"),
        ("", "rollback=previous"),
    ],
)
def test_rollback_query_spellings(prefix, query, agent, swarm, direct, stack, name):
    svc = _host_then_benign(direct, stack, name, swarm)
    try:
        version = svc["Version"]["Index"]
        target = f"{prefix}/services/{svc['ID']}/update?version={version}&{query}"
        reply = _raw(agent, "POST", target, json.dumps(svc["Spec"]).encode())
        after = _service(stack, name)
        assert after is not None
        assert swarm not in _spec_networks(after), (
            f"BYPASS: POST {target} through the agent answered {reply[:40]!r}; the engine "
            f"rolled back to the host-network spec: networks {_spec_networks(after)}"
        )
    finally:
        direct("service", "rm", name)


@pytest.mark.parametrize("body", [b"", b"   ", b"{}", b'{"TaskTemplate":{"ContainerSpec":{}}}'])
def test_rollback_with_an_empty_or_minimal_body(body, agent, swarm, direct, stack, name):
    svc = _host_then_benign(direct, stack, name, swarm)
    try:
        version = svc["Version"]["Index"]
        target = f"/v1.41/services/{svc['ID']}/update?version={version}&rollback=previous"
        reply = _raw(agent, "POST", target, body)
        after = _service(stack, name)
        assert after is not None
        assert swarm not in _spec_networks(after), (
            f"BYPASS: rollback with body {body!r} answered {reply[:40]!r}; networks now "
            f"{_spec_networks(after)}"
        )
    finally:
        direct("service", "rm", name)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("query", ["networkmode=%zz&networkmode=host", "networkmode=host"])
def test_build_networkmode_spellings(query, agent, direct, stack, name):
    """Adjacent, same query parsing: the classic builder's RUN steps in the host netns."""
    tag = f"eci-r7b-{name}"
    dockerfile = (f"FROM {stack.images['busybox']}\n"
                  "RUN readlink /proc/self/ns/net > /netns\n").encode()  # fmt: skip
    target = f"/v1.41/build?version=1&{query}&t={tag}"
    reply = _raw(agent, "POST", target, _tar({"Dockerfile": dockerfile}),
                 content_type="application/x-tar")  # fmt: skip
    try:
        made = direct("run", "--rm", "--network", "none", tag, "cat", "/netns")
        host = os.readlink(f"/proc/{stack.dockerd_pid}/ns/net")
        assert made.returncode != 0 or made.stdout.strip() != host, (
            f"BYPASS: POST {target} answered {reply[:20]!r}; a RUN step of the build ran in the "
            f"host's network namespace ({made.stdout.strip()} == {host})"
        )
    finally:
        direct("rmi", "-f", tag)


# -- 2. network targets -------------------------------------------------------------------------------


def _net_id(direct: Any, net: str) -> str:
    return direct("network", "inspect", "--format", "{{.Id}}", net, check=True).stdout.strip()


@pytest.mark.parametrize(
    "form",
    ["HOST", "Host", "host ", " host", "local-id", "local-id-prefix", "local-id-upper",
     "swarm-id-upper", "swarm-id-prefix-upper", "host\t"],
)  # fmt: skip
@pytest.mark.parametrize("where", ["task", "top"])
def test_service_network_target_spellings(form, where, agent, swarm, direct, stack, name):
    local = _net_id(direct, "host")
    target = {
        "local-id": local,
        "local-id-prefix": local[:5],
        "local-id-upper": local[:12].upper(),
        "swarm-id-upper": swarm.upper(),
        "swarm-id-prefix-upper": swarm[:6].upper(),
    }.get(form, form)
    nets = [{"Target": target}]
    body = (_service_body(stack, name, task={"Networks": nets}) if where == "task"
            else _service_body(stack, name, Networks=nets))  # fmt: skip
    body["Mode"] = {"Replicated": {"Replicas": 0}}
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    svc = _service(stack, name)
    try:
        assert svc is None or swarm not in _spec_networks(svc), (
            f"BYPASS: network target {target!r} ({where}) answered {reply[:20]!r}; the engine "
            f"made {name} on the swarm host network: {_spec_networks(svc or {})}"
        )
    finally:
        direct("service", "rm", name)


@pytest.mark.parametrize(
    "raw",
    [
        '[{"Target": "%s", "Target": "host"}]',
        '[{"Target": "%s", "target": "host"}]',
        '[{"target": "%s", "TARGET": "host"}]',
        '[{"Target": "host", "Target": null}]',
    ],
)
def test_service_network_target_duplicate_keys(raw, agent, swarm, direct, stack, name):
    overlay = f"{name}-ov"
    direct("network", "create", "-d", "overlay", overlay, check=True)
    try:
        nets = raw % overlay if "%s" in raw else raw
        body = json.dumps(_service_body(stack, name))
        body = body[:-1] + ', "Mode": {"Replicated": {"Replicas": 0}}}'
        body = body.replace('"TaskTemplate": {', '"TaskTemplate": {"Networks": ' + nets + ", ", 1)
        reply = _raw(agent, "POST", "/v1.41/services/create", body.encode())
        svc = _service(stack, name)
        assert svc is None or swarm not in _spec_networks(svc), (
            f"BYPASS: Networks {nets} answered {reply[:20]!r}; the engine made {name} on the "
            f"swarm host network: {_spec_networks(svc or {})}"
        )
    finally:
        direct("service", "rm", name)
        direct("network", "rm", overlay)


def test_swarm_scoped_network_with_the_host_driver(agent, via_agent, swarm, direct, stack, name):
    net = f"{name}-h"
    made = via_agent("network", "create", "--scope", "swarm", "-d", "host", net)
    if made.returncode != 0:  # the agent or the engine refuses it: try it made before
        made = direct("network", "create", "--scope", "swarm", "-d", "host", net)
    try:
        if made.returncode != 0:
            pytest.skip(f"the engine does not make such a network: {made.stderr.strip()}")
        body = _service_body(stack, name, task={"Networks": [{"Target": net}]})
        reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
        svc = _service(stack, name)
        try:
            assert svc is None, (
                f"BYPASS: a service on swarm-scoped host-driver network {net} answered "
                f"{reply[:20]!r}; tasks: " + _task_evidence(stack, direct, name)
            )
        finally:
            direct("service", "rm", name)
    finally:
        direct("network", "rm", net)


# -- 3. restart policy updates with odd JSON ---------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"RestartPolicy": {"Name": "always"}, "RestartPolicy": {"MaximumRetryCount": 0}}',
        '{"RestartPolicy": {"Name": "always"}, "RestartPolicy": null}',
        '{"RestartPolicy": {"Name": "always"}, "restartpolicy": {}}',
        '{"restartpolicy": {"name": "always"}}',
        '{"RESTARTPOLICY": {"NAME": "unless-stopped"}}',
        '{"RestartPolicy": {"Name": "always", "Name": null}}',
        '{"RestartPolicy": {"Name": "always", "name": ""}}',
        '{"Re\u017ftartPolicy": {"Name": "always"}}',
        '{"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}}',
        '{"RestartPolicy": {"Name": "\\u0061lways"}}',
        '{"Memory": 0, "RestartPolicy": {"Name": "always"}}',
    ],
)
def test_restart_policy_update_odd_json(body, agent, direct, stack, name):
    direct("create", "--name", name, "--network", "none", "--pid", "host",
           stack.images["busybox"], "true", check=True)  # fmt: skip
    try:
        reply = _raw(agent, "POST", f"/v1.41/containers/{name}/update", body.encode())
        policy = direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).stdout.strip()
        assert policy in ("", "no"), (
            f"BYPASS: update body {body} answered {reply[:20]!r}; the --pid=host container the "
            f"agent refuses to start now has restart policy {policy!r}"
        )
    finally:
        direct("rm", "-f", name)


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.12"])
def test_restart_policy_update_on_old_api_versions(prefix, agent, direct, stack, name):
    direct("create", "--name", name, "--network", "none", "--pid", "host",
           stack.images["busybox"], "true", check=True)  # fmt: skip
    try:
        reply = _raw(agent, "POST", f"{prefix}/containers/{name}/update",
                     b'{"RestartPolicy": {"Name": "always"}}')  # fmt: skip
        policy = direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).stdout.strip()
        assert policy in ("", "no"), f"BYPASS: {prefix} answered {reply[:20]!r}: {policy!r}"
    finally:
        direct("rm", "-f", name)


# -- 4. docker cp ------------------------------------------------------------------------------------


def _put_tar(agent: Any, target: str, files: dict[str, bytes]) -> bytes:
    return _raw(agent, "PUT", target, _tar(files), content_type="application/x-tar")


def test_cp_into_a_volume_whose_device_symlink_was_swapped(via_agent, direct, stack, name,
                                                            tmp_path):  # fmt: skip
    benign = tmp_path / "benign"
    benign.mkdir()
    link = tmp_path / "link"
    link.symlink_to(benign)
    os.chmod(tmp_path, 0o755)
    vol = f"{name}-v"
    proof = Path(f"/etc/eci-review7b-{name}")
    r = via_agent("volume", "create", "-d", "local", "-o", "type=none", "-o", "o=bind",
                  "-o", f"device={link}", vol)  # fmt: skip
    try:
        if r.returncode != 0:
            pytest.skip(f"the agent refuses the volume itself: {r.stderr.strip()}")
        via_agent("create", "--name", name, "--network", "none", "-v", f"{vol}:/h",
                  stack.images["busybox"], "true", check=True)  # fmt: skip
        link.unlink()
        link.symlink_to("/etc")
        payload = tmp_path / "payload"
        payload.write_text("x\n")
        r = via_agent("cp", str(payload), f"{name}:/h/{proof.name}")
        assert not proof.exists(), f"BYPASS: docker cp (exit {r.returncode}) wrote {proof}"
        out = tmp_path / "out"
        r = via_agent("cp", f"{name}:/h/hostname", str(out))
        assert not out.exists() or out.read_text() != Path("/etc/hostname").read_text(), (
            f"BYPASS: docker cp (exit {r.returncode}) read the host's /etc/hostname"
        )
    finally:
        with contextlib.suppress(OSError):
            proof.unlink()
        direct("rm", "-f", name)
        direct("volume", "rm", "-f", vol)


@pytest.fixture
def swapped(via_agent, direct, stack, name, tmp_path):
    """A stopped container made through the agent with a bind whose symlink now leads to /etc."""
    benign = tmp_path / "benign"
    benign.mkdir()
    (benign / "hostname").write_text("benign\n")
    link = tmp_path / "link"
    link.symlink_to(benign)
    os.chmod(tmp_path, 0o755)
    via_agent("create", "--name", name, "--network", "none", "-v", f"{link}:/h",
              stack.images["busybox"], "true", check=True)  # fmt: skip
    try:
        yield link
    finally:
        direct("rm", "-f", name)


def _enc(name: str) -> str:
    return "".join(f"%{ord(c):02X}" if i % 2 == 0 else c for i, c in enumerate(name))


@pytest.mark.parametrize("prefix", ["", "/v1.12", "/v1.24", "/v1.41", "/v1.99"])
@pytest.mark.parametrize("how", ["plain", "encoded", "id-prefix", "slash-name"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_archive_spellings_are_judged(method, how, prefix, swapped, agent, direct, name):
    link = swapped
    cid = direct("inspect", "-f", "{{.Id}}", name, check=True).stdout.strip()
    ident = {"plain": name, "encoded": _enc(name), "id-prefix": cid[:10],
             "slash-name": "%2F" + name}[how]  # fmt: skip
    before = Path("/etc/hostname").read_bytes()
    link.unlink()
    link.symlink_to("/etc")
    proof = Path(f"/etc/eci-review7b-{name}")
    try:
        if method == "PUT":
            reply = _put_tar(agent, f"{prefix}/containers/{ident}/archive?path=/h",
                             {proof.name: b"x\n"})  # fmt: skip
            assert not proof.exists(), f"BYPASS: {method} {how} {prefix}: {reply[:60]!r}"
        else:
            path = urllib.parse.quote("/h/hostname", safe="")
            reply = _raw(agent, method, f"{prefix}/containers/{ident}/archive?path={path}")
            assert _status(reply) != 200 or not reply.startswith(b"HTTP/1.1 200"), (
                f"BYPASS: {method} {how} {prefix} answered {reply[:300]!r} "
                f"(host hostname {before!r} in body: {before in reply})"
            )
    finally:
        with contextlib.suppress(OSError):
            proof.unlink()


def _send_on(sock: socket.socket, data: bytes, wait: float = 2.0) -> bytes:
    sock.sendall(data)
    sock.settimeout(wait)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_archive_head_is_not_remembered(method, swapped, agent, direct, name):
    """The same archive request head, allowed while the bind was benign, sent again (on the
    same and on another keep-alive connection) after the swap."""
    link = swapped
    head = (f"{method} /v1.41/containers/{name}/archive?path=%2Fh%2Fhostname HTTP/1.1\r\n"
            "Host: docker\r\n\r\n").encode()  # fmt: skip
    first = socket.socket(socket.AF_UNIX)
    first.connect(agent.listen)
    try:
        one = _send_on(first, head)
        assert one.startswith(b"HTTP/1.1 200"), one[:300]
        link.unlink()
        link.symlink_to("/etc")
        again = _send_on(first, head)
        with socket.socket(socket.AF_UNIX) as other:
            other.connect(agent.listen)
            other_reply = _send_on(other, head)
        for reply in (again, other_reply):
            assert not reply.startswith(b"HTTP/1.1 200"), (
                f"BYPASS: the remembered {method} archive head was answered {reply[:200]!r}"
            )
    finally:
        first.close()


def _rename(agent: Any, old: str, new: str) -> bytes:
    return _raw(agent, "POST", f"/v1.41/containers/{old}/rename?name={new}")


@pytest.mark.parametrize("direction", ["into", "out-of"])
def test_archive_goes_to_the_container_that_was_judged(direction, swapped, agent, via_agent,
                                                       direct, stack, name, tmp_path):  # fmt: skip
    """The archive is forwarded by the name the client gave, not by the judged ID: a harmless
    container judged under NAME (many volumes make the judging take a while), then renamed
    away while a container whose bind now leads to /etc takes NAME."""
    link = swapped
    evil = f"{name}-b"
    harmless = f"{name}-a"
    direct("rename", name, evil, check=True)
    vols = [a for i in range(150) for a in ("-v", f"/d{i}")]
    via_agent("create", "--name", name, "--network", "none", *vols, stack.images["busybox"],
              "true", check=True)  # fmt: skip
    link.unlink()
    link.symlink_to("/etc")
    proof = Path(f"/etc/eci-review7b-{name}")
    host = Path("/etc/hostname").read_bytes()
    got: list[bytes] = []
    try:
        for attempt in range(12):
            got.clear()

            def copy() -> None:
                if direction == "into":
                    got.append(_put_tar(agent, f"/v1.41/containers/{name}/archive?path=/h",
                                        {proof.name: b"x\n"}))  # fmt: skip
                else:
                    got.append(
                        _raw(agent, "GET", f"/v1.41/containers/{name}/archive?path=%2Fh%2Fhostname")
                    )

            t = threading.Thread(target=copy)
            t.start()
            time.sleep(0.005 * attempt)
            _rename(agent, name, harmless)
            _rename(agent, evil, name)
            t.join(30)
            _rename(agent, name, evil)
            _rename(agent, harmless, name)
            if direction == "into":
                assert not proof.exists(), (
                    f"BYPASS (attempt {attempt}): PUT /containers/{name}/archive was judged on "
                    f"the harmless container and the engine copied into the renamed one, whose "
                    f"bind leads to /etc: {proof} exists; reply {got[0][:60]!r}"
                )
            else:
                reply = got[0] if got else b""
                assert not (reply.startswith(b"HTTP/1.1 200") and host in reply), (
                    f"BYPASS (attempt {attempt}): GET /containers/{name}/archive returned the "
                    f"host's /etc/hostname from the renamed container: {reply[:200]!r}"
                )
    finally:
        with contextlib.suppress(OSError):
            proof.unlink()
        direct("rm", "-f", "-v", harmless, evil, name)


def test_rollback_judges_the_service_the_engine_rolls_back(agent, swarm, direct, stack, name):
    """`_judge_service_rollback` looks the service up by the name the client gave and the
    update is forwarded by that name too. swarm resolves a name before an ID prefix: a
    harmless service named after a prefix of the host-network service's ID is judged, then
    removed (through the agent) while its PreviousSpec is judged (many volume mounts make that
    take a while); the engine then resolves the prefix to the other service and rolls it back
    onto the host network."""
    x = _host_then_benign(direct, stack, name, swarm)
    decoy = x["ID"][:8]
    body = _service_body(stack, decoy)
    body["Mode"] = {"Replicated": {"Replicas": 0}}
    body["TaskTemplate"]["ContainerSpec"]["Mounts"] = [
        {"Type": "volume", "Source": f"{name}-v{i}", "Target": f"/d{i}"} for i in range(150)
    ]
    reply = _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
    assert _status(reply) == 201, reply[:300]
    try:
        y = _service(stack, decoy)
        assert y is not None
        spec = dict(y["Spec"])
        spec["Labels"] = {"changed": "1"}
        reply = _raw(agent, "POST",
                     f"/v1.41/services/{y['ID']}/update?version={y['Version']['Index']}",
                     json.dumps(spec).encode())  # fmt: skip
        assert _status(reply) == 200, reply[:300]
        y = _service(stack, decoy)
        assert y is not None and y.get("PreviousSpec")
        got: list[bytes] = []
        target = (f"/v1.41/services/{decoy}/update?version={x['Version']['Index']}"
                  "&rollback=previous")  # fmt: skip

        def rollback() -> None:
            got.append(_raw(agent, "POST", target, json.dumps(x["Spec"]).encode()))

        t = threading.Thread(target=rollback)
        t.start()
        time.sleep(0.02)
        removed = _raw(agent, "DELETE", f"/v1.41/services/{y['ID']}")
        t.join(30)
        after = _service(stack, name)
        assert after is not None
        assert swarm not in _spec_networks(after), (
            f"BYPASS: POST {target} (judged on decoy service {decoy}, removed meanwhile: "
            f"{removed[:15]!r}) answered {got[0][:40] if got else b''!r}; the engine rolled "
            f"{name} back onto the host network: {_spec_networks(after)}"
        )
    finally:
        direct("service", "rm", decoy)
        direct("service", "rm", name)


def test_service_network_named_after_a_prefix_of_the_swarm_host_id(agent, via_agent, swarm,
                                                                   direct, stack, name):  # fmt: skip
    """A harmless overlay named after a prefix of swarm's host network ID: the agent looks the
    target up (the name wins: the overlay), then the overlay is removed through the agent while
    the agent still looks up the service's other networks; the engine then resolves the target
    as an ID prefix: swarm's host network."""
    decoy = swarm[:5]
    others = [f"zz{name}-{i:02d}" for i in range(40)]  # looked up after the decoy (sorted)
    for net in others:
        direct("network", "create", "-d", "overlay", net, check=True)
    try:
        made = None
        for attempt in range(6):
            via_agent("network", "create", "-d", "overlay", decoy, check=True)
            body = _service_body(stack, name, task={
                "Networks": [{"Target": decoy}] + [{"Target": n} for n in others]})  # fmt: skip
            body["Mode"] = {"Replicated": {"Replicas": 0}}
            got: list[bytes] = []
            t = threading.Thread(
                target=lambda got=got, body=body: got.append(
                    _raw(agent, "POST", "/v1.41/services/create", json.dumps(body).encode())
                )
            )
            t.start()
            time.sleep(0.01 + 0.01 * attempt)
            removed = _raw(agent, "DELETE", f"/v1.41/networks/{decoy}")
            t.join(30)
            made = _service(stack, name)
            direct("network", "rm", decoy)
            if made is not None:
                break
        assert made is None or swarm not in _spec_networks(made), (
            f"BYPASS: service {name} names network {decoy!r} (an overlay when the agent looked "
            f"it up, removed meanwhile: {removed[:15]!r}); the engine resolved it to swarm's "
            f"host network: {_spec_networks(made)}"
        )
    finally:
        direct("service", "rm", name)
        direct("network", "rm", decoy, *others)


# -- 5. controls: ordinary use still works ----------------------------------------------------------


def test_ordinary_cp_update_and_service_lifecycle_work(via_agent, swarm, direct, stack, name,
                                                       tmp_path):  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    via_agent("create", "--name", name, "--network", "none", "-v", f"{data}:/h",
              stack.images["busybox"], "true", check=True)  # fmt: skip
    svc = f"{name}-svc"
    try:
        src = tmp_path / "in.txt"
        src.write_text("hello\n")
        via_agent("cp", str(src), f"{name}:/h/in.txt", check=True)
        via_agent("cp", str(src), f"{name}:/tmp/in.txt", check=True)
        assert (data / "in.txt").read_text() == "hello\n"
        via_agent("cp", f"{name}:/tmp/in.txt", str(tmp_path / "back.txt"), check=True)
        assert (tmp_path / "back.txt").read_text() == "hello\n"
        via_agent("update", "--restart", "always", name, check=True)
        assert direct("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}",
                      name).stdout.strip() == "always"  # fmt: skip
        via_agent("service", "create", "--detach", "--name", svc, "--replicas", "0",
                  stack.images["busybox"], "sleep", "600", check=True)  # fmt: skip
        via_agent("service", "update", "--detach", "--env-add", "A=1", svc, check=True)
        via_agent("service", "rollback", "--detach", svc, check=True)
        env = direct("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
                     svc).stdout  # fmt: skip
        assert "A=1" not in env, env
    finally:
        direct("service", "rm", svc)
        direct("rm", "-f", name)
