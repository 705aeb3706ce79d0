"""`make demo`: the router in front of the simulated Phala Cloud answers, rotating over the
running replicas, and geo routing sends clients from different countries to different regions."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from router.app import RouterApp
from router.demo import run_demo
from router.demo_ratls import RaTlsCloud, run_ra_tls_demo
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


async def test_ra_tls_demo_sends_traffic_only_over_verified_sessions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make demo ARGS='--attestation ra-tls'`: the honest CVMs get traffic, the man in the
    middle gets no request byte, the impostor is refused, and the banner says what is proven."""
    stop = asyncio.Event()
    started: dict[str, Any] = {}

    def ready(app: RouterApp, cloud: RaTlsCloud) -> None:
        started["app"], started["cloud"] = app, cloud

    demo = asyncio.create_task(run_ra_tls_demo(port=0, admin_port=0, stop=stop, ready=ready))
    try:
        await eventually(lambda: "app" in started or demo.done(), timeout=20)
        app: RouterApp = started["app"]
        cloud: RaTlsCloud = started["cloud"]
        await eventually(lambda: len(app.reconciler.current.routable) == 2, timeout=20)

        def refused() -> dict[str, str]:
            return {r["id"]: r["reason"] for r in app.status()["replicas"] if not r["routable"]}

        # The refusals land when each one's first health probe dialled it.
        await eventually(lambda: "ra_tls" in refused().get("impostor", ""), timeout=20)
        await eventually(lambda: "ra_tls" in refused().get("mitm", ""), timeout=20)
        host, port = app.engine.addresses[0]
        async with aiohttp.ClientSession() as client:
            answers = set()
            for _ in range(6):
                async with client.get(f"http://{host}:{port}/") as resp:
                    assert resp.status == 200
                    answers.add(await resp.text())
            assert answers == {"replica eu-1", "replica us-1"}
            async with client.get(f"http://127.0.0.1:{app.admin.port}/status") as resp:
                rows = {r["id"]: r for r in (await resp.json())["replicas"]}
        assert "ra_tls_no_attestation" in rows["mitm"]["reason"]
        assert "ra_tls_wrong_instance" in rows["impostor"]["reason"]
        by_name = {s.name: s for s in cloud.servers}
        assert by_name["mitm"].bytes_after_handshake() == 0
        assert by_name["impostor"].bytes_after_handshake() == 0
        banner = capsys.readouterr().out
        assert "attestation.connection: ra-tls" in banner
        assert "THIS replica's instance" in banner
    finally:
        stop.set()
        await asyncio.wait_for(demo, 20)
