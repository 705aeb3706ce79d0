"""The fast engine's side of the retry policy (`router.proxy.retry`, `retry_budget`).

`Exchange` calls in at three points: a response head arrives (a status in `retry_on` may
be retried instead of relayed, before any byte of it went to the client), an attempt is
sent (the per-try timer starts), and the request ends (the budget token and timer go).
A response given up is read to its end and discarded by a `DrainSink` (at most
`_DRAIN_LIMIT` bytes, else the connection is closed), so it never reaches the client and
the connection returns to the pool only after exactly one complete response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from router.errors import ProxyError
from router.failures import PER_TRY_TIMEOUT, TIMEOUT, upstream_error
from router.models import Replica
from router.proxy.fast.client_side import ClientSide
from router.proxy.fast.core import EngineCore
from router.proxy.retry_budget import Candidates

if TYPE_CHECKING:
    from router.proxy.fast.upstream import UpstreamConnection

_DRAIN_LIMIT = 64 * 1024


class DrainSink:
    """Reads a given-up response to its end, then pools the connection (or closes it)."""

    __slots__ = ("conn", "left")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.left = _DRAIN_LIMIT

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn.close()  # a second response to one request: never reuse

    def response_body(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.conn.sink = None
            self.conn.close()

    def flush(self) -> None:
        return None

    def response_done(self) -> None:
        self.conn.pool.release(self.conn)

    def upstream_upgraded(self, rest: bytes) -> None:
        self.conn.close()

    def upstream_failed(self, kind: str, reason: str = "") -> None:
        self.conn.close()

    def upstream_pause(self, paused: bool) -> None:
        return None


def _retry_after(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            return value.decode("latin-1")
    return None


class RetryingExchange:
    """Mixin of `Exchange`: the attributes below are Exchange's."""

    core: EngineCore
    client: ClientSide
    conn: UpstreamConnection | None
    replica: Replica | None
    status: int | None
    last_error: ProxyError | None
    _candidates: Iterator[Replica]
    idempotent: bool
    finished: bool
    dialing: bool
    attempts: int
    holds_retry = False
    retry_exhausted = False
    tried: list[tuple[str, str]] | None = None
    try_timer: asyncio.TimerHandle | None = None
    try_deadline = 0.0

    def _try_next(self) -> None: ...

    # -- hooks called by Exchange ------------------------------------------------------------

    def retry_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """A response in `policy.statuses` arrived: True when it is given up for a retry."""
        core, replica = self.core, self.replica
        assert replica is not None
        decision = core.retrier.on_status(
            status,
            _retry_after(headers) if status == 503 else None,
            replica,
            idempotent=self.idempotent,
            attempts=self.attempts,
            candidates=self.lookahead(),
            holds_token=self.holds_retry,
        )
        if decision.exhausted:
            self.retry_exhausted = True
        if decision.retry is None:
            return False
        self.holds_retry = True
        _, kind = core.retrier.policy.status_verdict(status, core.count_5xx)
        core.observers.attempt_done(replica, False, kind, status)
        self.note_attempt(decision.retry)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.sink = DrainSink(conn)
            conn.resume_reading()
        core.in_flight.leave(replica.id)
        # Not from inside the parser callback of the connection being drained.
        core.pool.loop.call_soon(self._retry_later)
        return True

    def lookahead(self) -> Candidates:
        """The candidate walk with lookahead and Retry-After pauses, from the first retry
        on (a request that is never retried keeps the picker's plain iterator)."""
        walk = self._candidates
        if not isinstance(walk, Candidates):
            walk = self._candidates = self.core.retrier.candidates(walk, first_given=True)
        return walk

    def note_attempt(self, outcome: str) -> None:
        """Remember a given-up attempt (access log, retry metrics); the next attempt is a
        retry, so the walk skips paused replicas from here on."""
        self.lookahead()
        if self.replica is None:
            return
        if self.tried is None:
            self.tried = []
        self.tried.append((self.replica.id, outcome))

    def hold_retry_token(self) -> None:
        """A connection-level retry is starting: it counts against the budget, unrefused."""
        if not self.holds_retry:
            self.holds_retry = True
            self.core.retrier.budget.acquire()

    def arm_per_try(self) -> None:
        """An attempt was sent: abandon it after `per_try_timeout` if a retry is possible."""
        per_try = self.core.retrier.policy.per_try_timeout
        if per_try is None:
            return
        loop = self.core.pool.loop
        now = loop.time()
        if not self.try_deadline:  # response_timeout counts from the first attempt
            self.try_deadline = now + self.core.pool.response_timeout
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if now + per_try < self.try_deadline:  # else no time is left to try another
            self.try_timer = loop.call_at(now + per_try, self._per_try_due)

    def retry_finished(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.holds_retry:
            self.holds_retry = False
            self.core.retrier.budget.release()

    # -- internals ----------------------------------------------------------------------------

    def _retry_later(self) -> None:
        if not self.finished:
            self._try_next()

    def _per_try_due(self) -> None:
        self.try_timer = None
        if self.finished or self.status is not None or self.conn is None or self.dialing:
            return  # answered, or between attempts (the next one arms its own timer)
        decision = self.core.retrier.on_per_try_timeout(
            idempotent=self.idempotent,
            attempts=self.attempts,
            candidates=self.lookahead(),
            holds_token=self.holds_retry,
        )
        if decision.exhausted:
            self.retry_exhausted = True
        if decision.retry is None:
            return  # no retry possible: wait on this one, under response_timeout as ever
        self.holds_retry = True
        self._give_up_attempt()
        self.note_attempt(PER_TRY_TIMEOUT)
        self._try_next()

    def _give_up_attempt(self) -> None:
        conn, self.conn = self.conn, None
        replica = self.replica
        assert replica is not None
        if conn is not None:
            conn.sink = None
            conn.close()
        self.core.in_flight.leave(replica.id)
        self.core.observers.attempt_done(replica, False, TIMEOUT, None)
        self.last_error = upstream_error(PER_TRY_TIMEOUT, replica.id)
