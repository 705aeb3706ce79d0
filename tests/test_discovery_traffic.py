"""Discovery feeding the reconciler, and traffic sent to the snapshot's routable replicas
through the simulator's gateway (as the data plane dials them via `connect_to`): stopped and
in-progress replicas get none, an added replica gets some within an interval, and a broken
Cloud API leaves every request served by the last good set. Health checking is off here so
the snapshot reflects discovery alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from router.balancing.base import RequestContext
from router.balancing.round_robin import RoundRobin
from router.discovery.phala import PhalaDiscovery
from router.discovery.settings import PhalaDiscoveryConfig
from router.reach import client_ssl_context, make_connector
from router.reconciler import Reconciler
from router.simulator import Simulator, SimulatorConfig
from router.snapshot import Policy
from tests.support import eventually

ENV = {"PHALA_CLOUD_API_KEY": "traffic-key"}


@dataclass
class Stack:
    sim: Simulator
    reconciler: Reconciler
    discovery: PhalaDiscovery
    session: aiohttp.ClientSession

    async def send(self, count: int) -> Counter[str]:
        """`count` requests, each to the snapshot's next pick; answers counted by replica."""
        answered: Counter[str] = Counter()
        for _ in range(count):
            snapshot = self.reconciler.current
            replica = next(snapshot.picker.candidates(RequestContext(client_ip="127.0.0.1")))
            async with self.session.get(replica.url + "/") as response:
                assert response.status == 200
                answered[(await response.json())["replica"]] += 1
        return answered


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    config = SimulatorConfig.demo(api_key="traffic-key", tls=request.param)
    async with Simulator(config) as sim:
        cfg = PhalaDiscoveryConfig.model_validate(
            {**sim.discovery_section()["phala"], "interval": 0.05, "timeout": 0.5}
        )
        # In-flight counts: round-robin does not read them (typed loosely, as the InFlight
        # interface is being reshaped on main).
        in_flight: Any = {}
        reconciler = Reconciler(Policy(picker_factory=RoundRobin), in_flight, health_enabled=False)
        discovery = PhalaDiscovery(cfg, reconciler.set_replicas, environ=ENV)
        await discovery.first_pass()
        task = asyncio.create_task(discovery.run())
        tls = client_ssl_context(ca_file=sim.ca_file)
        async with aiohttp.ClientSession(connector=make_connector(sim.connect_to, tls)) as session:
            yield Stack(sim, reconciler, discovery, session)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reconciler.close()


async def test_only_running_replicas_get_traffic(stack: Stack) -> None:
    sim = stack.sim
    booting = sim.replicas[1]
    sim.set_status(booting.instance_id, "running", in_progress=True)
    await eventually(lambda: len(stack.reconciler.current.routable) == 2)

    answered = await stack.send(8)
    running = {sim.replicas[0].instance_id, sim.replicas[2].instance_id}
    assert set(answered) == running
    assert sorted(answered.values()) == [4, 4]  # round-robin over the two
    statuses = {s.replica.id: s.reason for s in stack.reconciler.current.statuses}
    assert statuses[booting.instance_id] == "platform:starting (in_progress)"
    assert statuses[sim.replicas[3].instance_id] == "platform:stopped"


async def test_an_added_replica_gets_traffic_within_an_interval(stack: Stack) -> None:
    added = await stack.sim.add_replica(region="eu-west", node="node-eu-2")
    await eventually(lambda: added.instance_id in stack.reconciler.current.by_id)
    assert added.instance_id in await stack.send(8)


@pytest.mark.parametrize("mode", ["500", "timeout", "garbage", "429"])
async def test_a_broken_cloud_api_leaves_traffic_on_the_last_good_set(
    stack: Stack, mode: str
) -> None:
    before = await stack.send(6)
    stack.sim.break_api(mode)
    failures = sum(stack.discovery.refresh_results.values()) - stack.discovery.refresh_results["ok"]
    await eventually(
        lambda: (
            sum(stack.discovery.refresh_results.values()) - stack.discovery.refresh_results["ok"]
            > failures
        ),
    )
    assert await stack.send(6) == before
