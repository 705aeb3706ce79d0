"""Replica faults behind the simulated dstack gateway over TLS, as on Phala Cloud: the router
always reaches the gateway, and a stopped replica shows up as a connection the gateway closes
without an answer. Idempotent requests are retried elsewhere; the replica stops getting
traffic once health checks or passive ejection notice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.simulator import Simulator, SimulatorConfig
from tests.reliability_support import AttemptLog, Result, run_load
from tests.support import RouterHandle, eventually, running_router

API_KEY = "gateway-test-key"
IDEMPOTENT = ("GET", "HEAD", "PUT", "DELETE")


@pytest.fixture
async def cloud() -> AsyncIterator[Simulator]:
    config = SimulatorConfig.model_validate(
        {"api_key": API_KEY, "tls": True, "replicas": [{"region": "us-east"}] * 4}
    )
    async with Simulator(config) as sim:
        yield sim


def config_for(sim: Simulator, engine: str, base_ejection: str = "30s") -> dict[str, Any]:
    overlay = sim.router_overlay()
    overlay["discovery"]["phala"].update({"interval": 0.2, "timeout": "500ms"})
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        **overlay,
        "proxy": {"engine": engine, "connect_timeout": "500ms", "response_timeout": "2s"},
        "health": {
            "interval": "100ms",
            "unhealthy_interval": "50ms",
            "timeout": "300ms",
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
            "passive": {"consecutive_failures": 3, "base_ejection": base_ejection},
        },
    }


def routable(router: RouterHandle) -> set[str]:
    return {r.id for r in router.app.reconciler.current.routable}


async def test_a_replica_stopped_behind_the_gateway_fails_no_idempotent_request(
    cloud: Simulator, engine: str
) -> None:
    environ = {"PHALA_CLOUD_API_KEY": API_KEY}
    async with running_router(config_for(cloud, engine), environ=environ) as router:
        log = AttemptLog()
        router.app.observers.observers.append(log)
        await eventually(lambda: len(routable(router)) == 4)
        victim = cloud.replicas[1].instance_id
        stopped: list[float] = []
        answered = [0]

        async def stop_after_100(result: Result) -> None:
            answered[0] += 1
            if answered[0] == 100:
                stopped.append(time.monotonic())
                await cloud.stop_replica(victim)

        load = await run_load(
            router.url,
            clients=6,
            method_of=lambda n: IDEMPOTENT[n % 4],
            until=lambda: answered[0] >= 400,
            on_result=stop_after_100,
        )
    assert load.failures() == [], load.failures()[:3]
    last = log.last_to(victim)
    assert last is not None
    assert last - stopped[0] < 1.0
    assert victim not in {r.replica for r in load.results if r.started > stopped[0] + 1.0}


async def test_a_rolling_restart_behind_the_gateway_fails_no_idempotent_request(
    cloud: Simulator, engine: str
) -> None:
    environ = {"PHALA_CLOUD_API_KEY": API_KEY}
    config = config_for(cloud, engine, base_ejection="100ms")
    async with running_router(config, environ=environ) as router:
        await eventually(lambda: len(routable(router)) == 4)
        done = asyncio.Event()

        async def roll() -> None:
            for replica in cloud.replicas:
                ident = replica.instance_id
                await cloud.stop_replica(ident)
                await eventually(lambda: ident not in routable(router))  # noqa: B023
                await cloud.start_replica(ident)
                await eventually(lambda: ident in routable(router), 10)  # noqa: B023
            done.set()

        roller = asyncio.create_task(roll())
        load = await run_load(
            router.url, clients=6, method_of=lambda n: IDEMPOTENT[n % 4], until=done.is_set
        )
        await roller
    assert load.failures() == [], load.failures()[:3]
    assert len({r.replica for r in load.results if r.replica}) == 4


async def test_a_gateway_502_for_a_stopped_replica_is_retried_elsewhere(engine: str) -> None:
    """Plain-HTTP gateway: once the replica is stopped, the gateway answers 502 for it. With
    health checks and passive ejection off and discovery slow, the router keeps picking it,
    so every idempotent request that lands there must be moved by the gateway-error rule."""
    config_sim = SimulatorConfig.model_validate(
        {"api_key": API_KEY, "tls": False, "replicas": [{"region": "us-east"}] * 2}
    )
    async with Simulator(config_sim) as sim:
        config = config_for(sim, engine)
        config["discovery"]["phala"]["interval"] = 3600
        config["health"] = {"enabled": False, "passive": {"enabled": False}}
        environ = {"PHALA_CLOUD_API_KEY": API_KEY}
        async with running_router(config, environ=environ) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 2)
            victim = sim.replicas[0].instance_id
            await sim.stop_replica(victim)
            load = await run_load(
                router.url,
                clients=2,
                method_of=lambda n: IDEMPOTENT[n % 4],
                until=lambda: False,
                max_requests=40,
            )
    assert load.failures() == [], load.failures()[:3]
    gateway_errors = [a for a in log.attempts if a.replica == victim and a.kind == "gateway_error"]
    assert len(gateway_errors) >= 10  # about half the requests first went to the victim
