"""Exhaustion, both engines: one abusive client must not cost the router unbounded CPU or
memory, and must not stall everyone else. The router runs as `phala-router serve` in a
child process so its CPU seconds and RSS are its own (tests/abuse_support.py says why);
while each pattern runs, a probe sends small GETs and each must answer within 100 ms.

Budgets are ratios against a baseline measured in the same test where one exists (a normal
upload of the same size, the CPU of a small GET, the probe's latency on an idle router),
and generous enough for a loaded 2-core machine. `bench/abuse.py` prints the numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.abuse_support import (
    Outcome,
    RouterProcess,
    endless_header,
    idle_connections,
    measure,
    p90,
    quiet_probe,
    replica_processes,
    small_gets,
    upgrade_flood,
    upload,
)
from tests.conftest import ENGINES

MIB = 1024 * 1024


@pytest.fixture(scope="module", params=ENGINES)
def router(request: pytest.FixtureRequest) -> Iterator[RouterProcess]:
    with replica_processes() as replica_ports:
        process = RouterProcess(request.param, replica_ports)
        process.start()
        try:
            yield process
        finally:
            process.stop()


# Found by this suite, not in issue 15's list (reported to the lead).
AIOHTTP_CHUNK_STALL = (
    "new, not fixed: while the aiohttp engine relays a body of 1-byte chunks, a small GET "
    "to the other replica waits 150-300 ms although the router spends only ~0.07 s of CPU "
    "on the whole 64 KiB upload (bench/README.md): a wait, not a busy loop; cause not found"
)
AIOHTTP_HEADER_MEMORY = (
    "new, not fixed: aiohttp refuses an endless header line after 8 KiB but reads on "
    "(~11 MB) while closing, and its RSS stays higher after each (73 -> 210 MiB after 40 in "
    "a row, not given back); the fast engine stops at 40 KiB"
)


def known_gap(request: pytest.FixtureRequest, router: RouterProcess, aiohttp: str) -> None:
    """Mark this test xfail for the aiohttp engine, which has a known, listed gap here."""
    if router.engine == "aiohttp":
        request.applymarker(pytest.mark.xfail(reason=aiohttp, strict=False))


def assert_fair(outcome: Outcome, quiet_ms: list[float]) -> None:
    """The probe kept answering: 90% of its GETs within 100 ms (or, on a machine so loaded
    that this is not met even when the router is idle, 3x the idle p90 or the idle worst)."""
    budget = max(100.0, 3 * p90(quiet_ms), max(quiet_ms, default=0.0))
    assert outcome.probe_ms, f"{outcome.name}: the probe got no answer at all"
    assert outcome.probe_p90_ms() <= budget, (
        f"{outcome.name}: small GETs took p90 {outcome.probe_p90_ms():.0f} ms "
        f"(max {max(outcome.probe_ms):.0f} ms) while it ran; budget {budget:.0f} ms"
    )


def test_finding_3_an_endless_header_line_is_cut_at_the_head_limit(
    router: RouterProcess, request: pytest.FixtureRequest
) -> None:
    known_gap(request, router, AIOHTTP_HEADER_MEMORY)
    size = 48 * MIB  # the size the finding was measured with

    async def run() -> tuple[Outcome, Outcome, list[float]]:
        quiet = await quiet_probe(router)
        baseline = await measure(router, "upload", lambda: upload(router.port, size))
        abuse = await measure(
            router, "endless header", lambda: endless_header(router.port, size), min_seconds=1.0
        )
        return baseline, abuse, quiet

    baseline, abuse, quiet = asyncio.run(run())
    assert abuse.answer in (400, 431) or (abuse.answer is None and abuse.sent < size), (
        f"answered {abuse.answer} after {abuse.sent} bytes: the head limit is not enforced "
        "as bytes arrive"
    )
    assert abuse.cpu_s / abuse.runs <= max(3 * baseline.cpu_s, 0.1), (
        f"{abuse.cpu_s / abuse.runs:.2f} s of CPU for an endless header vs {baseline.cpu_s:.2f} s to "
        f"forward a normal {size // MIB} MiB body"
    )
    assert abuse.rss_growth_mib <= size / MIB / 2, f"RSS grew {abuse.rss_growth_mib:.1f} MiB"
    assert_fair(abuse, quiet)


def test_finding_4_one_byte_chunks_cost_less_than_a_request_each(
    router: RouterProcess, request: pytest.FixtureRequest
) -> None:
    known_gap(request, router, AIOHTTP_CHUNK_STALL)
    chunks, gets = 64 * 1024, 2000

    async def run() -> tuple[Outcome, Outcome, list[float]]:
        quiet = await quiet_probe(router)
        requests = await measure(router, "small GETs", lambda: small_gets(router.port, gets))
        tiny = await measure(
            router, "1-byte chunks", lambda: upload(router.port, chunks, "tiny"), min_seconds=1.0
        )
        return requests, tiny, quiet

    requests, tiny, quiet = asyncio.run(run())
    assert tiny.answer == 200
    per_request = max(requests.cpu_s, 0.01) / gets
    per_chunk = tiny.cpu_s / (chunks * tiny.runs)
    # A chunk is a few bytes of framing; a request is a parse, a pick, two writes and a
    # response: at least 5x more work in any sane implementation.
    assert per_chunk * 5 <= per_request, (
        f"{per_chunk * 1e6:.1f} us of CPU per 1-byte chunk vs {per_request * 1e6:.1f} us "
        "per small GET"
    )
    assert_fair(tiny, quiet)


def test_finding_5_bytes_after_an_upgrade_head_are_bounded(router: RouterProcess) -> None:
    async def run() -> tuple[Outcome, list[float]]:
        quiet = await quiet_probe(router)
        flood = await measure(
            router, "upgrade flood", lambda: upgrade_flood(router.port, 128 * MIB)
        )
        return flood, quiet

    flood, quiet = asyncio.run(run())
    # Kernel socket buffers on loopback hold several MiB each way; beyond that the router
    # must stop reading, so memory does not follow what the client pushes.
    assert flood.rss_growth_mib <= 24, (
        f"RSS grew {flood.rss_growth_mib:.0f} MiB while the client pushed "
        f"{flood.sent // MIB} MiB after an Upgrade head the replica never answered"
    )
    assert_fair(flood, quiet)


def test_many_idle_connections_do_not_slow_other_clients(router: RouterProcess) -> None:
    count = 400

    async def run() -> tuple[Outcome, list[float]]:
        quiet = await quiet_probe(router)
        idle = await measure(
            router, "idle connections", lambda: idle_connections(router.port, count)
        )
        return idle, quiet

    idle, quiet = asyncio.run(run())
    assert idle.rss_growth_mib * 1024 / count <= 64, (
        f"{idle.rss_growth_mib * 1024 / count:.0f} KiB of RSS per idle connection"
    )
    assert_fair(idle, quiet)
