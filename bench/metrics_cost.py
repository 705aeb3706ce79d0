"""Per-request cost of the metrics observer, in nanoseconds (a micro-benchmark, not a test).

Runs what the engine calls per request (`attempt_done` + `request_done`) against:
- a no-op observer (the loop's own overhead, subtracted from the others),
- `router.metrics.Metrics` (plain counters, collected at scrape time),
- the same series written with prometheus-client's own labelled Counter/Histogram objects
  (cached children), to show what the plain-object design saves.

    python -m bench.metrics_cost [--requests 200000] [--out bench/results/metrics_cost.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from router.balancing.round_robin import RoundRobin
from router.metrics import Metrics
from router.metrics_families import LATENCY_BUCKETS
from router.models import Replica
from router.proxy.base import RequestRecord
from router.snapshot import Overrides, Policy, build_snapshot

REPLICAS = [Replica(f"r{i}", f"http://r{i}:80", "http", f"r{i}", 80, region="eu") for i in range(4)]


class NoOp:
    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        return None

    def request_done(self, record: RequestRecord) -> None:
        return None


class LibraryObjects:
    """The straightforward alternative: prometheus-client metric objects, children cached."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.requests = Counter(
            "r_requests", "", ["replica", "region", "method", "code"], registry=registry
        )
        self.upstream = Histogram(
            "r_up", "", ["replica", "region"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.total = Histogram(
            "r_tot", "", ["replica", "region"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.children: dict[tuple[str, str, int], tuple[Counter, Histogram, Histogram]] = {}

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        return None

    def request_done(self, record: RequestRecord) -> None:
        replica = record.replica
        assert replica is not None
        key = (replica.id, record.method, record.status)
        children = self.children.get(key)
        if children is None:
            region = replica.region or ""
            children = (
                self.requests.labels(replica.id, region, record.method, str(record.status)),
                self.upstream.labels(replica.id, region),
                self.total.labels(replica.id, region),
            )
            self.children[key] = children
        children[0].inc()
        if record.upstream_seconds is not None:
            children[1].observe(record.upstream_seconds)
        children[2].observe(record.total_seconds)


def records(count: int) -> list[RequestRecord]:
    return [
        RequestRecord(
            method="GET" if i % 5 else "POST",
            path="/x",
            status=200 if i % 50 else 503,
            client="10.0.0.1",
            replica=REPLICAS[i % len(REPLICAS)],
            retries=0,
            upstream_seconds=0.001 * (i % 300),
            total_seconds=0.0012 * (i % 300),
            bytes_in=0,
            bytes_out=100,
        )
        for i in range(count)
    ]


def measure(observer: NoOp | Metrics | LibraryObjects, batch: list[RequestRecord]) -> float:
    """Best of three passes, ns per request."""
    attempt: Callable[[Replica, bool, str | None, int | None], None] = observer.attempt_done
    done = observer.request_done
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        for record in batch:
            assert record.replica is not None
            attempt(record.replica, True, None, record.status)
            done(record)
        best = min(best, (time.perf_counter_ns() - started) / len(batch))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args()
    batch = records(args.requests)
    metrics = Metrics({})
    metrics.on_snapshot(
        build_snapshot(
            version=1,
            now=0.0,
            replicas=REPLICAS,
            health={},
            verdicts={},
            policy=Policy(picker_factory=RoundRobin),
            overrides=Overrides(),
            in_flight={},
            health_enabled=False,
        )
    )
    baseline = measure(NoOp(), batch)
    results = {
        "noop_loop_ns": round(baseline, 1),
        "metrics_ns": round(measure(metrics, batch) - baseline, 1),
        "prometheus_client_objects_ns": round(measure(LibraryObjects(), batch) - baseline, 1),
    }
    started = time.perf_counter_ns()
    body, _ = metrics.render()
    results["scrape_ms"] = round((time.perf_counter_ns() - started) / 1e6, 2)
    results["scrape_bytes"] = len(body)
    print(f"{'observer':<34}{'ns/request':>12}")
    print(f"{'no-op (loop overhead)':<34}{results['noop_loop_ns']:>12}")
    print(f"{'router.metrics.Metrics':<34}{results['metrics_ns']:>12}")
    print(f"{'prometheus-client objects':<34}{results['prometheus_client_objects_ns']:>12}")
    print(f"scrape of {len(REPLICAS)} replicas: {results['scrape_ms']} ms, {len(body)} bytes")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
