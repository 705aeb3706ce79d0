"""The series behind /metrics: plain per-replica counters (cheap to update on the request
path) and the functions that turn them, and a snapshot, into Prometheus families at scrape
time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Re-exported: the counters moved to the compiled metrics_tally; callers import them here.
from router.metrics_tally import LATENCY_BUCKETS as LATENCY_BUCKETS
from router.metrics_tally import NO_REPLICA as NO_REPLICA
from router.metrics_tally import ReplicaStats as ReplicaStats
from router.metrics_tally import RouterTotals as RouterTotals
from router.models import ReplicaState
from router.snapshot import Snapshot

STATES = tuple(s.value for s in ReplicaState)


def replica_families(all_stats: Iterable[ReplicaStats], now: float) -> Iterator[Metric]:
    """Families for the per-replica counters; `now` (monotonic) ages attestation verdicts."""
    rr = ["replica", "region"]
    requests = CounterMetricFamily(
        "router_requests",
        "Client requests by replica, method and status code.",
        labels=[*rr, "method", "code"],
    )
    upstream = HistogramMetricFamily(
        "router_request_duration_seconds",
        "Upstream time: from sending to the replica to its response headers.",
        labels=rr,
    )
    total = HistogramMetricFamily(
        "router_request_total_duration_seconds",
        "End-to-end time of a client request in the router, retries included.",
        labels=rr,
    )
    errors = CounterMetricFamily(
        "router_upstream_errors",
        "Failed upstream attempts by kind.",
        labels=["replica", "kind"],
    )
    checks = CounterMetricFamily(
        "router_health_checks", "Active health checks by result.", labels=["replica", "result"]
    )
    check_time = HistogramMetricFamily(
        "router_health_check_duration_seconds",
        "Active health check latency.",
        labels=["replica"],
    )
    ejections = CounterMetricFamily(
        "router_ejections", "Passive-health ejections.", labels=["replica"]
    )
    verdicts = CounterMetricFamily(
        "router_attestation_verdicts",
        "Attestation verdicts by result (ok or the failure reason code).",
        labels=["replica", "result"],
    )
    age = GaugeMetricFamily(
        "router_attestation_age_seconds", "Seconds since the last verdict.", labels=["replica"]
    )
    for stats in all_stats:
        rid = stats.id
        region = stats.region
        for (method, code), n in stats.requests.items():
            requests.add_metric([rid, region, method, str(code)], n)
        if any(stats.upstream_time.counts):
            upstream.add_metric([rid, region], *stats.upstream_time.family_args())
        if stats.requests:
            total.add_metric([rid, region], *stats.total_time.family_args())
        for kind, n in stats.errors.items():
            errors.add_metric([rid, kind], n)
        for result, n in stats.checks.items():
            checks.add_metric([rid, result], n)
        if stats.checks:
            check_time.add_metric([rid], *stats.check_time.family_args())
        if rid != NO_REPLICA:
            ejections.add_metric([rid], stats.ejections)
        for result, n in stats.attestation.items():
            verdicts.add_metric([rid, result], n)
        if stats.verdict_at is not None:
            age.add_metric([rid], round(now - stats.verdict_at, 3))
    yield from (requests, upstream, total, errors, checks, check_time, ejections)
    yield from (verdicts, age)


def snapshot_families(snapshot: Snapshot | None, in_flight: Mapping[str, int]) -> Iterator[Metric]:
    """Families read from the published snapshot and the live in-flight counter."""
    flights = GaugeMetricFamily(
        "router_in_flight_requests", "Requests in flight per replica.", labels=["replica"]
    )
    states = GaugeMetricFamily(
        "router_replica_state",
        "1 for the replica's current state, 0 for the others.",
        labels=["replica", "region", "state"],
    )
    counts = GaugeMetricFamily("router_replicas", "Replicas per state.", labels=["state"])
    hashes = GaugeMetricFamily(
        "router_compose_hashes", "Replicas per compose hash.", labels=["hash"]
    )
    per_state = dict.fromkeys(STATES, 0)
    if snapshot is not None:
        for status in snapshot.statuses:
            replica = status.replica
            region = replica.region or ""
            flights.add_metric([replica.id], in_flight.get(replica.id, 0))
            per_state[status.state] = per_state.get(status.state, 0) + 1
            for state in (*STATES, status.state) if status.state not in STATES else STATES:
                value = 1.0 if state == status.state else 0.0
                states.add_metric([replica.id, region, state], value)
        for compose_hash, n in snapshot.compose_hashes.items():
            hashes.add_metric([compose_hash], n)
    for state, n in per_state.items():
        counts.add_metric([state], n)
    yield from (flights, states, counts, hashes)
    yield GaugeMetricFamily(
        "router_routable_replicas",
        "Replicas that take traffic now.",
        value=len(snapshot.routable) if snapshot else 0,
    )
    yield GaugeMetricFamily(
        "router_panic_mode",
        "1 while routing ignores health (too few healthy replicas).",
        value=1.0 if snapshot is not None and snapshot.panic else 0.0,
    )
    yield GaugeMetricFamily(
        "router_snapshot_version",
        "Version of the published routing snapshot.",
        value=snapshot.version if snapshot else 0,
    )


def router_families(
    totals: RouterTotals,
    connections: tuple[int, int] | None,
    certificate_expiry: Mapping[str, float],
) -> Iterator[Metric]:
    """Families for router-wide totals; `connections` is (open, accepted) when known."""
    yield CounterMetricFamily(
        "router_client_received_bytes", "Request body bytes read from clients.", totals.bytes_in
    )
    yield CounterMetricFamily(
        "router_client_sent_bytes", "Response body bytes sent to clients.", totals.bytes_out
    )
    failures = CounterMetricFamily(
        "router_failed_requests",
        "Requests the router answered itself with an error, by code (overloaded, "
        "no_healthy_replica, upstream_timeout, bad_request, client_closed, ...).",
        labels=["code"],
    )
    for code, n in sorted(totals.failures.items()):
        failures.add_metric([code], n)
    yield failures
    yield CounterMetricFamily(
        "router_overload_rejections",
        "Requests refused because proxy.max_connections and proxy.max_pending were full.",
        value=totals.failures.get("overloaded", 0),
    )
    if connections is not None:
        yield GaugeMetricFamily(
            "router_client_connections", "Client connections open now.", value=connections[0]
        )
        yield CounterMetricFamily(
            "router_client_connections_accepted",
            "Client connections accepted.",
            value=connections[1],
        )
    yield from _reload_families(totals)
    expiry = GaugeMetricFamily(
        "router_listener_certificate_expiry_timestamp_seconds",
        "Unix time when the certificate served on the TLS listener expires.",
        labels=["listener"],
    )
    for listener, at in certificate_expiry.items():
        expiry.add_metric([listener], at)
    yield expiry


def _reload_families(totals: RouterTotals) -> Iterator[Metric]:
    reloads = CounterMetricFamily(
        "router_config_reloads", "Config reloads by result (ok or error).", labels=["result"]
    )
    for result in ("ok", "error"):
        reloads.add_metric([result], totals.reloads.get(result, 0))
    yield reloads
    yield GaugeMetricFamily(
        "router_config_last_reload_successful",
        "1 if the last reload applied (or none was tried), 0 if it was refused.",
        value=0.0 if totals.last_reload_error is not None else 1.0,
    )
    if totals.last_reload_success is not None:
        yield GaugeMetricFamily(
            "router_config_last_reload_success_timestamp_seconds",
            "Unix time of the last reload that applied.",
            value=totals.last_reload_success,
        )
    if totals.last_reload_error is not None:
        error = GaugeMetricFamily(
            "router_config_last_reload_error_info",
            "The error of the last reload when it was refused (first line); always 1.",
            labels=["error"],
        )
        error.add_metric([totals.last_reload_error.splitlines()[0][:200]], 1)
        yield error
