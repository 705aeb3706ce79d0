"""RA-TLS under Envoy: Envoy cannot verify quotes, so each endpoint's TLS context pins the
key the router's RA-TLS gate verified. A replica that rotates its key gets no request byte
from Envoy until the router has verified the new key; then traffic comes back."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import pytest

from router.attestation.ratls_cert import spki_der, spki_digest
from router.simulator.ratls import RaTlsServer
from tests.envoy_support import require_envoy
from tests.support import eventually, running_router
from tests.test_ratls_e2e import get_many, replicas, router_config, status_of


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    require_envoy()


async def envoy_stats(router: Any, prefix: str) -> dict[str, int]:
    admin = router.app.engine.process.admin_url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/stats?filter=^{prefix}") as response:
            text = await response.text()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats


async def leaf_of(server: RaTlsServer) -> bytes:
    """The certificate a new connection to the replica (through its gateway) shows."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", server.gateway_port, ssl=context, server_hostname=server.host
    )
    der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return der


async def test_envoy_only_talks_to_the_key_the_router_attested() -> None:
    async with replicas(("a", "ok"), ("b", "ok"), ("mitm", "plain")) as servers:
        a, _, mitm = servers
        config = router_config("envoy", servers)
        # Probes are rare: only the check below verifies a rotated key. Idle upstream
        # connections close fast, so Envoy dials again after the rotation.
        config["health"] = {"interval": "60s", "healthy_threshold": 1, "timeout": "2s"}
        config["proxy"]["idle_timeout"] = "100ms"
        async with running_router(config) as router:
            gate = router.app.ratls_gate
            ids = [s.identity.instance_id for s in servers]

            async def both_routable() -> bool:
                found = await status_of(router.admin_url)
                return bool(found[ids[0]]["routable"] and found[ids[1]]["routable"])

            await eventually(both_routable, timeout=10)
            assert gate.pins[ids[0]] == spki_digest(spki_der(a.leaf))
            assert ids[2] not in gate.pins  # the MITM's certificate never verified
            bodies = {body for _, body in await get_many(router.url, 8)}
            assert bodies == {"replica a", "replica b"}
            # both sit behind one gateway address: Envoy holds them as two tunnelled hosts
            # (while only one of them was routable it was alone at its address and dialled
            # directly; Envoy's view settles on the tunnels once both are published)
            tunnelled = {f"phala-tunnel/{i}" for i in ids[:2]}

            def addresses() -> set[str]:
                return {e["address"] for e in router.app.engine.endpoints_view}

            await eventually(lambda: tunnelled <= addresses(), timeout=5)

            a.rotate("ok")  # a valid new key the router has not seen yet
            served_by_a = a.requests

            async def idle() -> bool:
                stats = await envoy_stats(router, "cluster.app.upstream_cx_active")
                return stats.get("cluster.app.upstream_cx_active", 1) == 0

            await eventually(idle, timeout=10)
            answers = await get_many(router.url, 8)
            assert answers == [(200, "replica b")] * 8
            assert a.requests == served_by_a  # not one request on the unverified key
            # Envoy did dial a and refused the handshake on the key (the pin did that)
            refused = await envoy_stats(router, "cluster.app.ssl.fail_verify_cert_hash")
            assert refused["cluster.app.ssl.fail_verify_cert_hash"] > 0

            # The router meets the new key on a connection of its own (as a health probe
            # does) and verifies it: the pin moves and Envoy follows.
            assert await gate.check(a.host, 8443, await leaf_of(a)) is None
            assert gate.pins[ids[0]] == spki_digest(spki_der(a.leaf))

            async def a_serves_again() -> bool:
                return "replica a" in {body for _, body in await get_many(router.url, 4)}

            await eventually(a_serves_again, timeout=10)
        assert mitm.bytes_after_handshake() == 0
