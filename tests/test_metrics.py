"""/metrics: the series an operator graphs and alerts on, and their values."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router.balancing.round_robin import RoundRobin
from router.metrics import Metrics
from router.metrics_families import NO_REPLICA
from router.models import AttestationVerdict, HealthView, Replica, ReplicaState
from router.proxy.base import RequestRecord
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot
from tests.support import running_replica, running_router, static_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names_with(samples: Samples, label: str, label_value: str) -> set[str]:
    return {name for name, labels in samples if (label, label_value) in labels}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(rid: str, region: str | None = "eu", compose_hash: str | None = None) -> Replica:
    return Replica(
        rid, f"http://{rid}:80", "http", rid, 80, region=region, compose_hash=compose_hash
    )


def snapshot(
    replicas: Iterable[Replica],
    *,
    version: int = 1,
    health: Mapping[str, HealthView] | None = None,
    verdicts: Mapping[str, AttestationVerdict] | None = None,
    overrides: Overrides | None = None,
    now: float = 1000.0,
) -> Snapshot:
    return build_snapshot(
        version=version,
        now=now,
        replicas=list(replicas),
        health=health or {},
        verdicts=verdicts or {},
        policy=Policy(picker_factory=RoundRobin),
        overrides=overrides or Overrides(),
        in_flight={},
        health_enabled=health is not None,
    )


def record(
    target: Replica | None,
    *,
    method: str = "GET",
    status: int = 200,
    upstream: float | None = 0.02,
    total: float = 0.03,
    retries: int = 0,
) -> RequestRecord:
    return RequestRecord(
        method=method,
        path="/x",
        status=status,
        client="10.0.0.1",
        replica=target,
        retries=retries,
        upstream_seconds=upstream,
        total_seconds=total,
        bytes_in=0,
        bytes_out=10,
    )


def test_requests_are_counted_by_replica_method_and_code() -> None:
    a, b = replica("a"), replica("b", region="us")
    metrics = Metrics({}, version="1.2.3")
    metrics.on_snapshot(snapshot([a, b]))
    for _ in range(3):
        metrics.request_done(record(a))
    metrics.request_done(record(b, method="POST", status=502, retries=2))
    metrics.request_done(record(b, method="PROPFIND"))
    metrics.request_done(record(None, status=503, upstream=None))

    s = scrape(metrics)
    requests = "router_requests_total"
    assert value(s, requests, replica="a", region="eu", method="GET", code="200") == 3
    assert value(s, requests, replica="b", region="us", method="POST", code="502") == 1
    # Unknown methods share one label value so clients cannot blow up cardinality.
    assert value(s, requests, replica="b", region="us", method="OTHER", code="200") == 1
    assert value(s, requests, replica=NO_REPLICA, region="", method="GET", code="503") == 1
    assert value(s, "router_retries_total") == 2
    assert value(s, "router_build_info", version="1.2.3") == 1


def test_latency_histograms_hold_upstream_and_end_to_end_time() -> None:
    a = replica("a")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.request_done(record(a, upstream=0.004, total=0.2))
    metrics.request_done(record(a, upstream=0.3, total=0.4))
    metrics.request_done(record(None, status=503, upstream=None, total=0.001))

    s = scrape(metrics)
    up = "router_request_duration_seconds"
    assert value(s, f"{up}_bucket", replica="a", region="eu", le="0.005") == 1
    assert value(s, f"{up}_bucket", replica="a", region="eu", le="0.5") == 2
    assert value(s, f"{up}_count", replica="a", region="eu") == 2
    assert abs((value(s, f"{up}_sum", replica="a", region="eu") or 0) - 0.304) < 1e-9
    total = "router_request_total_duration_seconds"
    assert value(s, f"{total}_bucket", replica="a", region="eu", le="0.25") == 1
    assert value(s, f"{total}_count", replica="a", region="eu") == 2
    # A request that reached no replica has an end-to-end time but no upstream time.
    assert value(s, f"{total}_count", replica=NO_REPLICA, region="") == 1
    assert value(s, f"{up}_count", replica=NO_REPLICA, region="") is None


def test_failed_attempts_are_counted_by_kind() -> None:
    a = replica("a")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.attempt_done(a, False, "connect", None)
    metrics.attempt_done(a, False, "connect", None)
    metrics.attempt_done(a, False, "timeout", None)
    metrics.attempt_done(a, True, None, 200)

    s = scrape(metrics)
    assert value(s, "router_upstream_errors_total", replica="a", kind="connect") == 2
    assert value(s, "router_upstream_errors_total", replica="a", kind="timeout") == 1
    assert sum(v for (n, _), v in s.items() if n == "router_upstream_errors_total") == 3


def test_a_departed_replica_leaves_no_series_behind() -> None:
    a, b = replica("a"), replica("b")
    metrics = Metrics({"a": 1, "b": 2})
    metrics.on_snapshot(snapshot([a, b]))
    metrics.request_done(record(b))
    metrics.attempt_done(b, False, "reset", None)
    metrics.health_check("b", True, 0.01)
    metrics.attestation_verdict(AttestationVerdict("b", True, "ok", at=990.0))
    assert len(names_with(scrape(metrics), "replica", "b")) > 5

    metrics.on_snapshot(snapshot([a], version=2))
    # A request that was in flight when b left finishes afterwards: still no series.
    metrics.request_done(record(b))
    metrics.health_check("b", False, 0.01)
    s = scrape(metrics)
    assert names_with(s, "replica", "b") == set()
    assert value(s, "router_in_flight_requests", replica="a") == 1


def test_replica_states_counts_and_snapshot_facts() -> None:
    a, b = replica("a", compose_hash="h1"), replica("b", compose_hash="h1")
    c = replica("c", region="us", compose_hash="h2")
    metrics = Metrics({})
    metrics.on_snapshot(
        snapshot([a, b, c], version=7, overrides=Overrides(drained=frozenset({"b"})))
    )

    s = scrape(metrics)
    state = "router_replica_state"
    assert value(s, state, replica="a", region="eu", state="healthy") == 1
    assert value(s, state, replica="a", region="eu", state="draining") == 0
    assert value(s, state, replica="b", region="eu", state="draining") == 1
    assert value(s, state, replica="c", region="us", state="healthy") == 1
    assert sum(v for (n, labels), v in s.items() if n == state and ("replica", "b") in labels) == 1
    assert value(s, "router_replicas", state="healthy") == 2
    assert value(s, "router_replicas", state="draining") == 1
    assert value(s, "router_replicas", state="ejected") == 0
    assert value(s, "router_routable_replicas") == 2
    assert value(s, "router_compose_hashes", hash="h1") == 2
    assert value(s, "router_compose_hashes", hash="h2") == 1
    assert value(s, "router_snapshot_version") == 7
    assert value(s, "router_panic_mode") == 0


def test_panic_mode_is_exported() -> None:
    a, b = replica("a"), replica("b")
    unhealthy = HealthView(state=ReplicaState.UNHEALTHY)
    panic = build_snapshot(
        version=3,
        now=0.0,
        replicas=[a, b],
        health={"a": unhealthy, "b": unhealthy},
        verdicts={},
        policy=Policy(picker_factory=RoundRobin, panic_threshold=50),
        overrides=Overrides(),
        in_flight={},
    )
    assert panic.panic
    metrics = Metrics({})
    metrics.on_snapshot(panic)
    assert value(scrape(metrics), "router_panic_mode") == 1


def test_in_flight_is_read_at_scrape_time() -> None:
    a = replica("a")
    in_flight: dict[str, int] = {}
    metrics = Metrics(in_flight)
    metrics.on_snapshot(snapshot([a]))
    assert value(scrape(metrics), "router_in_flight_requests", replica="a") == 0
    in_flight["a"] = 4
    assert value(scrape(metrics), "router_in_flight_requests", replica="a") == 4


def test_health_checks_and_ejections() -> None:
    a = replica("a")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.health_check("a", True, 0.02)
    metrics.health_check("a", True, 0.03)
    metrics.health_check("a", False, 1.5)
    metrics.ejection("a")

    s = scrape(metrics)
    assert value(s, "router_health_checks_total", replica="a", result="ok") == 2
    assert value(s, "router_health_checks_total", replica="a", result="fail") == 1
    assert value(s, "router_health_check_duration_seconds_count", replica="a") == 3
    assert value(s, "router_health_check_duration_seconds_bucket", replica="a", le="0.05") == 2
    assert value(s, "router_ejections_total", replica="a") == 1
    # The health view reports the same ejection: it is not counted twice.
    view = HealthView(state=ReplicaState.HEALTHY, ejected_until=2000.0, ejections=1)
    metrics.on_snapshot(snapshot([a], version=2, health={"a": view}))
    assert value(scrape(metrics), "router_ejections_total", replica="a") == 1


def test_attestation_verdicts_and_age() -> None:
    clock = FakeClock()
    a, b = replica("a"), replica("b")
    metrics = Metrics({}, clock=clock)
    metrics.on_snapshot(snapshot([a, b]))
    metrics.attestation_verdict(AttestationVerdict("a", True, "ok", at=clock.now))
    metrics.attestation_verdict(AttestationVerdict("b", False, "tcb_status:OutOfDate", at=990.0))
    clock.now += 42.5

    s = scrape(metrics)
    assert value(s, "router_attestation_verdicts_total", replica="a", result="ok") == 1
    assert value(s, "router_attestation_verdicts_total", replica="b", result="tcb_status") == 1
    assert value(s, "router_attestation_age_seconds", replica="a") == 42.5
    assert value(s, "router_attestation_age_seconds", replica="b") == 52.5


def test_attestation_age_also_follows_verdicts_in_snapshots() -> None:
    clock = FakeClock()
    a = replica("a")
    metrics = Metrics({}, clock=clock)
    verdict = AttestationVerdict("a", True, "ok", at=980.0)
    metrics.on_snapshot(snapshot([a], verdicts={"a": verdict}))
    assert value(scrape(metrics), "router_attestation_age_seconds", replica="a") == 20


def test_discovery_refreshes() -> None:
    metrics = Metrics({}, wall=lambda: 1_700_000_000.0)
    s = scrape(metrics)
    # Never 0 before the first success: `time() - 0` would look like a 50-year outage.
    assert value(s, "router_discovery_last_success_timestamp_seconds") is None
    metrics.discovery_refresh("ok")
    metrics.discovery_refresh("ok")
    metrics.discovery_refresh("api_error", last_success=1_700_000_000.0)
    s = scrape(metrics)
    assert value(s, "router_discovery_refresh_total", result="ok") == 2
    assert value(s, "router_discovery_refresh_total", result="api_error") == 1
    assert value(s, "router_discovery_last_success_timestamp_seconds") == 1_700_000_000.0


def test_a_fresh_router_shows_the_rate_since_start() -> None:
    clock = FakeClock()
    a = replica("a")
    metrics = Metrics({}, clock=clock)
    metrics.on_snapshot(snapshot([a]))
    clock.now += 2
    for _ in range(6):
        metrics.request_done(record(a))
    assert metrics.rates()["a"] == (3.0, 0.0)


def test_status_rates_come_from_recent_counters() -> None:
    clock = FakeClock()
    a = replica("a")
    metrics = Metrics({}, clock=clock)
    metrics.on_snapshot(snapshot([a]))
    assert metrics.rates() == {}  # no time has passed: no rate yet
    for second in range(10):
        clock.now += 1
        for i in range(4):
            metrics.request_done(record(a, status=500 if i == 0 else 200))
        if second % 3 == 0:
            metrics.rates()
    rates = metrics.rates()
    requests_per_second, error_ratio = rates["a"]
    assert requests_per_second == 4.0
    assert error_ratio == 0.25
    # Later, only the last ~10 seconds count.
    clock.now += 10
    metrics.request_done(record(a))
    assert metrics.rates()["a"] == (0.1, 0.0)
    document = metrics.annotate_status({"replicas": [{"id": "a"}, {"id": "new"}]})
    assert document["replicas"][0]["requests_per_second"] == 0.1
    assert document["replicas"][1]["requests_per_second"] is None


async def test_scrape_after_traffic_matches_requests_sent(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        config = static_config(replicas, health={"enabled": False})
        async with running_router(config) as router:
            for _ in range(6):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
            async with client.put(f"{router.url}/y", data=b"hi") as resp:
                assert resp.status == 200
            async with client.get(f"{router.admin_url}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                s = parse(await resp.text())
            gets = {
                rid: value(
                    s, "router_requests_total", replica=rid, region="", method="GET", code="200"
                )
                for rid in ("a", "b")
            }
            assert gets == {"a": 3, "b": 3}
            assert sum(v for (n, _), v in s.items() if n == "router_requests_total") == 7
            assert a.hits + b.hits == 7
            assert value(s, "router_replica_state", replica="a", region="", state="healthy") == 1

            # b leaves the replica set: its series go with it.
            app = router.app
            app.reconciler.set_replicas([r for r in app.reconciler.replicas if r.id == "a"])
            app.reconciler.rebuild()
            async with client.get(f"{router.admin_url}/metrics") as resp:
                s = parse(await resp.text())
            assert names_with(s, "replica", "b") == set()
            assert value(s, "router_replicas", state="healthy") == 1


def test_grafana_dashboard_queries_only_series_the_router_exports() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "config/grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\b(?:router|process)_[a-z_]+", e)}
    a = replica("a", compose_hash="h")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.request_done(record(a, retries=1))
    metrics.attempt_done(a, False, "connect", None)
    metrics.health_check("a", True, 0.01)
    metrics.attestation_verdict(AttestationVerdict("a", True, "ok", at=0.0))
    metrics.discovery_refresh("ok")
    metrics.request_done(dataclasses.replace(record(None, status=503), error="overloaded"))
    metrics.reload_done(None)
    metrics.watch_connections(lambda: (1, 1))
    metrics.watch_certificates(lambda: {"tls": 2e9})
    exported = {name for name, _ in scrape(metrics)}
    assert used, "the dashboard has no queries"
    assert used <= exported, f"dashboard uses unknown series: {sorted(used - exported)}"
    # The headline panels the issue asks for.
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Request rate by replica", "Replica states now", "Attestation age by replica"} <= titles


async def test_async_render_matches_sync_render() -> None:
    a = replica("a")
    metrics = Metrics({"a": 2})
    metrics.on_snapshot(snapshot([a]))
    metrics.request_done(record(a))
    body, content_type = await metrics.render_async()

    def router_only(samples: Samples) -> Samples:  # process_* and python_* move on their own
        return {k: v for k, v in samples.items() if k[0].startswith("router_")}

    assert router_only(parse(body.decode())) == router_only(scrape(metrics))
    assert content_type == metrics.render()[1]


def test_a_watched_discovery_is_read_at_scrape_time() -> None:
    class Discovery:
        def __init__(self) -> None:
            self.refresh_results = {"ok": 0, "auth": 0}
            self.last_success: float | None = None

    source = Discovery()
    metrics = Metrics({}, wall=lambda: 1_700_000_100.0)
    metrics.watch_discovery(source)
    s = scrape(metrics)
    assert value(s, "router_discovery_refresh_total", result="ok") == 0
    assert value(s, "router_discovery_last_success_timestamp_seconds") is None
    source.refresh_results["ok"] = 3
    source.refresh_results["auth"] = 1
    source.last_success = 1_700_000_000.0
    s = scrape(metrics)
    assert value(s, "router_discovery_refresh_total", result="ok") == 3
    assert value(s, "router_discovery_refresh_total", result="auth") == 1
    assert value(s, "router_discovery_last_success_timestamp_seconds") == 1_700_000_000.0
    assert metrics.annotate_status({"replicas": []})["discovery_age_seconds"] == 100.0


async def test_connect_failures_and_ejections_reach_metrics(client: aiohttp.ClientSession) -> None:
    from tests.support import eventually, free_port

    health = {
        "enabled": False,
        "passive": {"consecutive_failures": 1, "max_ejected_percent": 50},
    }
    async with running_replica("a") as a:
        replicas = [
            ("a", f"http://127.0.0.1:{a.port}"),
            ("dead", f"http://127.0.0.1:{free_port()}"),
        ]
        async with running_router(static_config(replicas, health=health)) as router:
            for _ in range(4):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200  # retried on a

            async def scraped() -> Samples:
                async with client.get(f"{router.admin_url}/metrics") as resp:
                    return parse(await resp.text())

            async def ejected() -> bool:
                return value(await scraped(), "router_ejections_total", replica="dead") == 1

            await eventually(ejected, timeout=5)
            s = await scraped()
            assert (
                value(s, "router_upstream_errors_total", replica="dead", kind="connect") or 0
            ) >= 1
            assert value(s, "router_replica_state", replica="dead", region="", state="ejected") == 1
            assert (value(s, "router_retries_total") or 0) >= 1


async def test_active_health_checks_are_counted() -> None:
    from tests.support import eventually, running_replica, running_router, static_config

    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"interval": "50ms", "unhealthy_interval": "20ms"},
        )
        async with running_router(config) as router:
            metrics = router.app.metrics

            def counted() -> bool:
                body = metrics.render()[0].decode()
                return (
                    'router_health_checks_total{replica="a",result="ok"}' in body
                    and "router_health_check_duration_seconds_count" in body
                )

            await eventually(counted)


async def test_request_series_can_be_turned_off() -> None:
    from tests.support import running_replica, running_router, static_config

    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            metrics={"requests": False},
        )
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            async with client.get(f"{router.url}/") as resp:
                assert resp.status == 200
            body = router.app.metrics.render()[0].decode()
            assert "router_requests_total{" not in body
            assert "router_replica_state{" in body  # control-plane series stay
