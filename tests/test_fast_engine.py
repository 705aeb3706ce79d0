"""Behaviour of the fast engine that the shared conformance suite cannot see: connection
reuse and expiry, unusual upstream framing, mid-body failures, drain, observer hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from router.models import Replica
from router.proxy.base import RequestRecord
from tests.support import eventually, free_port, running_router, static_config

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


@dataclass
class RawUpstream:
    """An upstream that answers from a script: `handler(reader, writer, head)` returns
    whether to keep the connection open for another request."""

    handler: Handler
    port: int = 0
    connections: int = 0
    open_connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if not await self.handler(reader, writer, head):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()


@asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(handler)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream


async def ok_keep_alive(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: yes\r\n\r\nok")
    await w.drain()
    return True


def fast(port: int, **proxy: object) -> dict[str, object]:
    return static_config(
        [("a", f"http://127.0.0.1:{port}")],
        proxy={"engine": "fast", **proxy},
        health={"enabled": False},
    )


async def request(url: str, data: bytes) -> bytes:
    """Raw request on a fresh connection; reads until the router closes it."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"Connection: close\r\n\r\n"
    )


async def test_upstream_connections_are_reused() -> None:
    async with raw_upstream(ok_keep_alive) as up, running_router(fast(up.port)) as router:
        for _ in range(5):
            assert (await request(router.url, get())).endswith(b"\r\n\r\nok")
        assert up.connections == 1
        assert len(up.heads) == 5


async def test_idle_upstream_connections_expire() -> None:
    async with raw_upstream(ok_keep_alive) as up:
        async with running_router(fast(up.port, idle_timeout="200ms")) as router:
            await request(router.url, get())
            assert up.open_connections == 1
            await eventually(lambda: up.open_connections == 0, timeout=3)


async def test_head_response_with_length_does_not_wait_for_a_body() -> None:
    async def head_ok(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await w.drain()
        return True

    async with raw_upstream(head_ok) as up, running_router(fast(up.port)) as router:
        answer = await request(router.url, get().replace(b"GET", b"HEAD", 1))
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"Content-Length: 1234\r\n" in answer
        assert answer.endswith(b"\r\n\r\n")


async def test_body_until_close_is_relayed_chunked() -> None:
    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await w.drain()
        return False

    async with raw_upstream(until_close) as up, running_router(fast(up.port)) as router:
        answer = await request(router.url, get())
        assert b"Transfer-Encoding: chunked\r\n" in answer
        assert answer.endswith(b"9\r\nall of it\r\n0\r\n\r\n")


async def test_upstream_dying_mid_body_cuts_the_client_connection() -> None:
    async def dies(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await w.drain()
        return False

    records: list[RequestRecord] = []
    async with raw_upstream(dies) as up, running_router(fast(up.port)) as router:
        router.app.observers.observers.append(Recorder(records))
        answer = await request(router.url, get())
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b"only part")  # short of Content-Length: the client can tell
        await eventually(lambda: bool(records))
        assert records[0].error == "upstream_reset_mid_body"


async def test_pooled_connection_closed_by_the_upstream_is_not_reused() -> None:
    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        # Answers keep-alive, then closes: the router's pooled connection goes stale.
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return False

    async with raw_upstream(once) as up, running_router(fast(up.port)) as router:
        assert (await request(router.url, get())).endswith(b"ok")
        await eventually(lambda: up.open_connections == 0)
        assert (await request(router.url, get())).endswith(b"ok")


async def test_expect_continue_gets_100_then_the_answer() -> None:
    async def upload(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        body = await r.readexactly(5)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await w.drain()
        return True

    async with raw_upstream(upload) as up, running_router(fast(up.port)) as router:
        host, port = router.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"hello")
        answer = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"expect" not in up.heads[0].lower()


async def test_http_1_0_client_gets_the_body_and_a_close() -> None:
    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        await w.drain()
        return True

    async with raw_upstream(chunked) as up, running_router(fast(up.port)) as router:
        answer = await request(router.url, b"GET / HTTP/1.0\r\n\r\n")
        assert b"Connection: close\r\n" in answer
        assert b"Transfer-Encoding" not in answer
        assert answer.endswith(b"\r\n\r\nabc")


async def test_drain_closes_idle_keep_alive_connections_at_once() -> None:
    async with raw_upstream(ok_keep_alive) as up, running_router(fast(up.port)) as router:
        host, port = router.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"ok"), 5)
        await asyncio.wait_for(router.stop(grace=30), 5)  # does not wait for the idle client
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_observers_see_attempts_and_requests() -> None:
    records: list[RequestRecord] = []
    attempts: list[tuple[str, bool, str | None, int | None]] = []
    async with raw_upstream(ok_keep_alive) as up:
        config = static_config(
            [("dead", f"http://127.0.0.1:{free_port()}"), ("a", f"http://127.0.0.1:{up.port}")],
            proxy={"engine": "fast"},
            health={"enabled": False},
        )
        async with running_router(config) as router:
            router.app.observers.observers.append(Recorder(records, attempts))
            answers = [await request(router.url, get("/x?q=1")) for _ in range(2)]
            assert all(a.endswith(b"ok") for a in answers)
            await eventually(lambda: len(records) == 2)
    assert ("dead", False, "connect", None) in attempts
    assert ("a", True, None, 200) in attempts
    retried = [r for r in records if r.retries == 1]
    assert retried
    assert retried[0].replica is not None
    assert retried[0].replica.id == "a"
    assert all(r.path == "/x" and r.status == 200 and r.bytes_out == 2 for r in records)


@dataclass
class Recorder:
    records: list[RequestRecord]
    attempts: list[tuple[str, bool, str | None, int | None]] = field(default_factory=list)

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        self.attempts.append((replica.id, ok, kind, status))

    def request_done(self, record: RequestRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("workers", "expected"), [(1, 1), (3, 3)])
def test_worker_count(workers: int, expected: int) -> None:
    from router.config import parse_config
    from router.workers import worker_count

    config = parse_config(fast(1, workers=workers), {})
    assert worker_count(config) == expected
    auto = parse_config(fast(1, workers="auto"), {})
    assert worker_count(auto) >= 1


@pytest.mark.parametrize(
    "body",
    [
        b"Content-Length: 100\r\n\r\n" + b"x" * 100,
        b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_body_over_the_limit_gets_413(body: bytes) -> None:
    async def upload(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        await r.read(65536)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True

    async with raw_upstream(upload) as up:
        async with running_router(fast(up.port, max_request_body=10)) as router:
            answer = await request(router.url, b"POST / HTTP/1.1\r\nHost: t\r\n" + body)
            assert answer.startswith(b"HTTP/1.1 413")
            assert b'"error": "body_too_large"' in answer


async def test_refused_upgrade_is_relayed_and_the_connection_closed() -> None:
    async def no_ws(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
        await w.drain()
        return True

    async with raw_upstream(no_ws) as up, running_router(fast(up.port)) as router:
        answer = await request(
            router.url,
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 404")
        assert answer.endswith(b"nope")  # and the router closed: request() read to EOF
        assert b"upgrade: websocket" in up.heads[0].lower()


async def test_pipelined_upload_and_get_are_answered_in_order() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> bool:
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await r.readexactly(length) if length else b"-"
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()
        return True

    async with raw_upstream(echo) as up, running_router(fast(up.port)) as router:
        data = (
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst"
            + b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n"
            + b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthird"
        )
        answer = await request(router.url, data)
        bodies = [part.rsplit(b"\r\n\r\n", 1)[1] for part in answer.split(b"HTTP/1.1 200 OK")[1:]]
        assert bodies == [b"first", b"-", b"third"]
