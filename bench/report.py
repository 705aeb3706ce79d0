"""Sweep results as a Markdown table, JSON, CSV and a PNG plot (drawn by bench.plots)."""

from __future__ import annotations

import csv
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.analysis import Point, Sweep
from bench.plots import scaling_plot
from bench.procs import cpu_count

CSV_FIELDS = (
    "sweep",
    "replicas",
    "rps",
    "model_rps",
    "efficiency",
    "gain",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "requests",
    "failures",
    "failure_rate",
    "router_cpu",
    "locust_cpu_busiest",
    "machine_cpu",
    "balance",
    "limited_by",
    "cost_per_million",
    "flags",
)


def environment() -> dict[str, Any]:
    """Date, machine and versions: the numbers mean little without them."""
    versions: dict[str, str | None] = {}
    for name in ("phala-router", "aiohttp", "uvloop", "locust"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def balance(point: Point) -> float | None:
    """Fewest / most requests among the replicas that served any: 1.0 is perfectly even."""
    counts = [c for c in point.per_replica.values() if c > 0]
    if len(counts) < 2:
        return 1.0 if counts else None
    return round(min(counts) / max(counts), 3)


def _cpu(point: Point, label: str, key: str = "total") -> float | None:
    return point.cpu.get(label, {}).get(key)


def row(sweep: Sweep, point: Point) -> dict[str, Any]:
    lat = point.latency
    return {
        "sweep": sweep.label,
        "replicas": point.replicas,
        "rps": lat.rps,
        "model_rps": point.model_rps,
        "efficiency": point.efficiency,
        "gain": point.gain,
        "p50_ms": lat.p50_ms,
        "p95_ms": lat.p95_ms,
        "p99_ms": lat.p99_ms,
        "mean_ms": lat.mean_ms,
        "requests": lat.requests,
        "failures": lat.failures,
        "failure_rate": round(point.failure_rate, 5),
        "router_cpu": _cpu(point, "router"),
        "locust_cpu_busiest": _cpu(point, "locust", "busiest"),
        "machine_cpu": _cpu(point, "machine"),
        "balance": balance(point),
        "limited_by": point.limited_by,
        "cost_per_million": point.cost_per_million,
        "flags": "; ".join(point.flags),
    }


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def markdown(sweep: Sweep) -> str:
    """The sweep as a Markdown table with a one-line verdict and any caveats below it."""
    priced = any(p.cost_per_million is not None for p in sweep.points)
    modelled = any(p.model_rps is not None for p in sweep.points)
    head = ["replicas", "req/s"]
    head += ["model req/s"] if modelled else []
    head += ["efficiency", "gain", "p50 ms", "p95 ms", "p99 ms", "failed", "balance"]
    head += ["router CPU", "locust CPU", "limited by"]
    head += ["$ / M req"] if priced else []
    lines = [f"### {sweep.label}", "", _settings_line(sweep), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in sweep.points:
        r = row(sweep, point)
        gain = r["gain"]
        cells = [str(point.replicas), _fmt(r["rps"], ",.0f")]
        cells += [_fmt(r["model_rps"], ",.0f")] if modelled else []
        cells += [
            _fmt(r["efficiency"], ".0%"),
            _fmt(abs(gain) if gain is not None and abs(gain) < 0.005 else gain, "+.0%"),
            _fmt(r["p50_ms"], ".0f"),
            _fmt(r["p95_ms"], ".0f"),
            _fmt(r["p99_ms"], ".0f"),
            _fmt(r["failure_rate"], ".2%"),
            _fmt(r["balance"], ".2f"),
            _fmt(r["router_cpu"], ".0%"),
            _fmt(r["locust_cpu_busiest"], ".0%"),
            r["limited_by"],
        ]
        cells += [_fmt(r["cost_per_million"], ".2f")] if priced else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", verdict(sweep)]
    notes = [f"- {p.replicas} replica(s): {flag}" for p in sweep.points for flag in p.flags]
    if notes:
        lines += ["", "Caveats:", *notes]
    return "\n".join(lines)


def _settings_line(sweep: Sweep) -> str:
    s = sweep.settings
    parts = [f"target: {sweep.target}"]
    if sweep.target == "simulated":
        parts.append(
            f"each replica {s['capacity']} concurrent x {s['latency_ms']:g} ms "
            f"(= {s['capacity'] * 1000 / s['latency_ms']:.0f} req/s)"
            if s.get("latency_ms")
            else f"each replica {s['capacity']} concurrent"
        )
        backend = s.get("backend_rps")
        parts.append(f"shared backend {backend:g} req/s" if backend else "no shared backend")
    else:
        parts.append(s.get("url", ""))
    parts.append(
        f"locust: {s['users']} users, scenario {s['scenario']}, {s['run_time']:g} s per count"
    )
    return "; ".join(parts)


def verdict(sweep: Sweep) -> str:
    if not sweep.points:
        return "No points measured."
    if sweep.knee is None:
        top = sweep.points[-1]
        return (
            f"No knee up to {top.replicas} replicas: every step gained >= 10% "
            f"(efficiency at {top.replicas}: {_fmt(top.efficiency, '.0%')})."
        )
    return (
        f"Knee at {sweep.knee} replica(s): adding replicas beyond it gains < 10% throughput, "
        "so extra replicas cost money without adding capacity for this load."
    )


def to_json(sweep: Sweep) -> dict[str, Any]:
    return {
        "label": sweep.label,
        "target": sweep.target,
        "settings": sweep.settings,
        "environment": sweep.environment,
        "knee": sweep.knee,
        "points": [{**asdict(p), "row": row(sweep, p)} for p in sweep.points],
    }


def write_json(sweeps: Sequence[Sweep], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([to_json(s) for s in sweeps], indent=1) + "\n")


def write_csv(sweeps: Sequence[Sweep], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for sweep in sweeps:
            for point in sweep.points:
                writer.writerow(row(sweep, point))


def write_all(sweeps: Sequence[Sweep], out_dir: Path, name: str) -> dict[str, Path]:
    """NAME.json, NAME.csv, NAME.png and NAME.md under `out_dir`; returns their paths."""
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("json", "csv", "png", "md")}
    write_json(sweeps, paths["json"])
    write_csv(sweeps, paths["csv"])
    scaling_plot(sweeps, paths["png"])
    paths["md"].write_text("\n\n".join(markdown(s) for s in sweeps) + "\n")
    return paths
