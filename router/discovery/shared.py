"""One Cloud API poll per distinct request, however many apps ask for it.

Two apps of one router often read the same Phala app: its API on one port and its admin UI
on another, or a staging host pattern next to the production one. They send the same
request (`CvmsRequest`: API, app_id, API version, key), so the router sends it once per
round and hands the answer to each app's discovery, which parses it with its own settings
(port, scheme, passthrough) and keeps its own last good set, counters and empty-answer
rule. Apps with different app_ids share nothing: the Cloud API lists CVMs per app.

A round is single-flight: an app that asks while a round is on the wire gets that round's
answer. The loop waits the shortest delay any member asks for (its interval, or its
backoff after a failure), so each app is refreshed at least as often as it asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from router.discovery.cloud_fetch import CvmsFetcher, CvmsRequest
from router.discovery.settings import PhalaDiscoveryConfig
from router.errors import DiscoveryError

log = logging.getLogger(__name__)


class PollMember(Protocol):
    """One app's discovery, as the poll sees it."""

    @property
    def waiting_for_first_answer(self) -> bool: ...

    @property
    def timeout(self) -> float: ...

    next_delay: float

    def take(self, payload: Any, *, log_failure: bool) -> None:
        """Parse, keep and publish an answer (a bad one is recorded as its own failure)."""

    def fail(self, failure: DiscoveryError, *, log_failure: bool) -> None:
        """Record a failed round and compute `next_delay`."""


class CvmsPoll:
    def __init__(self, fetcher: CvmsFetcher) -> None:
        self._fetcher = fetcher
        self.members: list[PollMember] = []
        self._running: list[PollMember] = []
        self._lock = asyncio.Lock()
        self._rounds = 0  # rounds completed: a caller that waited for the lock checks it
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def request(self) -> CvmsRequest:
        return self._fetcher.request

    def join(self, member: PollMember) -> None:
        self.members.append(member)

    async def leave(self, member: PollMember) -> None:
        """The member stops listening; the last one out closes the HTTP client."""
        if member in self.members:
            self.members.remove(member)
        if not self.members and not self.closed:
            self.closed = True
            await self._stop_loop()
            await self._fetcher.aclose()

    async def round(self, *, log_failure: bool = True) -> None:
        """Send the request once and hand the outcome to every member; a caller that
        waited while another round was on the wire takes that round's outcome instead."""
        seen = self._rounds
        async with self._lock:
            if self._rounds != seen:
                return
            outcome = await self._fetch()
            self._rounds += 1
        for member in list(self.members):
            if isinstance(outcome, DiscoveryError):
                member.fail(outcome, log_failure=log_failure)
            else:
                member.take(outcome, log_failure=log_failure)

    async def _fetch(self) -> Any:
        timeout = max((m.timeout for m in self.members), default=10.0)
        try:
            return await self._fetcher.fetch(timeout)
        except DiscoveryError as exc:
            return exc
        except Exception as exc:  # a bug must not stop discovery: count it, keep going
            log.exception("unexpected error during a Cloud API pass")
            return DiscoveryError(f"unexpected {type(exc).__name__}: {exc}")

    def wake(self) -> None:
        """Cut the current wait short (e.g. an operator asked for a refresh)."""
        self._wake.set()

    async def run_with(self, member: PollMember) -> None:
        """Keep the poll's loop running while `member` runs (until cancelled)."""
        self._running.append(member)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop())
        try:
            await asyncio.Future()  # until cancelled: the loop works for every member
        finally:
            self._running.remove(member)
            if not self._running:
                await self._stop_loop()

    async def _stop_loop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        first = any(m.waiting_for_first_answer for m in self._running)
        delay = 0.0 if first else self._next_delay()
        while True:
            await self._sleep(delay)
            await self.round()
            delay = self._next_delay()

    def _next_delay(self) -> float:
        return min((m.next_delay for m in self.members), default=15.0)

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()


class CloudPolls:
    """The polls of one router process by request: apps built through the composition
    root with the same `CloudPolls` share a poll when their requests are the same."""

    def __init__(
        self, *, environ: Mapping[str, str], wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._environ = environ
        self._wall_clock = wall_clock
        self._polls: dict[CvmsRequest, CvmsPoll] = {}

    def poll_for(self, cfg: PhalaDiscoveryConfig) -> CvmsPoll:
        request = CvmsRequest.of(cfg)
        poll = self._polls.get(request)
        if poll is None or poll.closed:
            fetcher = CvmsFetcher(request, environ=self._environ, wall_clock=self._wall_clock)
            poll = self._polls[request] = CvmsPoll(fetcher)
        return poll

    def __len__(self) -> int:
        return sum(1 for poll in self._polls.values() if not poll.closed)
