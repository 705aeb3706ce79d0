"""Issue 15 on the aiohttp engine (finding 9, the aiohttp side of finding 6 and the also-fix
items), plus the client idle timeout both engines share. Raw sockets on both sides; the
upstream parses with h11, independent of both engines' parsers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import h11
import pytest

from tests.support import RouterHandle, eventually, running_replica, running_router, static_config


@dataclass
class Upstream:
    """Records every request it parsed (with h11) and answers each with `answer(target)`."""

    answer: Callable[[bytes], bytes]
    requests: list[h11.Request] = field(default_factory=list)
    connections: int = 0
    closed_by_router: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        self.closed_by_router += 1
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    self.requests.append(event)
                elif isinstance(event, h11.EndOfMessage):
                    answer = self.answer(self.requests[-1].target)
                    writer.write(answer)
                    await writer.drain()
                    if b"\r\nConnection: close\r\n" in answer:
                        return  # a close-delimited body ends here
                    # The answer may be malformed: parse the next request on a fresh state.
                    conn = h11.Connection(h11.SERVER)
                elif isinstance(event, h11.ConnectionClosed):
                    self.closed_by_router += 1
                    return
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            writer.close()


def ok(target: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)


@asynccontextmanager
async def stack(
    engine: str, answer: Callable[[bytes], bytes] = ok, **proxy: Any
) -> AsyncIterator[tuple[Upstream, RouterHandle]]:
    upstream = Upstream(answer)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    config = static_config(
        [("up", f"http://127.0.0.1:{upstream.port}")],
        proxy={"engine": engine, **proxy},
        health={"enabled": False},
    )
    async with server, running_router(config) as router:
        yield upstream, router


async def open_router(router: RouterHandle) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = router.app.engine.addresses[0]
    return await asyncio.open_connection(host, port)


def pretend_sent(client: h11.Connection) -> None:
    """h11 reads a response only after a request; the real one went out as raw bytes."""
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """Up to `count` (status, body) read with h11 until the router closes or a deadline."""
    client = h11.Connection(h11.CLIENT)
    pretend_sent(client)
    results: list[tuple[int, bytes]] = []
    status, body = 0, b""
    async with asyncio.timeout(5):
        while len(results) < count:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:  # closed with no response to the request
                break
            if event is h11.NEED_DATA:
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    data = b""
                client.receive_data(data)
            elif isinstance(event, h11.Response):
                status, body = event.status_code, b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                results.append((status, body))
                if len(results) == count or client.their_state is not h11.DONE:
                    break
                if client.our_state is not h11.DONE:  # the response said close
                    break
                client.start_next_cycle()
                pretend_sent(client)
            elif isinstance(event, h11.ConnectionClosed):
                break
    return results


# -- finding 9: request trailers must never become headers of the next request -----------

CHUNKED_WITH_TRAILER = (
    b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Leak: alice-token\r\n\r\n"
)
NEXT = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("pipelined", [True, False])
async def test_finding9_request_trailer_never_reaches_the_next_request(
    engine: str, pipelined: bool
) -> None:
    async with stack(engine) as (upstream, router):
        reader, writer = await open_router(router)
        if pipelined:
            writer.write(CHUNKED_WITH_TRAILER + NEXT)
            answers = await read_responses(reader, 2)
        else:
            writer.write(CHUNKED_WITH_TRAILER)
            answers = await read_responses(reader, 1)
            writer.write(NEXT)  # the router may have closed after the chunked request
            answers += await read_responses(reader, 1)
        writer.close()
        assert answers[0] == (200, b"/first")
        # A second answer, if any, is the second request's own (aiohttp closes instead).
        assert answers[1:] in ([], [(200, b"/second")])
        # Then a fresh connection: the router keeps serving, still without the trailer.
        reader, writer = await open_router(router)
        writer.write(NEXT)
        assert (await read_responses(reader, 1))[0] == (200, b"/second")
        writer.close()
        assert upstream.requests[0].target == b"/first"
        for request in upstream.requests:
            names = [name.lower() for name, _ in request.headers]
            assert b"x-leak" not in names, request


async def test_finding2_aiohttp_response_trailer_never_reaches_the_next_response() -> None:
    """aiohttp reads each response with a fresh parser; pinned here so it stays so (the
    fast engine's regression test is in tests/test_fast_findings.py)."""

    def trailer_first(target: bytes) -> bytes:
        if target == b"/alice":
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Token\r\n"
                b"\r\n2\r\nok\r\n0\r\nX-User-Token: token-of-alice\r\n\r\n"
            )
        return ok(target)

    async with stack("aiohttp", trailer_first) as (upstream, router):
        heads = []
        for target in (b"/alice", b"/bob"):
            reader, writer = await open_router(router)
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
            heads.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
        assert upstream.connections == 1  # Bob's request reused Alice's upstream connection
        assert heads[1].startswith(b"HTTP/1.1 200 ")
        assert heads[1].endswith(b"/bob")
        assert b"token-of-alice" not in heads[1]


# -- finding 6 (aiohttp side): a replica's invalid status is a 502, never relayed -------


@pytest.mark.parametrize("status_line", [b"99 X", b"099 X", b"600 X", b"101 Switching"])
async def test_finding6_aiohttp_invalid_status_is_a_502_and_closes_upstream(
    status_line: bytes,
) -> None:
    def forged(target: bytes) -> bytes:
        return b"HTTP/1.1 %s\r\nContent-Length: 2\r\n\r\nok" % status_line

    async with stack("aiohttp", forged) as (upstream, router):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{router.url}/x") as resp:
                assert resp.status == 502
                assert (await resp.json())["error"] == "upstream_protocol_error"
        await eventually(lambda: upstream.closed_by_router >= 1)


# -- also-fix items, aiohttp side -------------------------------------------------------


async def test_close_delimited_gzip_response_ends_the_chunked_body() -> None:
    def gzip_until_close(target: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\ncoded"

    async with stack("aiohttp", gzip_until_close) as (_, router):
        reader, writer = await open_router(router)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head
        # h11 accepts only chunked as the last coding: the body must end properly.
        assert await reader.readuntil(b"0\r\n\r\n") == b"5\r\ncoded\r\n0\r\n\r\n"
        writer.close()


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("40KiB_block", [(b"X-%d" % i, b"v" * 1000) for i in range(40)]),
        ("150_fields", [(b"X-%d" % i, b"v") for i in range(150)]),
    ],
)
async def test_oversize_response_head_from_a_replica_is_a_502(
    name: str, fields: list[tuple[bytes, bytes]]
) -> None:
    block = b"".join(b"%s: %s\r\n" % field for field in fields)

    def huge(target: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + block + b"Content-Length: 2\r\n\r\nok"

    async with stack("aiohttp", huge) as (upstream, router):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{router.url}/x") as resp:
                assert resp.status == 502, name
        await eventually(lambda: upstream.closed_by_router >= 1)


async def test_response_head_under_the_limit_is_relayed() -> None:
    one_big_field = b"X-Big: " + b"v" * 20_000 + b"\r\n"

    def big(target: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + one_big_field + b"Content-Length: 2\r\n\r\nok"

    async with stack("aiohttp", big) as (_, router):
        reader, writer = await open_router(router)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\n" + one_big_field in head


async def test_idle_websocket_tunnel_is_closed_and_releases_its_slot() -> None:
    async with running_replica("a") as replica:
        config = static_config(
            [("a", f"http://127.0.0.1:{replica.port}")],
            proxy={"engine": "aiohttp", "idle_timeout": "300ms"},
            health={"enabled": False},
        )
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            async with client.ws_connect(f"{router.url}/ws") as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "a:hi"
                assert router.app.engine._admission.active == 1
                closing = await ws.receive(timeout=5)  # nothing sent: the idle timeout ends it
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await eventually(lambda: router.app.engine._admission.active == 0)


# -- both engines: one client idle timeout ----------------------------------------------


async def test_idle_keepalive_client_connection_closes_after_client_idle_timeout(
    engine: str,
) -> None:
    # The head timeout stays long: only client_idle_timeout can close this connection.
    async with stack(engine, client_idle_timeout="300ms", client_header_timeout="30s") as (
        _,
        router,
    ):
        reader, writer = await open_router(router)
        for target in (b"/one", b"/two"):  # kept alive between requests
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            assert (await read_responses(reader, 1))[0] == (200, target)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the router, well before 5 s
        writer.close()
