"""Gate.judge on creates against a scripted fake engine: which questions it asks the engine,
and that the image it judges is the image it then expects (no re-tag window between checks)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agent.proxy.gate as gate_module
from agent.policy.decide import Decision
from agent.proxy.connection import Request, RequestHead, Verify
from agent.proxy.engine_client import EngineError
from agent.proxy.gate import Gate, GateConfig
from agent.proxy.server import Peer
from agent.settings.model import Effective
from agent.settings.parse import parse_settings

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
IMAGE_A = {
    "Id": "sha256:" + "1" * 64,
    "RepoTags": ["example.com/app:1"],
    "RepoDigests": [f"example.com/app@{DIGEST_A}"],
    "RootFS": {"Layers": ["sha256:" + "c" * 64]},
}
IMAGE_B = {**IMAGE_A, "Id": "sha256:" + "2" * 64, "RepoDigests": [f"example.com/app@{DIGEST_B}"]}
DIGEST_C = "sha256:" + "e" * 64
IMAGE_C = {**IMAGE_A, "Id": "sha256:" + "3" * 64, "RepoDigests": [f"example.com/app@{DIGEST_C}"]}


class Engine:
    """Answers the gate's questions. An image inspect by name hands out `images` in turn (the
    last one stays); by ID, the image of `known` with that ID. `containers`: ID -> image ID."""

    def __init__(self, path: str, images: list[Any]) -> None:
        self.path = path
        self.images = images
        self.known = {i["Id"]: i for i in (IMAGE_A, IMAGE_B, IMAGE_C)}
        self.containers: dict[str, str] = {}
        self.asked: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    def answer(self, method: str, target: str) -> tuple[int, Any]:
        self.asked.append(f"{method} {target}")
        if target.startswith("/v1.41/images/sha256:"):
            image_id = target.split("/")[3]
            if image_id in self.known:
                return 200, self.known[image_id]
            return 404, {"message": "no such image"}
        if target.startswith("/v1.41/images/"):
            image = self.images.pop(0) if len(self.images) > 1 else self.images[0]
            if isinstance(image, int):
                return image, {"message": f"image answer {image}"}
            return 200, image
        if target.startswith("/v1.41/containers/"):
            cid = target.split("/")[3].split("?")[0]
            if cid not in self.containers:
                return 404, {"message": "no such container"}
            if method == "DELETE":
                del self.containers[cid]
                return 204, None
            return 200, {"Id": cid, "Image": self.containers[cid]}
        if target.startswith("/v1.41/info"):
            return 200, {"DockerRootDir": "/var/lib/docker", "SecurityOptions": []}
        if target.startswith("/v1.41/networks"):
            return 200, []
        return 404, {"message": "not here"}

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                status, doc = self.answer(method, target)
                body = b"" if doc is None else json.dumps(doc).encode()
                w.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                await w.drain()
        finally:
            w.close()

    def image_inspects(self) -> int:
        return sum(1 for t in self.asked if t.startswith("GET /v1.41/images/"))


def settings(
    exceptions: list[dict[str, Any]] | None = None, images: tuple[str, ...] = (DIGEST_A, DIGEST_B)
) -> Effective:
    doc: dict[str, Any] = {
        "configurationFileVersion": 2,
        "enhancedContainerIsolation": {
            "value": True,
            "locked": True,
            "dockerSocketMount": {
                "imageList": {"images": [f"example.com/app@{d}" for d in images]}
            },
        },
    }
    if exceptions is not None:
        doc["eciAgent"] = {"isolationExceptions": exceptions}
    return Effective(parse_settings(json.dumps(doc).encode()))


def create(body: dict[str, Any]) -> Request:
    raw = json.dumps(body).encode()
    head = RequestHead(
        "POST",
        "/v1.41/containers/create",
        ((b"Host", b"d"), (b"Content-Type", b"application/json")),
    )
    return Request(head, raw, True)


HOST = Peer(1, 0, 0, "host")


class Rig:
    """A gate in front of the fake engine, for several questions in one event loop."""

    def __init__(self, tmp_path: Path, images: list[Any], effective: Effective) -> None:
        self.engine_sock = str(tmp_path / "engine.sock")
        self.effective = effective
        self.engine = Engine(self.engine_sock, list(images))
        self.errors: list[dict[str, Any]] = []
        self.gate = Gate(
            GateConfig(
                engine_socket=self.engine_sock,
                listen_sockets=(str(tmp_path / "agent.sock"),),
                container_socket=str(tmp_path / "run" / "docker.sock"),
                settings_where=lambda: "test",
                current=lambda: self.effective,
            )
        )

    async def __aenter__(self) -> Rig:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))
        self.engine.server = await asyncio.start_unix_server(
            self.engine._serve, path=self.engine_sock
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.05)  # let an unused early question finish
        gc.collect()
        await self.gate.engine.close()
        await asyncio.sleep(0.05)  # the fake engine sees its connections closed
        assert self.engine.server is not None
        self.engine.server.close()

    async def judge(self, body: dict[str, Any]) -> tuple[Decision, bytes | None]:
        return await self.gate.judge(create(body), HOST)

    async def create(self, body: dict[str, Any], image_id: str) -> tuple[bool, int, str]:
        """Judge `body`, then play the engine creating a container with image `image_id` and
        ask the gate's after-the-fact check about it."""
        decision, _ = await self.judge(body)
        assert decision.allowed and decision.expect_image_id, decision.message
        cid = f"c{len(self.engine.containers)}{image_id[-6:]}"
        self.engine.containers[cid] = image_id
        answer = json.dumps({"Id": cid, "Warnings": []}).encode()
        return await self.gate.verify(Verify(create(body), decision, 201, answer), HOST)


def judge(
    tmp_path: Path,
    images: list[Any],
    body: Callable[[str], dict[str, Any]],
    effective: Effective | None = None,
    patch: Callable[[Gate], None] | None = None,
) -> tuple[Any, bytes | None, Engine, list[dict[str, Any]]]:
    """Judge the create `body(engine_socket)` once on a new gate; also returns the loop's
    unhandled errors."""
    rig = Rig(tmp_path, images, effective or settings())

    async def main() -> tuple[Decision, bytes | None]:
        async with rig:
            if patch is not None:
                patch(rig.gate)
            return await rig.judge(body(rig.engine_sock))

    decision, rewritten = asyncio.run(main())
    return decision, rewritten, rig.engine, rig.errors


def socket_create(engine_sock: str, **host_config: Any) -> dict[str, Any]:
    return {
        "Image": "example.com/app:1",
        "HostConfig": {"Binds": [f"{engine_sock}:/var/run/docker.sock"], **host_config},
    }


def test_a_socket_create_asks_about_its_image_once_and_expects_that_image(tmp_path: Path) -> None:
    decision, rewritten, engine, errors = judge(tmp_path, [IMAGE_A], socket_create)
    assert decision.allowed, decision.message
    assert decision.expect_image_id == IMAGE_A["Id"]
    assert rewritten is not None and str(tmp_path / "run" / "docker.sock").encode() in rewritten
    assert engine.image_inspects() == 1
    assert not errors


def test_isolation_exceptions_are_judged_on_the_image_the_socket_check_judged(
    tmp_path: Path,
) -> None:
    # The tag moves from B (socket-allowed only) to A (also allowed --privileged) between two
    # looks at it: the exception must not be granted on A while B is what is expected.
    exceptions = [{"images": [f"example.com/app@{DIGEST_A}"], "allow": ["--privileged"]}]
    decision, _, engine, _ = judge(
        tmp_path,
        [IMAGE_B, IMAGE_A],
        lambda sock: socket_create(sock, Privileged=True),
        settings(exceptions),
    )
    assert not decision.allowed
    assert decision.status == 403 and "--privileged" in decision.message
    assert engine.image_inspects() == 1


def test_an_exception_for_the_image_still_applies_with_a_socket_mount(tmp_path: Path) -> None:
    exceptions = [{"images": [f"example.com/app@{DIGEST_A}"], "allow": ["--privileged"]}]
    decision, _, engine, _ = judge(
        tmp_path, [IMAGE_A], lambda sock: socket_create(sock, Privileged=True), settings(exceptions)
    )
    assert decision.allowed, decision.message
    assert decision.expect_image_id == IMAGE_A["Id"]
    assert engine.image_inspects() == 1


def test_an_ordinary_bind_asks_nothing_about_the_image(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    decision, rewritten, engine, _ = judge(
        tmp_path,
        [IMAGE_A],
        lambda sock: {
            "Image": "example.com/app:1",
            "HostConfig": {"Binds": [f"{tmp_path}/src:/src"]},
        },
    )
    assert decision.allowed and decision.expect_image_id is None and rewritten is None
    assert engine.image_inspects() == 0


def test_a_sock_file_that_is_no_socket_is_asked_about_early_but_not_judged(tmp_path: Path) -> None:
    (tmp_path / "not-a-socket.sock").write_text("")
    body = {
        "Image": "example.com/app:1",
        "HostConfig": {"Binds": [f"{tmp_path}/not-a-socket.sock:/x.sock"]},
    }
    decision, rewritten, engine, errors = judge(tmp_path, [IMAGE_A], lambda sock: body)
    assert decision.allowed and decision.expect_image_id is None and rewritten is None
    assert engine.image_inspects() == 1  # the early question, unused
    assert not errors


def test_an_early_question_that_fails_fails_closed_only_when_needed(tmp_path: Path) -> None:
    decision, _, _, errors = judge(tmp_path, [500], socket_create)
    assert not decision.allowed and decision.status == 503
    assert "image answer 500" in decision.message
    assert not errors

    (tmp_path / "x.sock").write_text("")
    body = {"Image": "example.com/app:1", "HostConfig": {"Binds": [f"{tmp_path}/x.sock:/x.sock"]}}
    decision, _, _, errors = judge(tmp_path, [500], lambda sock: body)
    assert decision.allowed
    assert not errors  # the failed early question is no "exception never retrieved"


def test_an_early_question_that_fails_at_once_fails_closed_only_when_needed(
    tmp_path: Path,
) -> None:
    def patch(gate: Gate) -> None:
        async def fails_at_once(name: str) -> None:
            raise EngineError(0, "cannot ask")

        gate._local_image = fails_at_once  # type: ignore[method-assign,assignment]

    decision, _, _, errors = judge(tmp_path, [IMAGE_A], socket_create, patch=patch)
    assert not decision.allowed and decision.status == 503 and "cannot ask" in decision.message
    assert not errors
    (tmp_path / "x.sock").write_text("")
    body = {"Image": "example.com/app:1", "HostConfig": {"Binds": [f"{tmp_path}/x.sock:/x.sock"]}}
    decision, _, _, errors = judge(tmp_path, [IMAGE_A], lambda sock: body, patch=patch)
    assert decision.allowed
    assert not errors


def test_a_missing_image_is_the_engine_style_404(tmp_path: Path) -> None:
    decision, _, _, _ = judge(tmp_path, [404], socket_create)
    assert not decision.allowed and decision.status == 404
    assert decision.rule == "no-such-image"


# -- which paths go to a worker thread ----------------------------------------------------------


def threaded_paths(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Records each set of paths the gate resolves in a worker thread (still resolving them)."""
    calls: list[set[str]] = []
    real = gate_module.resolve_all

    def recording(paths: Any) -> Any:
        calls.append(set(paths))
        return real(paths)

    monkeypatch.setattr(gate_module, "resolve_all", recording)
    return calls


def test_a_bind_of_a_protected_path_is_judged_on_its_own_resolution_without_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = threaded_paths(monkeypatch)
    decision, rewritten, _, _ = judge(tmp_path, [IMAGE_A], socket_create)
    assert decision.allowed and decision.expect_image_id == IMAGE_A["Id"]
    assert rewritten is not None  # found to be the engine socket: rewritten
    assert calls == []


def test_with_pins_a_socket_create_still_holds_nothing_and_takes_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins on: the usual socket mount names a protected socket only root can change, so
    nothing is held (no worker thread for `_hold_all`), and the bind is rewritten as before."""
    from agent.pins.board import PinBoard

    held: list[Any] = []
    real = gate_module._hold_all

    def recording(*args: Any) -> Any:
        held.append(args)
        return real(*args)

    monkeypatch.setattr(gate_module, "_hold_all", recording)
    board = PinBoard(tmp_path / "pins", tmp_path / "records")

    def with_pins(gate: Gate) -> None:
        gate.config.pins = board

    decision, rewritten, _, _ = judge(tmp_path, [IMAGE_A], socket_create, patch=with_pins)
    assert decision.allowed and rewritten is not None and decision.pins == ()
    assert held == []
    other = tmp_path / "other"
    other.mkdir()

    def both(engine_sock: str) -> dict[str, Any]:
        body = socket_create(engine_sock)
        body["HostConfig"]["Binds"].append(f"{other}:/o")
        return body

    decision, _, _, _ = judge(tmp_path, [IMAGE_A], both, patch=with_pins)
    assert decision.allowed and len(held) == 1, "any other path is asked about in a thread"


@pytest.mark.parametrize("how", ["symlink", "parent folder", "unclean path"])
def test_any_other_path_to_the_socket_is_resolved_in_a_thread_and_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    calls = threaded_paths(monkeypatch)
    link = tmp_path / "innocent"
    link.symlink_to(tmp_path / "engine.sock")
    source = {
        "symlink": str(link),
        "parent folder": str(tmp_path),
        "unclean path": f"{tmp_path}/run/../engine.sock",
    }[how]
    body = {"Image": "example.com/app:1", "HostConfig": {"Binds": [f"{source}:/var/run/x"]}}
    only_a = settings(images=(DIGEST_A,))
    decision, _, engine, _ = judge(tmp_path, [IMAGE_B], lambda sock: body, only_a)
    assert calls and source in set().union(*calls)
    # Reached the engine socket: judged by image (IMAGE_B's digest is not the allowed one).
    assert not decision.allowed and decision.status == 403, decision.message
    assert engine.image_inspects() == 1


# -- reusing what the engine said about an image name (Gate._resolved) ---------------------------


def run_rig(
    tmp_path: Path, images: list[Any], script: Any, effective: Effective | None = None
) -> Rig:
    rig = Rig(tmp_path, images, effective or settings())

    async def main() -> None:
        async with rig:
            await script(rig)

    asyncio.run(main())
    assert not rig.errors
    return rig


def test_the_next_socket_create_reuses_the_answer_and_is_checked_after(tmp_path: Path) -> None:
    async def script(rig: Rig) -> None:
        body = socket_create(rig.engine_sock)
        first, _ = await rig.judge(body)
        assert gate_module.REUSED not in first.details
        assert await rig.create(body, IMAGE_A["Id"]) == (True, 201, "")
        second, rewritten = await rig.judge(body)
        assert second.allowed and second.details[gate_module.REUSED]
        assert second.expect_image_id == IMAGE_A["Id"] and rewritten is not None

    rig = run_rig(tmp_path, [IMAGE_A], script)
    assert rig.engine.image_inspects() == 1
    assert not [a for a in rig.engine.asked if a.startswith("DELETE")]


def test_the_answer_is_reused_only_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate_module, "RESOLVED_TTL", 0.0)

    async def script(rig: Rig) -> None:
        for _ in range(2):
            decision, _ = await rig.judge(socket_create(rig.engine_sock))
            assert decision.allowed and gate_module.REUSED not in decision.details

    assert run_rig(tmp_path, [IMAGE_A], script).engine.image_inspects() == 2


def test_a_reused_answer_never_refuses_the_image_asks_again(tmp_path: Path) -> None:
    async def script(rig: Rig) -> None:
        body = socket_create(rig.engine_sock)
        assert (await rig.judge(body))[0].allowed  # A, kept
        rig.effective = settings(images=(DIGEST_B,))  # A is refused from now on ...
        decision, _ = await rig.judge(body)  # ... but the name has moved to B meanwhile
        assert decision.allowed and decision.expect_image_id == IMAGE_B["Id"]
        assert gate_module.REUSED not in decision.details

    assert run_rig(tmp_path, [IMAGE_A, IMAGE_B], script).engine.image_inspects() == 2


def test_a_reused_answer_grants_no_isolation_exception(tmp_path: Path) -> None:
    # The exception is for A. The name moved from A to B (socket-allowed, no exception) after
    # A was judged: a reused answer (A) must not get B a --privileged container.
    exceptions = [{"images": [f"example.com/app@{DIGEST_A}"], "allow": ["--privileged"]}]

    async def script(rig: Rig) -> None:
        assert (await rig.judge(socket_create(rig.engine_sock)))[0].allowed  # A, kept
        decision, _ = await rig.judge(socket_create(rig.engine_sock, Privileged=True))
        assert not decision.allowed and decision.status == 403
        assert "--privileged" in decision.message

    rig = run_rig(tmp_path, [IMAGE_A, IMAGE_B], script, settings(exceptions))
    assert rig.engine.image_inspects() == 2


def test_a_name_moved_to_another_allowed_image_is_still_served(tmp_path: Path) -> None:
    async def script(rig: Rig) -> None:
        body = socket_create(rig.engine_sock)
        assert await rig.create(body, IMAGE_A["Id"]) == (True, 201, "")
        # judged on the reused answer (A); the engine created it with B, also allowed
        assert await rig.create(body, IMAGE_B["Id"]) == (True, 201, "")
        assert rig.gate._resolved == {}  # the stale answer is forgotten

    rig = run_rig(tmp_path, [IMAGE_A], script)
    assert f"GET /v1.41/images/{IMAGE_B['Id']}/json" in rig.engine.asked
    assert not [a for a in rig.engine.asked if a.startswith("DELETE")]
    assert sorted(rig.engine.containers.values()) == sorted([IMAGE_A["Id"], IMAGE_B["Id"]])


def test_a_name_moved_to_a_refused_image_is_removed(tmp_path: Path) -> None:
    async def script(rig: Rig) -> None:
        body = socket_create(rig.engine_sock)
        assert await rig.create(body, IMAGE_A["Id"]) == (True, 201, "")
        ok, status, message = await rig.create(body, IMAGE_C["Id"])  # C: not in the list
        assert (ok, status) == (False, 403)
        assert "image is not in the allowed list" in message
        assert message.endswith("(the container was removed)")

    rig = run_rig(tmp_path, [IMAGE_A], script)
    assert list(rig.engine.containers.values()) == [IMAGE_A["Id"]]  # C's container removed
    assert len([a for a in rig.engine.asked if a.startswith("DELETE")]) == 1


def test_a_fresh_answer_that_does_not_match_is_removed_without_a_second_look(
    tmp_path: Path,
) -> None:
    async def script(rig: Rig) -> None:
        ok, status, _ = await rig.create(socket_create(rig.engine_sock), IMAGE_B["Id"])
        assert (ok, status) == (False, 403)

    rig = run_rig(tmp_path, [IMAGE_A], script)
    assert rig.engine.containers == {}
    assert rig.engine.image_inspects() == 1  # the judgment's own; B is not looked at


def test_a_name_moved_to_an_image_that_cannot_be_judged_is_removed(tmp_path: Path) -> None:
    async def script(rig: Rig) -> None:
        body = socket_create(rig.engine_sock)
        assert await rig.create(body, IMAGE_A["Id"]) == (True, 201, "")
        ok, status, message = await rig.create(body, "sha256:" + "9" * 64)  # unknown to all
        assert (ok, status) == (False, 403)
        assert "could not be inspected" in message

    rig = run_rig(tmp_path, [IMAGE_A], script)
    assert list(rig.engine.containers.values()) == [IMAGE_A["Id"]]


# -- odd types never open a way through ---------------------------------------------------------
# Each body asks for something refused (the socket for an image not in the list, or
# --privileged) next to one field of an odd type: however the policy reads that field (these
# run compiled and in pure Python), the ask stays refused. And where a compiled function meets
# a value of another type than its annotation it raises TypeError: that, too, is a refusal.

ODD_FIELDS: list[tuple[str, Any]] = [
    ("MaskedPaths", 5),
    ("ReadonlyPaths", {"a": 1}),
    ("NetworkMode", 1),
    ("PidMode", ["host"]),
    ("CapAdd", "SYS_ADMIN"),
    ("SecurityOpt", [1]),
    ("Devices", "x"),
    ("Sysctls", ["a"]),
    ("VolumesFrom", 3),
    ("Mounts", [{"Type": "bind", "Source": 5, "Target": "/x"}]),
    ("Tmpfs", 7),
    ("Runtime", 9),
]


@pytest.mark.parametrize("ask", ["socket", "privileged"])
@pytest.mark.parametrize(("name", "value"), ODD_FIELDS, ids=[n for n, _ in ODD_FIELDS])
def test_an_odd_type_next_to_a_refused_ask_is_refused(
    tmp_path: Path, ask: str, name: str, value: Any
) -> None:
    only_a = settings(images=(DIGEST_A,))

    def body(sock: str) -> dict[str, Any]:
        hc: dict[str, Any] = {name: value}
        if ask == "socket":
            hc["Binds"] = [f"{sock}:/var/run/docker.sock"]
        else:
            hc["Privileged"] = True
        return {"Image": "example.com/app:1", "HostConfig": hc}

    decision, _, _, _ = judge(tmp_path, [IMAGE_B], body, only_a)
    assert not decision.allowed, (name, value, decision)


def test_a_type_error_in_the_policy_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def compiled_type_check(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("str object expected; got int")

    monkeypatch.setattr(gate_module, "decide_isolation", compiled_type_check)
    decision, _, _, _ = judge(tmp_path, [IMAGE_A], socket_create)
    assert not decision.allowed and decision.status == 503 and decision.rule == "fail-closed"
    assert "cannot evaluate the policy" in decision.message


def test_protected_paths_others_could_change_are_resolved_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine socket's folder is writable by others: someone could slip a FUSE mount into
    # its path, so it is never resolved on the event loop; the judgement is the same.
    os.chmod(tmp_path, 0o777)
    off_loop: list[set[str]] = []
    real = Gate._all_host_paths

    def recording(self: Gate, needed: set[str]) -> Any:
        off_loop.append(set(needed))
        return real(self, needed)

    monkeypatch.setattr(Gate, "_all_host_paths", recording)
    decision, rewritten, _, _ = judge(tmp_path, [IMAGE_A], socket_create)
    assert decision.allowed and decision.expect_image_id == IMAGE_A["Id"], decision.message
    assert rewritten is not None  # still found to be the engine socket, and rewritten
    assert off_loop == [{str(tmp_path / "engine.sock")}]


def test_a_body_passed_unread_is_refused_once_the_policy_reads_it(tmp_path: Path) -> None:
    """A create admitted head-first under ECI off (its body never read) and judged after ECI
    came on: the body is not there to judge, so it is refused, never allowed by its head."""
    rig = Rig(tmp_path, [], settings())
    head = create({}).head

    async def main() -> Decision:
        async with rig:
            return (await rig.gate.judge(Request(head), HOST))[0]

    decision = asyncio.run(main())
    assert not decision.allowed and decision.status == 503, decision
    assert decision.rule == "policy-changed"


def test_a_policy_changed_while_judging_has_the_request_judged_again(tmp_path: Path) -> None:
    """The first judgement (under the image list that admits it) is dropped when the policy
    changes before it is given: the request is judged again under the new one."""
    rig = Rig(tmp_path, [IMAGE_A], settings())
    calls: list[Effective] = []
    real = rig.gate._judge

    async def judging_then_change(request: Request, peer: Peer) -> Any:
        calls.append(rig.effective)
        out = await real(request, peer)
        if len(calls) == 1:
            rig.effective = settings(images=())  # the admin empties the list meanwhile
        return out

    async def main() -> Decision:
        async with rig:
            rig.gate._judge = judging_then_change  # type: ignore[method-assign]
            return (await rig.judge(socket_create(rig.engine_sock)))[0]

    decision = asyncio.run(main())
    assert len(calls) == 2, calls
    assert calls[1] is rig.effective and calls[0] is not rig.effective
    assert not decision.allowed and decision.status == 403, decision
