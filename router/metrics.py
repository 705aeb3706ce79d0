"""Prometheus metrics on a private registry, fed by one call per event.

The request path only touches plain objects of the compiled `router.metrics_tally`: one
`ReplicaStats` per replica holds counters in dicts and histograms as bucket lists, and a
custom collector turns them into Prometheus families at scrape time. Everything runs on the event loop thread, so no locks;
prometheus-client's own metric objects (which take a lock per update) are used only for
rare control-plane events. Snapshot-derived series (states, panic, compose hashes) and the
in-flight gauge are read at scrape time, so they cost nothing between scrapes, and a
replica's series disappear as soon as a snapshot without it is published.

Wiring (one call each): `Metrics.observer` is the `TrafficObserver` the engines call
(`Metrics` itself is one too, one call slower); `reconciler.subscribe(
metrics.on_snapshot)`; health calls `health_check()` (ejections are also read from the health
views in snapshots); attestation calls `attestation_verdict()`; discovery is watched with
`watch_discovery(source)` (or pushes `discovery_refresh()`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.metrics_apps import label_apps
from router.metrics_families import (
    NO_REPLICA,
    ReplicaStats,
    replica_families,
    router_families,
    snapshot_families,
)
from router.metrics_tally import RequestTally
from router.models import AttestationVerdict, Replica
from router.proxy.base import RequestRecord
from router.snapshot import Snapshot
from router.worker_reports import ReportInbox, encode_report, merge_families

RATE_WINDOW = 10.0  # seconds over which /status shows request and error rates
_SAMPLE_EVERY = 1.0
_SAMPLE_KEEP = 60.0


class DiscoveryStats(Protocol):
    """What `watch_discovery` reads from a discovery source."""

    @property
    def refresh_results(self) -> Mapping[str, int]: ...

    @property
    def last_success(self) -> float | None: ...


def build_version() -> str:
    try:
        return metadata.version("phala-router")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The router's metrics; see the module docstring for how to feed it."""

    def __init__(
        self,
        in_flight: Mapping[str, int],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        version: str | None = None,
    ) -> None:
        self._in_flight = in_flight
        self._clock = clock
        self._wall = wall
        # The data plane's counters (compiled with the hot path): the engines report to
        # `tally` directly (see `observer`), this class reads it at scrape time.
        self.tally = RequestTally()
        self._stats = self.tally.stats
        self._snapshot: Snapshot | None = None
        # Rate samples for /status; the first is "nothing yet, at start", so a fresh page
        # shows the rate since start until a full window has passed.
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque([(clock(), {})])
        self._discovery_pushed: dict[str, int] = {}
        self._discovery_pushed_success: float | None = None  # wall clock
        self._discovery_source: DiscoveryStats | None = None
        self.totals = self.tally.totals
        self.peers: ReportInbox | None = None  # worker 0 with proxy.workers > 1
        # With `apps:`, replica id -> app: every per-replica series gets an `app` label.
        self.app_of: Mapping[str, str] | None = None
        self._connections: Callable[[], tuple[int, int]] | None = None
        self._certificate_expiry: Callable[[], Mapping[str, float]] = dict
        self.registry = CollectorRegistry(auto_describe=False)
        # The usual process_* (CPU, memory, open fds, start time) and python_* series, so
        # the standard dashboards and alerts work on the router too.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GC_COLLECTOR)
        Gauge(
            "router_build_info", "The router build; always 1.", ["version"], registry=self.registry
        ).labels(version or build_version()).set(1)
        self.registry.register(_Collector(self))

    # -- data plane (TrafficObserver): keep these cheap ------------------------------------

    @property
    def observer(self) -> RequestTally:
        """What the engines call per request and per failed attempt (no extra hop)."""
        return self.tally

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        self.tally.attempt_done(replica, ok, kind, status)

    def request_done(self, record: RequestRecord) -> None:
        self.tally.request_done(record)

    def retry_counts(self) -> dict[str, int]:
        """Retries by reason, and `budget-exhausted`: refused retries (for reports)."""
        counts = dict(sorted(self.tally.retry_reasons.items()))
        if self.tally.budget_exhausted:
            counts["budget-exhausted"] = self.tally.budget_exhausted
        return counts

    # -- control plane ----------------------------------------------------------------------

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Reconciler listener: remember the snapshot (read at scrape time) and drop the
        series of replicas that left."""
        self._snapshot = snapshot
        known = self.tally.known = frozenset(snapshot.by_id)
        for gone in [k for k in self._stats if k != NO_REPLICA and k not in known]:
            del self._stats[gone]
        for status in snapshot.statuses:
            replica = status.replica
            stats = self.tally.stats_for(replica.id, replica.region or "")
            stats.region = replica.region or ""
            if status.health is not None:
                # Health views count ejections too; whichever source saw more wins, so
                # wiring both `ejection()` and health views never double counts.
                stats.ejections = max(stats.ejections, status.health.ejections)
            verdict = status.attestation
            if verdict is not None and (stats.verdict_at is None or verdict.at > stats.verdict_at):
                stats.verdict_at = verdict.at

    def health_check(self, replica_id: str, ok: bool, seconds: float | None) -> None:
        stats = self._control_stats(replica_id)
        result = "ok" if ok else "fail"
        stats.checks[result] = stats.checks.get(result, 0) + 1
        if seconds is not None:
            stats.check_time.observe(seconds)

    def ejection(self, replica_id: str) -> None:
        self._control_stats(replica_id).ejections += 1

    def attestation_verdict(self, verdict: AttestationVerdict) -> None:
        stats = self._control_stats(verdict.replica_id)
        # Reason codes look like `tcb_status:OutOfDate`; the prefix keeps cardinality fixed.
        result = "ok" if verdict.ok else verdict.reason.split(":", 1)[0] or "fail"
        stats.attestation[result] = stats.attestation.get(result, 0) + 1
        stats.verdict_at = verdict.at

    def discovery_refresh(self, result: str, last_success: float | None = None) -> None:
        """One discovery pass ended; `result` is "ok" or a short error code.
        `last_success` is the wall-clock time of the last success (defaults to now on ok)."""
        self._discovery_pushed[result] = self._discovery_pushed.get(result, 0) + 1
        if last_success is None and result == "ok":
            last_success = self._wall()
        if last_success is not None:
            self._discovery_pushed_success = last_success

    def reload_done(self, error: str | None) -> None:
        """A config reload applied (`error` None) or was refused."""
        totals = self.totals
        result = "ok" if error is None else "error"
        totals.reloads[result] = totals.reloads.get(result, 0) + 1
        totals.last_reload_error = error
        if error is None:
            totals.last_reload_success = self._wall()

    def watch_connections(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Read the engine's (open, accepted) client connections at scrape time."""
        self._connections = counts

    def watch_certificates(self, expiry: Callable[[], Mapping[str, float]]) -> None:
        """Read listener certificate expiry (listener -> Unix time) at scrape time."""
        self._certificate_expiry = expiry

    def watch_discovery(self, source: DiscoveryStats) -> None:
        """Read a discovery's own counters at scrape time instead of being told each pass
        (`PhalaDiscovery` keeps `refresh_results` and `last_success`)."""
        self._discovery_source = source

    @property
    def discovery_last_success(self) -> float | None:
        """Wall-clock time of the last successful discovery pass, if any."""
        source = self._discovery_source
        if source is not None and source.last_success is not None:
            return source.last_success
        return self._discovery_pushed_success

    def discovery_results(self) -> dict[str, int]:
        results = dict(self._discovery_pushed)
        if self._discovery_source is not None:
            for result, n in self._discovery_source.refresh_results.items():
                results[result] = results.get(result, 0) + n
        return results

    def _control_stats(self, replica_id: str) -> ReplicaStats:
        return self.tally.stats_for(replica_id, "")

    # -- reading ----------------------------------------------------------------------------

    def families(self) -> list[Metric]:
        """Every family, with the other workers' counts added when there are any."""
        own = list(self.registry.collect())
        if self.app_of is not None:
            label_apps(own, self.app_of)
        if self.peers is None:
            return own
        merged = merge_families(own, self.peers.reports.values())
        merged.append(
            GaugeMetricFamily(
                "router_workers_reporting",
                "Worker processes counted in these metrics (worker 0 and recent reports).",
                value=1 + len(self.peers.reports),
            )
        )
        per_worker = CounterMetricFamily(
            "router_worker_requests", "Client requests by worker process.", labels=["worker"]
        )
        served = sum(stats.totals()[0] for stats in self._stats.values())
        per_worker.add_metric(["0"], served)
        for index, report in sorted(self.peers.reports.items()):
            per_worker.add_metric([str(index)], sum(n for n, _ in report.totals.values()))
        merged.append(per_worker)
        return merged

    def render(self) -> tuple[bytes, str]:
        """The /metrics body and its content type."""
        return generate_latest(_Frozen(self.families())), CONTENT_TYPE_LATEST

    async def render_async(self) -> tuple[bytes, str]:
        """Like `render`, but only the (cheap) collection runs on the event loop; the text
        formatting, ~70% of a scrape (about 17 ms for 50 replicas), runs in a thread so the
        data plane is not stalled for a whole scrape."""
        frozen = _Frozen(self.families())
        body = await asyncio.to_thread(generate_latest, frozen)
        return body, CONTENT_TYPE_LATEST

    def report_line(self) -> bytes:
        """What this worker tells worker 0 (`router.worker_reports`)."""
        totals = {rid: s.totals() for rid, s in self._stats.items()}
        return encode_report(self.registry.collect(), totals, self._in_flight)

    def replica_totals(self) -> dict[str, tuple[int, int]]:
        """Per replica: (requests, 5xx responses) so far, over all workers."""
        totals = {rid: s.totals() for rid, s in self._stats.items()}
        for peer in self.peers.totals() if self.peers is not None else ():
            for rid, (n, e) in peer.items():
                before = totals.get(rid, (0, 0))
                totals[rid] = (before[0] + n, before[1] + e)
        return totals

    def rates(self, window: float = RATE_WINDOW) -> dict[str, tuple[float, float]]:
        """Per replica: (requests per second, fraction of 5xx) over about `window` seconds,
        from counter samples kept at most once a second (since start while younger)."""
        now = self._clock()
        totals = self.replica_totals()
        samples = self._samples
        if not samples or now - samples[-1][0] >= _SAMPLE_EVERY:
            samples.append((now, totals))
        while len(samples) > 1 and now - samples[1][0] >= _SAMPLE_KEEP:
            samples.popleft()
        base_at, base = samples[0]
        for at, sample in samples:
            if now - at < window:
                break
            base_at, base = at, sample
        elapsed = now - base_at
        if elapsed <= 0:
            return {}
        rates: dict[str, tuple[float, float]] = {}
        for rid, (count, errors) in totals.items():
            before_count, before_errors = base.get(rid, (0, 0))
            sent = count - before_count
            failed = errors - before_errors
            rates[rid] = (sent / elapsed, failed / sent if sent else 0.0)
        return rates

    def annotate_status(self, document: dict[str, Any]) -> dict[str, Any]:
        """Add request/error rates per replica and the discovery age to a /status document."""
        rates = self.rates()
        peers_in_flight = self.peers.in_flight() if self.peers is not None else []
        for row in document.get("replicas", []):
            if peers_in_flight:
                row["in_flight"] += sum(p.get(row["id"], 0) for p in peers_in_flight)
            rate = rates.get(row["id"])
            row["requests_per_second"] = round(rate[0], 3) if rate else None
            row["error_ratio"] = round(rate[1], 4) if rate else None
        last = self.discovery_last_success
        document["generated_at"] = round(self._wall(), 3)
        document["discovery_last_success"] = last
        document["discovery_age_seconds"] = (
            round(self._wall() - last, 3) if last is not None else None
        )
        return document


class _Frozen:
    """Families already collected, for formatting off the event loop."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class _Collector:
    """Builds the families at scrape time from the counters and the last snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield from replica_families(list(m._stats.values()), m._clock())
        yield CounterMetricFamily(
            "router_retries", "Upstream attempts beyond the first.", value=m.tally.retries
        )
        by_reason = CounterMetricFamily(
            "router_retries_by_reason",
            "Retries by what the given-up attempt got, as proxy.retry_on names it "
            "(connect-failure, reset, timeout, per-try-timeout, gateway-error, "
            "retriable-status-codes).",
            labels=["reason"],
        )
        for reason, n in sorted(m.tally.retry_reasons.items()):
            by_reason.add_metric([reason], n)
        yield by_reason
        yield CounterMetricFamily(
            "router_retry_budget_exhausted",
            "Retries refused by proxy.retry_budget: the response went back as it was.",
            value=m.tally.budget_exhausted,
        )
        refreshes = CounterMetricFamily(
            "router_discovery_refresh",
            "Discovery passes by result (ok or an error kind).",
            labels=["result"],
        )
        for result, n in m.discovery_results().items():
            refreshes.add_metric([result], n)
        yield refreshes
        if m.discovery_last_success is not None:  # absent, not 0, until discovery succeeds
            yield GaugeMetricFamily(
                "router_discovery_last_success_timestamp_seconds",
                "Unix time of the last successful discovery pass.",
                value=m.discovery_last_success,
            )
        yield from snapshot_families(m._snapshot, m._in_flight)
        connections = m._connections() if m._connections is not None else None
        yield from router_families(m.totals, connections, m._certificate_expiry())
