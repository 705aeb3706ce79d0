"""Regression tests for issue 15's findings, one named after each, with raw sockets against
a real router and a replica that records the exact bytes it got (tests/recording_upstream.py).
Each reproduces the attack end to end against the fast engine; the tests that take an
`engine` hold for the aiohttp engine too (the others are the fast engine's own fixes)."""

from __future__ import annotations

import asyncio

import pytest

from tests.recording_upstream import (
    RawClient,
    Recorded,
    header,
    recording_upstream,
    router_to,
    wait_for,
)


def ok(tag: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(tag), extra, tag)


def target_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


async def echo_target(rec: Recorded, head: bytes) -> bytes | None:
    """Answers every request with its own target as the body: the tag of whose answer it is."""
    return ok(target_of(head))


# -- 1. fake upgrade -----------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


async def test_finding1_fake_upgrade_token_is_not_an_upgrade() -> None:
    async with recording_upstream(echo_target) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"POST /attacker HTTP/1.1\r\nHost: x\r\nConnection: x-upgrade\r\n"
            b"Upgrade: websocket\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
        )
        response, body = await client.response()
        assert response.status_code == 200
        assert body == b"/attacker"
        await wait_for(lambda: len(up.connections[0].data) > len(SMUGGLED))
        # The replica sees one POST whose body is the would-be request, framed by length.
        requests = up.connections[0].requests()
        assert [(r.method, r.target, body) for r, body in requests] == [
            (b"POST", b"/attacker", SMUGGLED)
        ]
        assert header(requests[0][0], b"upgrade") == []
        client.close()


async def test_finding1_upgrade_request_with_a_body_is_refused() -> None:
    async with recording_upstream(echo_target) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
        )
        response, _ = await client.response()
        assert response.status_code == 400
        assert await client.closed()
        assert up.connections == []


async def test_finding1_extra_response_bytes_never_reach_the_next_request(engine: str) -> None:
    """A replica answers one request with one response and the head of another: that
    connection must not be reused, or the next user gets the rest of the forged response."""

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) == b"/first":
            return ok(b"/first") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
        if rec is up.connections[0]:  # the rest of the forged response, then the real one
            return b"forged" + ok(target_of(head))
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        alice = await RawClient.connect(router)
        await alice.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await alice.response())[1] == b"/first"
        bob = await RawClient.connect(router)
        await bob.send(b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = await bob.response()
        assert body == b"/bob"
        assert len(up.connections) == 2
        alice.close()
        bob.close()


# -- 2. response trailers ------------------------------------------------------------------


async def test_finding2_response_trailers_never_reach_the_next_response(engine: str) -> None:
    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) == b"/alice":
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Token\r\n\r\n"
                b"6\r\n/alice\r\n0\r\nX-User-Token: token-of-alice\r\n\r\n"
            )
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert body == b"/alice"
        await client.send(b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert body == b"/bob"
        assert header(response, b"x-user-token") == []
        assert len(up.connections) == 1  # the same pooled connection served both
        client.close()


# -- 3. endless header line ----------------------------------------------------------------


async def test_finding3_endless_header_line_gets_431_once_past_the_limit() -> None:
    async with recording_upstream(echo_target) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        # 48 KiB of one header value and no CRLF: the router must not wait for the line end.
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 48 * 1024)
        response, _ = await client.response(timeout=2.0)
        assert response.status_code == 431
        assert await client.closed()
        assert up.connections == []


async def test_finding3_endless_trailer_line_gets_431_once_past_the_limit() -> None:
    async def silent(rec: Recorded, head: bytes) -> bytes | None:
        return None

    async with recording_upstream(silent) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.send(b"1\r\na\r\n0\r\nX-Trailer: ")
        for _ in range(12):  # 48 KiB of one trailer line, in reads of its own
            await client.send(b"t" * 4096)
        response, _ = await client.response(timeout=2.0)
        assert response.status_code == 431
        assert await client.closed()


async def test_finding3_response_head_over_the_limit_is_502_and_closed(engine: str) -> None:
    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) == b"/huge":
            return (
                b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 40 * 1024 + b"\r\nContent-Length: 0\r\n\r\n"
            )
        if target_of(head) == b"/many":
            fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
            return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        for path in (b"/huge", b"/many"):
            client = await RawClient.connect(router)
            await client.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            response, _ = await client.response()
            assert response.status_code == 502
            client.close()
        await wait_for(lambda: all(rec.closed.is_set() for rec in up.connections))


# -- 4. 1-byte chunks ----------------------------------------------------------------------


async def test_finding4_one_byte_chunks_are_coalesced_not_sent_one_by_one(engine: str) -> None:
    """64 KiB of `1\\r\\nX\\r\\n` cost ~13 us of router CPU per byte: one upstream write per
    chunk. The body now goes upstream in as many chunks as the client's reads, not bytes."""
    size = 16 * 1024

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        return None  # answered once the whole body is in (below)

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nX\r\n" * size
            + b"0\r\n\r\n"
        )
        await wait_for(
            lambda: bool(up.connections) and up.connections[0].data.endswith(b"0\r\n\r\n")
        )
        rec = up.connections[0]
        ((request, body),) = rec.requests()
        assert body == b"X" * size
        chunks = rec.data.count(b"\r\n") - len(request.headers) - 2
        assert chunks < size // 16, f"{chunks // 2} chunks forwarded for {size} bytes"
        client.close()


# -- 5. unbounded buffering after an Upgrade head -----------------------------------------


async def test_finding5_bytes_after_an_upgrade_head_are_bounded(engine: str) -> None:
    """Before the replica answers an Upgrade, the client's further bytes are held in a
    bounded buffer and the client is no longer read (TCP back-pressure)."""

    async def silent(rec: Recorded, head: bytes) -> bytes | None:
        return None

    async with recording_upstream(silent) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        pushed = 0
        block = b"z" * (1 << 20)
        try:
            async with asyncio.timeout(1.5):
                while pushed < 256 << 20:
                    client.writer.write(block)
                    await client.writer.drain()
                    pushed += len(block)
        except TimeoutError:
            pass
        # What the kernel buffers on loopback plus the router's bound, far below 256 MiB.
        assert pushed < 64 << 20, f"router accepted {pushed >> 20} MiB before answering"
        client.writer.transport.abort()


# -- 6. forged statuses --------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999"])
async def test_finding6_status_outside_100_599_is_502_and_nothing_forged_reaches_the_client(
    status: bytes,
) -> None:
    forged = ok(b"/forged")

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) == b"/first":
            return b"HTTP/1.1 %s X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(forged), forged)
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 502
        await client.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"/second")
        assert up.connections[0].closed.is_set()
        client.close()


async def test_finding6_informational_response_with_a_body_is_502() -> None:
    forged = ok(b"/forged")

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) == b"/first":
            return b"HTTP/1.1 103 X\r\nContent-Length: %d\r\n\r\n%s" % (len(forged), forged)
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 502
        await client.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"/second")
        client.close()


async def test_finding6_informational_responses_are_dropped_and_the_final_one_relayed(
    engine: str,
) -> None:
    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        return b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"/one")
        client.close()


# -- 7. slow uploads -----------------------------------------------------------------------


async def test_finding7_slow_steady_upload_is_not_a_replica_timeout(engine: str) -> None:
    answered: list[asyncio.Task[None]] = []

    async def answer_after_body(rec: Recorded) -> None:
        await wait_for(lambda: rec.data.endswith(b"0123456789"), timeout=10)
        assert rec.writer is not None
        rec.writer.write(ok(b"/up"))

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        answered.append(asyncio.create_task(answer_after_body(rec)))
        return None

    async with (
        recording_upstream(respond) as up,
        router_to(up, engine, failures=1, response_timeout="300ms") as router,
    ):
        client = await RawClient.connect(router)
        await client.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for digit in b"0123456789":
            await client.send(bytes([digit]))
            await asyncio.sleep(0.1)  # the upload's pace (1 s in all), not a wait
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"/up")
        routable = {r.id for r in router.app.reconciler.current.routable}
        assert routable == {"rec"}
        await answered[0]
        client.close()


# -- also fixed ----------------------------------------------------------------------------


async def test_close_delimited_gzip_transfer_coding_ends_the_chunked_body() -> None:
    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        assert rec.writer is not None
        rec.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\ncompressed-bytes")
        await rec.writer.drain()
        rec.writer.close()
        return None

    async with recording_upstream(respond) as up, router_to(up) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # (h11 knows no coding but chunked: the framing is checked on the bytes.)
        raw = b""
        async with asyncio.timeout(3):
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                chunk = await client.reader.read(65536)
                assert chunk, f"closed before the last chunk: {raw!r}"
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head + b"\r\n"
        assert body == b"10\r\ncompressed-bytes\r\n0\r\n\r\n"
        client.close()


async def test_idle_upgraded_tunnel_is_closed_and_releases_its_slot() -> None:
    async def switch(rec: Recorded, head: bytes) -> bytes | None:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        )

    async with (
        recording_upstream(switch) as up,
        router_to(up, idle_timeout="300ms") as router,
    ):
        client = await RawClient.connect(router)
        await client.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 101 ")
        await client.send(b"ping")
        await wait_for(lambda: up.connections[0].data.endswith(b"ping"))
        assert await client.closed(timeout=3)
        await wait_for(lambda: up.connections[0].closed.is_set())
        admission = router.app.engine._core.admission
        await wait_for(lambda: admission.active == 0)


# -- found by the differential framing suite (tests/test_differential_framing.py) ----------


async def test_close_delimited_answer_rechunked_for_http11_keeps_the_client_connection(
    engine: str,
) -> None:
    """The replica's close ends its body; re-chunked, the last chunk ends it for an HTTP/1.1
    client, whose connection stays open (the fast engine used to close it unannounced)."""

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) != b"/unframed":
            return ok(target_of(head))
        assert rec.writer is not None
        rec.writer.write(b"HTTP/1.1 200 OK\r\n\r\n/unframed")
        await rec.writer.drain()
        rec.writer.close()
        return None

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /unframed HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await client.response()
        assert body == b"/unframed"
        assert header(response, b"connection") == []
        await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await client.response())[1] == b"/next"
        client.close()


@pytest.mark.parametrize(
    "extra",
    [b"204 No Content", b"304 Not Modified", b"200 OK"],
    ids=["204-with-body", "304-with-body", "unsolicited-response"],
)
async def test_bytes_after_a_complete_response_close_the_replica_connection(
    engine: str, extra: bytes
) -> None:
    """Whatever follows the one response in the same read (a 204/304's body, a second
    response) has no request: the next pipelined request must get its own answer on a fresh
    replica connection, never the replica's extra bytes."""
    forged = ok(b"/forged")

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if target_of(head) != b"/first":
            return ok(target_of(head))
        if extra == b"200 OK":
            return ok(b"/first") + forged
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (extra, len(forged), forged)

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await client.response()
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"/second")
        assert len(up.connections) == 2
        assert up.connections[0].closed.is_set()
        client.close()


async def read_until_closed_or(client: RawClient, end: bytes) -> bytes:
    raw = b""
    async with asyncio.timeout(3):
        while not raw.endswith(end):
            data = await client.reader.read(65536)
            if not data:
                break
            raw += data
    return raw


async def test_router_errors_to_head_requests_have_no_body(engine: str) -> None:
    """A response to HEAD never has a body (RFC 9110 9.3.2), the router's own 502 and 400
    included: the body would be read as the start of the next response."""

    async def respond(rec: Recorded, head: bytes) -> bytes | None:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 99 X\r\nContent-Length: 0\r\n\r\n"
        return ok(target_of(head))

    async with recording_upstream(respond) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(
            b"HEAD /bad HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        raw = await read_until_closed_or(client, b"/after")
        first, _, rest = raw.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 502 ")
        assert rest.startswith(b"HTTP/1.1 200 ")
        client.close()
        # An upgrade with a body: fast refuses it (400); aiohttp frames and forwards it (502).
        refused = await RawClient.connect(router)
        await refused.send(
            b"HEAD /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\n"
            b"Upgrade: websocket\r\nContent-Length: 2\r\n\r\nab"
        )
        first, _, rest = (await read_until_closed_or(refused, b"\0")).partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 400 " if engine == "fast" else b"HTTP/1.1 502 ")
        assert rest == b""


async def test_http10_keep_alive_and_close_together_mean_close(engine: str) -> None:
    """RFC 9112 9.3: `close` ends the connection whatever else Connection lists (llhttp, under
    both engines, kept an HTTP/1.0 `keep-alive, close` request alive)."""
    async with recording_upstream(echo_target) as up, router_to(up, engine) as router:
        client = await RawClient.connect(router)
        await client.send(b"GET /ka HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
        raw = await read_until_closed_or(client, b"\0")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert body == b"/ka"
        assert b"keep-alive" not in head.lower()
