"""The managed Envoy: membership changes reach it fast, it is restarted when killed, it
serves HTTP/2, it reports its view in /status, and a broken Envoy stops `serve`.

Delays are measured and printed (run with `-s` to see them); nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import httpx
import pytest

from router.errors import EnvoyStartError
from router.proxy.envoy.engine import EnvoyEngine
from tests.envoy_support import require_envoy
from tests.support import eventually, free_port, running_replica, running_router, static_config


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    require_envoy()


def envoy_config(replicas: list[tuple[str, str]], **sections: Any) -> dict[str, Any]:
    proxy = {"engine": "envoy", **sections.pop("proxy", {})}
    health = sections.pop("health", {"enabled": False})
    return static_config(replicas, proxy=proxy, health=health, **sections)


async def envoy_addresses(router: Any, admin: str | None = None) -> set[str]:
    """The endpoint addresses Envoy itself holds for the main cluster (its admin API)."""
    admin = admin or router.app.engine.process.admin_url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/clusters?format=json") as resp:
            document = await resp.json(content_type=None)
    return {
        f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}"
        for c in document.get("cluster_statuses", [])
        if c["name"] == "app"
        for h in c.get("host_statuses", [])
    }


async def measure_removal(router: Any, address: str, change: Any) -> float:
    """Seconds from the snapshot that drops `address` to Envoy no longer holding it."""
    published: list[float] = []
    router.app.reconciler.subscribe(lambda snap: published.append(time.monotonic()))
    change()

    async def gone() -> bool:
        return address not in await envoy_addresses(router)

    await eventually(gone, timeout=10, interval=0.005)
    removed = time.monotonic()
    await eventually(lambda: bool(published), timeout=10)
    return removed - published[0]


@pytest.mark.parametrize(
    ("action", "removed"),
    [
        ("drain", "a"),
        ("active_limit", "b"),  # the limit keeps the lowest ids: a stays, b goes
    ],
)
async def test_operator_actions_remove_the_endpoint_from_envoy(
    client: aiohttp.ClientSession, action: str, removed: str
) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        port = {"a": a.port, "b": b.port}
        async with running_router(envoy_config(replicas)) as router:
            assert f"127.0.0.1:{port[removed]}" in await envoy_addresses(router)

            def act() -> None:
                if action == "drain":
                    router.app.drain(removed, True)
                else:
                    router.app.set_active_limit(1)

            delay = await measure_removal(router, f"127.0.0.1:{port[removed]}", act)
            print(f"\n{action} -> gone from Envoy: {delay * 1000:.1f} ms")
            kept = ({"a", "b"} - {removed}).pop()
            seen: Counter[str] = Counter()
            for _ in range(10):
                async with client.get(f"{router.url}/x") as resp:
                    seen[(await resp.json())["replica"]] += 1
            assert seen == {kept: 10}


async def test_failing_health_removes_the_endpoint_and_load_sees_no_failure(
    client: aiohttp.ClientSession,
) -> None:
    """A replica is killed under steady GET load: health checks drop it, Envoy's retries
    cover the requests caught in between, no client sees a failure."""
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        health = {
            "interval": "100ms",
            "unhealthy_interval": "50ms",
            "unhealthy_threshold": 1,
            # A dead replica refuses at once; a generous timeout keeps the live one routable
            # on a loaded machine (else nothing is routable and the router rightly says 503).
            "timeout": "2s",
        }
        async with running_router(envoy_config(replicas, health=health)) as router:
            await eventually(lambda: len(router.app.reconciler.current.routable) == 2)
            statuses: Counter[int] = Counter()
            failures: list[bytes] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    async with client.get(f"{router.url}/x") as resp:
                        statuses[resp.status] += 1
                        body = await resp.read()
                        if resp.status != 200:
                            failures.append(body[:200])

            loaders = [asyncio.create_task(load()) for _ in range(4)]
            await eventually(lambda: statuses.total() > 20)

            async def kill_a() -> None:
                assert a.runner is not None
                await a.runner.cleanup()

            killing = asyncio.create_task(kill_a())
            delay = await measure_removal(router, f"127.0.0.1:{a.port}", lambda: None)
            await killing
            served = statuses.total()
            await eventually(lambda: statuses.total() > served + 20)
            stop.set()
            await asyncio.gather(*loaders)
            print(
                f"\nhealth failure snapshot -> gone from Envoy: {delay * 1000:.1f} ms; "
                f"{statuses.total()} requests {dict(statuses)}"
            )
            assert set(statuses) == {200}, failures


async def test_killed_envoy_is_restarted_and_traffic_resumes(
    client: aiohttp.ClientSession,
) -> None:
    async with running_replica("a") as a:
        config = envoy_config([("a", f"http://127.0.0.1:{a.port}")])
        async with running_router(config) as router:
            process = router.app.engine.process
            first_pid = process.process.pid
            killed_at = time.monotonic()
            os.kill(first_pid, signal.SIGKILL)

            async def serving() -> bool:
                try:
                    async with client.get(f"{router.url}/x") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(lambda: process.process.pid != first_pid, timeout=15)
            await eventually(serving, timeout=15, interval=0.01)
            gap = time.monotonic() - killed_at
            print(f"\nEnvoy SIGKILL -> serving again: {gap * 1000:.0f} ms")
            assert process.restarts == 1


async def test_h2_prior_knowledge_client_gets_replica_responses() -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        async with running_router(envoy_config(replicas)) as router:
            async with httpx.AsyncClient(http1=False, http2=True) as h2:
                seen = set()
                for _ in range(4):
                    resp = await h2.get(f"{router.url}/x")
                    assert resp.http_version == "HTTP/2"
                    assert resp.status_code == 200
                    seen.add(resp.json()["replica"])
                assert seen == {"a", "b"}


async def test_status_shows_envoys_view_and_the_engine(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        config = envoy_config([("a", f"http://127.0.0.1:{a.port}")])
        async with running_router(config) as router:

            async def envoy_sees_a() -> bool:
                async with client.get(f"{router.admin_url}/status") as resp:
                    status = json.loads(await resp.text())
                rows = status["envoy"]["endpoints"]
                return any(r["address"] == f"127.0.0.1:{a.port}" for r in rows)

            await eventually(envoy_sees_a, timeout=10)
            async with client.get(f"{router.admin_url}/status") as resp:
                status = json.loads(await resp.text())
            assert status["engine"] == "envoy"
            assert status["envoy"]["published_snapshot"] == router.app.reconciler.current.version


async def test_reload_changes_the_policy_live(client: aiohttp.ClientSession, tmp_path: Any) -> None:
    import yaml

    from router.app import RouterApp
    from router.config import load_config

    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        path = tmp_path / "router.yaml"
        data = envoy_config(replicas)
        path.write_text(yaml.safe_dump(data))
        app = RouterApp(load_config(str(path), {}), config_path=str(path), environ={})
        await app.start()
        try:
            engine = app.engine
            assert isinstance(engine, EnvoyEngine)
            assert engine.process is not None
            assert engine.process.process is not None
            host, port = engine.addresses[0]
            pid = engine.process.process.pid
            data["routing"] = {"sticky": {"mode": "header", "header_name": "X-User"}}
            path.write_text(yaml.safe_dump(data))
            assert app.reload().error is None

            async def sticky() -> bool:
                seen = set()
                for _ in range(6):
                    async with client.get(
                        f"http://{host}:{port}/x", headers={"X-User": "alice"}
                    ) as resp:
                        seen.add((await resp.json())["replica"])
                return len(seen) == 1

            await eventually(sticky, timeout=10)
            assert engine.process.process.pid == pid  # no restart
        finally:
            await app.stop(1.0)


async def test_envoy_that_cannot_start_stops_serve_with_its_reason() -> None:
    config = envoy_config([("a", "http://127.0.0.1:1")], proxy={"envoy": {"binary": "/bin/false"}})
    with pytest.raises(EnvoyStartError, match="exited with status 1"):
        async with running_router(config):
            pass


async def test_tls_listener_negotiates_h2_by_alpn(tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("router.test")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    async with running_replica("a") as a:
        config = envoy_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            listen=None,
            listen_tls={
                "listen": "127.0.0.1:0",
                "cert_file": str(cert_file),
                "key_file": str(key_file),
            },
        )
        async with running_router(config) as router:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            _, port = router.app.engine.addresses[0]
            async with httpx.AsyncClient(http2=True, verify=context) as h2:
                resp = await h2.get(
                    f"https://127.0.0.1:{port}/x", extensions={"sni_hostname": "router.test"}
                )
            assert resp.http_version == "HTTP/2"
            assert resp.json()["replica"] == "a"
            assert resp.json()["headers"]["X-Forwarded-Proto"] == "https"


async def test_second_envoy_subscribes_over_xds_and_serves_the_same_routing(
    client: aiohttp.ClientSession, tmp_path: Any
) -> None:
    from router.proxy.envoy.bootstrap import ads_bootstrap
    from router.proxy.envoy.process import EnvoyProcess
    from router.proxy.envoy.settings import EnvoyConfig

    xds = f"127.0.0.1:{free_port()}"
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        config = envoy_config(replicas, proxy={"envoy": {"xds_listen": xds}})
        async with running_router(config) as router:
            path = tmp_path / "bootstrap.json"
            path.write_text(json.dumps(ads_bootstrap("127.0.0.1:0", xds, node_id="edge-2")))
            second = EnvoyProcess(EnvoyConfig(), path, drain_seconds=1)
            await second.start()
            try:
                admin = second.admin_url
                both = {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}

                async def holds(expected: set[str]) -> bool:
                    return await envoy_addresses(router, admin) == expected

                await eventually(lambda: holds(both), timeout=10)
                drained_at = time.monotonic()
                router.app.drain("a", True)
                await eventually(lambda: holds({f"127.0.0.1:{b.port}"}), timeout=10, interval=0.005)
                print(
                    f"\ndrain -> gone from the xDS-fed Envoy: "
                    f"{(time.monotonic() - drained_at) * 1000:.1f} ms"
                )
                # Both Envoys listen on the same port (SO_REUSEPORT); new connections spread.
                for _ in range(30):
                    async with aiohttp.ClientSession() as fresh:
                        async with fresh.get(f"{router.url}/x") as resp:
                            assert (await resp.json())["replica"] == "b"
                async with client.get(f"{admin}/stats?filter=downstream_rq_total&format=json") as r:
                    stats = await r.json(content_type=None)
                served = sum(
                    s.get("value", 0)
                    for s in stats["stats"]
                    if s["name"].startswith("http.untrusted-http.")
                )
                assert served > 0
            finally:
                await second.stop(1.0)


async def test_metrics_serve_router_and_envoy_series(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        async with running_router(envoy_config([("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.get(f"{router.url}/x") as resp:
                assert resp.status == 200
            async with client.get(f"{router.admin_url}/metrics") as resp:
                text = await resp.text()
            assert "router_replicas" in text
            assert "envoy_cluster_upstream_rq_total" in text
