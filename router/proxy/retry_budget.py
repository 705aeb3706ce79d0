"""What the retry rule remembers across requests, one instance per engine (per process):
the retry budget, replicas that asked for a pause with `Retry-After`, and the candidate
walk that skips them.

The budget is Envoy's `retry_budget`: a request that retries holds one token until it
ends, and a retry that adds load to the replicas (after a retried status or a per-try
timeout) is allowed only while the tokens held stay below `budget_percent` of the requests
in flight, or below `min_retry_concurrency`, whichever is larger. So a brown-out, where
every replica answers 503, costs at most that share of extra attempts instead of doubling
the load. A retry after a connection-level failure (failed connect, reset, the connection's
own response_timeout) is never refused: the replica is down, not browned out, and refusing
would fail a request a healthy replica could serve. It holds a token like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from router.failures import PER_TRY_TIMEOUT
from router.models import Replica
from router.proxy.retry import RetryPolicy
from router.proxy.retry_settings import TIMEOUT

# A Retry-After longer than this is capped: a replica cannot opt out of retries for hours.
MAX_PAUSE = 300.0
_MAX_PAUSED = 4096  # replicas remembered at once (bounded memory whatever replicas send)


class Decision(NamedTuple):
    """What to do with an attempt's response (or per-try timeout): `retry` names the reason
    to move on, None to keep this one; `exhausted` says the budget refused a retry."""

    retry: str | None
    exhausted: bool = False


KEEP = Decision(None)


def parse_retry_after(value: str, now_wall: float) -> float | None:
    """Seconds from a Retry-After value (delay-seconds or an HTTP-date), None if garbled."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - now_wall, 0.0)


class RetryBudget:
    """Tokens held by requests that retried; see the module docstring."""

    def __init__(self, percent: float, min_concurrency: int, active: Callable[[], int]) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency
        self._active = active
        self.held = 0

    def limit(self) -> int:
        return max(self.min_concurrency, int(self._active() * self.percent / 100))

    def try_acquire(self) -> bool:
        if self.held >= self.limit():
            return False
        self.held += 1
        return True

    def acquire(self) -> None:
        """Take a token whatever the limit (a connection-level retry)."""
        self.held += 1

    def release(self) -> None:
        self.held = max(self.held - 1, 0)


class RetryAfterPauses:
    """Replicas that answered 503 with Retry-After: retries skip them until it passes."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._until: dict[str, float] = {}

    def pause(self, replica_id: str, retry_after: str) -> None:
        seconds = parse_retry_after(retry_after, self._wall())
        if not seconds:
            return
        now = self._clock()
        if len(self._until) >= _MAX_PAUSED:
            self._until = {k: v for k, v in self._until.items() if v > now}
            if len(self._until) >= _MAX_PAUSED:
                return
        self._until[replica_id] = now + min(seconds, MAX_PAUSE)

    def paused(self, replica_id: str) -> bool:
        until = self._until.get(replica_id)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._until[replica_id]
        return False

    def __bool__(self) -> bool:
        return bool(self._until)


class Candidates:
    """The picker's candidates with one of lookahead (so a response is relayed, not
    retried, when no replica is left); retries skip replicas paused by Retry-After."""

    __slots__ = ("_ahead", "_given", "_it", "_pauses")

    def __init__(
        self, candidates: Iterator[Replica], pauses: RetryAfterPauses, given: int = 0
    ) -> None:
        self._it = candidates
        self._pauses = pauses
        self._ahead: Replica | None = None
        self._given = given  # candidates already handed out (the first is never skipped)

    def __iter__(self) -> Candidates:
        return self

    def __next__(self) -> Replica:
        replica = self.peek()
        if replica is None:
            raise StopIteration
        self._ahead = None
        self._given += 1
        return replica

    def peek(self) -> Replica | None:
        if self._ahead is None:
            for replica in self._it:
                if self._given and self._pauses and self._pauses.paused(replica.id):
                    continue
                self._ahead = replica
                break
        return self._ahead


class Retrier:
    """The retry policy with its budget and pauses: one per engine, reconfigured on reload."""

    def __init__(
        self,
        policy: RetryPolicy,
        active: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.budget = RetryBudget(policy.budget_percent, policy.min_retry_concurrency, active)
        self.pauses = RetryAfterPauses(clock)

    def configure(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.budget.percent = policy.budget_percent
        self.budget.min_concurrency = policy.min_retry_concurrency

    def candidates(self, picked: Iterator[Replica], *, first_given: bool = False) -> Candidates:
        """Wrap the picker's walk; `first_given` when the first attempt already took one."""
        return Candidates(picked, self.pauses, 1 if first_given else 0)

    def on_status(
        self,
        status: int,
        retry_after: str | None,
        replica: Replica,
        *,
        idempotent: bool,
        attempts: int,
        candidates: Candidates,
        holds_token: bool,
    ) -> Decision:
        """A response in `policy.statuses` arrived, before any byte went to the client:
        retry it on the next candidate, or relay it."""
        if status == 503 and retry_after:
            self.pauses.pause(replica.id, retry_after)
        if not idempotent or attempts > self.policy.retries or candidates.peek() is None:
            return KEEP
        return self._spend(str(status), holds_token)

    def on_per_try_timeout(
        self, *, idempotent: bool, attempts: int, candidates: Candidates, holds_token: bool
    ) -> Decision:
        """The current attempt passed `per_try_timeout` without a response head: abandon it
        for the next candidate, or keep waiting on it (Decision(None))."""
        policy = self.policy
        if not idempotent or TIMEOUT not in policy.retry_on or attempts > policy.retries:
            return KEEP
        if candidates.peek() is None:
            return KEEP
        return self._spend(PER_TRY_TIMEOUT, holds_token)

    def _spend(self, outcome: str, holds_token: bool) -> Decision:
        if holds_token or self.budget.try_acquire():
            return Decision(outcome)
        return Decision(None, exhausted=True)
