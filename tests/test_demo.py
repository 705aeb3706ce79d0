"""`make demo`: the router in front of the simulated Phala Cloud answers, rotating over the
running replicas, and geo routing sends clients from different countries to different regions."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from router.app import RouterApp
from router.demo import run_demo
from router.simulator import Simulator
from tests.support import eventually


async def test_demo_rotates_over_running_replicas_and_explains_the_stopped_one() -> None:
    stop = asyncio.Event()
    started: dict[str, Any] = {}

    def ready(app: RouterApp, sim: Simulator) -> None:
        started["app"], started["sim"] = app, sim

    demo = asyncio.create_task(run_demo(port=0, admin_port=0, stop=stop, ready=ready, policy="geo"))
    try:
        await eventually(lambda: "app" in started or demo.done(), timeout=20)
        app: RouterApp = started["app"]
        host, port = app.engine.addresses[0]
        url = f"http://{host}:{port}/"
        await eventually(lambda: len(app.reconciler.current.routable) == 3, timeout=20)
        async with aiohttp.ClientSession() as client:
            regions = {}
            for country in ("DE", "US"):
                async with client.get(url, headers={"CF-IPCountry": country}) as resp:
                    assert resp.status == 200
                    regions[country] = (await resp.json())["region"]
            assert regions == {"DE": "eu-west", "US": "us-east"}
            async with client.get(f"http://127.0.0.1:{app.admin.port}/status") as resp:
                rows = (await resp.json())["replicas"]
        stopped = [r for r in rows if not r["routable"]]
        assert [r["reason"] for r in stopped] == ["platform:stopped"]
        await two_apps_answer(app, url)
    finally:
        stop.set()
        await asyncio.wait_for(demo, 20)


async def two_apps_answer(app: RouterApp, url: str) -> None:
    """The demo's second app, ui, answers on the same listener for Host ui.localhost."""
    (ui,) = app.apps.planes
    await eventually(lambda: len(ui.reconciler.current.routable) == 2, timeout=20)
    ui_ids = {s.replica.id for s in ui.reconciler.current.statuses}
    api_ids = {s.replica.id for s in app.reconciler.current.statuses}
    async with aiohttp.ClientSession() as client:
        for host, ids in (("ui.localhost", ui_ids), ("api.localhost:8080", api_ids)):
            async with client.get(url, headers={"Host": host}) as resp:
                assert resp.status == 200
                assert (await resp.json())["replica"] in ids, host
        async with client.get(url, headers={"Host": "other.example"}) as resp:
            assert resp.status == 200  # api is the default app
