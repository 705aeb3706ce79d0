"""Faults under load, through the whole router (static discovery, active and passive health):
a replica killed mid-run, a replica that hangs, a rolling restart of every replica, and the
router's own graceful shutdown. Clients must not notice what the router can hide."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp

from tests.reliability_support import AttemptLog, Result, fleet, fleet_config, run_load
from tests.support import eventually, running_router


def routable(router: Any) -> set[str]:
    return {r.id for r in router.app.reconciler.current.routable}


def attempts_of(router: Any) -> AttemptLog:
    log = AttemptLog()
    router.app.observers.observers.append(log)
    return log


async def test_killing_one_of_four_replicas_under_load_fails_no_idempotent_request(
    engine: str,
) -> None:
    async with fleet(4, latency=0.002) as replicas:
        config = fleet_config(replicas, proxy={"engine": engine})
        async with running_router(config) as router:
            log = attempts_of(router)
            await eventually(lambda: len(routable(router)) == 4)
            victim = replicas[1]
            kill: dict[str, Any] = {}

            async def chaos() -> None:
                await eventually(lambda: victim.served >= 20)
                kill["in_flight"] = router.app.in_flight.get(victim.name, 0)
                kill["at"] = time.monotonic()
                await victim.kill()

            chaos_task = asyncio.create_task(chaos())
            after_kill = [0]

            def count(result: Result) -> None:
                after_kill[0] += "at" in kill

            # Every 4th request is a POST (not idempotent); the run ends 300 answers after the kill.
            load = await run_load(
                router.url,
                clients=8,
                method_of=lambda n: "POST" if n % 4 == 3 else "GET",
                until=lambda: after_kill[0] >= 300,
                on_result=count,
            )
            await chaos_task

    assert load.failures("GET") == []
    assert len(load.failures("POST")) <= kill["in_flight"], load.failures("POST")
    # The router stopped sending to the dead replica quickly (connect failures, then ejection).
    last = log.last_to(victim.name)
    assert last is not None
    assert last - kill["at"] < 1.0
    answered_after = {r.replica for r in load.results if r.started > kill["at"]}
    assert answered_after == {r.name for r in replicas} - {victim.name}


async def test_a_hanging_replica_costs_one_response_timeout_then_is_ejected(
    engine: str,
) -> None:
    async with fleet(4) as replicas:
        config = fleet_config(replicas, proxy={"engine": engine, "response_timeout": "300ms"})
        async with running_router(config) as router:
            log = attempts_of(router)
            await eventually(lambda: len(routable(router)) == 4)
            stuck = replicas[2]
            stuck.mode = "hang"
            load = await run_load(router.url, clients=4, until=lambda: False, max_requests=200)
            assert load.failures() == []
            assert stuck.name not in load.by_replica()
            # An answer never waits for more than one timeout on the stuck replica.
            assert load.latency_p(1.0) < 0.3 + 0.25
            timeouts = [a for a in log.attempts if a.replica == stuck.name]
            assert timeouts
            assert {a.kind for a in timeouts} == {"timeout"}
            assert stuck.name not in routable(router)
            # Out by passive ejection (traffic timeouts) or failed active checks, whichever first.
            assert router.app.reconciler.current.by_id[stuck.name].state in {"ejected", "unhealthy"}
            stuck.unhang()


async def test_a_rolling_restart_of_every_replica_fails_no_idempotent_request(
    engine: str,
) -> None:
    async with fleet(4, latency=0.002) as replicas:
        config = fleet_config(
            replicas,
            proxy={"engine": engine},
            health={"passive": {"consecutive_failures": 3, "base_ejection": "100ms"}},
        )
        async with running_router(config) as router:
            await eventually(lambda: len(routable(router)) == 4)
            done = asyncio.Event()

            async def roll() -> None:
                for replica in replicas:
                    before = replica.served
                    await eventually(lambda: replica.served >= before + 10)  # noqa: B023
                    await replica.kill()
                    await eventually(lambda: replica.name not in routable(router))  # noqa: B023
                    await replica.start()  # same address, like a restarted CVM
                    await eventually(lambda: replica.name in routable(router), 10)  # noqa: B023
                done.set()

            roller = asyncio.create_task(roll())
            load = await run_load(
                router.url,
                clients=6,
                method_of=lambda n: ("GET", "HEAD", "PUT", "DELETE")[n % 4],
                until=done.is_set,
            )
            await roller
    assert load.failures() == [], load.failures()[:5]
    assert set(load.by_replica()) == {r.name for r in replicas}


async def test_graceful_shutdown_finishes_in_flight_and_refuses_only_after_readyz_503(
    engine: str,
) -> None:
    async with fleet(2, latency=0.4) as replicas:
        config = fleet_config(replicas, proxy={"engine": engine})
        async with running_router(config) as router:
            await eventually(lambda: len(routable(router)) == 2)
            host, port = router.app.engine.addresses[0]
            async with aiohttp.ClientSession() as client:
                assert (await client.get(f"{router.admin_url}/readyz")).status == 200

                async def slow(method: str) -> int:
                    data = b"payload" if method == "POST" else None
                    async with client.request(method, f"{router.url}/slow", data=data) as resp:
                        await resp.read()
                        return resp.status

                requests = [
                    asyncio.create_task(slow(m)) for m in ("GET", "POST", "GET", "POST", "GET")
                ]
                await eventually(lambda: sum(r.in_flight for r in replicas) == 5)
                stopping = asyncio.create_task(router.stop(grace=3.0))
                first_not_ready: float | None = None
                first_refused: float | None = None
                deadline = time.monotonic() + 5
                while first_refused is None and time.monotonic() < deadline:
                    async with client.get(f"{router.admin_url}/readyz") as resp:
                        if resp.status == 503 and first_not_ready is None:
                            first_not_ready = time.monotonic()
                    if not _accepts(host, port):
                        first_refused = time.monotonic()
                    await asyncio.sleep(0.01)  # polling interval, not a wait for a condition
                statuses = await asyncio.gather(*requests)
                await stopping
    assert statuses == [200] * 5
    assert first_refused is not None
    assert first_not_ready is not None
    assert first_not_ready <= first_refused


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
