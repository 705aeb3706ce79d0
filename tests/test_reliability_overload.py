"""Overload: more clients than the replicas can serve. The router proxies at most
`proxy.max_connections` requests at once, queues at most `proxy.max_pending` more for at most
`connect_timeout`, refuses the rest at once with 503 and Retry-After, and stays responsive."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from router.errors import Overloaded
from router.proxy.admission import Admission
from tests.reliability_support import fleet, fleet_config
from tests.support import eventually, running_router


async def _timed(client: aiohttp.ClientSession, url: str) -> tuple[int, float, str | None, str]:
    started = time.monotonic()
    async with client.get(url) as resp:
        body = await resp.text()
        return resp.status, time.monotonic() - started, resp.headers.get("Retry-After"), body


async def test_a_burst_beyond_capacity_is_bounded_and_refused_with_retry_after(
    engine: str,
) -> None:
    async with fleet(2, latency=0.3) as replicas:
        proxy = {"engine": engine, "max_connections": 4, "max_pending": 4, "connect_timeout": "2s"}
        async with running_router(fleet_config(replicas, proxy=proxy)) as router:
            await eventually(lambda: len(router.app.reconciler.current.routable) == 2)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as client:
                burst = [
                    asyncio.create_task(_timed(client, f"{router.url}/work")) for _ in range(60)
                ]
                # The router stays responsive on its admin port during the burst.
                liveness = await _timed(client, f"{router.admin_url}/healthz")
                answers = await asyncio.gather(*burst)
                after = await _timed(client, f"{router.url}/work")

    assert liveness[0] == 200
    # Answered before any proxied request (each waits 0.3 s on a replica) could finish: not
    # queued behind the burst. Relative to the same run, not a constant, so load cannot fail it.
    assert liveness[1] < min(a[1] for a in answers if a[0] == 200)
    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert {a[0] for a in refused} == {503}
    assert 8 <= len(ok) < 60
    for _status, seconds, retry_after, body in refused:
        assert retry_after == "1"
        assert '"overloaded"' in body
        assert seconds < 1.0  # refused at once, not after queueing for connect_timeout (2 s)
    # Never more than max_connections on the replicas at once.
    assert replicas[0].fleet_load is not None
    assert replicas[0].fleet_load.peak <= 4
    assert after[0] == 200  # and back to normal once the burst is over


async def test_a_queued_request_waits_at_most_connect_timeout(engine: str) -> None:
    async with fleet(1, latency=1.0) as replicas:
        proxy = {
            "engine": engine,
            "max_connections": 1,
            "max_pending": 5,
            "connect_timeout": "200ms",
        }
        async with running_router(fleet_config(replicas, proxy=proxy)) as router:
            await eventually(lambda: len(router.app.reconciler.current.routable) == 1)
            async with aiohttp.ClientSession() as client:
                first = asyncio.create_task(_timed(client, f"{router.url}/a"))
                await eventually(lambda: replicas[0].in_flight == 1)
                queued = await asyncio.gather(
                    _timed(client, f"{router.url}/b"), _timed(client, f"{router.url}/c")
                )
                served = await first
    assert served[0] == 200
    for status, seconds, retry_after, _ in queued:
        assert status == 503
        assert retry_after == "1"
        assert seconds > 0.15  # queued for connect_timeout (200 ms) first
        assert seconds < served[1]  # and refused before the busy slot (1 s replica) freed


# -- the admission gate alone (no sockets) ---------------------------------------------------


async def test_admission_hands_slots_over_in_arrival_order() -> None:
    gate = Admission(max_active=1, max_pending=2)
    order: list[str] = []
    release = asyncio.Event()

    async def user(name: str) -> None:
        async with gate.slot(wait=5):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(user("a"))
    await eventually(lambda: gate.active == 1)
    waiting = [asyncio.create_task(user(n)) for n in ("b", "c")]
    await eventually(lambda: gate.pending == 2)
    with pytest.raises(Overloaded):
        async with gate.slot(wait=5):
            pass
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a", "b", "c"]
    assert (gate.active, gate.pending, gate.refused) == (0, 0, 1)


async def test_admission_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    gate = Admission(max_active=1, max_pending=5)
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.slot(wait=5):
            await hold.wait()

    task = asyncio.create_task(holder())
    await eventually(lambda: gate.active == 1)
    waiter = asyncio.create_task(holder())
    await eventually(lambda: gate.pending == 1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    hold.set()
    await task
    assert (gate.active, gate.pending) == (0, 0)
    async with gate.slot(wait=0.1):
        assert gate.active == 1


async def test_admission_raising_the_limit_frees_waiters() -> None:
    gate = Admission(max_active=1, max_pending=5)
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.slot(wait=5):
            await hold.wait()

    tasks = [asyncio.create_task(holder()) for _ in range(3)]
    await eventually(lambda: (gate.active, gate.pending) == (1, 2))
    gate.configure(max_active=3, max_pending=5)
    assert (gate.active, gate.pending) == (3, 0)
    hold.set()
    await asyncio.gather(*tasks)
    assert gate.active == 0
