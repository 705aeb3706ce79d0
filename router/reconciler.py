"""The single writer: it alone builds and publishes snapshots.

Discovery, health checking, attestation and the admin API report to it through plain
method calls on the event loop. Ordinary reports coalesce into one rebuild per loop
iteration; urgent ones (a failed attestation, an ejection) rebuild at once so no request
reads a snapshot that still routes to that replica. Rebuild and publish never await, so
no request can see a half-built state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from router.balancing.base import InFlight
from router.models import AttestationVerdict, HealthView, Replica
from router.snapshot import Overrides, Policy, Snapshot, SnapshotListener, build_snapshot

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        policy: Policy,
        in_flight: InFlight,
        *,
        clock: Callable[[], float] = time.monotonic,
        health_enabled: bool = True,
    ) -> None:
        self._policy = policy
        self._in_flight = in_flight
        self._clock = clock
        self._health_enabled = health_enabled
        self._replicas: tuple[Replica, ...] = ()
        self._health: dict[str, HealthView] = {}
        self._verdicts: dict[str, AttestationVerdict] = {}
        self._overrides = Overrides()
        self._listeners: list[SnapshotListener] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.discovered_once = False
        self.current: Snapshot = self._build(0)

    # -- inputs ---------------------------------------------------------------------------

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._replicas

    @property
    def overrides(self) -> Overrides:
        return self._overrides

    @property
    def policy(self) -> Policy:
        return self._policy

    def health_of(self, replica_id: str) -> HealthView | None:
        return self._health.get(replica_id)

    def verdict_of(self, replica_id: str) -> AttestationVerdict | None:
        return self._verdicts.get(replica_id)

    def set_replicas(self, replicas: Sequence[Replica]) -> None:
        self._replicas = tuple(replicas)
        self.discovered_once = True
        known = {r.id for r in self._replicas}
        for table in (self._health, self._verdicts):
            for gone in [k for k in table if k not in known]:
                del table[gone]
        self.changed()

    def set_health(self, replica_id: str, view: HealthView, *, urgent: bool = False) -> None:
        self._health[replica_id] = view
        self.changed(urgent=urgent)

    def set_verdict(self, verdict: AttestationVerdict) -> None:
        self._verdicts[verdict.replica_id] = verdict
        # A failing verdict must take effect before the next request is routed.
        self.changed(urgent=not verdict.ok)

    def set_overrides(self, overrides: Overrides) -> None:
        self._overrides = overrides
        self.changed(urgent=True)

    def set_policy(self, policy: Policy) -> None:
        self._policy = policy
        self.changed(urgent=True, force=True)

    def subscribe(self, listener: SnapshotListener) -> None:
        self._listeners.append(listener)

    # -- building -------------------------------------------------------------------------

    def changed(self, *, urgent: bool = False, force: bool = False) -> None:
        if urgent or force:
            self.rebuild(force=force)
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.rebuild()
            return
        self._scheduled = True
        loop.call_soon(self.rebuild)

    def _build(self, version: int) -> Snapshot:
        return build_snapshot(
            version=version,
            now=self._clock(),
            replicas=self._replicas,
            health=self._health,
            verdicts=self._verdicts,
            policy=self._policy,
            overrides=self._overrides,
            in_flight=self._in_flight,
            health_enabled=self._health_enabled,
        )

    def rebuild(self, *, force: bool = False) -> bool:
        """Build a snapshot; publish it only if routing changed (or `force`)."""
        self._scheduled = False
        previous = self.current
        candidate = self._build(previous.version + 1)
        self._arm_timer(candidate.next_change_at)
        if not force and candidate.same_routing(previous):
            return False
        self.current = candidate
        self._log_transitions(previous, candidate)
        for listener in self._listeners:
            listener(candidate)
        return True

    def _arm_timer(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, at - self._clock())
        self._timer = loop.call_later(delay, self.rebuild)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def _log_transitions(previous: Snapshot, current: Snapshot) -> None:
        before: Mapping[str, object] = previous.by_id
        for status in current.statuses:
            old = previous.by_id.get(status.replica.id)
            if old is None or old.state != status.state or old.routable != status.routable:
                log.info(
                    "replica %s: %s -> %s%s",
                    status.replica.id,
                    old.state if old else "new",
                    status.state,
                    f" ({status.reason})" if status.reason else "",
                )
        for gone in set(before) - set(current.by_id):
            log.info("replica %s: removed", gone)
        if previous.panic != current.panic:
            log.warning("panic mode %s", "ON: routing ignores health" if current.panic else "off")
