"""Isolation between apps: app A's replicas all fail while app B serves steady traffic on
the same router; does B notice?

    python -m bench.isolation [--seconds 6] [--clients 8] [--rps 200] [--repeat 3] [--engine fast]

One router with two apps (`a.localhost`, `b.localhost`), three replicas each (5 ms of
service time), and two load loops of `--clients` each, one per app, all in this process on
127.0.0.1. Each loop is paced to at most `--rps` requests per second (each client waits out
its share of the period after an answer), so A's clients send no more when A fails fast than
when it serves: B then competes with the same offered load in every case. Each run starts
fresh (router and replicas) and lasts `--seconds`; half way in, A's fault starts and lasts
to the end:

- baseline: no fault (A healthy and loaded too);
- A dead: every A replica's port closes and its connections are reset;
- A hangs: every A request (health checks included) hangs until the response timeout;
- A 503: every A request but health checks gets 503.

For B: requests, failed requests (any non-2xx or connection failure), p50 and p99 over the
whole run, p99 / baseline p99 of the same repeat (the runs are interleaved per repeat so
machine noise hits each case alike), and p99 of the requests B sent after the fault began
over p99 of those before it, in the same run (seconds apart on the same router: the least
noisy comparison on a shared machine; the baseline row's value is that ratio with no fault,
the noise floor). The table shows medians over repeats; A's own counts are for context.
Prints a table and writes bench/results/isolation.json. Absolute latencies include the load
loop's own CPU on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.reliability_support import FleetReplica, Load, Result, fleet, run_load
from tests.support import RouterHandle, eventually, running_router

RESULTS = Path(__file__).parent / "results"
HOSTS = {"a": "a.localhost", "b": "b.localhost"}


async def _kill_all(replicas: list[FleetReplica]) -> None:
    for replica in replicas:
        await replica.kill()


async def _hang_all(replicas: list[FleetReplica]) -> None:
    for replica in replicas:
        replica.mode = "hang"


async def _503_all(replicas: list[FleetReplica]) -> None:
    for replica in replicas:
        replica.mode = "503"


Fault = Callable[[list[FleetReplica]], Awaitable[None]] | None
CASES: dict[str, Fault] = {
    "baseline": None,
    "A dead": _kill_all,
    "A hangs": _hang_all,
    "A 503": _503_all,
}


@dataclass
class Run:
    case: str
    repeat: int
    b_requests: int
    b_failed: int
    b_p50_ms: float
    b_p99_ms: float
    b_p99_after_over_before: float
    a_requests: int
    a_failed: int


def two_apps(a: list[FleetReplica], b: list[FleetReplica], engine: str) -> dict[str, Any]:
    def app(name: str, replicas: list[FleetReplica]) -> dict[str, Any]:
        static = [{"id": f"{name}-{r.name}", "url": r.url} for r in replicas]
        return {"name": name, "hosts": [HOSTS[name]], "discovery": {"static": static}}

    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "health": {
            "interval": "100ms",
            "unhealthy_interval": "50ms",
            "timeout": "200ms",
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
            "passive": {"consecutive_failures": 3, "base_ejection": "30s"},
        },
        "proxy": {
            "engine": engine,
            "connect_timeout": "500ms",
            "response_timeout": "2s",
            "drain_timeout": "2s",
        },
        "apps": [app("a", a), app("b", b)],
    }


@asynccontextmanager
async def two_fleets(engine: str) -> AsyncIterator[tuple[RouterHandle, list[FleetReplica]]]:
    async with fleet(3, latency=0.005) as a, fleet(3, latency=0.005) as b:
        async with running_router(two_apps(a, b, engine)) as router:
            app = router.app
            reconcilers = [app.reconciler, *(p.reconciler for p in app.apps.planes)]
            await eventually(lambda: all(len(r.current.routable) == 3 for r in reconcilers))
            yield router, a


async def one_run(
    case: str, repeat: int, seconds: float, clients: int, rps: float, engine: str
) -> Run:
    fault = CASES[case]
    period = clients / rps  # each client's share: one request per period at most

    async def pace(result: Result) -> None:
        await asyncio.sleep(max(0.0, period - (result.ended - result.started)))  # the schedule

    async with two_fleets(engine) as (router, a_replicas):
        end = time.monotonic() + seconds

        async def load(host: str) -> Load:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=30),
                headers={"Host": host},
            ) as session:
                return await run_load(
                    router.url,
                    clients=clients,
                    until=lambda: time.monotonic() > end,
                    session=session,
                    max_requests=10_000_000,
                    on_result=pace,
                )

        fault_at: list[float] = []

        async def break_a() -> None:
            await asyncio.sleep(seconds / 2)  # the run's schedule, not a wait
            fault_at.append(time.monotonic())
            if fault is not None:
                await fault(a_replicas)

        a_load, b_load, _ = await asyncio.gather(load(HOSTS["a"]), load(HOSTS["b"]), break_a())
        for replica in a_replicas:
            replica.unhang()  # let hung handlers end before the fleet closes
    return Run(
        case=case,
        repeat=repeat,
        b_requests=len(b_load.results),
        b_failed=len(b_load.failures()),
        b_p50_ms=round(b_load.latency_p(0.50) * 1000, 2),
        b_p99_ms=round(b_load.latency_p(0.99) * 1000, 2),
        b_p99_after_over_before=round(_after_over_before(b_load, fault_at[0]), 3),
        a_requests=len(a_load.results),
        a_failed=len(a_load.failures()),
    )


def _after_over_before(load: Load, at: float) -> float:
    """p99 of the requests sent from `at` on over p99 of those sent before it."""
    before, after = Load(), Load()
    for result in load.results:
        (after if result.started >= at else before).results.append(result)
    first = before.latency_p(0.99)
    return after.latency_p(0.99) / first if first else 0.0


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """Per case: medians over repeats, and B's p99 against the same repeat's baseline."""
    baseline = {r.repeat: r.b_p99_ms for r in runs if r.case == "baseline"}
    rows = []
    for case in CASES:
        mine = [r for r in runs if r.case == case]
        if not mine:
            continue
        ratios = [r.b_p99_ms / baseline[r.repeat] for r in mine if baseline.get(r.repeat)]
        rows.append(
            {
                "case": case,
                "b_requests": int(statistics.median(r.b_requests for r in mine)),
                "b_failed": sum(r.b_failed for r in mine),
                "b_p50_ms": statistics.median(r.b_p50_ms for r in mine),
                "b_p99_ms": statistics.median(r.b_p99_ms for r in mine),
                "b_p99_vs_baseline": round(statistics.median(ratios), 3) if ratios else None,
                "b_p99_after_over_before": statistics.median(
                    r.b_p99_after_over_before for r in mine
                ),
                "a_requests": int(statistics.median(r.a_requests for r in mine)),
                "a_failed": int(statistics.median(r.a_failed for r in mine)),
            }
        )
    return rows


def table(rows: list[dict[str, Any]], repeats: int) -> str:
    head = (
        f"{'case':<10} {'B req':>7} {'B failed':>8} {'B p50 ms':>9} {'B p99 ms':>9} "
        f"{'B p99/base':>10} {'B p99 after/before':>18} {'A req':>7} {'A failed':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = "-" if r["b_p99_vs_baseline"] is None else f"{r['b_p99_vs_baseline']:.2f}"
        lines.append(
            f"{r['case']:<10} {r['b_requests']:>7} {r['b_failed']:>8} {r['b_p50_ms']:>9.2f} "
            f"{r['b_p99_ms']:>9.2f} {ratio:>10} {r['b_p99_after_over_before']:>18.2f} "
            f"{r['a_requests']:>7} {r['a_failed']:>8}"
        )
    lines.append(
        f"(medians over {repeats} repeat(s); B failed is the sum over all repeats; "
        "B p99/base is against the baseline run of the same repeat; after/before splits "
        "each run at the fault)"
    )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Run]:
    runs = []
    for repeat in range(args.repeat):
        for case in CASES:
            print(f"repeat {repeat + 1}/{args.repeat}: {case} ...", file=sys.stderr, flush=True)
            runs.append(
                await one_run(case, repeat, args.seconds, args.clients, args.rps, args.engine)
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients per app")
    parser.add_argument("--rps", type=float, default=200.0, help="most requests/s per app")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--engine", choices=("fast", "aiohttp"), default="fast")
    parser.add_argument("--out", type=Path, default=RESULTS / "isolation.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rps <= 0 or args.clients < 1 or args.repeat < 1:
        parser.error("--seconds and --rps must be positive, --clients and --repeat at least 1")
    # The router's own warnings (A's replicas failing) are the point of the run, not news.
    logging.basicConfig(level=logging.ERROR)
    runs = asyncio.run(run(args))
    rows = summary(runs)
    print(table(rows, args.repeat))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "engine": args.engine,
        "seconds": args.seconds,
        "clients_per_app": args.clients,
        "rps_per_app": args.rps,
        "repeats": args.repeat,
        "summary": rows,
        "runs": [asdict(r) for r in runs],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
