"""What an operator changes on a running router: drain a replica, cap the active set,
re-check now, reload the config. Each replica change goes through the reconciler (an
urgent rebuild, so the next request sees it) and, with several worker processes, to the
other workers; a reload is `reload.Reloader`'s, router-wide."""

from __future__ import annotations

from router.health.active import HealthChecker
from router.reconciler import Reconciler
from router.reload import Reloader, ReloadResult
from router.snapshot import Overrides
from router.workers import WorkerLink


class OperatorActions:
    def __init__(
        self,
        reconciler: Reconciler,
        health: HealthChecker,
        worker: WorkerLink,
        app: str | None = None,
        reloader: Reloader | None = None,  # None: one app's actions (a reload is router-wide)
    ) -> None:
        """`app`: the app these act on, named to the other workers (None: the primary)."""
        self._reconciler = reconciler
        self._health = health
        self._worker = worker
        self._app = app
        self._reloader = reloader

    def drain(self, replica_id: str, drained: bool) -> None:
        current = self._reconciler.overrides
        ids = set(current.drained)
        (ids.add if drained else ids.discard)(replica_id)
        self._publish(Overrides(frozenset(ids), current.active_limit))

    def set_active_limit(self, count: int | None) -> None:
        self._publish(Overrides(self._reconciler.overrides.drained, count))

    async def recheck(self, replica_id: str | None) -> None:
        await self._health.check_now(replica_id)

    def reload(self) -> ReloadResult:
        """Re-read the config file and apply what can change live (see `reload.py`)."""
        if self._reloader is None:
            return ReloadResult(error="reload applies to the whole router, not to one app")
        return self._reloader.reload()

    def _publish(self, overrides: Overrides) -> None:
        self._reconciler.set_overrides(overrides)
        self._worker.publish(self._reconciler.overrides, self._app)
