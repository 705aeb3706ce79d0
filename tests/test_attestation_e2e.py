"""Attestation-gated admission end to end: the real router (discovery, attestation, proxy,
admin) in front of the real simulator, in each mode (cloud, guest-agent, fresh), with
`verifier: insecure-simulator` trusting the simulator's key.

Attested replicas get traffic; a replica whose quote is bad, of another instance, of a
disallowed compose, made for an old nonce, or missing gets none and `/status` says why; a
failed re-attestation removes a replica under load with no request started after the
verdict reaching it. Active health checks are off so that attestation alone decides.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from router.simulator import Simulator, SimulatorConfig
from router.simulator.settings import AttestationKnob, SimReplicaConfig
from router.simulator.state import default_compose, sha256_hex
from router.snapshot import Snapshot
from tests.support import RouterHandle, eventually, running_router

API_KEY = "e2e-key"
ENV_NAME = "PHALA_CLOUD_API_KEY"
MODES = ["cloud", "guest-agent", "fresh"]
DEFAULT_COMPOSE_HASH = sha256_hex(default_compose("sim-app"))
OTHER_COMPOSE = default_compose("sim-app").replace("sim/app:1", "sim/app:2")


@dataclass
class Stack:
    sim: Simulator
    router: RouterHandle
    session: aiohttp.ClientSession
    ids: list[str] = field(default_factory=list)

    async def status(self) -> dict[str, Any]:
        async with self.session.get(self.router.admin_url + "/status") as response:
            assert response.status == 200
            document: dict[str, Any] = await response.json()
            return document

    async def replica_status(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in (await self.status())["replicas"]}

    async def send(self, count: int) -> Counter[str]:
        answered: Counter[str] = Counter()
        for _ in range(count):
            async with self.session.get(self.router.url + "/") as response:
                assert response.status == 200, await response.text()
                answered[(await response.json())["replica"]] += 1
        return answered

    async def all_attested(self) -> bool:
        """Every replica has a verdict (passing or not)."""
        replicas = (await self.status())["replicas"]
        return len(replicas) == len(self.ids) and all(r["attestation"] for r in replicas)


@asynccontextmanager
async def stack(
    mode: str,
    replicas: list[SimReplicaConfig],
    *,
    trust: str = "config",
    sim_config: SimulatorConfig | None = None,
    **attestation: Any,
) -> AsyncIterator[Stack]:
    """The simulator with `replicas` and the router in front, attesting in `mode`.
    `trust`: "config" (simulator_public_keys), "argument" (RouterApp's
    trusted_simulator_keys) or "other" (another simulator's key)."""
    sim = Simulator(
        sim_config or SimulatorConfig(api_key=API_KEY, attestation=True, replicas=tuple(replicas))
    )
    await sim.start()
    try:
        section = sim.attestation_section(
            mode, **{"interval": 0.2, "max_age": 2.0, "timeout": 0.5, **attestation}
        )
        keys: frozenset[bytes] = frozenset()
        if trust == "argument":
            keys = frozenset({sim.quote_public_key})
            del section["simulator_public_keys"]
        elif trust == "other":
            section["simulator_public_keys"] = [Simulator().quote_public_key.hex()]
        overlay = sim.router_overlay()
        overlay["discovery"]["phala"]["interval"] = 0.2
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            **overlay,
            "health": {"enabled": False},
            "attestation": section,
        }
        async with (
            running_router(
                config, environ={ENV_NAME: sim.config.api_key}, trusted_simulator_keys=keys
            ) as router,
            aiohttp.ClientSession() as session,
        ):
            yield Stack(sim, router, session, [r.instance_id for r in sim.replicas])
    finally:
        await sim.stop()


def routable(s: Stack, replica_id: str) -> bool:
    return any(r.id == replica_id for r in s.router.app.reconciler.current.routable)


def good(n: int) -> list[SimReplicaConfig]:
    return [SimReplicaConfig(region=f"region-{i}") for i in range(n)]


# What each misbehaving replica is refused for, per mode. stale_nonce is a failure only in
# fresh mode: the stored quotes of cloud and guest-agent bind no nonce at all.
FAULTS: dict[str, dict[str, str]] = {
    "tampered_quote": dict.fromkeys(MODES, "bad_signature"),
    "wrong_instance": dict.fromkeys(MODES, "wrong_instance"),
    "hang": dict.fromkeys(MODES, "fetch_failed"),
    "missing": dict.fromkeys(MODES, "fetch_failed"),
    "stale_nonce": {"fresh": "stale_nonce"},
    # Issue 16's attacks: each refused with its own reason, in every mode.
    "other_app": dict.fromkeys(MODES, "wrong_app"),
    "evil_os": dict.fromkeys(MODES, "os_measurement_mismatch"),
    "debug_td": dict.fromkeys(MODES, "debug_td"),
    "signer_seam": dict.fromkeys(MODES, "mr_signer_seam"),
    "local_key_provider": dict.fromkeys(MODES, "key_provider_not_allowed"),
    "garbage": dict.fromkeys(MODES, "malformed_quote"),
    "sgx": dict.fromkeys(MODES, "not_tdx"),
}


@pytest.mark.parametrize("mode", MODES)
async def test_only_attested_replicas_get_traffic_and_status_says_why(mode: str) -> None:
    faults = [knob for knob, reasons in FAULTS.items() if mode in reasons]
    replicas = good(2) + [
        SimReplicaConfig(region=f"bad-{knob}", attestation=knob) for knob in faults
    ]
    replicas.append(SimReplicaConfig(region="bad-compose", app_compose=OTHER_COMPOSE))
    async with stack(mode, replicas, allowed_compose_hashes=[DEFAULT_COMPOSE_HASH]) as s:
        await eventually(s.all_attested, timeout=5)
        statuses = await s.replica_status()
        good_ids = set(s.ids[:2])
        expected = {s.ids[2 + i]: FAULTS[knob][mode] for i, knob in enumerate(faults)}
        expected[s.ids[-1]] = "compose_not_allowed"
        for rid, reason in expected.items():
            status = statuses[rid]
            assert status["routable"] is False
            assert status["reason"] == f"unattested: {reason}", status
            assert status["attestation"]["reason"] == reason
            assert status["attestation"]["mode"] == mode
            assert status["attestation"]["detail"]  # says what was wrong, not just a code
        for rid in good_ids:
            assert statuses[rid]["routable"] is True
            verdict = statuses[rid]["attestation"]
            assert (verdict["ok"], verdict["reason"], verdict["tcb_status"]) == (
                True,
                "ok",
                "UpToDate",
            )
            assert verdict["compose_hash"] == DEFAULT_COMPOSE_HASH
            assert "simulated" in verdict["detail"]
            assert verdict["checks"] == {
                "os": "ok (simulated-dstack)",
                "app": "ok",
                "instance": "ok",
                "compose": "ok",
                "key_provider": "ok",
                "fresh": "ok" if mode == "fresh" else "unchecked",
            }

        answered = await s.send(12)
        assert set(answered) == good_ids
        served = {r.instance_id: r.served for r in s.sim.replicas}
        assert all(served[rid] == 0 for rid in expected), served


UNDER_LOAD: list[tuple[str, AttestationKnob, str]] = [
    *((mode, "tampered_quote", "bad_signature") for mode in MODES),
    ("fresh", "evil_os", "os_measurement_mismatch"),
    ("cloud", "garbage", "malformed_quote"),
    ("guest-agent", "sgx", "not_tdx"),
    ("cloud", "other_app", "wrong_app"),
]


@pytest.mark.parametrize(("mode", "knob", "reason"), UNDER_LOAD)
async def test_failed_reattestation_removes_a_replica_under_load(
    mode: str, knob: AttestationKnob, reason: str
) -> None:
    # Generous fetch timeout and max_age: under CPU load a slow quote answer must not make
    # every replica fail (the test is about the one failing verdict, not about timeouts).
    async with stack(mode, good(3), interval=0.2, max_age=4.0, timeout=2.0) as s:
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 3, timeout=5)
        victim = s.ids[1]
        started = 0  # requests sent so far, numbered from 1
        published_at: int | None = None  # requests started before the failing verdict

        def on_snapshot(snapshot: Snapshot) -> None:
            # Runs synchronously when the reconciler publishes: any request started after
            # this point reads this snapshot or a later one.
            nonlocal published_at
            status = next(st for st in snapshot.statuses if st.replica.id == victim)
            if published_at is None and not status.routable:
                published_at = started

        s.router.app.reconciler.subscribe(on_snapshot)
        answers: list[tuple[int, str]] = []
        done = asyncio.Event()

        async def worker() -> None:
            nonlocal started
            while not done.is_set():
                started += 1
                number = started
                async with s.session.get(s.router.url + "/") as response:
                    assert response.status == 200, await response.text()
                    answers.append((number, (await response.json())["replica"]))

        def enough_after_verdict() -> bool:
            return published_at is not None and sum(n > published_at for n, _ in answers) >= 60

        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(worker()) for _ in range(4)]
            await eventually(lambda: any(r == victim for _, r in answers), timeout=5)
            s.sim.set_attestation(victim, knob)
            try:
                await eventually(enough_after_verdict, timeout=5)
            finally:
                done.set()
        assert all(w.done() for w in workers)

        assert published_at is not None
        late = [(n, r) for n, r in answers if n > published_at and r == victim]
        assert late == [], f"requests started after the verdict reached {victim}: {late}"
        assert {r for n, r in answers if n > published_at} == {s.ids[0], s.ids[2]}
        status = (await s.replica_status())[victim]
        # Removed at once, never kept as a source outage (garbage and SGX quotes included).
        assert status["reason"] == f"unattested: {reason}"


@pytest.mark.parametrize("mode", MODES)
async def test_a_replica_comes_back_when_its_attestation_passes_again(mode: str) -> None:
    async with stack(mode, good(2), interval=0.2) as s:
        victim = s.ids[0]
        s.sim.set_attestation(victim, "wrong_instance")
        await eventually(s.all_attested, timeout=5)
        assert (await s.replica_status())[victim]["reason"] == "unattested: wrong_instance"
        s.sim.set_attestation(victim, "ok")
        await eventually(lambda: routable(s, victim), timeout=5)
        assert victim in await s.send(4)


@pytest.mark.parametrize("mode", MODES)
async def test_a_replica_that_stops_giving_its_quote_is_removed_at_once(mode: str) -> None:
    """Fail closed: only the Cloud API or the PCCS being unreachable is an outage a passing
    verdict survives; a replica (or the API) answering without its quote is removed."""
    async with stack(mode, good(2), interval=0.2, max_age=0.8) as s:
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 2, timeout=5)
        victim = s.ids[0]
        s.sim.set_attestation(victim, "missing")
        await eventually(lambda: not routable(s, victim), timeout=5)
        status = (await s.replica_status())[victim]
        assert status["reason"] == "unattested: fetch_failed"
        assert set(await s.send(4)) == {s.ids[1]}


async def test_a_compose_change_reattests_at_once_and_a_disallowed_one_loses_traffic() -> None:
    # A long interval: only discovery's report of the new compose hash can trigger this.
    async with stack(
        "fresh", good(2), interval=60, max_age=120, allowed_compose_hashes=[DEFAULT_COMPOSE_HASH]
    ) as s:
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 2, timeout=5)
        victim = s.ids[1]
        s.sim.set_app_compose(victim, OTHER_COMPOSE)
        await eventually(lambda: not routable(s, victim), timeout=5)
        status = (await s.replica_status())[victim]
        assert status["reason"] == "unattested: compose_not_allowed"
        assert status["compose_hash"] == sha256_hex(OTHER_COMPOSE)
        assert set(await s.send(4)) == {s.ids[0]}


@pytest.mark.parametrize("mode", MODES)
async def test_compose_drift_is_shown_with_measured_hashes(mode: str) -> None:
    # allowed_compose_hashes unset: every hash the Cloud API reports is allowed, so both
    # versions serve, and the drift between them is what /status must show.
    async with stack(mode, good(3)) as s:
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 3, timeout=5)
        document = await s.status()
        assert (document["drift"], document["compose_hashes"]) == (
            False,
            {DEFAULT_COMPOSE_HASH: 3},
        )
        changed = s.ids[2]
        s.sim.set_app_compose(changed, OTHER_COMPOSE)
        new_hash = sha256_hex(OTHER_COMPOSE)

        async def measured_new_hash() -> bool:
            verdict = (await s.replica_status())[changed]["attestation"]
            return bool(verdict["ok"] and verdict["compose_hash"] == new_hash)

        await eventually(measured_new_hash, timeout=5)
        document = await s.status()
        assert document["drift"] is True
        assert document["compose_hashes"] == {DEFAULT_COMPOSE_HASH: 2, new_hash: 1}
        assert document["routable_count"] == 3


@pytest.mark.parametrize("trust", ["other", "dcap"])
async def test_quotes_signed_by_an_untrusted_key_admit_nobody(trust: str) -> None:
    """Fail closed: a router that does not trust this simulator's key (another key, or the
    real Intel verifier) admits no replica and answers 503."""
    extra: dict[str, Any] = {"verifier": "dcap"} if trust == "dcap" else {}
    async with stack(
        "fresh", good(2), trust="other" if trust == "other" else "config", **extra
    ) as s:
        await eventually(s.all_attested, timeout=5)
        for status in (await s.replica_status()).values():
            assert status["reason"] == "unattested: bad_signature"
        async with s.session.get(s.router.url + "/") as response:
            assert response.status == 503
        assert all(r.served == 0 for r in s.sim.replicas)


@pytest.mark.parametrize("mode", MODES)
async def test_the_demo_cloud_attests_through_its_tls_gateway(mode: str) -> None:
    """What `phala-router demo --attestation <mode>` runs: 4 replicas behind a TLS gateway,
    one stopped; the 3 running ones are attested and share the traffic."""
    sim_config = SimulatorConfig.demo(tls=True, attestation=True)
    async with stack(mode, [], sim_config=sim_config) as s:
        running = {r.instance_id for r in s.sim.replicas if r.status == "running"}
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 3, timeout=5)
        assert set(await s.send(6)) == running
        for rid in running:
            assert (await s.replica_status())[rid]["attestation"]["ok"] is True


async def test_keys_passed_to_the_app_are_trusted_like_configured_ones() -> None:
    async with stack("guest-agent", good(2), trust="argument") as s:
        await eventually(lambda: len(s.router.app.reconciler.current.routable) == 2, timeout=5)
        assert set(await s.send(4)) == set(s.ids)


async def test_attestation_answers_of_a_simulated_replica_follow_its_knob() -> None:
    """The replica-side endpoints as a client sees them through the gateway."""
    config = SimulatorConfig(api_key=API_KEY, attestation=True, replicas=tuple(good(1)))
    async with Simulator(config) as sim:
        rid = sim.replicas[0].instance_id
        gateway = f"http://{sim.gateway_address}"
        fresh = f"{gateway}{sim.ctx.fresh_path}?nonce={'ab' * 32}"
        agent = f"{gateway}/prpc/GetAttestationForAppKey"
        app_host = {"Host": sim.host_of(rid)}
        agent_host = {"Host": sim.host_of(rid, sim.config.guest_agent_port)}
        # The gateway routes a connection by its first Host: no reuse across hosts.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(fresh, headers=app_host) as response:
                body = await response.json()
                assert response.status == 200
                assert {"quote", "event_log", "report_data", "vm_config"} <= set(body)
                assert json.loads(body["event_log"])
            async with session.post(agent, headers=agent_host, json={}) as response:
                body = await response.json()
                assert response.status == 200
                assert "report_data" in body, body
                assert bytes.fromhex(body["report_data"]).startswith(b"dip1::secp256k1c-pk:")
            sim.set_attestation(rid, "missing")
            async with session.get(fresh, headers=app_host) as response:
                assert response.status == 404
            async with session.post(agent, headers=agent_host, json={}) as response:
                assert response.status == 404
            url = f"{sim.api_url}/apps/{sim.config.app_id}/attestations"
            async with session.get(url) as response:
                (instance,) = (await response.json())["instances"]
                assert instance["quote"] is None
                assert instance["error"]
