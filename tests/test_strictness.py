"""Request smuggling and HTTP/1.1 strictness, run against every engine.

Each case is sent as raw bytes; the router must answer with the given status, close the
connection (after a framing error nobody knows where the next request starts) and send
nothing to the replica. Where the aiohttp engine is looser the case is marked xfail with
the reason: the fast engine is the strict one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.support import TestReplica as Upstream
from tests.support import running_replica, running_router, static_config

H = b"Host: router.test\r\n"


@dataclass(frozen=True)
class Case:
    request: bytes
    status: int
    aiohttp_gap: str | None = None  # why the aiohttp engine fails this case, if it does


CASES: dict[str, Case] = {
    "content_length_and_chunked": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
    ),
    "duplicate_content_length_same": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "duplicate_content_length_different": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        400,
    ),
    "content_length_list": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400
    ),
    "content_length_plus_sign": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400
    ),
    "content_length_negative": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello", 400
    ),
    "chunk_size_not_hex": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk_size_overflow": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunked_not_last_coding": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\nhello",
        400,
    ),
    "unknown_transfer_coding": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\nhello", 400
    ),
    "transfer_encoding_twice": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "space_before_colon": Case(
        b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obsolete_line_folding": Case(
        b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n",
        400,
    ),
    "bare_lf_line_endings": Case(
        b"GET / HTTP/1.1\nHost: router.test\n\n",
        400,
    ),
    "bare_cr_in_value": Case(b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    "nul_in_value": Case(b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "missing_host": Case(
        b"GET / HTTP/1.1\r\n\r\n",
        400,
    ),
    "two_hosts": Case(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
    ),
    "http_2_0_over_http1": Case(
        b"GET / HTTP/2.0\r\n" + H + b"\r\n",
        505,
    ),
    "connect_method": Case(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        405,
    ),
    "absolute_form_other_host": Case(
        b"GET http://169.254.169.254/latest HTTP/1.1\r\n" + H + b"\r\n", 400
    ),
    "request_line_too_long": Case(
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n",
        414,
        aiohttp_gap="aiohttp answers 400 (not 414) to an oversize request line",
    ),
    "header_block_too_large": Case(
        b"GET / HTTP/1.1\r\n"
        + H
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
        + b"\r\n",
        431,
        aiohttp_gap="aiohttp has a per-field limit but no total header block limit",
    ),
    "too_many_headers": Case(
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
        431,
        aiohttp_gap="aiohttp has no limit on the number of header fields",
    ),
}


async def exchange_raw(url: str, data: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; return everything read and whether the router closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        received = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    received += chunk
            closed = True
        except TimeoutError:
            closed = False
        return received, closed
    finally:
        writer.close()


@pytest.fixture
async def replica() -> AsyncIterator[Upstream]:
    async with running_replica("a") as a:
        yield a


def router_config(engine: str, replica: Upstream, **proxy: object) -> dict[str, object]:
    return static_config(
        [("a", f"http://127.0.0.1:{replica.port}")],
        proxy={"engine": engine, **proxy},
        health={"enabled": False},
    )


@pytest.mark.parametrize("name", list(CASES))
async def test_malformed_request_is_refused_and_connection_closed(
    engine: str, replica: Upstream, name: str, request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    if engine == "aiohttp" and case.aiohttp_gap:
        request.applymarker(pytest.mark.xfail(reason=case.aiohttp_gap, strict=True))
    async with running_router(router_config(engine, replica)) as router:
        received, closed = await exchange_raw(router.url, case.request)
        status_line = received.split(b"\r\n", 1)[0]
        assert status_line.split(b" ")[1:2] == [str(case.status).encode()], received[:200]
        assert closed, "the connection must be closed after a refused request"
        assert replica.hits == 0


async def test_pipelined_requests_are_answered_in_order(engine: str, replica: Upstream) -> None:
    async with running_router(router_config(engine, replica)) as router:
        paths = ["/first", "/second", "/third"]
        data = b"".join(b"GET %s HTTP/1.1\r\n%s\r\n" % (p.encode(), H) for p in paths)
        data += b"GET /last HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        received, closed = await exchange_raw(router.url, data)
        assert closed
        seen = [
            json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
            for part in received.split(b"HTTP/1.1 200")[1:]
        ]
        assert seen == [*paths, "/last"]


async def test_pipelined_request_after_a_bad_one_is_not_served(
    engine: str, replica: Upstream
) -> None:
    """A smuggled second request hidden behind a refused first one never reaches a replica."""
    async with running_router(router_config(engine, replica)) as router:
        data = (
            b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
        )
        received, closed = await exchange_raw(router.url, data)
        assert received.split(b" ", 2)[1] == b"400"
        assert closed
        assert replica.hits == 0


async def test_slow_request_head_is_cut_off(engine: str, replica: Upstream) -> None:
    """Slowloris: a head that does not complete within client_header_timeout gets 408."""
    config = router_config(engine, replica, client_header_timeout="200ms")
    async with running_router(config) as router:
        received, closed = await exchange_raw(router.url, b"GET / HTTP/1.1\r\nHost: slo")
        assert received.startswith(b"HTTP/1.1 408")
        assert closed
        assert replica.hits == 0


async def test_slow_request_body_is_cut_off(engine: str, replica: Upstream) -> None:
    if engine == "aiohttp":
        pytest.xfail("aiohttp's server has no request-body read timeout")
    config = router_config(engine, replica, client_body_timeout="200ms")
    async with running_router(config) as router:
        head = b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\npartial"
        received, closed = await exchange_raw(router.url, head)
        assert closed
        assert b" 200 " not in received.split(b"\r\n", 1)[0]
