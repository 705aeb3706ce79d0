"""/metrics as operators of HAProxy, Envoy or Traefik expect it: process and runtime series,
bytes, connections, overload rejections, reloads, certificate expiry, sub-millisecond
latency; and /admin/config, the running config without secret values."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import aiohttp
import trustme
import yaml

from router.app import RouterApp
from router.config import load_config
from router.metrics import Metrics
from router.proxy.base import RequestRecord
from tests.support import running_replica, running_router, static_config
from tests.test_metrics import parse, record, replica, scrape, snapshot, value


def test_process_and_python_series_and_build_info() -> None:
    metrics = Metrics({}, version="9.8.7")
    s = scrape(metrics)
    names = {name for name, _ in s}
    assert {"process_resident_memory_bytes", "process_start_time_seconds"} <= names
    assert "process_open_fds" in names
    assert any(n.startswith("python_gc_") for n in names)
    assert any(n == "python_info" for n in names)
    assert value(s, "router_build_info", version="9.8.7") == 1


def test_the_lowest_latency_bucket_is_below_a_millisecond() -> None:
    a = replica("a")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.request_done(record(a, upstream=0.0002, total=0.0004))
    s = scrape(metrics)
    total = "router_request_total_duration_seconds_bucket"
    upstream = "router_request_duration_seconds_bucket"
    assert value(s, upstream, replica="a", region="eu", le="0.00025") == 1
    assert value(s, total, replica="a", region="eu", le="0.00025") == 0
    assert value(s, total, replica="a", region="eu", le="0.0005") == 1


def test_overload_rejections_and_router_answered_failures() -> None:
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([replica("a")]))
    for _ in range(3):
        metrics.request_done(_failed("overloaded", 503))
    metrics.request_done(_failed("no_healthy_replica", 503))
    s = scrape(metrics)
    assert value(s, "router_overload_rejections_total") == 3
    assert value(s, "router_failed_requests_total", code="overloaded") == 3
    assert value(s, "router_failed_requests_total", code="no_healthy_replica") == 1


def _failed(code: str, status: int) -> RequestRecord:
    return dataclasses.replace(record(None, status=status, upstream=None), error=code)


def test_reload_count_last_success_and_last_error() -> None:
    wall = [1_700_000_000.0]
    metrics = Metrics({}, wall=lambda: wall[0])
    s = scrape(metrics)
    assert value(s, "router_config_reloads_total", result="ok") == 0
    assert value(s, "router_config_last_reload_successful") == 1
    metrics.reload_done(None)
    wall[0] += 60
    metrics.reload_done("proxy.retries: must be >= 0\nmore detail")
    s = scrape(metrics)
    assert value(s, "router_config_reloads_total", result="ok") == 1
    assert value(s, "router_config_reloads_total", result="error") == 1
    assert value(s, "router_config_last_reload_success_timestamp_seconds") == 1_700_000_000
    assert value(s, "router_config_last_reload_successful") == 0
    error = "router_config_last_reload_error_info"
    assert value(s, error, error="proxy.retries: must be >= 0") == 1
    metrics.reload_done(None)
    s = scrape(metrics)
    assert value(s, "router_config_last_reload_successful") == 1
    assert not [n for n, _ in s if n == error]


async def test_bytes_and_client_connections_are_counted(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        cfg = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            proxy={"engine": engine},
        )
        async with running_router(cfg) as router:
            # Two client connections: one session keeps its connection, the other is new.
            for _ in range(3):
                async with client.post(f"{router.url}/x", data=b"0123456789") as resp:
                    body = await resp.read()
            async with aiohttp.ClientSession() as other:
                async with other.get(f"{router.url}/y") as resp:
                    more = await resp.read()
            async with client.get(f"{router.admin_url}/metrics") as resp:
                s = parse(await resp.text())
    assert value(s, "router_client_received_bytes_total") == 30
    assert value(s, "router_client_sent_bytes_total") == 3 * len(body) + len(more)
    assert value(s, "router_client_connections_accepted_total") == 2
    assert value(s, "router_client_connections") == 1  # `client` still holds its connection


async def test_reloads_through_the_app_reach_metrics_and_status(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    path = tmp_path / "router.yaml"
    cfg = static_config([("a", "http://127.0.0.1:9")], health={"enabled": False})
    path.write_text(yaml.safe_dump(cfg))
    app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
    await app.start()
    try:
        assert app.reload().error is None
        path.write_text("proxy: {retries: -1}\n" + yaml.safe_dump(cfg))
        assert app.reload().error is not None
        s = parse(app.metrics.render()[0].decode())
        status = app.status()
        addresses = app.engine.addresses
    finally:
        await app.stop(0.5)
    assert value(s, "router_config_reloads_total", result="ok") == 1
    assert value(s, "router_config_reloads_total", result="error") == 1
    assert status["last_reload"]["error"]
    assert status["uptime_seconds"] >= 0
    assert status["version"]
    assert status["listeners"] == [f"http://{h}:{p}" for h, p in addresses]


async def test_listener_certificate_expiry_is_exported(
    engine: str, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    ca = trustme.CA()
    expires = datetime.datetime(2031, 5, 4, 3, 2, 1, tzinfo=datetime.UTC)
    cert = ca.issue_cert("router.test", not_after=expires)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cfg = static_config(
        [("a", "http://127.0.0.1:9")],
        health={"enabled": False},
        proxy={"engine": engine},
        listen_tls={
            "listen": "127.0.0.1:0",
            "cert_file": str(cert_file),
            "key_file": str(key_file),
        },
    )
    async with running_router(cfg) as router:
        async with client.get(f"{router.admin_url}/metrics") as resp:
            s = parse(await resp.text())
        status = router.app.status()
    name = "router_listener_certificate_expiry_timestamp_seconds"
    assert value(s, name, listener="tls") == expires.timestamp()
    assert status["certificate_expires_at"] == expires.timestamp()


async def test_admin_config_shows_variable_names_never_secret_values(
    client: aiohttp.ClientSession,
) -> None:
    secrets = {
        "TEST_ADMIN_TOKEN": "admin-Secret-Value-1",
        "TEST_STICKY_KEY": "sticky-Secret-Value-2",
    }
    auth = {"Authorization": f"Bearer {secrets['TEST_ADMIN_TOKEN']}"}
    cfg = static_config(
        [("a", "http://127.0.0.1:9")],
        health={"enabled": False},
        admin={"token_env": "TEST_ADMIN_TOKEN"},
        routing={"sticky": {"mode": "cookie", "key_env": "TEST_STICKY_KEY"}},
    )
    async with running_router(cfg, environ=secrets) as router:
        url = f"{router.admin_url}/admin/config"
        async with client.get(url) as resp:
            assert resp.status == 401
        async with client.get(url, headers=auth) as resp:
            assert resp.status == 200
            text = await resp.text()
    document = json.loads(text)
    for secret in secrets.values():
        assert secret not in text
    assert document["admin"]["token_env"] == "TEST_ADMIN_TOKEN"
    assert document["routing"]["sticky"]["key_env"] == "TEST_STICKY_KEY"
    assert document["routing"]["sticky"]["mode"] == "cookie"
    assert document["discovery"]["static"][0]["id"] == "a"
