"""Apps that send the same Cloud API request share one poll: the simulator counts one
request per round however many apps read the app, each app still parses the answer with
its own settings and keeps its own last good set; apps with different app_ids share
nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.app import RouterApp
from router.config import load_config
from router.discovery.phala import PhalaDiscovery
from router.discovery.settings import PhalaDiscoveryConfig
from router.discovery.shared import CloudPolls
from router.simulator import SimReplicaConfig, Simulator, SimulatorConfig
from tests.support import RouterHandle, eventually, running_router

API_KEY = "phala-test-key-shared-0123456789"
ENV = {"PHALA_CLOUD_API_KEY": API_KEY}
OTHER_APP_ID = "c" * 40  # not hosted by the simulator: its answer is a 404


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        api_key=API_KEY, replicas=(SimReplicaConfig(region="us-east"), SimReplicaConfig())
    )
    async with Simulator(config) as simulator:
        yield simulator


def app(name: str, phala: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "discovery": {"phala": phala}}


def apps_on(sim: Simulator, *apps: dict[str, Any]) -> dict[str, Any]:
    section = sim.discovery_section()
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "health": {"enabled": False},
        # The shared defaults: every app reads the simulator's app with one key.
        "discovery": {
            "phala": {**section["phala"], "interval": "50ms", "max_backoff": "100ms"},
            "connect_to": section["connect_to"],
        },
        "apps": list(apps),
    }


def discoveries(router: RouterHandle) -> dict[str, PhalaDiscovery]:
    found = {router.app.apps.primary_name: router.app.discovery}
    found.update({p.name: p.plane.discovery for p in router.app.apps.planes})
    return found


async def test_apps_reading_one_app_send_one_request_per_round(sim: Simulator) -> None:
    config = apps_on(sim, app("api", {}), app("ui", {}), app("admin", {"port": 9443}))
    async with running_router(config, environ=ENV) as router:
        found = discoveries(router)
        await eventually(lambda: all(d.refresh_results["ok"] >= 10 for d in found.values()))
        rounds = found["api"].refresh_results["ok"]
        # Every app took every round; the simulator saw each round once, not once per app
        # (a round may be on the wire while we look).
        assert {d.refresh_results["ok"] for d in found.values()} == {rounds}
        assert rounds <= sim.ctx.api_requests <= rounds + 1
        # One answer, parsed by each app with its own settings: admin's replicas are
        # reached on its own port.
        api_hosts = {r.host for r in found["api"].replicas or ()}
        admin_hosts = {r.host for r in found["admin"].replicas or ()}
        assert len(api_hosts) == len(admin_hosts) == 2
        assert all("-9443" in host for host in admin_hosts)
        assert not api_hosts & admin_hosts


async def test_an_app_with_another_app_id_polls_alone_and_fails_alone(sim: Simulator) -> None:
    config = apps_on(sim, app("api", {}), app("ui", {}), app("gone", {"app_id": OTHER_APP_ID}))
    async with running_router(config, environ=ENV) as router:
        found = discoveries(router)
        await eventually(lambda: found["api"].refresh_results["ok"] >= 5)
        await eventually(lambda: found["gone"].refresh_results["error"] >= 5)
        # The 404 of "gone" is its own: the two apps on the simulator's app keep routing.
        assert found["gone"].replicas is None
        assert found["api"].state == found["ui"].state == "ok"
        assert router.app.apps.plane("ui").reconciler.current.statuses
        shared, alone = found["api"].refresh_results["ok"], found["gone"].consecutive_failures
        assert sim.ctx.api_requests <= shared + alone + 2  # two polls, each maybe mid-round


async def test_each_app_keeps_its_own_last_good_set_through_an_outage(sim: Simulator) -> None:
    config = apps_on(sim, app("api", {}), app("ui", {"empty_confirmations": 5}))
    async with running_router(config, environ=ENV) as router:
        found = discoveries(router)
        await eventually(lambda: all(d.replicas for d in found.values()))
        sim.break_api("500")
        await eventually(lambda: all(d.consecutive_failures >= 3 for d in found.values()))
        assert all(len(d.replicas or ()) == 2 for d in found.values())
        sim.break_api("ok")
        await eventually(lambda: all(d.state == "ok" for d in found.values()))


async def test_concurrent_refreshes_of_two_apps_share_one_request(sim: Simulator) -> None:
    polls = CloudPolls(environ=ENV)
    section = sim.discovery_section()["phala"]
    api = PhalaDiscoveryConfig.model_validate(section)
    admin = PhalaDiscoveryConfig.model_validate({**section, "port": 9443})
    first = PhalaDiscovery(api, lambda _: None, environ=ENV, poll=polls.poll_for(api))
    second = PhalaDiscovery(admin, lambda _: None, environ=ENV, poll=polls.poll_for(admin))
    assert len(polls) == 1
    try:
        await asyncio.gather(first.refresh(), second.refresh())
        assert sim.ctx.api_requests == 1
        # The second app's first pass takes the answer it was already handed.
        assert len(await second.first_pass()) == 2
        assert sim.ctx.api_requests == 1
    finally:
        await first.aclose()
        await second.aclose()
    assert len(polls) == 0  # the last app out closed the poll


async def test_a_reload_adds_an_app_to_the_running_poll_and_removes_one_from_it(
    sim: Simulator, tmp_path: Path
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(apps_on(sim, app("api", {}), app("ui", {}))))
    router = RouterApp(load_config(path, ENV), config_path=str(path), environ=ENV)
    await router.start()
    try:
        api = router.discovery
        assert api is not None
        await eventually(lambda: api.refresh_results["ok"] >= 3)
        # "ui" leaves, "admin" (the same request, another port) joins the poll "api" runs.
        path.write_text(yaml.safe_dump(apps_on(sim, app("api", {}), app("admin", {"port": 9443}))))
        assert router.reload().error is None
        await eventually(lambda: [p.name for p in router.apps.planes] == ["admin"])
        admin = router.apps.plane("admin").plane.discovery
        assert admin is not None
        start_requests, start_rounds = sim.ctx.api_requests, api.refresh_results["ok"]
        await eventually(lambda: admin.refresh_results["ok"] >= 5)
        rounds = api.refresh_results["ok"] - start_rounds
        assert rounds <= sim.ctx.api_requests - start_requests <= rounds + 1
        assert all("-9443" in r.host for r in admin.replicas or ())
    finally:
        await router.stop(0.5)
