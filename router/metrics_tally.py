"""The per-request counters behind /metrics, compiled with the hot path (router/native.py).

Every client request and failed upstream attempt lands here (`RequestTally` is the
`TrafficObserver` the engines call); `router.metrics` turns the counters into Prometheus
families at scrape time, so the values a scrape sees are exact. Kept apart from
prometheus-client so that mypyc can compile it: plain classes, dicts and lists only.
"""

from __future__ import annotations

from bisect import bisect_left

from router.models import Replica
from router.proxy.base import RequestRecord
from router.proxy.retry import retry_reason

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

NO_REPLICA = "(none)"  # label value for requests that never reached a replica
# Request latency: from sub-millisecond local replicas (the router's own overhead shows in
# the lowest buckets) to web calls to slow LLM-style apps, so the tail reaches a minute.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Bucket counts (not cumulative) and a sum; cumulated only at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family_args(self) -> tuple[list[tuple[str, float]], float]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets, self.sum


class ReplicaStats:
    """Everything counted for one replica (or for NO_REPLICA)."""

    __slots__ = (
        "attestation",
        "check_time",
        "checks",
        "ejections",
        "errors",
        "id",
        "region",
        "requests",
        "total_time",
        "upstream_time",
        "verdict_at",
    )

    def __init__(self, replica_id: str, region: str) -> None:
        self.id = replica_id
        self.region = region
        self.requests: dict[tuple[str, int], int] = {}
        self.upstream_time = Histogram(LATENCY_BUCKETS)
        self.total_time = Histogram(LATENCY_BUCKETS)
        self.errors: dict[str, int] = {}
        self.checks: dict[str, int] = {}
        self.check_time = Histogram(CHECK_BUCKETS)
        self.ejections = 0
        self.attestation: dict[str, int] = {}
        self.verdict_at: float | None = None

    def totals(self) -> tuple[int, int]:
        """(requests, 5xx responses) so far."""
        count = errors = 0
        for (_, code), n in self.requests.items():
            count += n
            if code >= 500:
                errors += n
        return count, errors


class RouterTotals:
    """Router-wide counters: client bytes, requests the router answered itself, reloads."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "failures",
        "last_reload_error",
        "last_reload_success",
        "reloads",
    )

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.failures: dict[str, int] = {}  # error code -> requests, e.g. overloaded
        self.reloads: dict[str, int] = {}  # ok / error -> count
        self.last_reload_success: float | None = None  # wall clock
        self.last_reload_error: str | None = None  # None after a successful reload


class RequestTally:
    """Data-plane counters: per replica (`stats`), retries, budget refusals, totals.

    `known` is the replica ids of the last snapshot (None before the first): a late report
    about a replica that already left must not resurrect its series.
    """

    def __init__(self) -> None:
        self.stats: dict[str, ReplicaStats] = {NO_REPLICA: ReplicaStats(NO_REPLICA, "")}
        self.known: frozenset[str] | None = None
        self.retries = 0
        self.retry_reasons: dict[str, int] = {}  # retry_on name -> retries
        self.budget_exhausted = 0
        self.totals = RouterTotals()

    def stats_for(self, replica_id: str, region: str) -> ReplicaStats:
        stats = self.stats.get(replica_id)
        if stats is None:
            stats = ReplicaStats(replica_id, region)
            if self.known is None or replica_id in self.known:
                self.stats[replica_id] = stats
        return stats

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        if ok:
            return
        errors = self.stats_for(replica.id, replica.region or "").errors
        name = kind or "other"
        errors[name] = errors.get(name, 0) + 1

    def request_done(self, record: RequestRecord) -> None:
        replica = record.replica
        if replica is None:
            stats = self.stats_for(NO_REPLICA, "")
        else:
            stats = self.stats.get(replica.id) or self.stats_for(replica.id, replica.region or "")
        method = record.method
        key = (method if method in KNOWN_METHODS else "OTHER", record.status)
        requests = stats.requests
        requests[key] = requests.get(key, 0) + 1
        stats.total_time.observe(record.total_seconds)
        seconds_up = record.upstream_seconds
        if seconds_up is not None:
            stats.upstream_time.observe(seconds_up)
        if record.retries:
            self.retries += record.retries
            reasons = self.retry_reasons
            for _, outcome in record.attempts:
                reason = retry_reason(outcome)
                reasons[reason] = reasons.get(reason, 0) + 1
        if record.retry_budget_exhausted:
            self.budget_exhausted += 1
        totals = self.totals
        totals.bytes_in += record.bytes_in
        totals.bytes_out += record.bytes_out
        if record.error is not None:
            totals.failures[record.error] = totals.failures.get(record.error, 0) + 1
