"""Sources: URL building, Cloud API errors, and real Intel-signed quotes through the gate
(a fake Cloud API serving the dstack fixture; collateral from an offline file)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from router.attestation.fetch import base_domain_of, fresh_url, instance_id_of
from router.attestation.manager import Attestor
from router.attestation.settings import AttestationConfig, FreshConfig
from router.models import AttestationVerdict, Replica
from tests.attestation_support import (
    DSTACK,
    DSTACK_APP_ID,
    DSTACK_COLLATERAL,
    DSTACK_COMPOSE_HASH,
    DSTACK_INSTANCE_ID,
    fixture_json,
    fixture_path,
    pccs_app,
    pinned_now,
    serve,
)

NONCE = bytes(range(32))


def gateway_replica(instance_id: str = DSTACK_INSTANCE_ID, **extra: Any) -> Replica:
    host = f"{instance_id}-8080.dstack-prod5.phala.network"
    return Replica(
        id=instance_id,
        url=f"https://{host}",
        scheme="https",
        host=host,
        port=443,
        app_id=DSTACK_APP_ID,
        compose_hash=DSTACK_COMPOSE_HASH,
        **extra,
    )


def test_fresh_url_keeps_the_replica_origin_and_sends_the_nonce_as_hex() -> None:
    url = fresh_url(gateway_replica(), FreshConfig(), NONCE)
    assert url == (
        f"https://{DSTACK_INSTANCE_ID}-8080.dstack-prod5.phala.network"
        f"/.well-known/phala-router/attest?nonce={NONCE.hex()}"
    )


def test_fresh_port_goes_into_a_gateway_host_name_and_into_the_port_otherwise() -> None:
    gateway = fresh_url(gateway_replica(), FreshConfig(path="/attest", port=9000), NONCE)
    assert gateway.startswith(
        f"https://{DSTACK_INSTANCE_ID}-9000.dstack-prod5.phala.network/attest?"
    )
    plain = Replica(id="r1", url="http://10.0.0.5:8080", scheme="http", host="10.0.0.5", port=8080)
    assert fresh_url(plain, FreshConfig(path="/attest", port=9000), NONCE).startswith(
        "http://10.0.0.5:9000/attest?nonce="
    )


def test_instance_id_and_base_domain_come_from_metadata_or_the_record() -> None:
    assert instance_id_of(gateway_replica()) == DSTACK_INSTANCE_ID
    assert base_domain_of(gateway_replica()) == "dstack-prod5.phala.network"
    static = Replica(id="r1", url="http://a.example", scheme="http", host="a.example", port=80)
    assert instance_id_of(static) is None  # a static id is not an instance id: not bound
    tagged = gateway_replica(metadata={"instance_id": "AB" * 20, "base_domain": "gw.example"})
    assert instance_id_of(tagged) == "ab" * 20
    assert base_domain_of(tagged) == "gw.example"


class CloudApi:
    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {}

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def cloud_api() -> AsyncIterator[tuple[CloudApi, httpx.AsyncClient]]:
    api = CloudApi()
    app = web.Application()
    app.router.add_get("/apps/{app_id}/attestations", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}") as client:
        yield api, client
    await runner.cleanup()


def dstack_instance() -> dict[str, Any]:
    data = fixture_json(DSTACK)
    return {
        "instance_id": DSTACK_INSTANCE_ID,
        "vm_uuid": "3f2a0000-0000-0000-0000-000000000001",
        "status": "running",
        "quote": data["quote"],
        "tcb_info": {"event_log": json.loads(data["event_log"])},
    }


def attestor(client: httpx.AsyncClient, verdicts: list[AttestationVerdict], **cfg: Any) -> Attestor:
    # The fixture's keys come from `local-sgx`, not a KMS: allowed here on purpose.
    config = AttestationConfig.model_validate(
        {"mode": "cloud", "allowed_key_providers": ["kms", "local-sgx"], **cfg}
    )
    return Attestor(
        config,
        DSTACK_APP_ID,
        verdicts.append,
        cloud=client,
        wall_clock=lambda: float(pinned_now(DSTACK_COLLATERAL)),
    )


async def test_real_quote_from_the_cloud_api_passes_the_gate(
    cloud_api: tuple[CloudApi, httpx.AsyncClient],
) -> None:
    api, client = cloud_api
    api.body = {"app_id": DSTACK_APP_ID, "instances": [dstack_instance()]}
    verdicts: list[AttestationVerdict] = []
    gate = attestor(
        client,
        verdicts,
        collateral={"pccs_url": None, "file": str(fixture_path(DSTACK_COLLATERAL))},
    )
    gate.update_replicas([gateway_replica()])
    (verdict,) = await gate.attest_now()
    assert verdict.ok, verdict
    assert verdict.tcb_status == "UpToDate"
    assert verdict.compose_hash == DSTACK_COMPOSE_HASH
    assert verdicts == [verdict]


async def test_real_quote_without_collateral_stays_unattested(
    cloud_api: tuple[CloudApi, httpx.AsyncClient],
) -> None:
    api, client = cloud_api
    api.body = {"app_id": DSTACK_APP_ID, "instances": [dstack_instance()]}
    gate = attestor(client, [], collateral={"pccs_url": None})
    gate.update_replicas([gateway_replica()])
    (verdict,) = await gate.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "no_collateral")


async def test_real_quote_is_bound_to_its_replica(
    cloud_api: tuple[CloudApi, httpx.AsyncClient],
) -> None:
    """The Cloud API lists the fixture's quote under another replica's vm_uuid."""
    api, client = cloud_api
    other = "0f" * 20
    api.body = {"instances": [{**dstack_instance(), "instance_id": other}]}
    gate = attestor(
        client, [], collateral={"pccs_url": None, "file": str(fixture_path(DSTACK_COLLATERAL))}
    )
    gate.update_replicas([gateway_replica(other)])
    (verdict,) = await gate.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "wrong_instance")


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, {"error": "boom"}, "HTTP 500"),
        (200, {"unexpected": True}, "no instances list"),
        (200, {"instances": []}, "lists no attestation for this replica"),
    ],
)
async def test_cloud_api_failures_name_their_cause(
    cloud_api: tuple[CloudApi, httpx.AsyncClient], status: int, body: Any, detail: str
) -> None:
    api, client = cloud_api
    api.status, api.body = status, body
    gate = attestor(client, [])
    gate.update_replicas([gateway_replica()])
    (verdict,) = await gate.attest_now()
    # Only an unreachable API is an outage; an answer without this replica's quote is not.
    reason = "cloud_api_unreachable" if status >= 500 else "fetch_failed"
    assert (verdict.ok, verdict.reason) == (False, reason)
    assert detail in verdict.detail


async def test_real_quote_passes_with_collateral_fetched_from_a_pccs(
    cloud_api: tuple[CloudApi, httpx.AsyncClient], tmp_path: Path
) -> None:
    api, client = cloud_api
    api.body = {"app_id": DSTACK_APP_ID, "instances": [dstack_instance()]}
    app, asked = pccs_app(DSTACK_COLLATERAL)
    async with serve(app) as pccs_url:
        gate = attestor(client, [], collateral={"pccs_url": pccs_url, "cache_dir": str(tmp_path)})
        gate.update_replicas([gateway_replica()])
        (verdict,) = await gate.attest_now()
    assert verdict.ok, verdict
    assert asked  # the collateral came from our PCCS
