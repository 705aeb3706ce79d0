"""What a scaling sweep measured and what it means: pure functions, no I/O.

A `Point` is one replica count under the same load; a `Sweep` is the points of one run.
Scaling efficiency is rps(N) / ((N / N0) x rps(N0)) with N0 the smallest count measured
(normally 1, giving the textbook rps(N) / (N x rps(1))). The knee is the replica count
beyond which the next count measured gains less than `KNEE_GAIN` in throughput.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KNEE_GAIN = 0.10
BUSY_CORE = 0.90  # a single-threaded process at 90% of a core is the bottleneck
LITTLE_MIN = 0.80  # achieved rps below 80% of users / (latency + think time): client lags
MACHINE_BUSY = 0.85  # all cores this busy: everything queues for CPU


@dataclass
class Latency:
    requests: int
    failures: int
    seconds: float
    rps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class Point:
    replicas: int
    latency: Latency
    locust_processes: int
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    per_replica: dict[str, int] = field(default_factory=dict)  # requests each one served
    per_replica_from: str = ""  # who counted them: simulator, router metrics or locust
    by_name: dict[str, int] = field(default_factory=dict)  # locust request name -> requests
    model_rps: float | None = None
    flags: list[str] = field(default_factory=list)
    limited_by: str = "-"
    efficiency: float | None = None
    gain: float | None = None  # throughput gain over the previous count measured
    cost_per_million: float | None = None

    @property
    def rps(self) -> float:
        return self.latency.rps

    @property
    def failure_rate(self) -> float:
        total = self.latency.requests
        return self.latency.failures / total if total else 0.0


@dataclass
class Sweep:
    label: str
    target: str  # "simulated" or "live"
    settings: dict[str, Any]
    points: list[Point]
    knee: int | None = None
    environment: dict[str, Any] = field(default_factory=dict)


def percentile(response_times: Mapping[float, int], fraction: float) -> float:
    """Locust's histogram (rounded ms -> count) -> the value at `fraction` (0.95 = p95)."""
    total = sum(response_times.values())
    if total == 0:
        return 0.0
    wanted = max(1, math.ceil(fraction * total))
    seen = 0
    for value in sorted(response_times):
        seen += response_times[value]
        if seen >= wanted:
            return float(value)
    return float(max(response_times))


def summarise(entries: Iterable[Mapping[str, Any]]) -> Latency:
    """Locust's `--json-file` entries (one per request name) -> one aggregate."""
    histogram: dict[float, int] = {}
    requests = failures = 0
    total_time = 0.0
    starts: list[float] = []
    ends: list[float] = []
    for entry in entries:
        requests += int(entry["num_requests"])
        failures += int(entry["num_failures"])
        total_time += float(entry["total_response_time"])
        for value, count in entry["response_times"].items():
            key = float(value)
            histogram[key] = histogram.get(key, 0) + int(count)
        if entry["num_requests"]:
            starts.append(float(entry["start_time"]))
            ends.append(float(entry["last_request_timestamp"]))
    seconds = max(ends) - min(starts) if starts else 0.0
    return Latency(
        requests=requests,
        failures=failures,
        seconds=round(seconds, 3),
        rps=round(requests / seconds, 2) if seconds > 0 else 0.0,
        mean_ms=round(total_time / requests, 2) if requests else 0.0,
        p50_ms=percentile(histogram, 0.50),
        p95_ms=percentile(histogram, 0.95),
        p99_ms=percentile(histogram, 0.99),
    )


def model_rps(
    replicas: int, capacity: int, latency_ms: float, backend_rps: float | None
) -> float | None:
    """What the simulated app can carry: each replica capacity / service time, all of them
    together at most the shared backend's rate."""
    if latency_ms <= 0:
        return backend_rps
    replicas_rps = replicas * capacity * 1000 / latency_ms
    return min(replicas_rps, backend_rps) if backend_rps else replicas_rps


def load_flags(point: Point, users: int, think_ms: float) -> list[str]:
    """Reasons the numbers may describe the load generator or the machine, not the target."""
    flags: list[str] = []
    locust = point.cpu.get("locust")
    if locust and locust["busiest"] >= BUSY_CORE:
        flags.append(
            f"load generator saturated: a locust process used {locust['busiest']:.0%} of a core"
        )
    lat = point.latency
    cycle_s = (lat.mean_ms + think_ms) / 1000
    if lat.rps > 0 and cycle_s > 0 and users > 0:
        little = lat.rps * cycle_s / users
        if little < LITTLE_MIN:
            flags.append(
                f"load generator lagging: achieved {lat.rps:.0f} rps is {little:.0%} of what "
                f"{users} users at {lat.mean_ms:.0f} ms would send"
            )
    router = point.cpu.get("router")
    if router and router["busiest"] >= BUSY_CORE:
        flags.append(f"router saturated: {router['busiest']:.0%} of a core")
    machine = point.cpu.get("machine")
    if machine and machine["total"] >= MACHINE_BUSY:
        others = machine.get("others", 0.0)
        also = f" ({others:.1f} cores by other processes)" if others >= 0.1 else ""
        reached = point.model_rps is not None and point.rps >= 0.85 * point.model_rps
        meaning = "capacity reached anyway" if reached else "throughput here is a lower bound"
        flags.append(f"machine CPU {machine['total']:.0%} busy{also}: {meaning}")
    if point.failure_rate > 0.01:
        flags.append(f"{point.failure_rate:.1%} of requests failed")
    return flags


def limited_by(point: Point, backend_rps: float | None) -> str:
    """One word for the table: what most plausibly capped this point's throughput."""
    text = " ".join(point.flags)
    if "load generator" in text:
        return "load generator"
    # Reaching the simulated app's capacity means it was the limit, however busy the CPU.
    if point.model_rps and point.rps >= 0.85 * point.model_rps:
        if backend_rps and point.model_rps >= backend_rps:
            return "shared backend"
        return "replicas"
    if "router saturated" in text:
        return "router"
    if "machine CPU" in text:
        return "machine CPU"
    return "-"


def knee(points: Sequence[Point], min_gain: float = KNEE_GAIN) -> int | None:
    """The replica count beyond which the next count gains less than `min_gain`."""
    ordered = sorted(points, key=lambda p: p.replicas)
    for before, after in itertools.pairwise(ordered):
        if before.rps <= 0 or after.rps / before.rps - 1 < min_gain:
            return before.replicas
    return None


def cost_per_million(price_per_replica_hour: float, replicas: int, rps: float) -> float | None:
    """What a million requests cost at this throughput, paying for every replica."""
    if rps <= 0:
        return None
    return price_per_replica_hour * replicas / 3600 / rps * 1_000_000


def finish(points: list[Point], price_per_replica_hour: float | None) -> int | None:
    """Fills efficiency, gain and cost on every point (sorted by count); returns the knee."""
    points.sort(key=lambda p: p.replicas)
    if not points:
        return None
    base = points[0]
    previous: Point | None = None
    for point in points:
        if base.rps > 0:
            point.efficiency = round(point.rps / (point.replicas / base.replicas * base.rps), 3)
        if previous is not None and previous.rps > 0:
            point.gain = round(point.rps / previous.rps - 1, 3)
        if price_per_replica_hour is not None:
            cost = cost_per_million(price_per_replica_hour, point.replicas, point.rps)
            point.cost_per_million = round(cost, 4) if cost is not None else None
        previous = point
    return knee(points)


def tagged_counts(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Requests per replica from locust names tagged "<scenario> @<replica>" (only the
    responses that named their replica, so a sample of the traffic)."""
    counts: dict[str, int] = {}
    for entry in entries:
        _, sep, replica = str(entry.get("name", "")).rpartition(" @")
        if sep and replica:
            counts[replica] = counts.get(replica, 0) + int(entry["num_requests"])
    return counts
