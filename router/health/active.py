"""The health checker: schedules active probes, owns the passive detector, feeds the
reconciler one `HealthView` per replica through `sink(replica_id, view, urgent)`.

Scheduling is one loop over a heap of due times; a probe starts only when one of
`max_concurrency` slots is free, so 1,000 replicas never mean 1,000 sockets at once.
Views are published only when something routing (or an unhealthy replica's reason)
changed: a passing probe on a healthy replica costs no snapshot rebuild.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence

import aiohttp

from router.health.passive import PassiveDetector
from router.health.probe import probe
from router.health.settings import HealthConfig
from router.health.state import (
    ActiveState,
    Expectation,
    OutlierState,
    Thresholds,
    end_ejection_on_pass,
    first_delay,
    next_delay,
    observe_check,
    view_of,
    worth_publishing,
)
from router.models import CheckResult, HealthView, Replica, ReplicaState

log = logging.getLogger(__name__)

HealthSink = Callable[[str, HealthView, bool], None]
SessionSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]


class HealthChecker:
    def __init__(
        self,
        cfg: HealthConfig,
        sink: HealthSink,
        session: SessionSource,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._sink = sink
        self._clock = clock
        self._rng = rng or random.Random()
        if isinstance(session, aiohttp.ClientSession):
            self._session: aiohttp.ClientSession | None = session
            self._session_factory: Callable[[], aiohttp.ClientSession] | None = None
        else:
            self._session, self._session_factory = None, session
        self._expect = Expectation.of(cfg)
        self._limits = Thresholds.of(cfg)
        self.passive = PassiveDetector(cfg.passive, self._publish, clock=clock)
        self._replicas: dict[str, Replica] = {}
        self._active: dict[str, ActiveState] = {}
        self._published: dict[str, HealthView] = {}
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Called with every active check result (metrics); must be cheap.
        self.on_check: Callable[[str, CheckResult], None] | None = None

    # -- membership -----------------------------------------------------------------------

    def update_replicas(self, replicas: Sequence[Replica]) -> None:
        """New candidates start pending (and are published so, in case an old view of the
        same id lingers); replicas gone or no longer candidates are forgotten."""
        wanted = {r.id: r for r in replicas if r.is_candidate}
        for gone in [rid for rid in self._replicas if rid not in wanted]:
            for table in (self._replicas, self._active, self._published, self._due):
                table.pop(gone, None)
            task = self._probing.pop(gone, None)
            if task is not None:
                task.cancel()
        now = self._clock()
        for rid, replica in wanted.items():
            known = rid in self._replicas
            self._replicas[rid] = replica
            if known:
                continue
            if self._cfg.enabled:
                self._active[rid] = ActiveState(changed_at=now)
                self._schedule(rid, first_delay(self._cfg, self._rng))
            else:  # no active checks: routable at once, passive checks still apply
                self._active[rid] = ActiveState(ReplicaState.HEALTHY, changed_at=now)
        self.passive.update_replicas(wanted)
        for rid in wanted:
            self._publish(rid, False)

    def reconfigure(self, cfg: HealthConfig, session: SessionSource | None = None) -> None:
        """Apply reloaded settings, keeping every replica's state and schedule. The next
        probe of each replica uses the new path, thresholds and timeouts; a new session
        (how replicas are reached) replaces the old one, which closes when idle."""
        self._cfg = cfg
        self._expect = Expectation.of(cfg)
        self._limits = Thresholds.of(cfg)
        self.passive.reconfigure(cfg.passive)
        if session is None:
            return
        old = self._session if self._session_factory is not None else None
        if isinstance(session, aiohttp.ClientSession):
            self._session, self._session_factory = session, None
        else:
            self._session, self._session_factory = None, session
        if old is not None:
            task = asyncio.get_running_loop().create_task(_close_when_idle(old, cfg.timeout))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @property
    def replica_ids(self) -> list[str]:
        return list(self._replicas)

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every candidate on its schedule until cancelled."""
        try:
            if not self._cfg.enabled:
                await asyncio.Event().wait()
            while True:
                rid = await self._next_due()
                await self._slots.acquire()
                if rid not in self._replicas or rid in self._probing:
                    self._slots.release()
                    continue
                self._start_probe(rid)
        finally:
            await self.aclose()

    async def check_now(self, replica_id: str | None = None) -> dict[str, CheckResult]:
        """Check one replica (or all) now, within the concurrency bound; returns the
        results (none when active checks are off). Raises LookupError naming an unknown
        or non-candidate replica."""
        if replica_id is not None and replica_id not in self._replicas:
            raise LookupError(
                f"replica {replica_id!r} is not health-checked (unknown, or not running)"
            )
        if not self._cfg.enabled:
            return {}
        ids = [replica_id] if replica_id is not None else list(self._replicas)
        await asyncio.gather(*(self._check_once(rid) for rid in ids))
        return {
            rid: check
            for rid in ids
            if (state := self._active.get(rid)) is not None
            and (check := state.last_check) is not None
        }

    async def aclose(self) -> None:
        tasks = list(self._probing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session_factory is not None and self._session is not None:
            await self._session.close()
            self._session = None

    def view(self, replica_id: str) -> HealthView | None:
        """The live view, with the latest check (the published one only changes when
        routing does): what the status page should show."""
        active = self._active.get(replica_id)
        if active is None:
            return None
        return view_of(active, self.passive.state(replica_id) or OutlierState())

    # -- internals ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self._session_factory is not None
            self._session = self._session_factory()
        return self._session

    def _schedule(self, rid: str, delay: float) -> None:
        due = self._clock() + delay
        self._due[rid] = due
        heapq.heappush(self._heap, (due, next(self._seq), rid))
        if self._heap[0][2] == rid:
            self._wake.set()  # earlier than what the scheduler sleeps towards

    async def _next_due(self) -> str:
        heap = self._heap
        while True:
            self._wake.clear()
            # Drop entries superseded by a later schedule or for forgotten replicas.
            while heap and self._due.get(heap[0][2]) != heap[0][0]:
                heapq.heappop(heap)
            delay = heap[0][0] - self._clock() if heap else None
            if delay is not None and delay <= 0:
                rid = heapq.heappop(heap)[2]
                self._due.pop(rid, None)
                return rid
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _start_probe(self, rid: str) -> asyncio.Task[None]:
        """Start a probe holding one acquired slot; the task releases it."""
        task = asyncio.create_task(self._probe(rid), name=f"health-check:{rid}")
        self._probing[rid] = task
        return task

    async def _check_once(self, rid: str) -> None:
        running = self._probing.get(rid)
        if running is None:
            await self._slots.acquire()
            if rid not in self._replicas:
                self._slots.release()
                return
            running = self._probing.get(rid)
            if running is None:
                running = self._start_probe(rid)
            else:  # the scheduler started one meanwhile
                self._slots.release()
        await asyncio.shield(running)

    async def _probe(self, rid: str) -> None:
        try:
            replica = self._replicas[rid]
            result = await probe(
                self._client(),
                replica,
                self._cfg.path,
                self._expect,
                self._cfg.timeout,
                self._clock,
            )
            self.apply_check(rid, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not stop checking; the replica keeps its state and schedule.
            log.exception("health check of replica %s failed unexpectedly", rid)
            if rid in self._replicas and rid not in self._due:
                self._schedule(rid, self._cfg.interval)
        finally:
            self._slots.release()
            if self._probing.get(rid) is asyncio.current_task():
                del self._probing[rid]

    def apply_check(self, rid: str, result: CheckResult) -> None:
        """Fold one active check result in: state, ejection end, publish, next schedule."""
        prev = self._active.get(rid)
        if prev is None:  # forgotten while the probe ran
            return
        new = observe_check(prev, result, self._limits)
        self._active[rid] = new
        if self.on_check is not None:
            self.on_check(rid, result)
        if result.ok:
            outlier = self.passive.state(rid)
            if outlier is not None:
                cleared = end_ejection_on_pass(outlier, result.at)
                if cleared is not outlier:
                    self.passive.replace_state(rid, cleared)
        if new.state is not prev.state:
            self._log_transition(rid, prev, new)
        self._publish(rid, False)
        self._schedule(rid, next_delay(prev, new, self._cfg, self._rng))

    def _publish(self, rid: str, urgent: bool) -> None:
        active = self._active.get(rid)
        if active is None:
            return
        view = view_of(active, self.passive.state(rid) or OutlierState())
        if urgent or worth_publishing(self._published.get(rid), view):
            self._published[rid] = view
            self._sink(rid, view, urgent)

    def _log_transition(self, rid: str, prev: ActiveState, new: ActiveState) -> None:
        # Debug only: the reconciler logs the one line per transition operators see
        # ("replica a: healthy -> unhealthy (unhealthy: status 500)").
        check = new.last_check
        detail = (check.error or f"status {check.status}") if check else "?"
        log.debug(
            "replica %s: active checks %s -> %s after %d passing / %d failing: %s",
            rid,
            prev.state.value,
            new.state.value,
            new.successes,
            new.failures,
            detail,
        )


async def _close_when_idle(session: aiohttp.ClientSession, probe_timeout: float) -> None:
    """Give probes already on the old session their timeout, then close it."""
    try:
        await asyncio.sleep(probe_timeout)
    finally:
        await session.close()
