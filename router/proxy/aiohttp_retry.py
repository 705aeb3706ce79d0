"""The aiohttp engine's side of the retry policy (`router.proxy.retry`, `retry_budget`).

`RetryTrack` does one request's bookkeeping against the engine's `Retrier` (budget token,
attempts given up, budget refusals); `send_with_per_try` runs one upstream attempt under
`proxy.per_try_timeout`. A response given up for a retry is closed, never read into the
client's stream, and its connection is not reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from router.failures import PER_TRY_TIMEOUT
from router.models import Replica
from router.proxy.aiohttp_support import Outcome
from router.proxy.retry_budget import Candidates, Decision, Retrier


class PerTryTimeout(Exception):
    """The attempt passed `per_try_timeout` and was abandoned for another replica."""


class RetryTrack:
    """One request's retries: what the engine's `Retrier` decides, applied to `Outcome`."""

    __slots__ = ("candidates", "deadline", "idempotent", "outcome", "retrier")

    def __init__(
        self, retrier: Retrier, outcome: Outcome, candidates: Candidates, idempotent: bool
    ) -> None:
        self.retrier = retrier
        self.outcome = outcome
        self.candidates = candidates
        self.idempotent = idempotent
        self.deadline = 0.0  # set by the first attempt under a per-try timeout

    def attempt_starting(self) -> None:
        """Every attempt after the first holds a budget token (taken here if the retry was
        a connection-level one, which the budget never refuses)."""
        outcome = self.outcome
        if outcome.attempts and not outcome.holds_retry:
            outcome.holds_retry = True
            self.retrier.budget.acquire()

    def give_up(self, replica: Replica, outcome_name: str) -> None:
        tried = self.outcome.tried
        if tried is None:
            tried = self.outcome.tried = []
        tried.append((replica.id, outcome_name))

    def on_status(self, status: int, retry_after: str | None, replica: Replica) -> bool:
        """True when this response is to be given up for the next candidate."""
        decision = self.retrier.on_status(
            status,
            retry_after,
            replica,
            idempotent=self.idempotent,
            attempts=self.outcome.attempts,
            candidates=self.candidates,
            holds_token=self.outcome.holds_retry,
        )
        return self._take(decision)

    def on_per_try_timeout(self) -> bool:
        decision = self.retrier.on_per_try_timeout(
            idempotent=self.idempotent,
            attempts=self.outcome.attempts,
            candidates=self.candidates,
            holds_token=self.outcome.holds_retry,
        )
        return self._take(decision)

    def _take(self, decision: Decision) -> bool:
        if decision.exhausted:
            self.outcome.retry_exhausted = True
        if decision.retry is None:
            return False
        self.outcome.holds_retry = True
        return True

    def finish(self) -> None:
        if self.outcome.holds_retry:
            self.outcome.holds_retry = False
            self.retrier.budget.release()


async def send_with_per_try(
    send: Coroutine[Any, Any, aiohttp.ClientResponse],
    track: RetryTrack,
    per_try: float | None,
    response_timeout: float,
    abandon: Callable[[], bool],
) -> aiohttp.ClientResponse:
    """Await `send`; after `per_try` without a response head, raise PerTryTimeout when
    `abandon()` agrees (a retry is possible) and `response_timeout`, counted from the first
    attempt, has time left; else keep waiting (under the session's own timeouts)."""
    if per_try is None:
        return await send
    loop = asyncio.get_running_loop()
    now = loop.time()
    if not track.deadline:
        track.deadline = now + response_timeout
    if now + per_try >= track.deadline:
        return await send  # no time left to try another replica
    task = asyncio.ensure_future(send)
    response: aiohttp.ClientResponse | None = None
    try:
        done, _ = await asyncio.wait({task}, timeout=per_try)
        if not done and abandon():
            raise PerTryTimeout(PER_TRY_TIMEOUT)
        response = await task
        return response
    finally:
        if not task.done():
            task.cancel()
        elif response is None and not task.cancelled() and task.exception() is None:
            task.result().close()  # it arrived just as we gave up: never relayed
