"""What abusive clients cost the router, per engine: CPU seconds, RSS growth, and how slow a
concurrent small GET became (the same patterns tests/test_exhaustion.py budgets).

    python -m bench.abuse [--engines fast,aiohttp] [--header-mib 48] [--chunks-kib 64]
                          [--flood-seconds 3] [--idle 1000]

The router runs as `phala-router serve` in its own process (its CPU and RSS from /proc),
with two echo replicas in their own processes and least-request routing, so the probe's
GETs go to the replica the abuse is not using. Prints a table and writes
bench/results/abuse-<time>.{json,md}.

Patterns: `upload` (a normal Content-Length body, the baseline), `endless header` (one
header line with no CRLF), `1-byte chunks` vs `one chunk` (the same body chunked two
ways), `small GETs` (per-request cost), `upgrade flood` (bytes after an Upgrade head the
replica never answers), `idle connections` (half silent, half a head that never ends).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from tests.abuse_support import (
    Outcome,
    RouterProcess,
    endless_header,
    idle_connections,
    measure,
    replica_processes,
    small_gets,
    upgrade_flood,
    upload,
)

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024
Pattern = tuple[str, Callable[[int], Awaitable[tuple[int, int | None]]]]


def patterns(args: argparse.Namespace) -> list[Pattern]:
    header, chunks = args.header_mib * MIB, args.chunks_kib * 1024
    return [
        ("upload", lambda port: upload(port, header)),
        ("endless header", lambda port: endless_header(port, header)),
        ("one chunk", lambda port: upload(port, chunks, "one")),
        ("1-byte chunks", lambda port: upload(port, chunks, "tiny")),
        ("small GETs", lambda port: small_gets(port, args.gets)),
        ("idle connections", lambda port: idle_connections(port, args.idle)),
        # Last: what it leaves allocated would blur the RSS of the patterns after it.
        ("upgrade flood", lambda port: upgrade_flood(port, 1024 * MIB, args.flood_seconds)),
    ]


async def run_engine(router: RouterProcess, todo: list[Pattern]) -> list[Outcome]:
    outcomes = []
    for name, abuse in todo:

        def on_router(
            abuse: Callable[[int], Awaitable[tuple[int, int | None]]] = abuse,
        ) -> Awaitable[tuple[int, int | None]]:
            return abuse(router.port)

        outcomes.append(await measure(router, name, on_router))
    return outcomes


def table(results: dict[str, list[Outcome]]) -> str:
    lines = [
        "| engine | pattern | sent | answer | CPU s | RSS growth MiB | probe p90 ms | probe max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, outcomes in results.items():
        for o in outcomes:
            worst = max(o.probe_ms, default=float("nan"))
            lines.append(
                f"| {engine} | {o.name} | {_size(o)} | {o.answer or '-'} | {o.cpu_s:.2f} "
                f"| {o.rss_growth_mib:.1f} | {o.probe_p90_ms():.0f} | {worst:.0f} |"
            )
    return "\n".join(lines)


def _size(outcome: Outcome) -> str:
    """Bytes the abuser sent, or the count for the patterns that count requests/connections."""
    sent = outcome.sent
    if outcome.name in ("small GETs", "idle connections"):
        return f"{sent} x"
    return f"{sent / MIB:.1f} MiB" if sent >= MIB else f"{sent / 1024:.0f} KiB"


def summary(outcome: Outcome) -> dict[str, object]:
    """An outcome for the JSON file: the probe's latencies summarised, not listed."""
    document = asdict(outcome)
    latencies = document.pop("probe_ms")
    document["probe"] = {
        "count": len(latencies),
        "p90_ms": round(outcome.probe_p90_ms(), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
    }
    return document


def ratios(outcomes: list[Outcome], args: argparse.Namespace) -> dict[str, float]:
    by_name = {o.name: o for o in outcomes}
    chunks = args.chunks_kib * 1024
    tiny, one, gets = by_name["1-byte chunks"], by_name["one chunk"], by_name["small GETs"]
    return {
        "us_per_1_byte_chunk": round(tiny.cpu_s / chunks * 1e6, 2),
        "us_per_small_get": round(gets.cpu_s / args.gets * 1e6, 2),
        "tiny_vs_one_chunk_cpu": round(tiny.cpu_s / max(one.cpu_s, 0.01), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="fast,aiohttp")
    parser.add_argument("--header-mib", type=int, default=48)
    parser.add_argument("--chunks-kib", type=int, default=64)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--flood-seconds", type=float, default=3.0)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)
    results: dict[str, list[Outcome]] = {}
    with replica_processes() as ports:
        for engine in args.engines.split(","):
            router = RouterProcess(engine, ports)
            router.start()
            try:
                results[engine] = asyncio.run(run_engine(router, patterns(args)))
            finally:
                router.stop()
    text = table(results)
    derived = {engine: ratios(outcomes, args) for engine, outcomes in results.items()}
    print(text)
    print(json.dumps(derived, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"abuse-{time.strftime('%Y%m%d-%H%M%S')}"
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.platform(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": {e: [summary(o) for o in outs] for e, outs in results.items()},
        "derived": derived,
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    stem.with_suffix(".md").write_text(text + "\n\n" + json.dumps(derived, indent=2) + "\n")
    print(f"written {stem}.json and .md")


if __name__ == "__main__":
    main()
