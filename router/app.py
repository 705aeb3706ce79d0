"""Lifecycle: build the parts from the config, start the loops, serve, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from router.access_log import AccessLog
from router.admin import AdminServer, MetricsSource, admin_token
from router.app_planes import OtherApps, app_summaries
from router.app_views import app_views, primary_view
from router.attested_tls import DstackServerTLS
from router.compose import build_app_control, build_dns
from router.compose_engine import EngineWiring, build_engine, server_tls
from router.config import RouterConfig, redacted
from router.discovery.shared import CloudPolls
from router.discovery.static import static_replicas
from router.errors import DiscoveryAuthError, DiscoveryError
from router.listen_errors import listen_error, proxy_listeners
from router.metrics import Metrics, build_version
from router.models import Replica
from router.native import build_description
from router.operator import OperatorActions
from router.proxy.base import InFlightCounter, Observers
from router.proxy.well_known import ATTESTATION_PATH
from router.reach import PeerCheck
from router.reconciler import Reconciler
from router.reload import LiveParts, Reloader, ReloadResult
from router.self_attestation import admin_handler, build_router_attestation
from router.snapshot import Snapshot
from router.status import router_facts, status_document
from router.status_history import StatusHistory
from router.worker_reports import start_reports
from router.workers import WorkerLink, warn_if_unsupervised, worker_count

log = logging.getLogger(__name__)


class RouterApp:
    def __init__(
        self,
        config: RouterConfig,
        *,
        config_path: str | None = None,
        environ: Mapping[str, str] | None = None,
        access_log_enabled: bool = False,
        clock: Any = time.monotonic,
        trusted_simulator_keys: frozenset[bytes] = frozenset(),
        worker: WorkerLink | None = None,
    ) -> None:
        self.config_path = config_path
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self.in_flight = InFlightCounter()
        self.metrics = Metrics(self.in_flight, clock=clock)
        self._build_control(config, trusted_simulator_keys)
        # The router's own attestation when it runs in a CVM (/.well-known, /status).
        self.self_attestation = build_router_attestation(
            config, self._environ, trusted_simulator_keys, clock=clock
        )
        self._build_data_plane(config, access_log_enabled)
        # With several worker processes only the first serves the admin listener.
        self._worker = worker or WorkerLink()
        self._admin_enabled = self._worker.serves_admin
        self._tasks: list[asyncio.Task[None]] = []
        self._reloader = Reloader(
            config,
            LiveParts(self.engine, self.apps, self.plane, self.tls, self._spawn),
            config_path=lambda: self.config_path,
            environ=self._environ,
            on_done=self.metrics.reload_done,
        )
        self.actions = OperatorActions(
            self.reconciler, self.health, self._worker, reloader=self._reloader
        )
        self.admin = AdminServer(
            config.admin.listen,
            self,
            admin_token(config.admin.token_env, self._environ),
            metrics=self._metrics_render(),
        )
        self.admin.extra_routes.append(
            ("*", ATTESTATION_PATH, admin_handler(self.self_attestation))
        )
        self.dns = build_dns(config, self.reconciler, self._environ)
        self.metrics.watch_connections(self.engine.connection_counts)
        if self.tls is not None:
            self.metrics.watch_certificates(self.tls.expiry)
        self.started_at = time.time()
        self._draining = False
        self._started = False

    def _build_control(self, config: RouterConfig, simulator_keys: frozenset[bytes]) -> None:
        """The primary app's control plane with metrics and history listening, then (with
        `apps:`) every other app's (app_planes.py)."""
        primary = primary_view(app_views(config))
        # Apps that send the same Cloud API request share one poll (discovery/shared.py).
        polls = CloudPolls(environ=self._environ)
        self.plane = build_app_control(
            config,
            self.in_flight,
            app=primary.name if config.apps is not None else None,
            environ=self._environ,
            clock=self._clock,
            trusted_simulator_keys=simulator_keys,
            polls=polls,
        )
        self.reconciler = self.plane.reconciler
        self.metrics.on_snapshot(self.reconciler.current)
        if config.apps is None:  # with apps, OtherApps feeds every app's replicas
            self.reconciler.subscribe(self.metrics.on_snapshot)
        self.history = StatusHistory(self.metrics.replica_totals, clock=self._clock)
        self.history.on_snapshot(self.reconciler.current)
        self.reconciler.subscribe(self.history.on_snapshot)
        self.plane.verdict_observers.append(self.metrics.attestation_verdict)
        self.health, self.discovery = self.plane.health, self.plane.discovery
        self.attestor = self.plane.attestor
        self.health.on_check = lambda rid, result: self.metrics.health_check(
            rid, result.ok, result.latency
        )
        if self.discovery is not None:
            self.metrics.watch_discovery(self.discovery)
        self.apps = OtherApps.build(
            config,
            self.in_flight,
            self._snapshot,
            self.health.passive,
            environ=self._environ,
            clock=self._clock,
            trusted_simulator_keys=simulator_keys,
            polls=polls,
            primary_check=self._peer_check(),
        )
        if config.apps is not None:
            self.apps.feed_metrics(self.reconciler, self.metrics)

    def _build_data_plane(self, config: RouterConfig, access_log_enabled: bool) -> None:
        """The observers, the listener's TLS and the engine, reading the apps' snapshots."""
        self.observers = Observers(
            [self.metrics.observer, self.apps.passive]
            if config.metrics.requests
            else [self.apps.passive]
        )
        if access_log_enabled:
            self.observers.observers.append(AccessLog())
        self.tls = server_tls(config)
        self.ratls_gate = self.plane.ratls_gate
        self.engine = build_engine(
            config,
            EngineWiring(
                self._snapshot,
                self.observers,
                self.in_flight,
                self.reconciler.subscribe,
                lambda: self.config,
                self.apps.directory,
                self.tls,
                # With apps, each app's RA-TLS check travels with its entry in the directory.
                self._peer_check() if config.apps is None else None,
                app_configs=self.apps.configs,
                watch_apps=self.apps.watch,
                ratls_gate=self.plane.ratls_gate,
                attestation=self.self_attestation,
            ),
            self._clock,
        )

    @property
    def config(self) -> RouterConfig:
        """The running config (replaced by a successful reload)."""
        return self._reloader.config

    def _metrics_render(self) -> MetricsSource:
        """The /metrics body: with Envoy as the engine, Envoy's own series follow ours."""
        extend = getattr(self.engine, "with_envoy_metrics", None)
        return self.metrics.render_async if extend is None else extend(self.metrics.render_async)

    def _peer_check(self) -> PeerCheck | None:
        """The primary app's RA-TLS check (None: it does not use RA-TLS)."""
        gate = self.plane.ratls_gate
        return gate.check if gate is not None else None

    def _snapshot(self) -> Snapshot:
        return self.reconciler.current

    # -- AdminBackend ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and not self._draining and bool(self.reconciler.current.routable)

    def status(self, app: str | None = None) -> dict[str, Any]:
        """The /status document; with `apps:`, the primary app's at the top level plus a
        summary of every app under `apps`, or (`app`) one app's. LookupError: no such app."""
        primary = self._app_status(self.reconciler, self.health.view, self.config)
        primary.update(self._router_facts())
        primary["router_attestation"] = self.self_attestation.summary(
            getattr(self.tls, "spki_sha256", None)
        )
        engine_view = getattr(self.engine, "status_view", None)
        if engine_view is not None:  # Envoy's own view of the endpoints, next to ours
            primary["envoy"] = engine_view()
        document = self.history.annotate(self.metrics.annotate_status(primary))
        if self.config.apps is None:
            if app is not None and app != self.apps.primary_name:
                raise LookupError(app)
            return document
        documents = {self.apps.primary_name: document}
        for plane in self.apps.planes:
            other = self._app_status(plane.reconciler, plane.plane.health.view, plane.view.config)
            documents[plane.name] = self.metrics.annotate_status(other)
        if app is not None:
            if app not in documents:
                raise LookupError(app)
            return {**documents[app], "app": app}
        return {
            **document,
            "app": self.apps.primary_name,
            "apps": app_summaries(self.config, documents),
        }

    def _app_status(
        self, reconciler: Reconciler, health: Any, config: RouterConfig
    ) -> dict[str, Any]:
        now = self._clock()
        offset = time.time() - now
        overrides = reconciler.overrides
        return status_document(
            reconciler.current,
            now=now,
            to_wall=lambda t: round(t + offset, 3),
            health=health,
            verdicts=reconciler.verdict_of,
            in_flight=self.in_flight,
            facts={
                "app_id": config.discovery.phala.app_id if config.discovery.phala else None,
                "policy": config.routing.policy,
                "engine": self.config.proxy.engine,
                "ready": self.ready,
                "draining": self._draining,
                "drained": sorted(overrides.drained),
                "active_limit": overrides.active_limit,
            },
        )

    def effective_config(self) -> dict[str, Any]:
        return redacted(self.config)

    def _router_facts(self) -> dict[str, Any]:
        attestation = self.config.attestation
        return router_facts(
            version=build_version(),
            build=build_description(),
            started_at=self.started_at,
            now=time.time(),
            addresses=self.engine.addresses,
            tls=self.tls is not None,
            workers=self._worker.count,
            verifier=attestation.verifier if attestation.gated else None,
            last_reload=self._reloader.last_reload,
            certificate_expires_at=self.tls.not_after if self.tls is not None else None,
        )

    def _actions_of(self, app: str | None) -> OperatorActions:
        """The operator actions of one app (None: the primary); LookupError: no such app."""
        if app is None or app == self.apps.primary_name:
            return self.actions
        plane = self.apps.plane(app)
        return OperatorActions(plane.reconciler, plane.plane.health, self._worker, app)

    def drain(self, replica_id: str, drained: bool, app: str | None = None) -> None:
        self._actions_of(app).drain(replica_id, drained)

    def set_active_limit(self, count: int | None, app: str | None = None) -> None:
        self._actions_of(app).set_active_limit(count)

    async def recheck(self, replica_id: str | None, app: str | None = None) -> None:
        await self._actions_of(app).recheck(replica_id)

    def set_replicas(self, replicas: Sequence[Replica]) -> None:
        self.plane.set_replicas(replicas)

    def reload(self) -> ReloadResult:
        """Re-read the config file (SIGHUP, POST /admin/reload); see `reload.py`."""
        return self.actions.reload()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("hot path: %s", build_description())
        discovery = self.config.discovery
        if discovery.static is not None:
            self.set_replicas(static_replicas(discovery.static))
        if self.discovery is not None:
            try:
                await self.discovery.first_pass()
            except DiscoveryAuthError:
                raise
            except DiscoveryError as exc:
                log.warning("first discovery pass failed (%s); retrying in the background", exc)
            self._spawn(self.discovery.run())
        self._spawn(self.health.run())
        self._spawn(self.history.run())
        if self.attestor is not None:
            self._spawn(self.attestor.run())
        if isinstance(self.tls, DstackServerTLS):
            await self.tls.refresh()  # the RA-TLS key before the listener opens
        if self.self_attestation.in_cvm:
            # For /status; the endpoint loads it too if this fails.
            self._spawn(self.self_attestation.warm())
        for app in self.apps.planes:
            await app.start()
        try:
            await self.engine.start()
        except OSError as exc:
            raise listen_error(exc, proxy_listeners(self.config)) from None
        warn_if_unsupervised(worker_count(self.config), self._worker)
        self._worker.listen(self.reconciler.set_overrides, self.apps.apply_overrides)
        # Workers > 0 report their counters to worker 0, which merges them.
        self.metrics.peers = start_reports(self._worker, self.metrics.report_line, self._spawn)
        if self._admin_enabled:
            try:
                await self.admin.start()
            except OSError as exc:
                raise listen_error(exc, [("admin.listen", self.config.admin.listen)]) from None
        if self.dns is not None and self._admin_enabled:  # one DNS publisher per host
            try:
                await self.dns.start()
            except OSError as exc:
                server = self.config.dns.server
                raise listen_error(
                    exc, [("dns.server.listen", server.listen if server else "?")]
                ) from None
        if self.tls is not None and self.config.listen_tls is not None:
            self._spawn(self.tls.watch(self.config.listen_tls.reload_interval))
        self._started = True
        log.info(
            "serving on %s, admin on %s",
            ", ".join(f"{h}:{p}" for h, p in self.engine.addresses),
            f"{self.config.admin.listen.rsplit(':', 1)[0]}:{self.admin.port}"
            if self._admin_enabled
            else "worker 0",
        )

    async def discard(self) -> None:
        """Release what the constructor opened, for a router that never starts
        (`check-config` builds one to find what would stop `serve`)."""
        await self.plane.aclose()
        for app in self.apps.planes:
            await app.plane.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: /readyz turns 503 first, then the listener closes and in-flight
        requests get up to `grace` seconds to finish."""
        self._draining = True
        grace = self.config.proxy.drain_timeout if grace is None else grace
        began, in_flight = time.monotonic(), sum(self.in_flight.values())
        if self._started:
            log.info(
                "shutting down: /readyz is 503; draining %d request(s) in flight "
                "(shutdown_delay %gs, drain_timeout %gs)",
                in_flight,
                self.config.proxy.shutdown_delay,
                grace,
            )
        if self.config.proxy.shutdown_delay > 0:
            # Keep serving while load balancers notice /readyz is 503.
            await asyncio.sleep(self.config.proxy.shutdown_delay)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker.close()
        if self.metrics.peers is not None:
            self.metrics.peers.close(self._worker.report_ins.values())
        await self.engine.stop(grace)
        cut = sum(self.in_flight.values())
        if self._started:
            log.info(
                "shutdown: drained in %.2fs; %d request(s) were in flight, %d cut at drain_timeout",
                time.monotonic() - began,
                in_flight,
                cut,
            )
        await self.plane.aclose()  # health checks, attestation, discovery
        for app in self.apps.planes:
            await app.stop()
        if self.dns is not None and self._admin_enabled:
            await self.dns.stop()
        if self._admin_enabled:
            await self.admin.stop()
        self.reconciler.close()
