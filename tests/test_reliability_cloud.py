"""The Cloud API down for a whole run (errors, hangs, garbage): traffic through the simulated
gateway goes on with the last good replica set and no failed request; once the API is back,
a replica added during the outage is picked up at the first pass, within one interval."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.simulator import Simulator, SimulatorConfig
from tests.reliability_support import run_load
from tests.support import RouterHandle, eventually, running_router

API_KEY = "outage-test-key"
INTERVAL = 0.2


@pytest.fixture
async def cloud() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig.demo(api_key=API_KEY)) as sim:
        yield sim


def config_for(sim: Simulator, engine: str) -> dict[str, Any]:
    overlay = sim.router_overlay()
    # Backoff capped at one interval: with the default cap (300 s) a long outage delays
    # the first pass after recovery by up to that long (see bench/README.md).
    overlay["discovery"]["phala"].update(
        {
            "interval": INTERVAL,
            "timeout": "300ms",
        }  # default max_backoff: recovery within one interval
    )
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        **overlay,
        "proxy": {"engine": engine, "connect_timeout": "500ms", "response_timeout": "2s"},
        "health": {"interval": "100ms", "unhealthy_interval": "50ms", "timeout": "300ms"},
    }


def known(router: RouterHandle) -> set[str]:
    return set(router.app.reconciler.current.by_id)


@pytest.mark.parametrize("mode", ["500", "timeout", "garbage", "invalid"])
async def test_a_cloud_api_outage_fails_no_request_and_recovery_is_picked_up_within_an_interval(
    cloud: Simulator, engine: str, mode: str
) -> None:
    environ = {"PHALA_CLOUD_API_KEY": API_KEY}
    async with running_router(config_for(cloud, engine), environ=environ) as router:
        running = {r.instance_id for r in cloud.replicas if r.status == "running"}
        await eventually(lambda: {r.id for r in router.app.reconciler.current.routable} == running)
        discovery = router.app.discovery
        failed_before = discovery.consecutive_failures

        cloud.break_api(mode)
        await eventually(lambda: discovery.consecutive_failures >= failed_before + 2)
        added = await cloud.add_replica(region="eu-west", node="node-eu-9")
        load = await run_load(router.url, clients=4, until=lambda: False, max_requests=200)
        assert load.failures() == [], load.failures()[:3]
        assert set(load.by_replica()) == running
        assert added.instance_id not in known(router)  # nobody could have told the router

        recovered = time.monotonic()
        cloud.break_api("ok")
        await eventually(lambda: added.instance_id in known(router), timeout=5)
        assert time.monotonic() - recovered <= INTERVAL + 0.15
        await eventually(
            lambda: added.instance_id in {r.id for r in router.app.reconciler.current.routable}
        )
        load = await run_load(router.url, clients=4, until=lambda: False, max_requests=100)
        assert load.failures() == []
        assert added.instance_id in load.by_replica()


async def test_routing_never_waits_on_a_hanging_cloud_api(cloud: Simulator, engine: str) -> None:
    """Discovery runs beside the data plane: a hung API call delays no request."""
    environ = {"PHALA_CLOUD_API_KEY": API_KEY}
    async with running_router(config_for(cloud, engine), environ=environ) as router:
        await eventually(lambda: len(router.app.reconciler.current.routable) == 3)
        cloud.break_api("timeout")
        load = await run_load(router.url, clients=4, until=lambda: False, max_requests=100)
        assert load.failures() == []
        assert load.latency_p(1.0) < 0.25
