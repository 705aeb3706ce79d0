"""The attestation gate end to end against local servers: simulated replicas answering
the fresh and guest-agent sources, a fake Cloud API, and the reconciler admitting only
replicas with a passing verdict."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from router.attestation import manager as manager_module
from router.attestation import verify as verify_module
from router.attestation.manager import Attestor
from router.attestation.quote import fresh_report_data, parse_nonce
from router.attestation.settings import AttestationConfig
from router.balancing.round_robin import RoundRobin
from router.models import AttestationVerdict, Replica
from router.reach import client_ssl_context, make_connector
from router.reconciler import Reconciler
from router.simulator.quotes import FixedQuote, SimulatedQuotes, Tamper, make_quote
from router.snapshot import Policy
from tests.support import eventually

APP_ID = "a1" * 20
APP_COMPOSE = '{"manifest_version": 2, "docker_compose_file": "services: {app: {image: demo}}"}'
COMPOSE_HASH = hashlib.sha256(APP_COMPOSE.encode()).hexdigest()
OTHER_COMPOSE = hashlib.sha256(b"another compose").hexdigest()
BASE = "sim.test"


# No requests in flight (typed loosely: main narrows InFlight to Mapping[str, int]).
NO_LOAD: Any = {}


def instance(n: int) -> str:
    return f"{n:02x}" * 20


@dataclass
class SimReplica:
    app_id: str
    instance_id: str
    compose_hash: str
    silent: bool = False
    hold: asyncio.Event | None = None  # when set, the quote server waits for it
    nonces: list[str] = field(default_factory=list)


class FakePhala:
    """Replicas behind one 'gateway' routing by Host (`<instance>-<port>.sim.test`), their
    guest agents on port 8090, and the Cloud API's attestation listing."""

    def __init__(self) -> None:
        self.quotes = SimulatedQuotes()
        self.replicas: dict[str, SimReplica] = {}
        self.cloud_calls = 0
        self.cloud_down = False

    def add(self, n: int, compose_hash: str = COMPOSE_HASH) -> SimReplica:
        sim = SimReplica(APP_ID, instance(n), compose_hash)
        self.replicas[sim.instance_id] = sim
        return sim

    def _target(self, request: web.Request) -> SimReplica:
        label = request.host.split(".")[0]
        sim = self.replicas.get(label.rsplit("-", 1)[0])
        if sim is None or sim.silent:
            raise web.HTTPServiceUnavailable()
        return sim

    async def fresh(self, request: web.Request) -> web.Response:
        sim = self._target(request)
        if sim.hold is not None:
            await sim.hold.wait()
        nonce = parse_nonce(request.query["nonce"])
        sim.nonces.append(nonce.hex())
        report_data = fresh_report_data(nonce)
        quote, events = self.quotes.provider(sim, report_data)
        return web.json_response(
            {"quote": quote, "event_log": json.dumps(events), "report_data": report_data.hex()}
        )

    async def guest_agent(self, request: web.Request) -> web.Response:
        assert request.host.split(".")[0].endswith("-8090")
        assert (await request.json()) == {"algorithm": "secp256k1"}
        sim = self._target(request)
        quote, events = self.quotes.provider(sim, b"dip1::secp256k1c-pk:simulated")
        return web.json_response({"quote": quote, "event_log": json.dumps(events)})

    async def cloud(self, request: web.Request) -> web.Response:
        self.cloud_calls += 1
        if self.cloud_down:
            raise web.HTTPBadGateway()
        assert request.match_info["app_id"] == APP_ID
        instances = []
        for sim in self.replicas.values():
            item: dict[str, Any] = {"instance_id": sim.instance_id, "status": "running"}
            if sim.silent:
                item.update(quote=None, status="stopped")
            else:
                quote, events = self.quotes.provider(sim, b"")
                item.update(quote=quote, tcb_info={"event_log": events, "app_compose": APP_COMPOSE})
            instances.append(item)
        return web.json_response({"app_id": APP_ID, "instances": instances})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/phala-router/attest", self.fresh)
        app.router.add_post("/prpc/GetAttestationForAppKey", self.guest_agent)
        app.router.add_get("/apps/{app_id}/attestations", self.cloud)
        return app


@dataclass
class World:
    phala: FakePhala
    port: int
    session: aiohttp.ClientSession
    cloud: httpx.AsyncClient
    verdicts: list[AttestationVerdict]

    def replica(self, sim: SimReplica) -> Replica:
        host = f"{sim.instance_id}-8080.{BASE}"
        return Replica(
            id=sim.instance_id,
            url=f"http://{host}",
            scheme="http",
            host=host,
            port=80,
            app_id=APP_ID,
            compose_hash=sim.compose_hash,
        )

    def attestor(
        self, sink: Callable[[AttestationVerdict], None] | None = None, **cfg: Any
    ) -> Attestor:
        config = AttestationConfig.model_validate(
            {"mode": "fresh", "verifier": "insecure-simulator", "timeout": "2s", **cfg}
        )
        return Attestor(
            config,
            APP_ID,
            sink or self.verdicts.append,
            session=self.session,
            cloud=self.cloud,
            trusted_simulator_keys=frozenset({self.phala.quotes.public_key}),
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    phala = FakePhala()
    runner = web.AppRunner(phala.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    connector = make_connector({f"*.{BASE}": f"127.0.0.1:{port}"}, client_ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as cloud,
    ):
        yield World(phala, port, session, cloud, [])
    await runner.cleanup()


def by_id(verdicts: list[AttestationVerdict]) -> dict[str, AttestationVerdict]:
    return {v.replica_id: v for v in verdicts}


async def test_fresh_mode_admits_good_replicas_with_a_new_nonce_each_attempt(world: World) -> None:
    sims = [world.phala.add(1), world.phala.add(2)]
    attestor = world.attestor()
    attestor.update_replicas([world.replica(s) for s in sims])
    first = await attestor.attest_now()
    second = await attestor.attest_now()
    assert all(v.ok for v in first + second), first + second
    assert {v.mode for v in first} == {"fresh"}
    assert [v.instance_id for v in first] == [s.instance_id for s in sims]
    assert len(world.verdicts) == 4  # every verdict reached the sink
    nonces = [n for s in sims for n in s.nonces]
    assert len(nonces) == 4
    assert len(set(nonces)) == 4


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (Tamper.TAMPERED_QUOTE, "bad_signature"),
        (Tamper.WRONG_INSTANCE, "wrong_instance"),
        (Tamper.STALE_NONCE, "stale_nonce"),
    ],
)
async def test_fresh_mode_refuses_a_misbehaving_replica(
    world: World, tamper: Tamper, reason: str
) -> None:
    good, bad = world.phala.add(1), world.phala.add(2)
    world.phala.quotes.set_tamper(bad.instance_id, tamper)
    attestor = world.attestor()
    attestor.update_replicas([world.replica(good), world.replica(bad)])
    verdicts = by_id(await attestor.attest_now())
    assert verdicts[good.instance_id].ok
    assert (verdicts[bad.instance_id].ok, verdicts[bad.instance_id].reason) == (False, reason)


async def test_disallowed_compose_hash_and_silent_replica_are_refused(world: World) -> None:
    good = world.phala.add(1)
    drifted = world.phala.add(2, compose_hash=OTHER_COMPOSE)
    silent = world.phala.add(3)
    silent.silent = True
    attestor = world.attestor(allowed_compose_hashes=[COMPOSE_HASH])
    attestor.update_replicas([world.replica(s) for s in (good, drifted, silent)])
    verdicts = by_id(await attestor.attest_now())
    assert verdicts[good.instance_id].ok
    assert verdicts[drifted.instance_id].reason == "compose_not_allowed"
    assert verdicts[silent.instance_id].reason == "fetch_failed"
    assert "HTTP 503" in verdicts[silent.instance_id].detail


async def test_simulated_quotes_are_refused_by_the_real_verifier(world: World) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor(verifier="dcap")
    attestor.update_replicas([world.replica(sim)])
    (verdict,) = await attestor.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "bad_signature")


async def test_guest_agent_mode_asks_the_agent_of_each_instance(world: World) -> None:
    sims = [world.phala.add(1), world.phala.add(2)]
    attestor = world.attestor(mode="guest-agent")
    attestor.update_replicas([world.replica(s) for s in sims])
    verdicts = await attestor.attest_now()
    assert [v.ok for v in verdicts] == [True, True]
    assert [v.instance_id for v in verdicts] == [s.instance_id for s in sims]


async def test_cloud_mode_makes_one_call_for_all_replicas_and_checks_app_compose(
    world: World,
) -> None:
    sims = [world.phala.add(1), world.phala.add(2), world.phala.add(3)]
    sims[2].silent = True  # stopped: the Cloud API lists it with quote null
    attestor = world.attestor(mode="cloud")
    attestor.update_replicas([world.replica(s) for s in sims])
    verdicts = by_id(await attestor.attest_now())
    assert world.phala.cloud_calls == 1
    assert verdicts[sims[0].instance_id].ok
    assert verdicts[sims[0].instance_id].compose_hash == COMPOSE_HASH
    assert verdicts[sims[1].instance_id].ok
    assert verdicts[sims[2].instance_id].reason == "fetch_failed"
    assert "no quote" in verdicts[sims[2].instance_id].detail


async def test_an_unchanged_stored_quote_is_verified_again_every_round(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = verify_module.verify_evidence

    def counting(*args: Any, **kwargs: Any) -> AttestationVerdict:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_module, "verify_evidence", counting)
    # A stored quote that does not change between rounds (the guest agent's key-bound one).
    sim = world.phala.add(1)
    quote, events = make_quote(
        APP_ID, sim.instance_id, COMPOSE_HASH, b"dip1::secp256k1c-pk:k", key=world.phala.quotes.key
    )
    world.phala.quotes.set_tamper(
        sim.instance_id, Tamper.FIXTURE, fixed=FixedQuote(quote.hex(), events)
    )
    attestor = world.attestor(mode="guest-agent")
    attestor.update_replicas([world.replica(sim)])
    first = (await attestor.attest_now())[0]
    second = (await attestor.attest_now())[0]
    assert first.ok
    assert second.ok
    assert second.at >= first.at
    # No verdict cache: expired collateral or a TCB downgrade is seen at the next round.
    assert calls == 2


async def test_new_replica_and_changed_compose_hash_attest_at_once(world: World) -> None:
    one, two = world.phala.add(1), world.phala.add(2)
    attestor = world.attestor(interval="1h")
    attestor.update_replicas([world.replica(one)])
    task = asyncio.create_task(attestor.run())
    try:
        await eventually(lambda: one.instance_id in attestor.verdicts)
        attestor.update_replicas([world.replica(one), world.replica(two)])
        await eventually(lambda: two.instance_id in attestor.verdicts)
        assert len(one.nonces) == 1  # not re-attested: its interval is 1h
        # The platform reports a new compose hash for replica one: attest it again now.
        one.compose_hash = OTHER_COMPOSE
        attestor.update_replicas([world.replica(one), world.replica(two)])
        await eventually(lambda: len(one.nonces) == 2)
        await eventually(lambda: attestor.verdicts[one.instance_id].compose_hash == OTHER_COMPOSE)
    finally:
        task.cancel()


async def test_failed_reattestation_removes_the_replica_from_routing_at_once(
    world: World,
) -> None:
    sims = [world.phala.add(1), world.phala.add(2)]
    replicas = [world.replica(s) for s in sims]
    reconciler = Reconciler(
        Policy(picker_factory=RoundRobin, attestation_required=True, attestation_max_age=60),
        in_flight=NO_LOAD,
        health_enabled=False,
    )
    reconciler.set_replicas(replicas)
    assert reconciler.current.routable == ()  # nothing admitted before attestation
    attestor = world.attestor(reconciler.set_verdict, interval="50ms")
    attestor.update_replicas(replicas)
    task = asyncio.create_task(attestor.run())
    try:
        await eventually(lambda: len(reconciler.current.routable) == 2)
        world.phala.quotes.set_tamper(sims[1].instance_id, Tamper.TAMPERED_QUOTE)
        await eventually(
            lambda: [r.id for r in reconciler.current.routable] == [sims[0].instance_id]
        )
        status = reconciler.current.by_id[sims[1].instance_id]
        assert status.reason == "unattested: bad_signature"
    finally:
        task.cancel()


async def test_cloud_api_outage_keeps_passing_verdicts_until_max_age(world: World) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor(mode="cloud")
    attestor.update_replicas([world.replica(sim)])
    (passed,) = await attestor.attest_now()
    world.phala.cloud_down = True
    (failed,) = await attestor.attest_now()
    assert (failed.ok, failed.reason) == (False, "cloud_api_unreachable")  # what `attest` prints
    published = world.verdicts[-1]
    assert published.ok
    assert published.at == passed.at  # so it still expires at max_age
    assert published.detail.startswith("last attempt: cloud_api_unreachable")


async def test_fresh_mode_silence_after_passing_fails_at_once(world: World) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor()
    attestor.update_replicas([world.replica(sim)])
    await attestor.attest_now()
    sim.silent = True
    await attestor.attest_now()
    assert (world.verdicts[-1].ok, world.verdicts[-1].reason) == (False, "fetch_failed")


async def test_oversized_answer_is_refused(world: World) -> None:
    class Huge(web.View):
        async def get(self) -> web.Response:
            return web.json_response({"quote": "00" * (600 * 1024)})

    app = web.Application()
    app.router.add_view("/.well-known/phala-router/attest", Huge)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        replica = Replica(
            id=instance(9),
            url=f"http://127.0.0.1:{port}",
            scheme="http",
            host="127.0.0.1",
            port=port,
        )
        attestor = world.attestor()
        attestor.update_replicas([replica])
        (verdict,) = await attestor.attest_now()
    finally:
        await runner.cleanup()
    assert (verdict.reason, verdict.detail) == (
        "fetch_failed",
        "quote server: answer larger than 1 MiB",
    )


async def test_an_unexpected_error_does_not_end_the_schedule(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor(interval="50ms")
    real = attestor.attest_now
    calls = 0

    async def flaky(ids: Any = None) -> list[AttestationVerdict]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return await real(ids)

    monkeypatch.setattr(attestor, "attest_now", flaky)
    attestor.update_replicas([world.replica(sim)])
    task = asyncio.create_task(attestor.run())
    try:
        await eventually(lambda: sim.instance_id in attestor.verdicts)
    finally:
        task.cancel()
    assert attestor.errors == 1


async def test_a_slow_replica_does_not_delay_another_ones_failing_verdict(world: World) -> None:
    slow, bad = world.phala.add(1), world.phala.add(2)
    slow.hold = asyncio.Event()
    world.phala.quotes.set_tamper(bad.instance_id, Tamper.TAMPERED_QUOTE)
    attestor = world.attestor()
    attestor.update_replicas([world.replica(slow), world.replica(bad)])
    round_ = asyncio.create_task(attestor.attest_now())
    await eventually(lambda: [v.replica_id for v in world.verdicts] == [bad.instance_id])
    assert not round_.done()
    slow.hold.set()
    verdicts = await round_
    assert [v.ok for v in verdicts] == [True, False]
