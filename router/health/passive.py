"""Outlier detection from live traffic: the data plane reports every upstream attempt.

`record()` runs on the request path, so a success on a replica with no failures on record
costs one dict lookup; the state machine (`state.observe_traffic`) runs only on failures
and on the first success after them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from router.failures import CONNECT, STATUS_5XX
from router.health.settings import PassiveConfig
from router.health.state import OutlierState, decay, may_eject, observe_traffic
from router.models import Replica

log = logging.getLogger(__name__)

# (replica_id, urgent): the outlier state of that replica changed.
ChangeListener = Callable[[str, bool], None]


class PassiveDetector:
    def __init__(
        self,
        cfg: PassiveConfig,
        on_change: ChangeListener,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._on_change = on_change
        self._clock = clock
        self._states: dict[str, OutlierState] = {}
        # Replicas with failures on record: the only ones whose successes need the state
        # machine (the ejection count decays lazily, when next needed).
        self._dirty: set[str] = set()
        self._threshold = cfg.consecutive_failures

    # -- membership -----------------------------------------------------------------------

    def reconfigure(self, cfg: PassiveConfig) -> None:
        """Reloaded settings apply from the next observation; current counts are kept."""
        self._cfg = cfg

    def update_replicas(self, replica_ids: Iterable[str]) -> None:
        wanted = set(replica_ids)
        for gone in [rid for rid in self._states if rid not in wanted]:
            del self._states[gone]
            self._dirty.discard(gone)
        for rid in wanted:
            self._states.setdefault(rid, OutlierState())

    # -- the hot path ---------------------------------------------------------------------

    def record(self, replica_id: str, ok: bool, kind: str = CONNECT) -> None:
        """One upstream attempt finished: `ok=False` for a connect error, reset or timeout
        (name it in `kind`); use `record_status` when a response arrived."""
        if ok and replica_id not in self._dirty:
            return
        if not self._cfg.enabled:
            return
        state = self._states.get(replica_id)
        if state is None:  # not a tracked replica (removed, or not a candidate)
            return
        self._observe(replica_id, state, ok, kind)

    def record_status(self, replica_id: str, status: int) -> None:
        """A response arrived: a 5xx counts as a failure when `passive.count_5xx`."""
        failed = status >= 500 and self._cfg.count_5xx
        self.record(replica_id, not failed, STATUS_5XX)

    # The data plane's TrafficObserver hooks (structural: health does not import the proxy).

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        """The engine already applied `passive.count_5xx` to `ok`."""
        if ok and replica.id not in self._dirty:
            return
        self.record(replica.id, ok, kind or CONNECT)

    def request_done(self, record: object) -> None:
        return None

    def _observe(self, replica_id: str, state: OutlierState, ok: bool, kind: str) -> None:
        now = self._clock()
        allowed = True
        if not ok and state.failures + 1 >= self._threshold:
            allowed = may_eject(self.ejected_count(now), len(self._states), self._max_percent)
        outcome = observe_traffic(state, ok, now, self._cfg, allowed=allowed)
        new = outcome.state
        self._states[replica_id] = new
        if new.failures:
            self._dirty.add(replica_id)
        else:
            self._dirty.discard(replica_id)
        if outcome.ejected:
            assert new.ejected_until is not None
            # Debug: the reconciler logs the transition line ("healthy -> ejected").
            log.debug(
                "replica %s ejected for %.0fs: %d consecutive failed attempts (last: %s); "
                "ejection #%d",
                replica_id,
                new.ejected_until - now,
                self._threshold,
                kind,
                new.ejections,
            )
            self._on_change(replica_id, True)
        elif outcome.refused:
            log.warning(
                "replica %s failed %d attempts in a row but is not ejected: "
                "passive.max_ejected_percent (%d%%) of replicas are already ejected",
                replica_id,
                self._threshold,
                self._max_percent,
            )

    @property
    def _max_percent(self) -> int:
        return self._cfg.max_ejected_percent

    # -- control plane --------------------------------------------------------------------

    def ejected_count(self, now: float | None = None) -> int:
        at = self._clock() if now is None else now
        return sum(1 for s in self._states.values() if s.ejected(at))

    def state(self, replica_id: str) -> OutlierState | None:
        """The current state, with the ejection count decayed to now."""
        state = self._states.get(replica_id)
        if state is None:
            return None
        return decay(state, self._clock(), self._cfg)

    def replace_state(self, replica_id: str, state: OutlierState) -> None:
        """Store a state computed elsewhere (an active check ended an ejection)."""
        if replica_id in self._states:
            self._states[replica_id] = state
            if state.failures:
                self._dirty.add(replica_id)
            else:
                self._dirty.discard(replica_id)
