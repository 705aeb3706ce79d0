"""The wiring the CLI uses: `dns render` (from a snapshot or a running router's admin API)
and `DnsService` (feed + sinks + server) for `serve`."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.zone
import pytest
from aiohttp import web

from router.balancing.round_robin import RoundRobin
from router.dns.service import (
    DnsService,
    render_from_admin,
    render_snapshot,
)
from router.dns.settings import DnsConfig
from router.errors import ConfigError, DnsRenderError
from router.models import HealthView, Replica, ReplicaState
from router.reconciler import Reconciler
from router.snapshot import Policy
from router.status import status_document
from tests.support import eventually

APP = "d" * 40


def replica(n: int) -> Replica:
    host = f"{n:040x}-8080.dstack.test"
    return Replica(
        id=f"r{n}", url=f"https://{host}", scheme="https", host=host, port=443, app_id=APP
    )


def gateway(host: str) -> tuple[str, int] | None:
    """`discovery.connect_to`: every replica sits behind one gateway address."""
    return ("198.51.100.7", 443) if host.endswith(".dstack.test") else None


def reconciler_with(healthy: list[int], unhealthy: list[int]) -> Reconciler:
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
    reconciler.set_replicas([replica(n) for n in healthy + unhealthy])
    for n in healthy:
        reconciler.set_health(f"r{n}", HealthView(state=ReplicaState.HEALTHY))
    for n in unhealthy:
        reconciler.set_health(f"r{n}", HealthView(state=ReplicaState.UNHEALTHY))
    reconciler.rebuild()
    return reconciler


CFG = DnsConfig(name="api.example.test", service="https", txt_app_address=True)


async def test_render_snapshot_notes_the_shared_gateway() -> None:
    snapshot = reconciler_with([1, 2], [3]).current
    text, notes = await render_snapshot(
        CFG, snapshot, "json", app_id=APP, pinned=gateway, rng=random.Random(1)
    )
    rows = json.loads(text)
    assert {(r["type"], r["value"]) for r in rows if r["type"] == "A"} == {("A", "198.51.100.7")}
    srv_targets = {r["value"].split()[-1] for r in rows if r["type"] == "SRV"}
    assert srv_targets == {f"{replica(n).host}." for n in (1, 2)}
    assert {r["value"] for r in rows if r["type"] == "TXT"} == {f'"{APP}:8080"'}
    assert any("shared by 2 replicas" in n for n in notes)


async def test_render_needs_a_name() -> None:
    with pytest.raises(ConfigError, match=r"dns\.name"):
        await render_snapshot(DnsConfig(), reconciler_with([1], []).current, "zone")


@pytest.fixture
async def admin() -> AsyncIterator[str]:
    """A stand-in admin listener serving the real /status document of a snapshot."""
    reconciler = reconciler_with([1], [2])

    async def status(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "unauthorized"}, status=401)
        document = status_document(
            reconciler.current,
            now=0.0,
            to_wall=lambda t: t,
            health=reconciler.health_of,
            verdicts=reconciler.verdict_of,
            in_flight={},
            facts={"app_id": APP},
        )
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_render_from_a_running_routers_admin_api(admin: str) -> None:
    text, _ = await render_from_admin(CFG, admin, "zone", token="s3cret", pinned=gateway)
    zone = dns.zone.from_text(text, origin="example.test.", relativize=False, check_origin=False)
    srv = zone.find_rdataset("_https._tcp.api.example.test.", "SRV")
    assert {r.target.to_text() for r in srv} == {f"{replica(1).host}."}  # r2 is unhealthy
    txt = zone.find_rdataset("_dstack-app-address.api.example.test.", "TXT")
    assert next(iter(txt)).strings == (f"{APP}:8080".encode(),)


async def test_render_from_admin_explains_failures(admin: str) -> None:
    with pytest.raises(DnsRenderError, match="401"):
        await render_from_admin(CFG, admin, "zone")
    with pytest.raises(DnsRenderError, match="cannot reach"):
        await render_from_admin(CFG, "http://127.0.0.1:1", "zone")


async def test_dns_service_runs_the_sink_and_the_server_together(tmp_path: Path) -> None:
    path = tmp_path / "api.yaml"
    cfg = DnsConfig(
        name="api.example.test",
        zone="example.test",
        service="https",
        min_interval=0,
        sinks=[{"type": "file", "path": str(path), "format": "octodns"}],
        server={"listen": "127.0.0.1:0"},
    )
    reconciler = reconciler_with([1, 2], [])
    service = DnsService(cfg, reconciler, app_id=APP, pinned=gateway)
    await service.start()
    try:
        assert service.server is not None
        assert service.server.address is not None
        port = service.server.address[1]
        await eventually(path.exists)
        assert "198.51.100.7" in path.read_text()
        query = dns.message.make_query("api.example.test.", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
        assert {rd.to_text() for rd in answer.answer[0]} == {"198.51.100.7"}
        reconciler.set_health("r1", HealthView(state=ReplicaState.UNHEALTHY), urgent=True)
        srv_query = dns.message.make_query("_https._tcp.api.example.test.", "SRV")
        srv = await dns.asyncquery.tcp(srv_query, "127.0.0.1", port=port, timeout=2)
        assert {rd.target.to_text() for rd in srv.answer[0]} == {f"{replica(2).host}."}
        await eventually(lambda: replica(1).host not in path.read_text())
    finally:
        await service.stop()
