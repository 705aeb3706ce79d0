"""The retry policy end to end, once per engine: gateway errors and chosen statuses move an
idempotent request to another replica, Retry-After is honoured, the budget caps the extra
load, a started response is never retried, and a per-try timeout leaves a slow replica."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.retry_support import (
    Recorder,
    ScriptedReplica,
    answer_cut_after_first_byte,
    answer_hang,
    answer_ok,
    answer_status,
    metric,
    retry_config,
    scripted_replicas,
)
from tests.support import eventually, running_router

# A guard against a hanging test, far above anything the router should take.
GUARD = aiohttp.ClientTimeout(total=15)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_error_is_retried_on_another_replica(
    engine: str, client: aiohttp.ClientSession, status: int
) -> None:
    async with scripted_replicas(("bad", answer_status(status)), ("good", answer_ok)) as reps:
        bad = reps[0]
        async with running_router(retry_config(engine, reps)) as router:
            recorder = Recorder()
            router.app.observers.observers.append(recorder)
            for _ in range(6):  # sequential: the given-up connections get reused in between
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"replica": "good"}
            assert bad.hits == 3  # round robin: half the requests started there
            retried = [r for r in recorder.records if r.retries]
            assert [r.attempts for r in retried] == [(("bad", str(status)),)] * 3
            assert all(r.replica is not None and r.replica.id == "good" for r in retried)
            sample = 'router_retries_by_reason_total{reason="gateway-error"}'
            assert await metric(client, router.admin_url, sample) == 3


@pytest.mark.parametrize("padding", [10, 200_000])
async def test_given_up_response_never_reaches_the_client(
    engine: str, client: aiohttp.ClientSession, padding: int
) -> None:
    """A small failed response is read and discarded, a large one cut; either way the
    requests after it (on reused or new connections) get clean answers."""
    bad_answer = answer_status(503, padding=padding)
    async with scripted_replicas(("bad", bad_answer), ("good", answer_ok)) as reps:
        async with running_router(retry_config(engine, reps)) as router:
            for _ in range(8):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status == 200
                    assert await resp.read() == b'{"replica": "good"}'
            assert reps[0].hits == 4


async def test_post_is_not_retried_after_a_gateway_error(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with scripted_replicas(("bad", answer_status(502)), ("good", answer_ok)) as reps:
        bad, good = reps
        async with running_router(retry_config(engine, reps)) as router:
            statuses = []
            for _ in range(4):
                async with client.post(f"{router.url}/x", data=b"body", timeout=GUARD) as resp:
                    statuses.append(resp.status)
                    if resp.status == 502:
                        assert await resp.text() == "bad says 502"  # relayed as it was
            assert sorted(statuses) == [200, 200, 502, 502]
            assert (bad.hits, good.hits) == (2, 2)


async def test_chosen_status_is_retried_only_when_listed(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with scripted_replicas(("busy", answer_status(429)), ("good", answer_ok)) as reps:
        config = retry_config(
            engine,
            reps,
            retry_on=["reset", "retriable-status-codes"],
            retriable_status_codes=[429],
        )
        async with running_router(config) as router:
            for _ in range(4):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status == 200
        async with running_router(retry_config(engine, reps)) as router:
            statuses = set()
            for _ in range(4):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    statuses.add(resp.status)
            assert statuses == {200, 429}


@pytest.mark.parametrize(("retry_after", "busy_hits"), [(None, 4), ("30", 2)])
async def test_503_with_retry_after_gets_no_retries_while_it_lasts(
    engine: str, client: aiohttp.ClientSession, retry_after: str | None, busy_hits: int
) -> None:
    """`busy` answers 503 (with or without Retry-After: 30), `broken` 502. Requests that
    start on `broken` would retry on `busy`; after its Retry-After they do not, so `busy`
    sees only the requests that started there."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    async with scripted_replicas(
        ("busy", answer_status(503, headers=headers)), ("broken", answer_status(502))
    ) as reps:
        busy, broken = reps
        async with running_router(retry_config(engine, reps)) as router:
            for _ in range(2):  # busy answers at least once: its Retry-After is known
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status in (502, 503)
            busy.hits = broken.hits = 0
            for _ in range(4):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status in (502, 503)
                    if resp.status == 503 and retry_after:
                        assert resp.headers["Retry-After"] == retry_after
            assert broken.hits == 4
            assert busy.hits == busy_hits


async def test_budget_caps_retries_when_every_replica_answers_503(
    engine: str, client: aiohttp.ClientSession
) -> None:
    """20 requests in flight at once, every first attempt answered 503 together: the default
    budget (20% of active requests, at least 3) lets 4 retry; the rest get their 503 back
    at once and are counted."""
    requests, arrivals = 20, 0
    first_wave, release = asyncio.Event(), asyncio.Event()

    async def brown_out(replica: ScriptedReplica, request: web.Request) -> web.StreamResponse:
        nonlocal arrivals
        arrivals += 1
        if arrivals <= requests:
            if arrivals == requests:
                first_wave.set()
            await first_wave.wait()
        else:  # a retry: held until every request has been decided
            await release.wait()
        return web.Response(status=503, text="overloaded")

    async with scripted_replicas(*[(n, brown_out) for n in ("a", "b", "c")]) as reps:
        async with running_router(retry_config(engine, reps, retries=1)) as router:

            async def one() -> int:
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    await resp.read()
                    return resp.status

            tasks = [asyncio.create_task(one()) for _ in range(requests)]
            admin = router.admin_url

            async def all_decided() -> bool:
                exhausted = await metric(client, admin, "router_retry_budget_exhausted_total")
                return arrivals - requests + exhausted == requests

            await eventually(all_decided)
            release.set()
            assert await asyncio.gather(*tasks) == [503] * requests
            retried = await metric(client, admin, "router_retries_total")
            exhausted = await metric(client, admin, "router_retry_budget_exhausted_total")
            assert retried / requests <= 0.20
            assert (retried, exhausted) == (4, 16)


async def test_response_cut_after_its_first_byte_is_not_retried(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with scripted_replicas(("cut", answer_cut_after_first_byte), ("good", answer_ok)) as reps:
        cut, good = reps
        async with running_router(retry_config(engine, reps)) as router:
            failures = 0
            for _ in range(2):
                try:
                    async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                        assert resp.status == 200
                        await resp.read()
                except aiohttp.ClientPayloadError:
                    failures += 1
            assert failures == 1
            assert (cut.hits, good.hits) == (1, 1)


async def test_per_try_timeout_moves_a_slow_request_to_a_fast_replica(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with scripted_replicas(("slow", answer_hang), ("fast", answer_ok)) as reps:
        slow, fast = reps
        config = retry_config(engine, reps, per_try_timeout="200ms", response_timeout="30s")
        async with running_router(config) as router:
            for _ in range(2):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"replica": "fast"}
            assert (slow.hits, fast.hits) == (1, 2)
            sample = 'router_retries_by_reason_total{reason="per-try-timeout"}'
            assert await metric(client, router.admin_url, sample) == 1


@pytest.mark.parametrize(("status", "hits"), [(502, 2), (500, 5)])
async def test_gateway_errors_eject_a_replica_apart_from_the_apps_own_500s(
    engine: str, client: aiohttp.ClientSession, status: int, hits: int
) -> None:
    """With `count_5xx: false` an app's 500 is not a replica failure, but a gateway error
    is: two in a row eject the replica (and its requests were retried)."""
    async with scripted_replicas(("bad", answer_status(status)), ("good", answer_ok)) as reps:
        config = retry_config(engine, reps)
        config["health"]["passive"] = {"consecutive_failures": 2, "count_5xx": False}
        async with running_router(config) as router:
            statuses = []
            for _ in range(10):
                async with client.get(f"{router.url}/x", timeout=GUARD) as resp:
                    statuses.append(resp.status)
            assert reps[0].hits == hits
            assert statuses.count(200) == 10 - (hits if status == 500 else 0)


async def test_head_request_is_retried_and_the_connection_stays_usable(
    engine: str, client: aiohttp.ClientSession
) -> None:
    """A HEAD's 503 has no body to discard: the next requests on the connection still parse."""
    async with scripted_replicas(("bad", answer_status(503)), ("good", answer_ok)) as reps:
        async with running_router(retry_config(engine, reps)) as router:
            for method in ("HEAD", "GET", "HEAD", "GET"):
                async with client.request(method, f"{router.url}/x", timeout=GUARD) as resp:
                    assert resp.status == 200
                    body = await resp.read()
                    assert body == (b"" if method == "HEAD" else b'{"replica": "good"}')
            assert reps[0].hits == 2
