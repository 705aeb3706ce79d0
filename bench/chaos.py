"""Chaos runs: the router under load while replicas die, hang and restart, the Cloud API is
down, clients overload it, and the router itself shuts down. Longer versions of the cases in
tests/test_reliability_*.py, measured rather than asserted.

    python -m bench.chaos [--seconds 8] [--clients 16] [--only die,hang,...]

Everything runs in this process on 127.0.0.1 (router, replicas, simulator, load loop), so
absolute latencies include the load generator's own share of the CPU. Prints a table and
writes bench/results/chaos.json.

Columns: requests sent; failures as idempotent/non-idempotent (GET vs POST; every 4th
request is a POST); max gap = longest time without any successful answer; stop routing =
time from the fault until the router's last attempt to the faulty replica; p99 over all
requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import rss_mib
from router.simulator import Simulator, SimulatorConfig
from tests.reliability_support import (
    AttemptLog,
    Load,
    fleet,
    fleet_config,
    run_load,
)
from tests.support import RouterHandle, eventually, running_router

RESULTS = Path(__file__).parent / "results"
MIXED: Callable[[int], str] = lambda n: "POST" if n % 4 == 3 else "GET"  # noqa: E731


@dataclass
class Row:
    scenario: str
    requests: int
    failed_idempotent: int
    failed_other: int
    max_gap_s: float
    stop_routing_s: float | None
    p99_ms: float
    notes: dict[str, Any] = field(default_factory=dict)


def row(name: str, load: Load, stop: float | None = None, **notes: Any) -> Row:
    return Row(
        scenario=name,
        requests=len(load.results),
        failed_idempotent=len([r for r in load.failures() if r.method != "POST"]),
        failed_other=len(load.failures("POST")),
        max_gap_s=round(load.max_gap(), 3),
        stop_routing_s=None if stop is None else round(stop, 3),
        p99_ms=round(load.latency_p(0.99) * 1000, 1),
        notes=notes,
    )


def routable(router: RouterHandle) -> set[str]:
    return {r.id for r in router.app.reconciler.current.routable}


async def timed_run(
    router: RouterHandle,
    seconds: float,
    clients: int,
    fault_at: float,
    fault: Callable[[], Awaitable[None]],
    method_of: Callable[[int], str] = MIXED,
) -> tuple[Load, float]:
    """Load for `seconds`; `fault` runs `fault_at` seconds in. Returns the load and when the
    fault began."""
    end = time.monotonic() + seconds
    began: list[float] = []

    async def later() -> None:
        await asyncio.sleep(fault_at)  # the scenario's schedule, not a wait for a condition
        began.append(time.monotonic())
        await fault()

    task = asyncio.create_task(later())
    load = await run_load(
        router.url, clients=clients, until=lambda: time.monotonic() > end, method_of=method_of
    )
    await task
    return load, began[0]


# -- scenarios ----------------------------------------------------------------------------


async def replica_dies(seconds: float, clients: int) -> Row:
    async with fleet(4, latency=0.005) as replicas:
        async with running_router(fleet_config(replicas)) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 4)
            victim = replicas[1]
            in_flight: list[int] = []

            async def kill() -> None:
                in_flight.append(router.app.in_flight.get(victim.name, 0))
                await victim.kill()

            load, at = await timed_run(router, seconds, clients, seconds / 3, kill)
            last = log.last_to(victim.name)
            return row(
                "replica dies (1 of 4)",
                load,
                None if last is None else last - at,
                in_flight_on_victim=in_flight[0],
                failed_attempts_to_victim=log.failed_to(victim.name, at),
            )


async def replica_hangs(seconds: float, clients: int, per_try: str | None = None) -> Row:
    async with fleet(4, latency=0.005) as replicas:
        proxy = {"response_timeout": "1s", **({"per_try_timeout": per_try} if per_try else {})}
        config = fleet_config(replicas, proxy=proxy)
        async with running_router(config) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 4)
            victim = replicas[2]

            async def hang() -> None:
                victim.mode = "hang"

            load, at = await timed_run(router, seconds, clients, seconds / 3, hang)
            last = log.last_to(victim.name)
            victim.unhang()
            return row(
                f"replica hangs (1 of 4{f', per_try {per_try}' if per_try else ''})",
                load,
                None if last is None else last - at,
                response_timeout_s=1.0,
                timeouts=sum(1 for a in log.attempts if a.kind == "timeout"),
                retries=router.app.metrics.retry_counts(),
            )


async def replica_answers_503(seconds: float, clients: int) -> Row:
    """One replica starts answering 503 to requests (health checks still pass): gateway-error
    retries move its idempotent requests, and passive detection ejects it."""
    async with fleet(4, latency=0.005) as replicas:
        async with running_router(fleet_config(replicas)) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 4)
            victim = replicas[1]

            async def busy() -> None:
                victim.mode = "503"

            load, at = await timed_run(router, seconds, clients, seconds / 3, busy)
            last = log.last_to(victim.name)
            return row(
                "replica answers 503 (1 of 4)",
                load,
                None if last is None else last - at,
                statuses=sorted({r.status for r in load.failures()}),
                retries=router.app.metrics.retry_counts(),
            )


async def brown_out(seconds: float, clients: int, budget: bool = True) -> Row:
    """Every replica answers 503 from a third of the run on (health checks still pass): the
    retry budget caps the extra attempts instead of letting retries double the load
    (`budget=False`: a budget too large to bind, for comparison)."""
    unbounded = {"budget_percent": 100, "min_retry_concurrency": 1_000_000}
    proxy = {} if budget else {"retry_budget": unbounded}
    async with fleet(4, latency=0.005) as replicas:
        async with running_router(fleet_config(replicas, proxy=proxy)) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 4)

            async def busy() -> None:
                for replica in replicas:
                    replica.mode = "503"

            load, at = await timed_run(router, seconds, clients, seconds / 3, busy)
            during = [r for r in load.results if r.started >= at]
            attempts = sum(1 for a in log.attempts if a.at >= at)
            return row(
                f"brown-out: every replica 503{'' if budget else ', no budget'}",
                load,
                requests_during=len(during),
                attempts_per_request=round(attempts / max(len(during), 1), 3),
                retries=router.app.metrics.retry_counts(),
            )


async def rolling_restart(seconds: float, clients: int) -> Row:
    async with fleet(4, latency=0.005) as replicas:
        config = fleet_config(replicas, health={"passive": {"base_ejection": "500ms"}})
        async with running_router(config) as router:
            await eventually(lambda: len(routable(router)) == 4)
            down = max(0.2, seconds / 16)

            async def roll() -> None:
                for replica in replicas:
                    await replica.kill()
                    await asyncio.sleep(down)  # the replica's restart time
                    await replica.start()
                    await eventually(lambda r=replica: r.name in routable(router), 10)  # type: ignore[misc]

            load, _ = await timed_run(
                router,
                seconds,
                clients,
                0.5,
                roll,
                method_of=lambda n: ("GET", "PUT", "DELETE", "HEAD")[n % 4],
            )
            return row("rolling restart (4 of 4)", load, down_each_s=round(down, 2))


async def cloud_outage(seconds: float, clients: int, mode: str) -> Row:
    api_key = "chaos-bench-key"
    async with Simulator(SimulatorConfig.demo(api_key=api_key)) as sim:
        overlay = sim.router_overlay()
        interval = 1.0
        overlay["discovery"]["phala"].update({"interval": interval, "timeout": "1s"})
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            **overlay,
            "health": {"interval": "500ms", "unhealthy_interval": "200ms", "timeout": "500ms"},
        }
        environ = {"PHALA_CLOUD_API_KEY": api_key}
        async with running_router(config, environ=environ) as router:
            await eventually(lambda: len(routable(router)) == 3)
            sim.break_api(mode)
            added = await sim.add_replica(region="eu-west", node="node-eu-9")
            end = time.monotonic() + seconds
            load = await run_load(
                router.url, clients=clients, until=lambda: time.monotonic() > end, method_of=MIXED
            )
            failed_refreshes = router.app.discovery.consecutive_failures
            recovered = time.monotonic()
            sim.break_api("ok")
            await eventually(lambda: added.instance_id in router.app.reconciler.current.by_id, 400)
            pickup = time.monotonic() - recovered
            return row(
                f"cloud API outage ({mode})",
                load,
                interval_s=interval,
                pickup_after_recovery_s=round(pickup, 3),
                max_backoff_s=300.0,
                failed_refreshes=failed_refreshes,
            )


async def overload(seconds: float, clients: int, polite: bool) -> Row:
    async with fleet(2, latency=0.05) as replicas:
        config = fleet_config(replicas, proxy={"max_connections": 32, "max_pending": 64})
        async with running_router(config) as router:
            await eventually(lambda: len(routable(router)) == 2)
            rss_before = rss_mib()
            end = time.monotonic() + seconds
            healthz: list[float] = []

            async def probe() -> None:
                async with aiohttp.ClientSession() as client:
                    while time.monotonic() < end:
                        started = time.monotonic()
                        async with client.get(f"{router.admin_url}/healthz") as resp:
                            await resp.read()
                        healthz.append(time.monotonic() - started)
                        await asyncio.sleep(0.1)  # probe period

            prober = asyncio.create_task(probe())
            many = clients * 25
            load = await run_load(
                router.url,
                clients=many,
                until=lambda: time.monotonic() > end,
                method_of=MIXED,
                honour_retry_after=polite,
            )
            await prober
            ok = [r for r in load.results if r.status == 200]
            refused = [r for r in load.results if r.status == 503]
            fleet_load = replicas[0].fleet_load
            return row(
                f"overload ({many} {'polite' if polite else 'hammering'} clients)",
                load,
                answered_200=len(ok),
                refused_503=len(refused),
                other=len(load.results) - len(ok) - len(refused),
                peak_upstream=fleet_load.peak if fleet_load else None,
                max_connections=32,
                max_pending=64,
                healthz_max_ms=round(max(healthz) * 1000, 1) if healthz else None,
                rss_growth_mib=round(rss_mib() - rss_before, 1),
            )


async def graceful_shutdown(seconds: float, clients: int) -> Row:
    async with fleet(2, latency=0.2) as replicas:
        async with running_router(fleet_config(replicas)) as router:
            await eventually(lambda: len(routable(router)) == 2)
            stop_at: list[float] = []

            async def stop() -> None:
                stop_at.append(time.monotonic())
                await router.stop(grace=5.0)

            load, at = await timed_run(router, min(seconds, 3.0), clients, 1.0, stop)
            # Requests sent after the stop are refused by design: counted apart.
            before = Load([r for r in load.results if r.started < at])
            return row(
                "router graceful shutdown (requests sent before)",
                before,
                in_flight_at_stop=len([r for r in before.results if r.ended > at]),
                refused_after_stop=len(load.results) - len(before.results),
            )


async def gateway_replica_dies(seconds: float, clients: int, tls: bool) -> Row:
    """A replica stops behind the simulated dstack gateway: the router reaches the gateway
    fine, and the gateway answers 502 (plain HTTP) or closes (TLS)."""
    api_key = "chaos-bench-key"
    config_sim = SimulatorConfig.model_validate(
        {"api_key": api_key, "tls": tls, "replicas": [{"region": "us-east"}] * 4}
    )
    async with Simulator(config_sim) as sim:
        overlay = sim.router_overlay()
        overlay["discovery"]["phala"].update({"interval": 0.5, "timeout": "1s"})
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            **overlay,
            "health": {
                "interval": "200ms",
                "unhealthy_interval": "100ms",
                "timeout": "300ms",
                "passive": {"consecutive_failures": 3},
            },
        }
        environ = {"PHALA_CLOUD_API_KEY": api_key}
        async with running_router(config, environ=environ) as router:
            log = AttemptLog()
            router.app.observers.observers.append(log)
            await eventually(lambda: len(routable(router)) == 4)
            victim = sim.replicas[1].instance_id

            async def stop() -> None:
                await sim.stop_replica(victim)

            load, at = await timed_run(router, seconds, clients, seconds / 3, stop)
            last = log.last_to(victim)
            return row(
                f"replica dies behind gateway ({'tls' if tls else 'http'})",
                load,
                None if last is None else last - at,
                statuses=sorted({r.status for r in load.failures()}),
                retries=router.app.metrics.retry_counts(),
            )


SCENARIOS: dict[str, Callable[[float, int], Awaitable[Row]]] = {
    "die": replica_dies,
    "hang": replica_hangs,
    "hang-per-try": lambda s, c: replica_hangs(s, c, per_try="100ms"),
    "busy-503": replica_answers_503,
    "brownout": brown_out,
    "brownout-nobudget": lambda s, c: brown_out(s, c, budget=False),
    "rolling": rolling_restart,
    "outage-500": lambda s, c: cloud_outage(s, c, "500"),
    "outage-timeout": lambda s, c: cloud_outage(s, c, "timeout"),
    "outage-garbage": lambda s, c: cloud_outage(s, c, "garbage"),
    "overload": lambda s, c: overload(s, c, polite=False),
    "overload-polite": lambda s, c: overload(s, c, polite=True),
    "shutdown": graceful_shutdown,
    "gateway-http": lambda s, c: gateway_replica_dies(s, c, False),
    "gateway-tls": lambda s, c: gateway_replica_dies(s, c, True),
}


def table(rows: list[Row]) -> str:
    head = (
        f"{'scenario':<44} {'requests':>8} {'failed idem/other':>17} {'max gap s':>9} "
        f"{'stop routing s':>14} {'p99 ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        stop = "-" if r.stop_routing_s is None else f"{r.stop_routing_s:.3f}"
        failed = f"{r.failed_idempotent}/{r.failed_other}"
        lines.append(
            f"{r.scenario:<44} {r.requests:>8} {failed:>17} {r.max_gap_s:>9.3f} "
            f"{stop:>14} {r.p99_ms:>8.1f}"
        )
    lines.append("")
    for r in rows:
        if r.notes:
            lines.append(f"{r.scenario}: " + ", ".join(f"{k}={v}" for k, v in r.notes.items()))
    return "\n".join(lines)


async def run(names: list[str], seconds: float, clients: int) -> list[Row]:
    rows = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(await SCENARIOS[name](seconds, clients))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per scenario")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; use {', '.join(SCENARIOS)}")
    rows = asyncio.run(run(names, args.seconds, args.clients))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "seconds": args.seconds,
        "clients": args.clients,
        "rows": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
