"""The quote server answers fresh-mode requests through a fake dstack socket (a unix-socket
server speaking dstack's HTTP API), and the router's fresh mode accepts its answers."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from router.attestation.manager import Attestor
from router.attestation.quote import fresh_report_data
from router.attestation.settings import AttestationConfig
from router.attestation.verify import Evidence, Expectation, verify_evidence
from router.models import AttestationVerdict, Replica
from router.quote_server import ClientBudget, create_app
from router.simulator.quotes import SimulatedQuotes

APP_ID = "a1" * 20
INSTANCE_ID = "b2" * 20
COMPOSE_HASH = "c3" * 32
NONCE = bytes(range(32))


@dataclass(frozen=True)
class Me:
    app_id: str = APP_ID
    instance_id: str = INSTANCE_ID
    compose_hash: str = COMPOSE_HASH


class FakeDstack:
    """POST /GetQuote {"report_data": hex} -> {quote, event_log, report_data, vm_config}."""

    def __init__(self) -> None:
        self.quotes = SimulatedQuotes()
        self.requests: list[dict[str, str]] = []
        self.fail = False

    async def get_quote(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.fail:
            return web.Response(status=500, text="tdx quote generation failed")
        report_data = bytes.fromhex(body["report_data"])
        quote, events = self.quotes.provider(Me(), report_data)
        return web.json_response(
            {
                "quote": quote,
                "event_log": json.dumps(events),
                "report_data": report_data.hex(),
                "vm_config": json.dumps({"os_image_hash": "00" * 32}),
            }
        )


async def start(
    app: web.Application, site_factory: type[web.BaseSite], **kw: object
) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await site_factory(runner, **kw).start()  # type: ignore[arg-type]
    return runner


@dataclass
class Setup:
    dstack: FakeDstack
    socket: Path
    url: str
    session: aiohttp.ClientSession


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    # A short directory: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="dstack", dir="/tmp") as directory:
        socket = Path(directory) / "dstack.sock"
        dstack = FakeDstack()
        dstack_app = web.Application()
        dstack_app.router.add_post("/GetQuote", dstack.get_quote)
        dstack_runner = await start(dstack_app, web.UnixSite, path=str(socket))
        server = await start(
            create_app(endpoint=str(socket)), web.TCPSite, host="127.0.0.1", port=0
        )
        url = f"http://127.0.0.1:{server.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            yield Setup(dstack, socket, url, session)
        await server.cleanup()
        await dstack_runner.cleanup()


async def test_quote_server_returns_a_quote_bound_to_the_nonce(setup: Setup) -> None:
    async with setup.session.get(
        f"{setup.url}/.well-known/phala-router/attest", params={"nonce": NONCE.hex()}
    ) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert set(body) == {"quote", "event_log", "report_data", "vm_config"}
    assert setup.dstack.requests == [{"report_data": fresh_report_data(NONCE).hex()}]
    verdict = verify_evidence(
        Evidence(quote=bytes.fromhex(body["quote"]), event_log=body["event_log"]),
        Expectation(
            app_id=APP_ID,
            instance_id=INSTANCE_ID,
            allowed_compose_hashes=frozenset({COMPOSE_HASH}),
            report_data=fresh_report_data(NONCE),
        ),
        replica_id="r",
        collateral=None,
        now_unix=0,
        at=0.0,
        verifier="insecure-simulator",
        trusted_simulator_keys=frozenset({setup.dstack.quotes.public_key}),
    )
    assert verdict.ok, verdict


async def test_router_fresh_mode_attests_through_the_quote_server(setup: Setup) -> None:
    port = int(setup.url.rsplit(":", 1)[1])
    replica = Replica(
        id=INSTANCE_ID,
        url=setup.url,
        scheme="http",
        host="127.0.0.1",
        port=port,
        app_id=APP_ID,
        compose_hash=COMPOSE_HASH,
    )
    verdicts: list[AttestationVerdict] = []
    attestor = Attestor(
        AttestationConfig(mode="fresh", verifier="insecure-simulator"),
        APP_ID,
        verdicts.append,
        session=setup.session,
        trusted_simulator_keys=frozenset({setup.dstack.quotes.public_key}),
    )
    attestor.update_replicas([replica])
    first, second = await attestor.attest_now(), await attestor.attest_now()
    assert [v.ok for v in first + second] == [True, True]
    # A new nonce every attempt, each bound into the quote's report_data.
    sent = [r["report_data"] for r in setup.dstack.requests]
    assert len(set(sent)) == 2


@pytest.mark.parametrize("nonce", ["", "abc", "zz" * 32, "00" * 33])
async def test_bad_nonce_is_refused_with_a_clear_message(setup: Setup, nonce: str) -> None:
    async with setup.session.get(
        f"{setup.url}/.well-known/phala-router/attest", params={"nonce": nonce}
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "bad_nonce"
    assert "64 hex" in body["detail"]
    assert setup.dstack.requests == []


async def test_dstack_failure_is_a_502_naming_dstack(setup: Setup) -> None:
    setup.dstack.fail = True
    async with setup.session.get(
        f"{setup.url}/.well-known/phala-router/attest", params={"nonce": NONCE.hex()}
    ) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "dstack_failed"


async def test_missing_dstack_socket_is_a_503_saying_what_to_mount(tmp_path: Path) -> None:
    server = await start(
        create_app(endpoint=str(tmp_path / "absent.sock")), web.TCPSite, host="127.0.0.1", port=0
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{server.addresses[0][1]}/.well-known/phala-router/attest",
                params={"nonce": NONCE.hex()},
            ) as response,
        ):
            assert response.status == 503
            body = await response.json()
    finally:
        await server.cleanup()
    assert body["error"] == "dstack_unavailable"
    assert "dstack.sock" in body["detail"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_client_budget_allows_a_burst_then_one_per_refill() -> None:
    clock = Clock()
    budget = ClientBudget(burst=3, refill=2.0, clock=clock)
    assert [budget.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("a") == pytest.approx(2.0)
    assert budget.take("b") == 0.0  # another client has its own budget
    clock.now = 2.0
    assert budget.take("a") == 0.0
    assert budget.take("a") > 0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=60))
def test_no_client_gets_more_than_burst_plus_refills(calls: list[tuple[str, float]]) -> None:
    clock = Clock()
    budget = ClientBudget(burst=2, refill=1.0, clock=clock)
    granted: dict[str, int] = {}
    for client, step in calls:
        clock.now += step
        if budget.take(client) == 0.0:
            granted[client] = granted.get(client, 0) + 1
    for count in granted.values():
        assert count <= 2 + clock.now / 1.0 + 1e-9


async def test_past_its_budget_a_client_gets_429_but_the_router_token_does_not(
    setup: Setup,
) -> None:
    server = await start(
        create_app(
            endpoint=str(setup.socket),
            budget=ClientBudget(burst=2, refill=3600.0),
            router_token="router-secret",
        ),
        web.TCPSite,
        host="127.0.0.1",
        port=0,
    )
    url = f"http://127.0.0.1:{server.addresses[0][1]}/.well-known/phala-router/attest"
    params = {"nonce": NONCE.hex()}
    try:
        statuses = []
        for _ in range(3):
            async with setup.session.get(url, params=params) as response:
                statuses.append(response.status)
                retry_after = response.headers.get("Retry-After")
        assert statuses == [200, 200, 429]
        assert retry_after is not None
        assert int(retry_after) > 0
        for token, status in (("wrong", 429), ("router-secret", 200)):
            headers = {"Authorization": f"Bearer {token}"}
            async with setup.session.get(url, params=params, headers=headers) as response:
                assert response.status == status
    finally:
        await server.cleanup()


async def test_the_router_with_its_token_is_never_rate_limited(setup: Setup) -> None:
    server = await start(
        create_app(
            endpoint=str(setup.socket),
            budget=ClientBudget(burst=1, refill=3600.0),
            router_token="router-secret",
        ),
        web.TCPSite,
        host="127.0.0.1",
        port=0,
    )
    port = server.addresses[0][1]
    replica = Replica(
        id=INSTANCE_ID, url=f"http://127.0.0.1:{port}", scheme="http", host="127.0.0.1",
        port=port, app_id=APP_ID, compose_hash=COMPOSE_HASH,
    )  # fmt: skip
    attestor = Attestor(
        AttestationConfig(mode="fresh", verifier="insecure-simulator"),
        APP_ID,
        lambda verdict: None,
        session=setup.session,
        trusted_simulator_keys=frozenset({setup.dstack.quotes.public_key}),
        fresh_token="router-secret",
    )
    attestor.update_replicas([replica])
    try:
        verdicts = [(await attestor.attest_now())[0] for _ in range(3)]
    finally:
        await server.cleanup()
    assert [v.ok for v in verdicts] == [True, True, True], verdicts
