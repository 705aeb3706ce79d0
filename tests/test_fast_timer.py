"""The fast engine's client-connection timeouts: one deadline sweep per engine fires each
connection's timer within the sweep's granularity, and costs one loop timer in all however
many connections are open (router/proxy/fast/timer.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from router.proxy.fast.timer import BODY, HEADER, IDLE, ConnectionTimer, DeadlineSweep

GRANULARITY = 0.05


class Fired:
    """What one connection's timer reported, and when (on the loop's clock)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.kinds: list[int] = []
        self.at: list[float] = []
        self.event = asyncio.Event()

    def __call__(self, kind: int) -> None:
        self.kinds.append(kind)
        self.at.append(self.loop.time())
        self.event.set()


def new_timer(sweep: DeadlineSweep) -> tuple[ConnectionTimer, Fired]:
    fired = Fired(sweep.loop)
    return ConnectionTimer(sweep, fired), fired


async def test_an_armed_timer_fires_once_with_its_kind_within_the_granularity() -> None:
    sweep = DeadlineSweep(asyncio.get_running_loop(), GRANULARITY)
    timer, fired = new_timer(sweep)
    timer.arm(HEADER, 0.02)
    deadline = timer.deadline
    await asyncio.wait_for(fired.event.wait(), 5)
    assert fired.kinds == [HEADER]
    assert deadline - 0.002 <= fired.at[0]
    # It does not fire again: a later timer's firing shows the sweeps went on meanwhile.
    later, later_fired = new_timer(sweep)
    later.arm(IDLE, 3 * GRANULARITY)
    await asyncio.wait_for(later_fired.event.wait(), 5)
    assert fired.kinds == [HEADER]


async def test_activity_pushes_the_deadline_back_only_for_the_same_kind() -> None:
    sweep = DeadlineSweep(asyncio.get_running_loop(), GRANULARITY)
    timer, fired = new_timer(sweep)
    timer.arm(BODY, 0.05)
    timer.push_back(HEADER, 10)  # another kind: no effect
    assert timer.deadline < sweep.loop.time() + 1
    timer.push_back(BODY, 0.3)
    pushed = timer.deadline
    await asyncio.wait_for(fired.event.wait(), 5)
    assert fired.kinds == [BODY]
    assert fired.at[0] >= pushed - 0.002


async def test_a_stopped_or_cancelled_timer_does_not_fire() -> None:
    sweep = DeadlineSweep(asyncio.get_running_loop(), GRANULARITY)
    stopped, stopped_fired = new_timer(sweep)
    cancelled, cancelled_fired = new_timer(sweep)
    witness, witness_fired = new_timer(sweep)
    stopped.arm(IDLE, 0.01)
    cancelled.arm(IDLE, 0.01)
    witness.arm(IDLE, 0.1)
    stopped.stop(HEADER)  # running for IDLE, not HEADER: still armed
    assert stopped.kind == IDLE
    stopped.stop()
    cancelled.cancel()
    await asyncio.wait_for(witness_fired.event.wait(), 5)
    assert stopped_fired.kinds == []
    assert cancelled_fired.kinds == []
    assert cancelled not in sweep.watched


async def test_the_sweep_stops_when_no_connection_is_left() -> None:
    sweep = DeadlineSweep(asyncio.get_running_loop(), GRANULARITY)
    timer, fired = new_timer(sweep)
    timer.arm(IDLE, 0.01)
    await asyncio.wait_for(fired.event.wait(), 5)
    timer.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while sweep.next_sweep != float("inf"):  # the sweep scheduled before the cancel runs
        assert loop.time() < deadline, "the sweep kept running with nothing to watch"
        await asyncio.sleep(0.01)  # poll (with the deadline above) for the sweep to lapse
    assert not sweep.watched


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the loop timers created (what a timer per connection used to cost)."""

    timers = 0

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_a_thousand_connections_cost_one_loop_timer() -> None:
    loop = CountingLoop()
    try:

        async def connections() -> list[Fired]:
            sweep = DeadlineSweep(loop, GRANULARITY)
            timers = [new_timer(sweep) for _ in range(1000)]
            for n, (timer, _) in enumerate(timers):
                timer.arm(IDLE, 60 + n / 1000)
                timer.arm(HEADER, 10)  # a request begins: the header timeout, earlier
                timer.push_back(HEADER, 10)
                timer.stop(HEADER)
                timer.arm(IDLE, 60)
            before = loop.timers
            last, last_fired = timers[-1]
            last.arm(IDLE, 0.01)  # shorter than the time to the next sweep: pulls it in
            await asyncio.wait_for(last_fired.event.wait(), 5)
            assert loop.timers - before <= 3  # the pulled-in sweep, the next, and wait_for's
            for timer, _ in timers:
                timer.cancel()
            return [fired for _, fired in timers]

        results = loop.run_until_complete(connections())
        assert loop.timers <= 5
        assert sum(len(fired.kinds) for fired in results) == 1
    finally:
        loop.close()
