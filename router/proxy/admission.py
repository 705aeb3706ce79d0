"""Overload protection shared by the engines: a bounded number of requests proxied at once
(`proxy.max_connections`) and a bounded queue in front of them (`proxy.max_pending`).

With Envoy's circuit-breaker semantics: a request takes a slot for its whole upstream life
(connect, response, streamed body); when every slot is taken it may wait in a queue of at
most `max_pending` for up to `wait` seconds; past that it is refused at once with 503 and
`Retry-After`, so memory and latency stay bounded however many clients arrive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType

from router.errors import NoRoutableReplica, Overloaded, ProxyError

RETRY_AFTER_SECONDS = 1


def retry_after(error: ProxyError) -> str | None:
    """The Retry-After value both engines send with a 503, or None."""
    if isinstance(error, Overloaded):
        return str(RETRY_AFTER_SECONDS)
    if isinstance(error, NoRoutableReplica):
        return "5"
    return None


class Admission:
    def __init__(self, max_active: int, max_pending: int) -> None:
        self.max_active = max_active
        self.max_pending = max_pending
        self.active = 0
        self.refused = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def pending(self) -> int:
        return len(self._waiters)

    def configure(self, max_active: int, max_pending: int) -> None:
        """A reload: new limits apply to the next requests; a larger limit frees waiters."""
        self.max_active, self.max_pending = max_active, max_pending
        while self._waiters and self.active < self.max_active:
            if self._hand_over():
                self.active += 1

    # -- callback-style use (the fast engine) ---------------------------------------------

    def claim(
        self, wait: float, granted: Callable[[], None], refused: Callable[[Overloaded], None]
    ) -> Claim:
        """Take a slot now (`claim.held`), or queue for one: `granted` runs when a slot is
        handed over, `refused` when the wait runs out. A full queue refuses at once
        (`claim.error`). Whatever happens, the caller ends with `claim.release()`."""
        claim = Claim(self)
        if self.try_acquire():
            claim.held = True
            return claim
        waiter = self.enqueue()
        if waiter is None:
            claim.error = Overloaded(
                "too many requests in flight", limit=self.max_active, queued=self.pending
            )
            return claim
        claim.queue(waiter, wait, granted, refused)
        return claim

    def try_acquire(self) -> bool:
        """Take a free slot at once if there is one and nobody is queued before us."""
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            return True
        return False

    def enqueue(self) -> asyncio.Future[None] | None:
        """Join the queue; the future completes when a slot is handed over. None (counted as
        refused) when the queue is full."""
        if len(self._waiters) >= self.max_pending:
            self.refused += 1
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: asyncio.Future[None]) -> None:
        """A queued request gives up (its wait ran out, or its client left)."""
        if waiter.done() and not waiter.cancelled():
            self._release()  # a slot was handed over just as we gave up: pass it on
            return
        waiter.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def release(self) -> None:
        self._release()

    def slot(self, wait: float) -> AdmissionSlot:
        """`async with admission.slot(wait):` holds one slot for the block."""
        return AdmissionSlot(self, wait)

    async def _acquire(self, wait: float) -> None:
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_pending:
            self.refused += 1
            raise Overloaded(
                "too many requests in flight", limit=self.max_active, queued=self.pending
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # a slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                if waiter in self._waiters:  # _hand_over may have dropped it already
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                self.refused += 1
                raise Overloaded(
                    "no free slot in time", limit=self.max_active, waited_seconds=wait
                ) from None
            raise

    def _hand_over(self) -> bool:
        """Wake the oldest live waiter; True if one took the slot."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _release(self) -> None:
        # The slot moves straight to a waiter (active stays) unless over a lowered limit.
        if self.active <= self.max_active and self._hand_over():
            return
        self.active -= 1


class Claim:
    """One request's hold on the gate: a slot, a place in the queue, or a refusal."""

    __slots__ = ("_admission", "_timer", "_waiter", "error", "held")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.held = False
        self.error: Overloaded | None = None

    def queue(
        self,
        waiter: asyncio.Future[None],
        wait: float,
        granted: Callable[[], None],
        refused: Callable[[Overloaded], None],
    ) -> None:
        self._waiter = waiter

        def handed_over(done: asyncio.Future[None]) -> None:
            if done.cancelled() or self._waiter is not done:
                return  # released or timed out meanwhile: abandon() passed the slot on
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.held = True
            granted()

        def timed_out() -> None:
            self._timer = None
            if self._waiter is None:
                return
            self._admission.abandon(self._waiter)
            self._waiter = None
            self._admission.refused += 1
            refused(
                Overloaded(
                    "no free slot in time", limit=self._admission.max_active, waited_seconds=wait
                )
            )

        waiter.add_done_callback(handed_over)
        self._timer = asyncio.get_running_loop().call_later(wait, timed_out)

    def release(self) -> None:
        if self.held:
            self.held = False
            self._admission.release()
        elif self._waiter is not None:  # the request ended while queued
            self._admission.abandon(self._waiter)
            self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AdmissionSlot:
    """One slot held for an `async with` block (a class, not an async generator, so that
    mypyc can compile this module)."""

    def __init__(self, admission: Admission, wait: float) -> None:
        self._admission = admission
        self._wait = wait

    async def __aenter__(self) -> None:
        await self._admission._acquire(self._wait)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._admission._release()
