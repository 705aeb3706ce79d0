"""Differential framing tests, both engines: hypothesis writes request sequences (pipelined,
chunked with extensions and trailers, Content-Length, Connection lists with odd tokens,
Upgrade, Expect, HTTP/1.0 keep-alive) and replica answers (trailers, early answers, bad
statuses, 1xx, 204/304/HEAD with bodies, CL+TE, close-delimited), and every example must keep
the three properties stated in tests/framing_checks.py: the replica's bytes parse under h11
into exactly the accepted requests, each client gets exactly its own responses, and no
replica connection is reused once its byte stream is in doubt.

One router and one recording replica per engine serve all examples of a test (on a loop in
a thread, so hypothesis drives plain functions); tags are unique across examples, so a
response or request that leaks into a later example is caught too. Each test covers one
family of inputs, so a known gap marks exactly its family (see `known_gap`). Example counts
are small by default (a few seconds per engine); `pytest --deep` runs many more and shrinks
failures to a minimal example.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import ENGINES
from tests.framing_checks import Scenario, run_scenario
from tests.framing_support import SMUGGLED, ClientRequest
from tests.hostile_replica import SCRIPTS, RecordingUpstream
from tests.support import running_router


@dataclass
class Live:
    engine: str
    host: str
    port: int
    upstream: RecordingUpstream
    loop: asyncio.AbstractEventLoop

    def run(self, scenario: Scenario) -> list[str]:
        future = asyncio.run_coroutine_threadsafe(
            run_scenario(self.host, self.port, self.upstream, scenario), self.loop
        )
        return future.result(30)


@pytest.fixture(params=ENGINES)
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = AsyncExitStack()
    upstream = RecordingUpstream()

    async def start() -> tuple[str, int]:
        await upstream.start()
        stack.push_async_callback(upstream.stop)
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            "discovery": {"static": [{"id": "rec", "url": f"http://127.0.0.1:{upstream.port}"}]},
            # Bad answers are the point here: they must not eject the only replica.
            "health": {"enabled": False, "passive": {"enabled": False}},
            "proxy": {"engine": request.param},
        }
        router = await stack.enter_async_context(running_router(config))
        host, port = router.app.engine.addresses[0]
        return host, port

    host, port = asyncio.run_coroutine_threadsafe(start(), loop).result(15)
    try:
        yield Live(request.param, host, port, upstream, loop)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# -- what hypothesis generates ----------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS"]
BODIES = st.one_of(st.sampled_from([b"", b"hello", SMUGGLED]), st.binary(max_size=200))
PLAIN_TOKENS = ["keep-alive", "x-foo", "close"]
UPGRADE_TOKENS = ["upgrade", "Upgrade", " UPGRADE "]
# Tokens that contain the letters `upgrade` but are not the token: no upgrade.
LOOKALIKE_TOKENS = ["x-upgrade", "upgradex", "no-upgrade"]


@st.composite
def client_requests(
    draw: st.DrawFn,
    scripts: list[str],
    *,
    upgrades: bool = True,
    lookalikes: bool = False,
    trailers: bool = False,
    upgrade_bodies: bool = False,
    framings: tuple[str, ...] = ("none", "length", "chunked"),
) -> ClientRequest:
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    allowed = [f for f in framings if version == "1.1" or f != "chunked"] or ["none"]
    framing = draw(st.sampled_from(allowed))
    body = draw(BODIES) if framing != "none" else b""
    pool = (
        PLAIN_TOKENS
        + (UPGRADE_TOKENS if upgrades else [])
        + (LOOKALIKE_TOKENS if lookalikes else [])
    )
    connection = draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
    # (`keep-alive, close` together means close: ClientRequest.closes says so.)
    upgrade = (upgrades or lookalikes) and draw(st.booleans())
    if upgrade and not upgrade_bodies and {t.strip().lower() for t in connection} & {"upgrade"}:
        framing, body = "none", b""  # an upgrade with a body has its own test
    return ClientRequest(
        method=draw(st.sampled_from(METHODS)),
        version=version,
        framing=framing,
        body=body,
        chunk_sizes=tuple(draw(st.lists(st.integers(1, 64), max_size=4))),
        extensions=draw(st.booleans()),
        trailers=trailers and framing == "chunked" and draw(st.booleans()),
        connection=tuple(connection),
        upgrade=upgrade,
        expect=draw(st.booleans()),
        script=draw(st.sampled_from(scripts)),
    )


@st.composite
def scenarios(draw: st.DrawFn, requests: st.SearchStrategy[ClientRequest]) -> Scenario:
    """1-3 client connections, each a few requests (pipelined or one by one); requests that
    end a connection (close, HTTP/1.0 without keep-alive, an upgrade) come last."""
    middle = requests.filter(lambda r: not r.must_be_last)
    clients = []
    for _ in range(draw(st.integers(1, 3))):
        sequence = draw(st.lists(middle, max_size=3))
        last = draw(st.one_of(st.none(), requests))
        clients.append(([*sequence, *([last] if last else [])], draw(st.booleans())))
    return Scenario(clients)


def explore(
    live: Live, deep: bool, requests: st.SearchStrategy[ClientRequest], examples: int = 25
) -> None:
    """Run the properties over `examples` generated scenarios (20x with --deep)."""
    phases = list(Phase) if deep else [Phase.explicit, Phase.reuse, Phase.generate]

    @settings(
        max_examples=examples * 20 if deep else examples,
        deadline=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
    )
    @given(scenario=scenarios(requests))
    def holds(scenario: Scenario) -> None:
        problems = live.run(scenario)
        assert not problems, "\n".join(
            [f"[{live.engine}]", *problems, f"scenario: {scenario.clients}"]
        )

    holds()


def known_gap(request: pytest.FixtureRequest, live: Live, gaps: dict[str, str]) -> None:
    """Mark this test xfail for the engines with a listed, already known gap."""
    if live.engine in gaps:
        request.applymarker(pytest.mark.xfail(reason=gaps[live.engine], strict=False))


# -- the families -------------------------------------------------------------------------


def test_well_framed_requests_and_answers_keep_their_framing(live: Live, deep: bool) -> None:
    scripts = ["ok", "chunked", "early", "interim", "switch"]
    explore(live, deep, client_requests(scripts))


def test_close_delimited_answers_end_only_their_own_response(live: Live, deep: bool) -> None:
    explore(live, deep, client_requests(["close", "ok"]))


def test_connection_tokens_that_only_look_like_upgrade_are_not_upgrades(
    live: Live, deep: bool
) -> None:
    requests = client_requests(["ok", "chunked"], upgrades=False, lookalikes=True)
    explore(live, deep, requests)


def test_upgrade_requests_with_a_body_are_refused_or_framed(live: Live, deep: bool) -> None:
    requests = client_requests(
        ["ok", "switch"], upgrade_bodies=True, framings=("length", "chunked")
    )
    explore(live, deep, requests)


def test_response_trailers_stay_with_their_response(live: Live, deep: bool) -> None:
    explore(live, deep, client_requests(["trailers", "ok", "chunked"], upgrades=False))


def test_request_trailers_stay_with_their_request(live: Live, deep: bool) -> None:
    requests = client_requests(["ok"], upgrades=False, trailers=True, framings=("chunked",))
    explore(live, deep, requests)


def test_bad_status_lines_never_reach_a_client(live: Live, deep: bool) -> None:
    scripts = ["status_099", "status_99", "status_600", "status_garbage", "ok"]
    explore(live, deep, client_requests(scripts, upgrades=False))


def test_bodies_on_bodiless_answers_and_extra_responses_are_not_relayed(
    live: Live, deep: bool
) -> None:
    scripts = [
        "empty_with_body",
        "not_modified_with_body",
        "cl_te",
        "unsolicited",
        "unsolicited_head",
        "ok",
    ]
    explore(live, deep, client_requests(scripts, upgrades=False))


def test_close_delimited_answers_with_a_transfer_coding_end_properly(
    live: Live, deep: bool
) -> None:
    explore(live, deep, client_requests(["close_gzip", "ok"], upgrades=False))


def test_everything_at_once(live: Live, deep: bool) -> None:
    requests = client_requests(list(SCRIPTS), lookalikes=True, trailers=True, upgrade_bodies=True)
    explore(live, deep, requests, examples=40)


@asynccontextmanager
async def recorded_router(engine: str) -> AsyncIterator[tuple[str, int]]:
    """A router in front of a recording replica, for the single-shot tests below."""
    upstream = RecordingUpstream()
    await upstream.start()
    config = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "discovery": {"static": [{"id": "rec", "url": f"http://127.0.0.1:{upstream.port}"}]},
        "health": {"enabled": False},
        "proxy": {"engine": engine},
    }
    try:
        async with running_router(config) as router:
            host, port = router.app.engine.addresses[0]
            yield host, port
    finally:
        await upstream.stop()


async def send_and_read(engine: str, raw: bytes, until: bytes) -> tuple[bytes, bool]:
    """What the router answers up to `until`, and whether it then closes (within 2 s)."""
    async with recorded_router(engine) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.readuntil(until), 5.0)
        try:
            closed = await asyncio.wait_for(reader.read(1), 2.0) == b""
        except TimeoutError:
            closed = False
        writer.close()
        return answer, closed


@pytest.mark.parametrize("engine", ENGINES)
def test_a_close_delimited_answer_to_http10_ends_the_connection_with_requests_queued(
    engine: str,
) -> None:
    """An HTTP/1.0 client learns where a close-delimited body ends only from the close, so
    the router must close even when the client pipelined more requests behind it (the fast
    engine used to wait for its queue to empty, forever)."""
    first = b"GET /t/tag-ten-0 HTTP/1.0\r\nHost: a\r\nX-Tag: tag-ten-0\r\nX-Script: close\r\nConnection: keep-alive\r\n\r\n"
    second = b"GET /t/tag-ten-1 HTTP/1.0\r\nHost: a\r\nX-Tag: tag-ten-1\r\nConnection: keep-alive\r\n\r\n"
    answer, closed = asyncio.run(send_and_read(engine, first + second, b"tag=tag-ten-0"))
    assert b"content-length" not in answer.lower()
    assert closed, "the router kept the connection open: the client cannot know the body ended"


@pytest.mark.parametrize("engine", ENGINES)
def test_keep_alive_and_close_together_mean_close(engine: str) -> None:
    """RFC 9112 9.3: `close` ends the connection whatever else Connection lists (llhttp,
    under both engines, keeps an HTTP/1.0 `keep-alive, close` request alive by itself)."""
    raw = b"GET /t/tag-ka-0 HTTP/1.0\r\nHost: app.test\r\nX-Tag: tag-ka-0\r\nConnection: keep-alive, close\r\n\r\n"

    answer, closed = asyncio.run(send_and_read(engine, raw, b"tag=tag-ka-0"))
    assert b"keep-alive" not in answer.lower().split(b"\r\n\r\n")[0]
    assert closed, "the router kept the connection open after a request that said close"
