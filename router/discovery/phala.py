"""Phala Cloud discovery: poll `GET /apps/{app_id}/cvms` and publish the replica set
(the request is `cloud_fetch.py`'s, shared by apps that send the same one: `shared.py`).

The Cloud API is control plane only (httpx, never on the request path). A bad minute of
the API must never drain the router: every failure keeps the last good set, is counted,
logged once per change of state, and backs off with jitter (honouring Retry-After on 429).
An empty list after a non-empty one is believed only after it repeats.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from router.discovery.cloud_fetch import (
    CvmsFetcher,
    CvmsRequest,
    is_local,
    parse_retry_after,
)
from router.discovery.records import ParseResult, describe_changes, parse_cvms, parse_cvms_result
from router.discovery.settings import PhalaDiscoveryConfig
from router.discovery.shared import CvmsPoll
from router.errors import DiscoveryError
from router.models import Replica

__all__ = ["PhalaDiscovery", "backoff_delay", "parse_cvms", "parse_retry_after"]

log = logging.getLogger(__name__)

RESULTS = ("ok", "error", "timeout", "auth", "invalid", "rate_limited")


def backoff_delay(
    failures: int, interval: float, max_backoff: float, rng: Callable[[], float]
) -> float:
    """Exponential from `interval`, capped, with "equal jitter" (half fixed, half random)
    so many routers that failed together do not retry together."""
    ceiling = min(max_backoff, interval * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + ceiling / 2 * rng()


class PhalaDiscovery:
    """One app's discovery: parses each answer with the app's settings, keeps the app's last
    good set and counters. The request itself goes through a `CvmsPoll`, shared with other
    apps that send the same request (`shared.py`), or private when none is given."""

    def __init__(
        self,
        cfg: PhalaDiscoveryConfig,
        publish: Callable[[Sequence[Replica]], None],
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
        poll: CvmsPoll | None = None,
    ) -> None:
        self._cfg = cfg
        self._publish = publish
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        if poll is None:
            request = CvmsRequest.of(cfg)
            fetcher = CvmsFetcher(
                request, environ=environ, wall_clock=wall_clock, transport=transport
            )
            poll = CvmsPoll(fetcher)
        self._poll = poll
        poll.join(self)
        self._outcome: DiscoveryError | None = None  # of the last round handed to this app
        self._answered = False
        self._empty_seen = 0
        self._problems: tuple[str, ...] = ()
        self._state = "starting"
        # Read by metrics and the status page.
        self.refresh_results: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))
        self.last_success: float | None = None  # wall clock
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.next_delay = cfg.interval  # seconds until the loop's next pass
        self.replicas: tuple[Replica, ...] | None = None  # the last good set
        if cfg.api_url.startswith("http://") and not is_local(cfg.api_url):
            log.warning("discovery.phala.api_url is plain http: the API key travels in clear")

    # -- public --------------------------------------------------------------------------

    async def first_pass(self) -> list[Replica]:
        """One pass; publishes and returns the set. Raises DiscoveryAuthError (naming the env
        var) when the key is missing or refused, DiscoveryError on any other failure. A failure
        is counted but not logged: the caller says what happens next (exit, or retry).
        An app whose shared poll already answered takes that answer without a new request."""
        if self._answered:
            return self._result()
        return await self.refresh(log_failure=False)

    async def refresh(self, *, log_failure: bool = True) -> list[Replica]:
        """One pass now, with the same rules as the loop (counted, logged, published); returns
        the set in force afterwards, or raises like `first_pass`."""
        await self._poll.round(log_failure=log_failure)
        return self._result()

    def _result(self) -> list[Replica]:
        if self._outcome is not None:
            raise self._outcome
        return list(self.replicas or ())

    async def run(self) -> None:
        """Refresh every interval until cancelled; the first pass runs at once if
        `first_pass()` has not succeeded yet."""
        try:
            await self._poll.run_with(self)
        finally:
            await self.aclose()

    def refresh_soon(self) -> None:
        """Cut the current wait short (e.g. an operator asked for a refresh)."""
        self._poll.wake()

    async def aclose(self) -> None:
        await self._poll.leave(self)

    async def __aenter__(self) -> PhalaDiscovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def status(self) -> dict[str, Any]:
        """For the status page: how discovery is doing (never the API key)."""
        return {
            "source": "phala",
            "app_id": self._cfg.app_id,
            "api_url": self._cfg.api_url,
            "state": self._state,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "next_refresh_in": self.next_delay,
            "results": dict(self.refresh_results),
            "replicas": len(self.replicas) if self.replicas is not None else None,
            "skipped_records": list(self._problems),
        }

    @property
    def state(self) -> str:
        """`ok`, `starting`, or the kind of the last failure."""
        return self._state

    # -- what the poll hands over (PollMember) -------------------------------------------

    @property
    def waiting_for_first_answer(self) -> bool:
        return self.replicas is None

    @property
    def timeout(self) -> float:
        return self._cfg.timeout

    def take(self, payload: Any, *, log_failure: bool = True) -> None:
        try:
            try:
                self._accept_answer(payload)
            except DiscoveryError:
                raise
            except Exception as exc:  # a bug must not stop discovery: count it, keep going
                log.exception("unexpected error during a Cloud API pass")
                raise DiscoveryError(f"unexpected {type(exc).__name__}: {exc}") from exc
        except DiscoveryError as exc:
            self.fail(exc, log_failure=log_failure)
            return
        self._answered, self._outcome = True, None
        self.next_delay = self._cfg.interval

    def fail(self, failure: DiscoveryError, *, log_failure: bool) -> None:
        self._answered, self._outcome = True, failure
        self.next_delay = self._record_failure(failure, log_failure=log_failure)

    # -- one pass ------------------------------------------------------------------------

    def _accept_answer(self, payload: Any) -> None:
        started = self._clock()
        try:
            result = parse_cvms_result(payload, self._cfg)
        except DiscoveryError as exc:
            raise DiscoveryError(
                f"the Cloud API answered an invalid document: {exc}", kind="invalid"
            ) from None
        self._log_problems(result)
        self.refresh_results["ok"] += 1
        self.last_success = self._wall_clock()
        self.last_error = None
        if self._state != "ok" and self.consecutive_failures:
            log.info(
                "Cloud API refresh recovered after %d failed attempt(s)", self.consecutive_failures
            )
        self._state = "ok"
        self.consecutive_failures = 0
        accepted = self._accept(result.replicas)
        log.debug("Cloud API pass took %.3fs: %d replicas", self._clock() - started, len(accepted))

    def _accept(self, replicas: tuple[Replica, ...]) -> tuple[Replica, ...]:
        """Apply the empty-set confirmation rule, log membership changes, publish."""
        previous = self.replicas
        if not replicas and previous:
            self._empty_seen += 1
            if self._empty_seen < self._cfg.empty_confirmations:
                log.warning(
                    "Cloud API lists no replica for app %s (%d/%d confirmations); keeping the "
                    "last good set of %d until it repeats",
                    self._cfg.app_id,
                    self._empty_seen,
                    self._cfg.empty_confirmations,
                    len(previous),
                )
                return previous
        self._empty_seen = 0
        for line in describe_changes(previous or (), replicas):
            log.info("%s", line)
        if previous is None:
            running = sum(1 for r in replicas if r.is_candidate)
            log.info(
                "discovered %d replica(s) of app %s, %d running",
                len(replicas),
                self._cfg.app_id,
                running,
            )
        self.replicas = replicas
        self._publish(replicas)
        return replicas

    # -- failures ------------------------------------------------------------------------

    def _record_failure(self, exc: DiscoveryError, *, log_failure: bool = True) -> float:
        """Count and log (once per change of kind) a failed pass; returns the retry delay."""
        self.refresh_results[exc.kind] += 1
        self.consecutive_failures += 1
        self.last_error = str(exc)
        ceiling = self._cfg.max_backoff if self._cfg.max_backoff is not None else self._cfg.interval
        delay = backoff_delay(self.consecutive_failures, self._cfg.interval, ceiling, self._rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        kept = len(self.replicas) if self.replicas is not None else 0
        if exc.kind != self._state and log_failure:
            log.log(
                logging.ERROR if exc.kind == "auth" else logging.WARNING,
                "Cloud API refresh failed (%s): %s; keeping the last good set of %d "
                "replica(s); retrying with backoff (next in %.1fs)",
                exc.kind,
                exc,
                kept,
                delay,
            )
        else:
            log.debug("Cloud API refresh still failing (%s): %s", exc.kind, exc)
        self._state = exc.kind
        return delay

    def _log_problems(self, result: ParseResult) -> None:
        if result.problems == self._problems:
            return
        for problem in result.problems:
            if problem not in self._problems:
                log.warning("Cloud API record skipped: %s", problem)
        self._problems = result.problems
