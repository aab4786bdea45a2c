"""The gate's own engine client against a scripted fake engine on a private unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.proxy.engine_client import EngineClient, EngineError, NotFound

#: (method, target, connection number, request number on it) -> raw answer; None: close
#: without answering; b"": never answer; ending with CLOSE: answer that, then close.
Script = Callable[[str, str, int, int], bytes | None]
CLOSE = b"<close>"


def ok_json(doc: object, *, close: bool = False, chunked: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if chunked:
        return (
            (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
            + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:]))
            + b"0\r\n\r\n"
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class FakeEngine:
    def __init__(self, path: str, script: Script) -> None:
        self.path = path
        self.script = script
        self.connections = 0
        self.requests: list[tuple[str, str, int]] = []
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                n += 1
                self.requests.append((method, target, conn))
                answer = self.script(method, target, conn, n)
                if answer is None:
                    return
                if answer == b"":
                    await asyncio.sleep(3600)
                w.write(answer.removesuffix(CLOSE))
                await w.drain()
                if answer.endswith(CLOSE):
                    return
        finally:
            w.close()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@contextlib.asynccontextmanager
async def engine(
    script: Script, timeout: float = 5.0
) -> AsyncIterator[tuple[FakeEngine, EngineClient]]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        fake = FakeEngine(str(Path(tmp) / "engine.sock"), script)
        await fake.start()
        client = EngineClient(fake.path, timeout=timeout)
        try:
            yield fake, client
        finally:
            await client.close()
            await fake.stop()


LOOPS = ["asyncio"]
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401 - the agent runs on it when installed

    LOOPS.append("uvloop")


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    def runner(coro: Awaitable[None]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(coro, 20)

        if request.param == "uvloop":
            import uvloop

            uvloop.run(bounded())
        else:
            asyncio.run(bounded())

    return runner


def test_answers_are_read_and_one_connection_is_kept_alive(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes:
        return ok_json({"Id": target, "n": n}, chunked=n % 2 == 0)

    async def main() -> None:
        async with engine(script) as (fake, client):
            first = await client.inspect_image("example.com/app:1")
            second = await client.inspect_container("abc")
            third = await client.get_json("/networks", filters='{"driver":["host"]}')
        assert first == {"Id": "/v1.41/images/example.com/app:1/json", "n": 1}
        assert second == {"Id": "/v1.41/containers/abc/json", "n": 2}  # chunked
        assert third["Id"] == "/v1.41/networks?filters=%7B%22driver%22%3A%5B%22host%22%5D%7D"
        assert fake.connections == 1

    run(main())


def test_not_found_and_errors_carry_the_engine_message(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes:
        if "missing" in target:
            body = b'{"message":"No such image: missing"}'
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"

    async def main() -> None:
        async with engine(script) as (fake, client):
            with pytest.raises(NotFound, match="No such image: missing"):
                await client.inspect_image("missing")
            with pytest.raises(EngineError, match="oops") as err:
                await client.inspect_image("other")
            assert err.value.status == 500
        assert fake.connections == 1  # error answers do not cost the connection

    run(main())


def test_connection_close_is_not_reused(run) -> None:
    async def main() -> None:
        async with engine(lambda m, t, c, n: ok_json({}, close=True)) as (fake, client):
            await client.get_json("/info")
            await client.get_json("/info")
        assert fake.connections == 2

    run(main())


def test_a_get_is_asked_again_when_a_kept_connection_was_closed_unanswered(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes | None:
        if conn == 1 and n == 2:
            return None  # the engine drops the kept-alive connection without answering
        return ok_json({"conn": conn})

    async def main() -> None:
        async with engine(script) as (fake, client):
            assert await client.get_json("/info") == {"conn": 1}
            assert await client.get_json("/info") == {"conn": 2}
        assert [c for _, _, c in fake.requests] == [1, 1, 2]

    run(main())


def test_a_delete_is_never_sent_twice(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes | None:
        if method == "DELETE":
            return None
        return ok_json({})

    async def main() -> None:
        async with engine(script) as (fake, client):
            await client.get_json("/info")
            with pytest.raises(EngineError, match="cannot ask the engine DELETE"):
                await client.remove_container("abc")
        assert [m for m, _, _ in fake.requests] == ["GET", "DELETE"]

    run(main())


def test_an_answer_cut_short_is_an_error_and_not_asked_again(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes | None:
        if n == 2:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{" + CLOSE
        return ok_json({})

    async def main() -> None:
        async with engine(script) as (fake, client):
            await client.get_json("/info")
            with pytest.raises(EngineError, match="cannot ask the engine GET /info"):
                await client.get_json("/info")
        assert len(fake.requests) == 2

    run(main())


def test_unreadable_answers_and_silence_fail(run) -> None:
    def script(method: str, target: str, conn: int, n: int) -> bytes | None:
        if target.endswith("/garbage/json"):
            return b"NOT HTTP AT ALL\r\n\r\n"
        if target.endswith("/upgrade/json"):
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            )
        if target.endswith("/two/json"):
            return ok_json({}) + ok_json({})  # an answer nobody asked for
        if target.endswith("/silent/json"):
            return b""
        return ok_json({"fine": True})

    async def main() -> None:
        async with engine(script, timeout=0.3) as (fake, client):
            with pytest.raises(EngineError):
                await client.inspect_image("garbage")
            with pytest.raises(EngineError, match="unexpected answer") as err:
                await client.inspect_image("upgrade")
            assert err.value.status == 101
            await client.inspect_image("two")
            assert await client.inspect_image("fine") == {"fine": True}
            with pytest.raises(EngineError, match="no answer in time"):
                await client.inspect_image("silent")
        # garbage, upgrade: dropped; "two": its connection dropped after the extra answer
        assert fake.connections == 4

    run(main())


def test_targets_that_are_not_one_request_line_are_refused(run) -> None:
    async def main() -> None:
        async with engine(lambda m, t, c, n: ok_json({})) as (fake, client):
            for path in ("/x y", "/x\r\nEvil: 1", "/\x7f", "/é"):
                with pytest.raises(EngineError):
                    await client.request("GET", path)
            with pytest.raises(EngineError):
                await client.request("GET /x HTTP/1.1\r\n", "/x")
            # names are quoted
            await client.inspect_container("a b\r\nc")
        assert fake.requests == [("GET", "/v1.41/containers/a%20b%0D%0Ac/json", 1)]

    run(main())


def test_version_is_unversioned(run) -> None:
    async def main() -> None:
        async with engine(lambda m, t, c, n: ok_json({"ApiVersion": "1.41"})) as (fake, client):
            assert await client.version() == {"ApiVersion": "1.41"}
        assert fake.requests == [("GET", "/version", 1)]

    run(main())


def test_no_engine_is_an_engine_error(run) -> None:
    async def main() -> None:
        client = EngineClient("/nonexistent/engine.sock", timeout=1)
        with pytest.raises(EngineError, match="cannot ask the engine GET /info"):
            await client.get_json("/info")

    run(main())


def test_concurrent_questions_use_their_own_connections(run) -> None:
    async def main() -> None:
        async with engine(lambda m, t, c, n: ok_json({"t": t})) as (fake, client):
            answers = await asyncio.gather(*(client.inspect_image(f"i{k}") for k in range(6)))
            assert [a["t"] for a in answers] == [f"/v1.41/images/i{k}/json" for k in range(6)]
            assert len(client._idle) == 4  # kept: up to `keep`
            await client.inspect_image("again")
        assert fake.connections == 6

    run(main())


def test_a_cancelled_question_is_cancelled_wherever_it_is(run) -> None:
    # (asyncio.wait_for in Python 3.11 could return a result that came with the cancellation.)
    async def main() -> None:
        async with engine(lambda m, t, c, n: ok_json({})) as (fake, client):
            for steps in range(8):
                for warm in (False, True):
                    if not warm:
                        await client.close()
                    task = asyncio.ensure_future(client.get_json("/info"))
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    if task.done():
                        continue
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
            assert await client.get_json("/info") == {}

    run(main())
