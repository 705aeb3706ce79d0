"""One simulated cloud hosting several apps: the Cloud API answers for each app_id with that
app's replicas only (an app it does not host is 404), the gateway's app URL reaches only the
app's own replicas, quotes name each replica's own app, and one router serves both apps from
it with attestation on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.simulator import SimAppConfig, SimReplicaConfig, Simulator, SimulatorConfig
from tests.support import eventually, running_router

KEY = {"X-API-Key": "sim-api-key"}
UI = "5e" * 20


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        replicas=(SimReplicaConfig(region="us-east"), SimReplicaConfig(region="eu-west")),
        apps=(SimAppConfig(app_id="app_" + UI, app_name="ui", replicas=(SimReplicaConfig(),)),),
        attestation=True,
    )
    async with Simulator(config) as simulator:
        yield simulator


async def cvms(sim: Simulator, app_id: str) -> tuple[int, list[dict[str, str]]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.api_url}/apps/{app_id}/cvms", headers=KEY) as response:
            body = await response.json()
            return response.status, body if response.status == 200 else []


async def test_the_cloud_api_answers_for_each_app_with_its_own_replicas(sim: Simulator) -> None:
    first, ui = sim.app_ids
    assert ui == UI
    status, api_records = await cvms(sim, first)
    assert status == 200
    assert len(api_records) == 2
    assert {r["app_id"] for r in api_records} == {first}
    status, ui_records = await cvms(sim, "app_" + ui)
    assert status == 200
    assert [(r["app_id"], r["name"]) for r in ui_records] == [(ui, "ui")]
    assert not {r["instance_id"] for r in ui_records} & {r["instance_id"] for r in api_records}
    assert (await cvms(sim, "77" * 20))[0] == 404


async def test_the_control_api_adds_a_replica_to_the_app_named(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.control_url}/replicas"
        async with session.post(url, params={"app_id": UI}, json={"region": "ap"}) as response:
            assert response.status == 201
            assert (await response.json())["app_id"] == UI
        async with session.post(url, params={"app_id": "88" * 20}, json={}) as response:
            assert response.status == 400
            assert "hosts no app" in (await response.json())["error"]
    assert len((await cvms(sim, UI))[1]) == 2


async def test_one_router_serves_both_apps_of_one_simulator_with_attestation(
    sim: Simulator,
) -> None:
    apps = [
        {
            "name": name,
            "hosts": [f"{name}.localhost"],
            "discovery": {"phala": {"app_id": app_id}},
            "attestation": sim.attestation_section("fresh", app_id=app_id),
        }
        for name, app_id in zip(("api", "ui"), sim.app_ids, strict=True)
    ]
    config = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        **sim.router_overlay(),
        "health": {"interval": "100ms", "timeout": "1s"},
        "apps": apps,
    }
    environ = {"PHALA_CLOUD_API_KEY": sim.config.api_key}
    async with running_router(config, environ=environ) as router:
        app = router.app
        planes = {"api": app.reconciler, "ui": app.apps.plane("ui").reconciler}
        await eventually(
            lambda: (
                (len(planes["api"].current.routable), len(planes["ui"].current.routable)) == (2, 1)
            ),
            timeout=10,
        )
        served: dict[str, set[str]] = {"api.localhost": set(), "ui.localhost": set()}
        async with aiohttp.ClientSession() as client:
            for host, seen in served.items():
                for _ in range(4):
                    async with client.get(router.url, headers={"Host": host}) as response:
                        assert response.status == 200
                        seen.add((await response.json())["replica"])
    by_app = {
        app_id: {r.instance_id for r in sim.ctx.replicas_of(app_id)} for app_id in sim.app_ids
    }
    first, ui = sim.app_ids
    assert served["api.localhost"] == by_app[first]
    assert served["ui.localhost"] == by_app[ui]
