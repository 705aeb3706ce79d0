"""Lifecycle: build the parts from the config, start the loops, serve, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from router.admin import AdminServer
from router.balancing.round_robin import RoundRobin
from router.config import RouterConfig
from router.discovery.static import static_replicas
from router.errors import ConfigError
from router.models import Replica
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.base import Engine, InFlightCounter, Observers, RequestRecord
from router.proxy.fast import FastEngine
from router.reconciler import Reconciler
from router.snapshot import Overrides, Policy
from router.status import status_document
from router.workers import WorkerLink, worker_count

log = logging.getLogger(__name__)
access_log = logging.getLogger("router.access")


def policy_from_config(config: RouterConfig) -> Policy:
    return Policy(
        picker_factory=RoundRobin,
        panic_threshold=config.health.panic_threshold,
        slow_start=config.health.slow_start,
    )


class AccessLog:
    """One line per request, off by default (`--access-log`)."""

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        return None

    def request_done(self, record: RequestRecord) -> None:
        replica = record.replica
        access_log.info(
            "%s %s %s",
            record.method,
            record.path,
            record.status,
            extra={
                "access": {
                    "method": record.method,
                    "path": record.path,
                    "status": record.status,
                    "replica": replica.id if replica else None,
                    "region": replica.region if replica else None,
                    "upstream_seconds": record.upstream_seconds,
                    "total_seconds": round(record.total_seconds, 6),
                    "retries": record.retries,
                    "bytes_in": record.bytes_in,
                    "bytes_out": record.bytes_out,
                    "client": record.client,
                    "error": record.error,
                    "route": record.explanation,
                }
            },
        )


class RouterApp:
    def __init__(
        self,
        config: RouterConfig,
        *,
        environ: Mapping[str, str] | None = None,
        access_log_enabled: bool = False,
        clock: Any = time.monotonic,
        worker: WorkerLink | None = None,
    ) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self.in_flight = InFlightCounter()
        self.observers = Observers([AccessLog()] if access_log_enabled else [])
        self.reconciler = Reconciler(
            policy_from_config(config), self.in_flight, clock=clock, health_enabled=False
        )
        self.engine: Engine
        if config.proxy.engine == "fast":
            self.engine = FastEngine(
                config,
                self._snapshot,
                self.observers,
                self.in_flight,
                reuse_port=worker_count(config) > 1,
            )
        else:
            self.engine = AiohttpEngine(config, self._snapshot, self.observers, self.in_flight)
        self.admin = AdminServer(config.admin.listen, self, self._admin_token())
        # With several worker processes only the first serves the admin listener.
        self._worker = worker or WorkerLink()
        self._admin_enabled = self._worker.serves_admin
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self._started = False

    def _snapshot(self):  # type: ignore[no-untyped-def]
        return self.reconciler.current

    def _admin_token(self) -> str | None:
        name = self.config.admin.token_env
        if name is None:
            return None
        token = self._environ.get(name)
        if not token:
            raise ConfigError(f"admin.token_env: environment variable {name} is not set or empty")
        return token

    # -- AdminBackend ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and not self._draining and bool(self.reconciler.current.routable)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        offset = time.time() - now
        snapshot = self.reconciler.current
        overrides = self.reconciler.overrides
        return status_document(
            snapshot,
            now=now,
            to_wall=lambda t: round(t + offset, 3),
            health=self.reconciler.health_of,
            verdicts=self.reconciler.verdict_of,
            in_flight=self.in_flight,
            facts={
                "app_id": self.config.discovery.phala.app_id
                if self.config.discovery.phala
                else None,
                "policy": self.config.routing.policy,
                "ready": self.ready,
                "draining": self._draining,
                "drained": sorted(overrides.drained),
                "active_limit": overrides.active_limit,
            },
        )

    def drain(self, replica_id: str, drained: bool) -> None:
        current = self.reconciler.overrides
        ids = set(current.drained)
        (ids.add if drained else ids.discard)(replica_id)
        self.reconciler.set_overrides(Overrides(frozenset(ids), current.active_limit))
        self._worker.publish(self.reconciler.overrides)

    def set_active_limit(self, count: int | None) -> None:
        current = self.reconciler.overrides
        self.reconciler.set_overrides(Overrides(current.drained, count))
        self._worker.publish(self.reconciler.overrides)

    async def recheck(self, replica_id: str | None) -> None:
        return None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        discovery = self.config.discovery
        if discovery.static is not None:
            self.reconciler.set_replicas(static_replicas(discovery.static))
        await self.engine.start()
        workers = worker_count(self.config)
        if workers > 1 and self._worker.count == 1:
            log.warning(
                "proxy.workers is %d but this process was not started by "
                "router.workers.run_workers: serving with one process",
                workers,
            )
        self._worker.listen(self.reconciler.set_overrides)
        if self._admin_enabled:
            await self.admin.start()
        self._started = True
        log.info(
            "serving on %s, admin on %s",
            ", ".join(f"{h}:{p}" for h, p in self.engine.addresses),
            self.config.admin.listen,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: /readyz turns 503 first, then the listener closes and in-flight
        requests get up to `grace` seconds to finish."""
        self._draining = True
        grace = self.config.proxy.drain_timeout if grace is None else grace
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker.close()
        await self.engine.stop(grace)
        if self._admin_enabled:
            await self.admin.stop()
        self.reconciler.close()
