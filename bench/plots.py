"""The benchmark plots (matplotlib, Agg backend): replica scaling, and the proxy comparison
(router vs HAProxy vs nginx) drawn from the proxy benchmark's result files.

Scaling: the title states the conditions the numbers depend on (per-replica capacity,
users, seconds per step); the ideal-linear and model lines have their own colours so they
are not mistaken for a measured series; a shared backend's cap is drawn as the capacity
line it is; and repeated runs of a sweep (same label) show their spread as a band with
each run's points, around the median.

`python -m bench.plots proxy [-o OUT.png] [results.json ...]` draws the proxy comparison
from existing files (default: every file under bench/results with router, HAProxy and nginx
rows, into bench/results/proxy_comparison.png).
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.analysis import Latency, Point, Sweep

RESULTS = Path(__file__).resolve().parent / "results"
IDEAL_COLOR = "0.35"  # grey: a reference, not a measurement
MODEL_COLOR = "tab:green"
CAPACITY_COLOR = "tab:red"
SERIES_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def conditions(sweeps: Sequence[Sweep]) -> str:
    """What the scaling numbers depend on, for the title: per-replica capacity, users and
    seconds per step (each value listed once when sweeps differ)."""

    def values(key: str, fmt: str) -> str:
        seen = [s.settings.get(key) for s in sweeps if s.settings.get(key) is not None]
        unique = list(dict.fromkeys(seen))
        return " / ".join(format(v, fmt) for v in unique) if unique else "?"

    simulated = [s for s in sweeps if s.target == "simulated"]
    parts = []
    if simulated:
        capacities = dict.fromkeys(
            f"{s.settings['capacity']} x {s.settings.get('latency_ms') or 0:g} ms"
            + (
                f" = {s.settings['capacity'] * 1000 / s.settings['latency_ms']:.0f} req/s"
                if s.settings.get("latency_ms")
                else ""
            )
            for s in simulated
        )
        parts.append("per replica " + " / ".join(capacities))
    parts.append(f"{values('users', 'd')} users")
    parts.append(f"{values('run_time', 'g')} s per step")
    return "; ".join(parts)


def _groups(sweeps: Sequence[Sweep]) -> dict[str, list[Sweep]]:
    groups: dict[str, list[Sweep]] = {}
    for sweep in sweeps:
        if sweep.points:
            groups.setdefault(sweep.label, []).append(sweep)
    return groups


def _by_count(runs: Sequence[Sweep], value: Any) -> tuple[list[int], list[list[float]]]:
    counts = sorted({p.replicas for run in runs for p in run.points})
    per_count = [[value(p) for run in runs for p in run.points if p.replicas == n] for n in counts]
    return counts, per_count


def _draw_series(axis: Any, runs: Sequence[Sweep], value: Any, color: str, label: str) -> None:
    counts, per_count = _by_count(runs, value)
    medians = [statistics.median(v) for v in per_count]
    runs_note = f" (median of {len(runs)} runs)" if len(runs) > 1 else ""
    axis.plot(counts, medians, "o-", color=color, label=label + runs_note)
    if len(runs) > 1:
        axis.fill_between(
            counts,
            [min(v) for v in per_count],
            [max(v) for v in per_count],
            color=color,
            alpha=0.15,
        )
        for n, vs in zip(counts, per_count, strict=True):
            axis.plot([n] * len(vs), vs, ".", color=color, alpha=0.5, markersize=4)


def scaling_plot(sweeps: Sequence[Sweep], path: Path, title: str = "phala-router scaling") -> None:
    _save(scaling_figure(sweeps, title), path)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def scaling_figure(sweeps: Sequence[Sweep], title: str = "phala-router scaling") -> Any:
    """Throughput (with ideal-linear, model and shared-backend capacity lines) and p95
    latency against the replica count."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.6))
    ideal_bases: list[float] = []
    for index, (label, runs) in enumerate(_groups(sweeps).items()):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        _draw_series(left, runs, lambda p: p.rps, color, label)
        _draw_series(right, runs, lambda p: p.latency.p95_ms, color, label)
        counts, per_count = _by_count(runs, lambda p: p.rps)
        base_count, base_rps = counts[0], statistics.median(per_count[0])
        if not any(abs(base_rps - b) <= 0.05 * b for b in ideal_bases):  # one line per base
            ideal_bases.append(base_rps)
            left.plot(
                counts,
                [base_rps * n / base_count for n in counts],
                ":",
                color=IDEAL_COLOR,
                label=f"ideal linear ({base_rps:.0f} req/s x replicas / {base_count})",
            )
        models = [p.model_rps for p in runs[0].points]
        if all(m is not None for m in models):
            left.plot(
                [p.replicas for p in runs[0].points],
                models,
                "--",
                color=MODEL_COLOR,
                alpha=0.8,
                label=f"model capacity ({label})",
            )
        backend = runs[0].settings.get("backend_rps")
        if backend:
            left.axhline(
                backend,
                color=CAPACITY_COLOR,
                linestyle="-.",
                linewidth=1,
                label=f"shared backend capacity {backend:g} req/s",
            )
        knee = runs[0].knee
        if knee is not None and knee in counts:
            at = statistics.median(per_count[counts.index(knee)])
            left.annotate("knee", (knee, at), textcoords="offset points", xytext=(0, 8),
                          ha="center", color=color)  # fmt: skip
    all_counts = sorted({p.replicas for s in sweeps for p in s.points})
    for axis, label in ((left, "throughput (req/s)"), (right, "p95 latency (ms)")):
        axis.set_xlabel("replicas")
        axis.set_ylabel(label)
        axis.set_xticks(all_counts)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(f"{title}\n{conditions(sweeps)}", fontsize=11)
    fig.tight_layout()
    return fig


PROXY_TARGETS = {
    "fast": "phala-router (fast)",
    "fast-pure": "phala-router (fast, pure Python)",
    "fast-compiled": "phala-router (fast, compiled)",
    "fast-compiled-w2": "phala-router (compiled, 2 workers)",
    "haproxy": "HAProxy",
    "nginx": "nginx",
    "envoy": "Envoy",
}
PROXY_COLORS = {
    "fast": "tab:blue",
    "fast-pure": "tab:cyan",
    "fast-compiled": "tab:blue",
    "fast-compiled-w2": "tab:purple",
    "haproxy": "tab:orange",
    "nginx": "tab:green",
    "envoy": "tab:red",
}


def proxy_rows(document: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario name -> target -> row, for the router, HAProxy and nginx rows present."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for key, scenario in document["scenarios"].items():
        rows = {r["target"]: r for r in scenario["rows"] if r["target"] in PROXY_TARGETS}
        if rows:
            table[scenario.get("name", key)] = rows
    return table


def proxy_plot(document: dict[str, Any], path: Path) -> None:
    _save(proxy_figure(document), path)


def proxy_figure(document: dict[str, Any]) -> Any:
    """Grouped bars per scenario: req/s (median, whiskers = min..max of the rounds) and p99."""
    plt = _pyplot()
    table = proxy_rows(document)
    scenarios = list(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    present = {t: n for t, n in PROXY_TARGETS.items() if any(t in table[s] for s in scenarios)}
    width = 0.8 / max(len(present), 1)
    for offset, (target, name) in enumerate(present.items()):
        xs, rps, p99, low, high = [], [], [], [], []
        for i, scenario in enumerate(scenarios):
            row = table[scenario].get(target)
            if row is None:
                continue
            samples = [s["rps"] for s in row.get("samples", [])] or [row["rps"]]
            xs.append(i + (offset - (len(present) - 1) / 2) * width)
            rps.append(row["rps"])
            low.append(row["rps"] - min(samples))
            high.append(max(samples) - row["rps"])
            p99.append(row["p99_ms"])
        if not xs:
            continue
        color = PROXY_COLORS[target]
        left.bar(xs, rps, width, yerr=[low, high], capsize=3, color=color, label=name)
        right.bar(xs, p99, width, color=color, label=name)
    for axis, label in ((left, "req/s (median of rounds)"), (right, "p99 latency (ms)")):
        axis.set_xticks(range(len(scenarios)))
        axis.set_xticklabels([textwrap.fill(n, 16) for n in scenarios], fontsize=8)
        axis.set_yscale("log")  # scenarios differ by orders of magnitude
        axis.set_ylabel(label + ", log scale")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    workers = document.get("workers", 1)
    fig.suptitle(
        f"proxy throughput: phala-router vs HAProxy vs nginx ({workers} worker(s))\n"
        f"{document.get('method', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def load_sweeps(path: Path) -> list[Sweep]:
    """Sweeps back from a scaling result file (`bench.report.write_json`)."""
    sweeps = []
    for entry in json.loads(path.read_text()):
        points = []
        for raw in entry["points"]:
            fields = {k: v for k, v in raw.items() if k != "row"}
            fields["latency"] = Latency(**fields["latency"])
            points.append(Point(**fields))
        sweeps.append(
            Sweep(
                entry["label"],
                entry["target"],
                entry["settings"],
                points,
                entry.get("knee"),
                entry.get("environment", {}),
            )
        )
    return sweeps


def _compares(targets: set[str]) -> bool:
    """HAProxy, nginx and at least one build of the router measured side by side."""
    return {"haproxy", "nginx"} <= targets and any(t.startswith("fast") for t in targets)


def comparisons(results: Path = RESULTS) -> list[Path]:
    """Proxy result files that compare the router with both HAProxy and nginx."""
    found = []
    for path in sorted(results.glob("proxy-*.json")):
        rows = proxy_rows(json.loads(path.read_text()))
        if any(_compares(set(r)) for r in rows.values()):
            found.append(path)
    return found


def merged(files: Sequence[Path]) -> dict[str, Any]:
    """One document with every scenario of `files` (a later file wins a scenario)."""
    documents = [json.loads(f.read_text()) for f in files]
    scenarios: dict[str, Any] = {}
    for document in documents:
        scenarios.update(document["scenarios"])
    methods = list(dict.fromkeys(d.get("method", "") for d in documents))
    started = ", ".join(dict.fromkeys(d.get("started", "?")[:10] for d in documents))
    return {
        "scenarios": scenarios,
        "workers": documents[0].get("workers", 1) if documents else 1,
        "method": "; ".join(methods) + f" (runs of {started})",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["scaling"] and len(args) > 1:
        for name in args[1:]:
            source = Path(name)
            scaling_plot(load_sweeps(source), source.with_suffix(".png"))
            print(f"wrote {source.with_suffix('.png')}")
        return 0
    if args[:1] != ["proxy"]:
        print(
            "usage: python -m bench.plots proxy [-o OUT.png] [bench/results/proxy-*.json ...]\n"
            "       python -m bench.plots scaling bench/results/scaling_*.json ...",
            file=sys.stderr,
        )
        return 2
    args = args[1:]
    out = RESULTS / "proxy_comparison.png"
    if args[:1] == ["-o"] and len(args) > 1:
        out, args = Path(args[1]), args[2:]
    files = [Path(a) for a in args] or comparisons()
    if not files:
        print("no proxy result file with router, HAProxy and nginx rows", file=sys.stderr)
        return 1
    proxy_plot(merged(files), out)
    print(f"wrote {out} from {', '.join(f.name for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
