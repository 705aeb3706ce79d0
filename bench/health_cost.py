"""What active health checking costs: CPU share of one core and memory to probe N replicas.

Replicas are host names (`r0.bench`, `r1.bench`, ...) all mapped by `connect_to` onto one
aiohttp server running in a *separate process*, so this process's CPU time
(`time.process_time`) is the checker's alone: probes, scheduling and the reconciler it
feeds. Each size runs until every replica is healthy, settles for one interval, then is
measured for `--seconds`.

    python -m bench.health_cost [--sizes 100,1000] [--interval 5] [--seconds 15] [--fresh]
                                [--uvloop]

`--fresh` also measures with a new connection per check (force_close) for comparison with
the default of keeping connections between checks. Prints a table and writes
bench/results/health_cost.json (health_cost_uvloop.json with --uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.procs import rss_mib
from router.balancing.round_robin import RoundRobin
from router.health.active import HealthChecker
from router.health.probe import make_health_session
from router.health.settings import HealthConfig
from router.models import Replica
from router.reach import ConnectTo, ConnectToResolver, client_ssl_context
from router.reconciler import Reconciler
from router.snapshot import Policy

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    replicas: int
    connections: str
    interval_s: float
    measured_s: float
    checks: int
    checks_per_s: float
    cpu_percent_of_core: float
    cpu_ms_per_check: float
    rss_mib: float
    rss_growth_mib: float


# -- the replica server, in its own process -----------------------------------------------


def serve() -> None:
    hits = 0

    async def health(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"hits": hits})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=2048).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def server_hits(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/stats") as response,
    ):
        hits: int = (await response.json())["hits"]
        return hits


# -- one measurement ----------------------------------------------------------------------


def fresh_session(connect_to: dict[str, str], cfg: HealthConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=ConnectToResolver(ConnectTo(connect_to)),
        ssl=client_ssl_context(),
        limit=cfg.max_concurrency,
        force_close=True,
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def measure(n: int, port: int, interval: float, seconds: float, fresh: bool) -> Row:
    cfg = HealthConfig(interval=interval)
    connect_to = {"*.bench": f"127.0.0.1:{port}"}
    replicas = [
        Replica(id=f"r{i}", url=f"http://r{i}.bench", scheme="http", host=f"r{i}.bench", port=80)
        for i in range(n)
    ]
    rss_before = rss_mib()
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
    reconciler.set_replicas(replicas)

    def sink(rid: str, view: object, urgent: bool) -> None:
        reconciler.set_health(rid, view, urgent=urgent)  # type: ignore[arg-type]

    def session() -> aiohttp.ClientSession:
        if fresh:
            return fresh_session(connect_to, cfg)
        return make_health_session(connect_to, client_ssl_context(), cfg)

    checker = HealthChecker(cfg, sink, session, rng=random.Random(42))
    checker.update_replicas(replicas)
    task = asyncio.create_task(checker.run())
    try:
        deadline = time.monotonic() + 30
        while len(reconciler.current.routable) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(reconciler.current.routable)}/{n} became healthy")
            await asyncio.sleep(0.2)  # a benchmark warm-up, not a test wait
        await asyncio.sleep(interval)  # let the schedule settle into its steady state
        hits0, cpu0, wall0 = await server_hits(port), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        hits1 = await server_hits(port)
        rss = rss_mib()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        reconciler.close()
    wall, cpu, checks = wall1 - wall0, cpu1 - cpu0, hits1 - hits0 - 1  # minus our /stats call
    return Row(
        replicas=n,
        connections="fresh" if fresh else "kept",
        interval_s=interval,
        measured_s=round(wall, 2),
        checks=checks,
        checks_per_s=round(checks / wall, 1),
        cpu_percent_of_core=round(100 * cpu / wall, 2),
        cpu_ms_per_check=round(1000 * cpu / max(checks, 1), 3),
        rss_mib=round(rss, 1),
        rss_growth_mib=round(rss - rss_before, 1),
    )


async def run(sizes: list[int], interval: float, seconds: float, fresh: bool) -> list[Row]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.health_cost", "--serve", stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    port = int((await server.stdout.readline()).decode())
    rows = []
    try:
        for n in sizes:
            for fresh_connections in [False, True] if fresh else [False]:
                rows.append(await measure(n, port, interval, seconds, fresh_connections))
                print_row(rows[-1])
    finally:
        server.terminate()
        await server.wait()
    return rows


COLUMNS = [
    ("replicas", "replicas", 8),
    ("connections", "conns", 6),
    ("checks_per_s", "checks/s", 9),
    ("cpu_percent_of_core", "CPU % core", 11),
    ("cpu_ms_per_check", "CPU ms/check", 13),
    ("rss_mib", "RSS MiB", 8),
    ("rss_growth_mib", "+RSS MiB", 9),
]


def print_header() -> None:
    print("  ".join(f"{title:>{width}}" for _, title, width in COLUMNS))


def print_row(row: Row) -> None:
    values = asdict(row)
    print("  ".join(f"{values[key]!s:>{width}}" for key, _, width in COLUMNS), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run the checker on uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"health check cost, interval {args.interval:g}s, measured {args.seconds:g}s each")
    print_header()
    if args.uvloop:
        import uvloop

        rows = uvloop.run(run(sizes, args.interval, args.seconds, args.fresh))
    else:
        rows = asyncio.run(run(sizes, args.interval, args.seconds, args.fresh))
    loop_name = "uvloop" if args.uvloop else "asyncio"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("health_cost_uvloop.json" if args.uvloop else "health_cost.json")
    out.write_text(
        json.dumps(
            {
                "benchmark": "health_cost",
                "goal": "<= 10% of one core at 1,000 replicas, 5 s interval",
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
                "cpus": os.cpu_count(),
                "event_loop": loop_name,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
