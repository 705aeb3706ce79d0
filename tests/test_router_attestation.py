"""`GET /.well-known/phala-router/attestation`: a router in a "CVM" (a fake dstack guest agent
on a unix socket) tells clients who it is and makes a quote for their nonce; outside a CVM
the path is a 404 saying why, never routed. Both engines and the admin listener."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.attestation.claims import Expectation
from router.attestation.quote import decode_quote, router_report_data
from router.attestation.verify import Evidence, verify_evidence
from router.models import AttestationVerdict
from router.proxy.well_known import ATTESTATION_PATH, is_attestation_target
from router.quote_server import ClientBudget
from router.self_attestation import RouterAttestation, find_guest_agent
from tests import test_status_page
from tests.dstack_support import FakeGuestAgent, RouterCvm, guest_agent_socket
from tests.recording_upstream import RawClient
from tests.support import TestReplica as Replica
from tests.support import eventually, running_replica, running_router, static_config

NONCE = bytes(range(32))
browser = test_status_page.browser  # the headless Chromium fixture


def verdict_of(doc: dict[str, Any], key: bytes, nonce: bytes) -> AttestationVerdict:
    """What a client concludes from the document: the quote verifies and binds `nonce`."""
    expect = Expectation(
        doc["app_id"], doc["instance_id"], frozenset({doc["compose_hash"]}),
        report_data=router_report_data(nonce),
    )  # fmt: skip
    return verify_evidence(
        Evidence(decode_quote(doc["quote"]), doc["event_log"], doc["vm_config"]),
        expect, replica_id="router", collateral=None, now_unix=0, at=0.0,
        verifier="insecure-simulator", trusted_simulator_keys=frozenset({key}),
    )  # fmt: skip


@dataclass
class InCvm:
    agent: FakeGuestAgent
    socket: str
    replica: Replica


@pytest.fixture
async def in_cvm() -> AsyncIterator[InCvm]:
    agent = FakeGuestAgent()
    async with guest_agent_socket(agent) as socket, running_replica("r1") as replica:
        yield InCvm(agent, socket, replica)


def router_config(engine: str, replica: Replica) -> dict[str, Any]:
    return static_config(
        [("r1", f"http://127.0.0.1:{replica.port}")],
        proxy={"engine": engine},
        health={"enabled": False},  # the replica then sees only what is routed
        attestation={
            "verifier": "insecure-simulator",
            "simulator_public_keys": [],  # the agent's key comes as trusted_simulator_keys
        },
    )


async def test_the_router_in_a_cvm_serves_its_attestation_and_a_nonce_bound_quote(
    engine: str, in_cvm: InCvm, client: aiohttp.ClientSession
) -> None:
    agent, me = in_cvm.agent, RouterCvm()
    environ = {"DSTACK_SIMULATOR_ENDPOINT": in_cvm.socket}
    keys = frozenset({agent.public_key})
    async with running_router(
        router_config(engine, in_cvm.replica), environ=environ, trusted_simulator_keys=keys
    ) as router:
        for base in (router.url, router.admin_url):
            async with client.get(base + ATTESTATION_PATH) as response:
                assert response.status == 200
                doc = await response.json()
            assert (doc["app_id"], doc["instance_id"], doc["compose_hash"]) == (
                me.app_id, me.instance_id, me.compose_hash,
            )  # fmt: skip
            assert doc["nonce"] is None
            async with client.head(base + ATTESTATION_PATH) as response:
                assert response.status == 200
                assert await response.read() == b""
            assert doc["app_compose"]
            assert verdict_of(doc, agent.public_key, b"").ok
            async with client.get(f"{base}{ATTESTATION_PATH}?nonce={NONCE.hex()}") as response:
                assert response.status == 200
                fresh = await response.json()
            assert fresh["nonce"] == NONCE.hex()
            assert verdict_of(fresh, agent.public_key, NONCE).ok
            # The start quote does not pass for a client's nonce: it is not fresh.
            assert verdict_of(doc, agent.public_key, NONCE).reason == "stale_nonce"
        assert in_cvm.replica.hits == 0  # answered by the router, never routed
        await eventually(lambda: router.app.self_attestation.verdict is not None)
        status = router.app.status()["router_attestation"]
        assert status["app_id"] == me.app_id
        assert status["compose_hash"] == me.compose_hash
        assert status["verified"]["ok"] is True
        assert status["verified"]["tcb_status"] == "UpToDate"


@pytest.mark.parametrize(
    "nonce",
    ["ab" * 15, "ab" * 65, "abc" * 11, "zz" * 16, "ab " * 16, ""],
    ids=["short", "long", "odd", "not-hex", "spaces", "empty"],
)
async def test_a_bad_nonce_is_a_400_naming_what_is_allowed_and_the_router_keeps_serving(
    engine: str, in_cvm: InCvm, client: aiohttp.ClientSession, nonce: str
) -> None:
    environ = {"DSTACK_SIMULATOR_ENDPOINT": in_cvm.socket}
    async with running_router(router_config(engine, in_cvm.replica), environ=environ) as router:
        async with client.get(f"{router.url}{ATTESTATION_PATH}?nonce={nonce}") as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"] == "bad_nonce"
        assert "32 to 128 hex characters" in body["detail"]
        async with client.get(f"{router.url}/still") as response:
            assert response.status == 200
    assert not [r for r in in_cvm.agent.quote_requests if r != router_report_data(b"").hex()]


async def test_pipelined_requests_keep_their_order_around_the_attestation_answer(
    engine: str, in_cvm: InCvm
) -> None:
    """The answer is made asynchronously (a quote takes a while): a request pipelined behind
    it on the same connection is answered after it, and the connection stays usable."""
    environ = {"DSTACK_SIMULATOR_ENDPOINT": in_cvm.socket}
    async with running_router(router_config(engine, in_cvm.replica), environ=environ) as router:
        raw = await RawClient.connect(router)
        try:
            await raw.send(
                f"GET {ATTESTATION_PATH}?nonce={NONCE.hex()} HTTP/1.1\r\nHost: r\r\n\r\n"
                "GET /after HTTP/1.1\r\nHost: r\r\n\r\n".encode()
            )
            first, body = await raw.response(timeout=10)
            assert first.status_code == 200
            assert json.loads(body)["nonce"] == NONCE.hex()
            second, body = await raw.response()
            assert second.status_code == 200
            assert json.loads(body)["path"] == "/after"
        finally:
            raw.close()


async def test_outside_a_cvm_the_path_is_a_404_saying_why_and_is_not_routed(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("r1") as replica:
        config = router_config(engine, replica)
        async with running_router(config) as router:
            for base in (router.url, router.admin_url):
                async with client.get(f"{base}{ATTESTATION_PATH}?nonce={NONCE.hex()}") as response:
                    assert response.status == 404
                    body = await response.json()
                assert body["error"] == "not_in_cvm"
                assert "dstack" in body["detail"]
            assert replica.hits == 0
            assert router.app.status()["router_attestation"] is None


async def test_a_tampered_start_quote_shows_as_unverified_in_status(
    in_cvm: InCvm, client: aiohttp.ClientSession
) -> None:
    in_cvm.agent.tamper = "tampered"
    environ = {"DSTACK_SIMULATOR_ENDPOINT": in_cvm.socket}
    keys = frozenset({in_cvm.agent.public_key})
    config = router_config("fast", in_cvm.replica)
    async with running_router(config, environ=environ, trusted_simulator_keys=keys) as router:
        async with client.get(router.url + ATTESTATION_PATH) as response:
            assert response.status == 200
        await eventually(lambda: router.app.self_attestation.verdict is not None)
        verified = router.app.status()["router_attestation"]["verified"]
        assert verified["ok"] is False
        assert verified["reason"] == "bad_signature"


@pytest.mark.browser
async def test_the_status_page_shows_the_routers_own_attestation(
    in_cvm: InCvm, browser: Any
) -> None:
    environ = {"DSTACK_SIMULATOR_ENDPOINT": in_cvm.socket}
    keys = frozenset({in_cvm.agent.public_key})
    config = router_config("fast", in_cvm.replica)
    async with running_router(config, environ=environ, trusted_simulator_keys=keys) as router:
        page = await browser.new_page()
        await page.goto(f"{router.admin_url}/status.html")
        await page.wait_for_function(
            "() => document.querySelector('#router-attestation')?.textContent"
            ".includes('verified, TCB')",
            timeout=10000,
        )  # the page refreshes every 2 s; the router checks its quote in the background
        text = await page.inner_text("#router-attestation")
        assert "verified, TCB UpToDate" in text
        assert "instance 7a7a7a7a" in text
        assert "no RA-TLS key" in text  # this router's listener is plain HTTP


# -- rationing, without sockets ---------------------------------------------------------------


class MemoryAgent:
    """A guest agent in memory; `gate`, when set, holds every quote until it is set."""

    def __init__(self) -> None:
        self.fake = FakeGuestAgent()
        self.quotes = 0
        self.gate: asyncio.Event | None = None

    async def info(self) -> dict[str, Any]:
        return {"app_id": self.fake.me.app_id, "tcb_info": {"app_compose": "{}"}}

    async def quote(self, report_data: bytes) -> dict[str, Any]:
        self.quotes += 1
        if self.gate is not None:
            await self.gate.wait()
        quote, events = self.fake._quote(report_data)
        return {"quote": quote.hex(), "event_log": events, "report_data": report_data.hex()}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_repeated_nonce_costs_no_new_quote_and_a_client_past_its_budget_gets_429() -> None:
    agent, clock = MemoryAgent(), Clock()
    endpoint = RouterAttestation(agent, clock=clock, budget=ClientBudget(burst=3, clock=clock))
    target = f"{ATTESTATION_PATH}?nonce={NONCE.hex()}"
    first = await endpoint.answer("GET", target, "10.0.0.1")
    again = await endpoint.answer("GET", target, "10.0.0.1")
    assert first.status == 200
    assert again.body == first.body
    assert agent.quotes == 2  # the start quote and one for NONCE
    statuses = [
        (await endpoint.answer("GET", f"{ATTESTATION_PATH}?nonce={i:064x}", "10.0.0.1")).status
        for i in range(4)
    ]
    assert statuses == [200, 200, 429, 429]
    other = await endpoint.answer("GET", f"{ATTESTATION_PATH}?nonce={9:064x}", "10.0.0.2")
    assert other.status == 200  # another client has a budget of its own
    clock.now += 10  # refilled
    again_ok = await endpoint.answer("GET", f"{ATTESTATION_PATH}?nonce={7:064x}", "10.0.0.1")
    assert again_ok.status == 200


async def test_quotes_in_progress_are_bounded_more_callers_get_503() -> None:
    agent = MemoryAgent()
    endpoint = RouterAttestation(agent, max_concurrent=1)
    assert await endpoint.load() is not None
    agent.gate = asyncio.Event()
    slow = asyncio.create_task(endpoint.answer("GET", f"{ATTESTATION_PATH}?nonce={1:064x}", "a"))
    await eventually(lambda: agent.quotes >= 2)  # the slow quote is being made
    refused = await endpoint.answer("GET", f"{ATTESTATION_PATH}?nonce={2:064x}", "b")
    assert refused.status == 503
    assert b"busy" in refused.body
    agent.gate.set()
    assert (await slow).status == 200


async def test_a_broken_guest_agent_is_a_503_naming_it_and_is_asked_again_later() -> None:
    clock = Clock()
    agent = MemoryAgent()
    broken = asyncio.Event()

    async def failing_info() -> dict[str, Any]:
        if not broken.is_set():
            raise OSError("connection refused")
        return {"app_id": "x", "tcb_info": {}}

    agent.info = failing_info  # type: ignore[method-assign]
    endpoint = RouterAttestation(agent, clock=clock)
    answer = await endpoint.answer("GET", ATTESTATION_PATH, "a")
    assert answer.status == 503
    assert b"guest agent" in answer.body
    broken.set()
    assert (await endpoint.answer("GET", ATTESTATION_PATH, "a")).status == 503  # not yet
    clock.now += 10
    assert (await endpoint.answer("GET", ATTESTATION_PATH, "a")).status == 200


async def test_only_get_and_head_are_answered() -> None:
    endpoint = RouterAttestation(MemoryAgent())
    answer = await endpoint.answer("POST", ATTESTATION_PATH, "a")
    assert answer.status == 405
    assert ("Allow", "GET, HEAD") in answer.headers


def test_the_guest_agent_is_found_in_dstack_sdks_order() -> None:
    assert find_guest_agent("/x.sock", {"DSTACK_SIMULATOR_ENDPOINT": "http://e"}) == "/x.sock"
    assert find_guest_agent(None, {"DSTACK_SIMULATOR_ENDPOINT": "http://e"}) == "http://e"
    assert find_guest_agent(None, {}, exists=lambda p: p == "/run/dstack.sock") == (
        "/run/dstack.sock"
    )
    assert find_guest_agent(None, {}, exists=lambda p: False) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_only_the_exact_path_is_taken_from_routing(suffix: str) -> None:
    target = ATTESTATION_PATH + suffix
    expected = suffix == "" or suffix.startswith("?")
    assert is_attestation_target(target) is expected
