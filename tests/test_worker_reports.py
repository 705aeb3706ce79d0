"""With `proxy.workers > 1`, /metrics and /status count the requests of every worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from router.metrics import Metrics
from router.worker_reports import Report, ReportInbox, encode_report, merge_families
from tests.support import eventually, free_port, running_replica, static_config
from tests.test_metrics import parse, record, replica, scrape, snapshot, value


def worker_metrics(requests: int, status: int = 200) -> Metrics:
    a = replica("a")
    metrics = Metrics({"a": 1})
    metrics.on_snapshot(snapshot([a]))
    for _ in range(requests):
        metrics.request_done(record(a, status=status))
    return metrics


def test_reports_add_counters_and_histograms_but_not_the_routing_view() -> None:
    leader, other = worker_metrics(3), worker_metrics(2, status=502)
    line = other.report_line()
    assert line.endswith(b"\n")
    report = Report(json.loads(line))
    inbox = ReportInbox()
    inbox.reports[1] = report
    leader.peers = inbox
    s = scrape(leader)
    requests = "router_requests_total"
    assert value(s, requests, replica="a", region="eu", method="GET", code="200") == 3
    assert value(s, requests, replica="a", region="eu", method="GET", code="502") == 2
    count = "router_request_total_duration_seconds_count"
    assert value(s, count, replica="a", region="eu") == 5
    assert value(s, "router_in_flight_requests", replica="a") == 2
    assert value(s, "router_routable_replicas") == 1  # worker 0's view, not a sum
    assert value(s, "router_snapshot_version") == 1
    assert value(s, "router_workers_reporting") == 2
    assert leader.replica_totals()["a"] == (5, 2)


def test_merging_keeps_series_only_another_worker_has() -> None:
    leader = worker_metrics(0)
    other = worker_metrics(1)
    encoded = encode_report(other.registry.collect(), {}, {})
    merged = merge_families(leader.registry.collect(), [Report(json.loads(encoded))])
    names = {s.name for f in merged for s in f.samples}
    assert "router_requests_total" in names


async def test_two_workers_serve_one_metrics_and_status(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        admin_port = free_port()
        cfg = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            proxy={"workers": 2, "engine": "fast"},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        cfg["listen"] = f"127.0.0.1:{free_port()}"
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(cfg))
        router = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            await eventually(lambda: _ready(client, admin), timeout=20, interval=0.2)

            async def both_reporting() -> bool:
                # A worker starts reporting after its listener is open: until then the
                # kernel gives every connection to the worker already listening.
                async with client.get(f"{admin}/metrics") as resp:
                    return value(parse(await resp.text()), "router_workers_reporting") == 2

            await eventually(both_reporting, timeout=20, interval=0.2)
            sent = 60
            for _ in range(sent):  # a new connection each: the kernel spreads them
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"http://{cfg['listen']}/x") as resp:
                        assert resp.status == 200

            async def counted() -> bool:
                async with client.get(f"{admin}/metrics") as resp:
                    s = parse(await resp.text())
                total = sum(v for (n, _), v in s.items() if n == "router_requests_total")
                return total == sent and value(s, "router_workers_reporting") == 2

            await eventually(counted, timeout=10, interval=0.2)
            async with client.get(f"{admin}/metrics") as resp:
                s = parse(await resp.text())
            async with client.get(f"{admin}/status") as resp:
                status = await resp.json()
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(timeout=20)
            except subprocess.TimeoutExpired:
                router.kill()
                router.wait()
    assert value(s, "router_client_connections_accepted_total") == sent
    by_worker = [value(s, "router_worker_requests_total", worker=w) for w in ("0", "1")]
    assert sum(by_worker) == sent  # type: ignore[arg-type]
    assert all(by_worker), f"one worker served nothing: {by_worker}"
    assert status["workers"] == 2
    (row,) = status["replicas"]
    assert row["requests_per_second"] > 0
    assert a.hits == sent


async def _ready(client: aiohttp.ClientSession, admin: str) -> bool:
    try:
        async with client.get(f"{admin}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
