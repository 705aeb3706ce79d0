"""`attestation.connection: ra-tls` end to end, in both engines: simulated RA-TLS replicas
(their own key, a simulator-signed quote binding it) reached through a simulated gateway TLS
passthrough (it routes by SNI and relays raw bytes). A refused peer receives no request byte
after the handshake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation.simsig import public_key_bytes
from router.simulator.passthrough import Passthrough
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Behaviour, Identity, RaTlsServer, SimCa
from tests.support import eventually, running_router, static_config

APP = "ab" * 20
COMPOSE = "cd" * 32
QUOTE_KEY = ec.generate_private_key(ec.SECP256R1())
ENGINES = ["fast", "aiohttp"]


def identity(n: int) -> Identity:
    return Identity(APP, f"{n:02d}" * 20, COMPOSE)


@asynccontextmanager
async def replicas(
    *specs: tuple[str, Behaviour], ca: SimCa | None = None, first: int = 1
) -> AsyncIterator[list[RaTlsServer]]:
    servers: list[RaTlsServer] = []
    routes: dict[str, int] = {}
    gateway = Passthrough(routes)
    await gateway.start()
    for n, (name, behaviour) in enumerate(specs, start=first):
        host = f"{identity(n).instance_id}-8443s.dstack.test"
        server = RaTlsServer(
            name, identity(n), QUOTE_KEY, behaviour=behaviour, ca=ca, host=host,
            impersonate=identity(99),
        )  # fmt: skip
        await server.start()
        routes[host] = server.port
        server.gateway_port = gateway.port
        servers.append(server)
    try:
        yield servers
    finally:
        await gateway.stop()
        for server in servers:
            await server.stop()


def router_config(engine: str, servers: list[RaTlsServer], **attestation: Any) -> dict[str, Any]:
    config = static_config(
        [(s.identity.instance_id, f"https://{s.host}:8443") for s in servers],
        proxy={"engine": engine, "retries": 2},
        health={"interval": "0.2s", "healthy_threshold": 1, "timeout": "2s"},
        attestation={
            "connection": "ra-tls",
            "verifier": "insecure-simulator",
            "simulator_public_keys": [public_key_bytes(QUOTE_KEY.public_key()).hex()],
            "app_id": APP,
            "allowed_compose_hashes": [COMPOSE],
            "os_measurements": [simulated_os_measurement()],
            **attestation,
        },
    )
    # Every replica host dials the passthrough, which picks the CVM by SNI.
    config["discovery"]["connect_to"] = {s.host: f"127.0.0.1:{s.gateway_port}" for s in servers}
    return config


async def status_of(admin_url: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin_url}/status") as response:
            data = await response.json()
    return {r["id"]: r for r in data["replicas"]}


async def get_many(url: str, count: int) -> list[tuple[int, str]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"{url}/x") as response:
                answers.append((response.status, await response.text()))
    return answers


@pytest.mark.parametrize("engine", ENGINES)
async def test_attested_replicas_get_traffic_and_a_mitm_gets_no_request_byte(engine: str) -> None:
    async with replicas(("good", "ok"), ("mitm", "plain"), ("legacy", "legacy")) as servers:
        good, mitm, legacy = servers
        async with running_router(router_config(engine, servers)) as router:
            await eventually(lambda: good.requests > 0 and legacy.requests > 0, timeout=10)
            answers = await get_many(router.url, 12)
            assert all(status == 200 for status, _ in answers)
            bodies = {body for _, body in answers}
            assert bodies <= {"replica good", "replica legacy"}

            async def mitm_refused() -> bool:
                found = await status_of(router.admin_url)
                return "ra_tls_no_attestation" in found[mitm.identity.instance_id]["reason"]

            await eventually(mitm_refused, timeout=10)
        assert mitm.handshakes > 0  # the router did reach it, and refused it
        assert mitm.bytes_after_handshake() == 0
        assert mitm.requests == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_another_instances_certificate_and_another_key_are_refused(engine: str) -> None:
    specs: tuple[tuple[str, Behaviour], ...] = (
        ("good", "ok"),
        ("thief", "other_instance"),
        ("rebound", "other_key"),
    )
    async with replicas(*specs) as servers:
        good, thief, rebound = servers
        async with running_router(router_config(engine, servers)) as router:
            await eventually(lambda: good.requests > 0, timeout=10)

            async def both_refused() -> bool:
                found = await status_of(router.admin_url)
                reasons = [found[s.identity.instance_id]["reason"] for s in (thief, rebound)]
                return "ra_tls_wrong_instance" in reasons[0] and (
                    "ra_tls_key_binding_mismatch" in reasons[1]
                )

            await eventually(both_refused, timeout=10)
            answers = await get_many(router.url, 6)
            assert {body for _, body in answers} == {"replica good"}
        assert thief.bytes_after_handshake() == 0
        assert rebound.bytes_after_handshake() == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_rotated_key_is_verified_again_and_a_bad_rotation_removes_the_replica(
    engine: str,
) -> None:
    async with replicas(("one", "ok")) as servers:
        (one,) = servers
        async with running_router(router_config(engine, servers)) as router:
            gate = router.app.ratls_gate
            await eventually(lambda: one.requests > 0, timeout=10)
            before = gate.verifications
            one.rotate("ok")
            # New connections (health probes dial each round) meet the new key: verified again.
            await eventually(lambda: gate.verifications > before, timeout=10)
            assert (await get_many(router.url, 2))[0][0] == 200
            one.rotate("other_key")
            rid = one.identity.instance_id

            async def refused() -> bool:
                return "key_binding_mismatch" in (await status_of(router.admin_url))[rid]["reason"]

            await eventually(refused, timeout=10)
            proxied = b"".join(one.received).count(b"GET /x")
            answers = await get_many(router.url, 3)
            assert {status for status, _ in answers} == {503}
            assert b"".join(one.received).count(b"GET /x") == proxied


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_data_planes_connect_step_refuses_and_the_request_moves_on(engine: str) -> None:
    """Probes are rare here: the first new traffic connection meets the rotated, unbound
    key; it is closed before a byte is written, the replica is marked at once, and the
    request is answered by the other replica."""
    async with replicas(("a", "ok"), ("b", "ok")) as servers:
        a = servers[0]
        config = router_config(engine, servers)
        config["health"] = {"interval": "60s", "healthy_threshold": 1, "timeout": "2s"}
        async with running_router(config) as router:

            async def both_routable() -> bool:
                found = await status_of(router.admin_url)
                return all(found[s.identity.instance_id]["routable"] for s in servers)

            await eventually(both_routable, timeout=10)
            a.rotate("other_key")
            before = a.requests
            answers = await get_many(router.url, 4)
            assert answers == [(200, "replica b")] * 4
            assert a.requests == before
            found = await status_of(router.admin_url)
            assert "ra_tls_key_binding_mismatch" in found[a.identity.instance_id]["reason"]


async def test_a_pinned_kms_root_checks_the_chain_and_the_key_provider(tmp_path: Path) -> None:
    """`attestation.kms_root`: the chain must lead to the pinned root and the attested
    key-provider event must name it. A replica with a valid quote under another CA is refused."""
    kms = SimCa("simulated KMS root")
    root = tmp_path / "kms-root.pem"
    root.write_bytes(kms.pem())
    async with (
        replicas(("good", "ok"), ca=kms) as pinned,
        replicas(("rogue", "ok"), first=7) as other,
    ):
        rogue = other[0]  # a valid quote for its own instance, under another CA
        servers = [*pinned, rogue]
        config = router_config("fast", servers, kms_root=str(root))
        async with running_router(config) as router:
            await eventually(lambda: pinned[0].requests > 0, timeout=10)
            answers = await get_many(router.url, 4)
            assert {body for _, body in answers} == {"replica good"}
            found = await status_of(router.admin_url)
            assert not found[rogue.identity.instance_id]["routable"]
        assert rogue.bytes_after_handshake() == 0
