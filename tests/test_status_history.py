"""/status remembers time in state and the last minutes of request and error rates."""

from __future__ import annotations

import dataclasses

import aiohttp

from router.models import HealthView, ReplicaState
from router.status_history import StatusHistory
from tests.support import running_replica, running_router, static_config
from tests.test_metrics import FakeClock, replica, snapshot


def test_time_in_state_restarts_only_when_the_state_changes() -> None:
    wall = FakeClock()
    history = StatusHistory(dict, clock=wall, wall=wall)
    a, b = replica("a"), replica("b")
    history.on_snapshot(snapshot([a, b]))
    wall.now += 30
    history.on_snapshot(snapshot([a, b], version=2))  # same states: clocks keep running
    wall.now += 30
    stopped = dataclasses.replace(b, platform_status="stopped")
    history.on_snapshot(snapshot([a, stopped], version=3))
    wall.now += 5
    document = history.annotate({"replicas": [{"id": "a"}, {"id": "b"}, {"id": "gone"}]})
    rows = {row["id"]: row for row in document["replicas"]}
    assert rows["a"]["state_seconds"] == 65
    assert rows["b"]["state_seconds"] == 5
    assert rows["gone"]["state_seconds"] is None


def test_history_holds_per_interval_rates_and_error_ratios() -> None:
    clock = FakeClock()
    totals: dict[str, tuple[int, int]] = {}
    history = StatusHistory(lambda: totals, clock=clock, wall=clock, interval=10, points=3)
    history.sample()
    for requests, errors in [(100, 0), (300, 20), (300, 20), (500, 20), (600, 70)]:
        clock.now += 10
        totals["a"] = (requests, errors)
        history.sample()
    rates, ratios = history.series("a")
    assert rates == [0.0, 20.0, 10.0]  # only the last 3 intervals are kept
    assert ratios == [0.0, 0.0, 0.5]
    assert history.series("unknown") == ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])


async def test_status_json_carries_what_the_page_shows(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        cfg = static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False})
        async with running_router(cfg) as router:
            for _ in range(4):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
            router.app.history.sample()
            async with client.get(f"{router.admin_url}/status") as resp:
                document = await resp.json()
            host, port = router.app.engine.addresses[0]
    assert document["version"]
    assert document["uptime_seconds"] >= 0
    assert document["listeners"] == [f"http://{host}:{port}"]
    assert document["last_reload"] is None
    assert document["certificate_expires_at"] is None
    assert document["verifier"] is None  # attestation is off
    (row,) = document["replicas"]
    assert row["state_seconds"] >= 0
    assert row["history"]["interval_seconds"] == 10
    assert row["history"]["requests_per_second"][-1] > 0


def test_health_views_do_not_confuse_the_state_clock() -> None:
    wall = FakeClock()
    history = StatusHistory(dict, clock=wall, wall=wall)
    a = replica("a")
    history.on_snapshot(snapshot([a], health={"a": HealthView(state=ReplicaState.UNHEALTHY)}))
    wall.now += 7
    history.on_snapshot(
        snapshot([a], health={"a": HealthView(state=ReplicaState.HEALTHY)}, version=2)
    )
    wall.now += 3
    (row,) = history.annotate({"replicas": [{"id": "a"}]})["replicas"]
    assert row["state_seconds"] == 3
