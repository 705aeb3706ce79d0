"""Lifecycle: build the parts from the config, start the loops, serve, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.access_log import AccessLog
from router.admin import AdminServer, MetricsSource
from router.app_planes import OtherApps, app_summaries, check_apps_reload, engine_settings
from router.attested_tls import DstackServerTLS
from router.compose import (
    build_control_plane,
    health_session_factory,
    policy_from_config,
)
from router.config import RouterConfig, load_config, redacted
from router.discovery.static import static_replicas
from router.dns.service import DnsService
from router.errors import ConfigError, DiscoveryAuthError, DiscoveryError
from router.listen_errors import listen_error
from router.metrics import Metrics, build_version
from router.models import Replica
from router.native import build_description
from router.operator import OperatorActions
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.base import Engine, InFlightCounter, Observers
from router.proxy.fast import FastEngine
from router.proxy.well_known import ATTESTATION_PATH
from router.reach import ConnectTo, PeerCheck
from router.reconciler import Reconciler
from router.reload_plan import plan_reload
from router.self_attestation import admin_handler, build_router_attestation
from router.snapshot import Snapshot
from router.status import router_facts, status_document
from router.status_history import StatusHistory
from router.tls import ServerTLS
from router.worker_reports import ReportInbox, send_reports
from router.workers import WorkerLink, worker_count

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None


def _server_tls(config: RouterConfig) -> ServerTLS | None:
    tls = config.listen_tls
    if tls is None:
        return None
    if tls.ra_tls:
        return DstackServerTLS(tls.dstack_socket, tls.ra_tls_renew)
    if tls.cert_file is None or tls.key_file is None:  # the config refuses this already
        raise ConfigError("listen_tls needs cert_file and key_file, or ra_tls: true")
    return ServerTLS(tls.cert_file, tls.key_file)


def _app_id(config: RouterConfig) -> str | None:
    return config.discovery.phala.app_id if config.discovery.phala else None


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
        self.config = config
        # What the listeners and engine run with: restart-only keys are compared with it.
        self._started_config = config
        self.config_path = config_path
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self.in_flight = InFlightCounter()
        self.metrics = Metrics(self.in_flight, clock=clock)
        self.reconciler = Reconciler(
            policy_from_config(config, self._environ), self.in_flight, clock=clock
        )
        self.metrics.on_snapshot(self.reconciler.current)
        if config.apps is None:  # with apps, OtherApps feeds every app's replicas
            self.reconciler.subscribe(self.metrics.on_snapshot)
        self.history = StatusHistory(self.metrics.replica_totals, clock=clock)
        self.history.on_snapshot(self.reconciler.current)
        self.reconciler.subscribe(self.history.on_snapshot)
        self.plane = build_control_plane(
            config,
            self.reconciler,
            environ=self._environ,
            clock=clock,
            trusted_simulator_keys=trusted_simulator_keys,
        )
        self.plane.verdict_observers.append(self.metrics.attestation_verdict)
        self.health, self.discovery, self.attestor = (
            self.plane.health,
            self.plane.discovery,
            self.plane.attestor,
        )
        self.health.on_check = lambda rid, result: self.metrics.health_check(
            rid, result.ok, result.latency
        )
        if self.discovery is not None:
            self.metrics.watch_discovery(self.discovery)
        # With `apps:`, every app but the primary one gets its own plane (app_planes.py).
        self.apps = OtherApps.build(
            config,
            self.in_flight,
            self._snapshot,
            self.health.passive,
            environ=self._environ,
            clock=clock,
            trusted_simulator_keys=trusted_simulator_keys,
        )
        directory, passive = self.apps.directory, self.apps.passive
        if config.apps is not None:
            self.apps.feed_metrics(self.reconciler, self.metrics)
        self.observers = Observers(
            [self.metrics, passive] if config.metrics.requests else [passive]
        )
        if access_log_enabled:
            self.observers.observers.append(AccessLog())
        self.tls = _server_tls(config)
        self.ratls_gate = self.plane.ratls_gate
        peer_check = self._peer_check()
        self.self_attestation = build_router_attestation(
            config, self._environ, trusted_simulator_keys, clock=clock
        )
        self.engine: Engine
        if config.proxy.engine == "fast":
            self.engine = FastEngine(
                engine_settings(config),
                self._snapshot,
                self.observers,
                self.in_flight,
                reuse_port=worker_count(config) > 1,
                tls=self.tls,
                apps=directory,
                peer_check=peer_check,
                attestation=self.self_attestation,
            )
        elif config.proxy.engine == "envoy":
            from router.proxy.envoy.engine import EnvoyEngine  # only with the [envoy] extra

            self.engine = EnvoyEngine(
                config,
                self._snapshot,
                self.reconciler.subscribe,
                clock=clock,
                config_source=lambda: self.config,
            )
        else:
            self.engine = AiohttpEngine(
                engine_settings(config),
                self._snapshot,
                self.observers,
                self.in_flight,
                tls=self.tls,
                apps=directory,
                peer_check=peer_check,
                attestation=self.self_attestation,
            )
        self.admin = AdminServer(
            config.admin.listen, self, self._admin_token(), metrics=self._metrics_render()
        )
        self.admin.extra_routes.append(
            ("*", ATTESTATION_PATH, admin_handler(self.self_attestation))
        )
        # With several worker processes only the first serves the admin listener.
        self._worker = worker or WorkerLink()
        self._admin_enabled = self._worker.serves_admin
        self.actions = OperatorActions(self.reconciler, self.health, self._worker)
        self.dns = (
            DnsService(
                config.dns,
                self.reconciler,
                app_id=_app_id(config),
                pinned=ConnectTo(config.discovery.connect_to).lookup
                if config.discovery.connect_to
                else None,
                environ=self._environ,
            )
            if DnsService.wanted(config.dns)
            else None
        )
        self.metrics.watch_connections(self.engine.connection_counts)
        if self.tls is not None:
            self.metrics.watch_certificates(self.tls.expiry)
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self._started = False

    async def _load_self_attestation(self) -> None:
        await self.self_attestation.warm()  # for /status; the endpoint loads it too if this fails

    def _metrics_render(self) -> MetricsSource:
        """The /metrics body: with Envoy as the engine, Envoy's own series follow ours."""
        extend = getattr(self.engine, "with_envoy_metrics", None)
        return self.metrics.render_async if extend is None else extend(self.metrics.render_async)

    def _snapshot(self) -> Snapshot:
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
                "app_id": _app_id(config),
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
            last_reload=self.last_reload,
            certificate_expires_at=self.tls.not_after if self.tls is not None else None,
        )

    def _actions_of(self, app: str | None) -> OperatorActions:
        """The operator actions of one app (None: the primary); LookupError: no such app."""
        if app is None or app == self.apps.primary_name:
            return self.actions
        plane = self.apps.plane(app)
        return OperatorActions(plane.reconciler, plane.plane.health, WorkerLink())

    def drain(self, replica_id: str, drained: bool, app: str | None = None) -> None:
        self._actions_of(app).drain(replica_id, drained)

    def set_active_limit(self, count: int | None, app: str | None = None) -> None:
        self._actions_of(app).set_active_limit(count)

    async def recheck(self, replica_id: str | None, app: str | None = None) -> None:
        await self._actions_of(app).recheck(replica_id)

    def _peer_check(self) -> PeerCheck | None:
        gate = self.plane.ratls_gate
        return gate.check if gate is not None else None

    def set_replicas(self, replicas: Sequence[Replica]) -> None:
        self.plane.set_replicas(replicas)

    def reload(self) -> ReloadResult:
        """Re-read the config file (SIGHUP, POST /admin/reload). A valid new config applies
        without dropping connections; an invalid one is refused and the running one stays."""
        result = self._reload()
        self.metrics.reload_done(result.error)
        self.last_reload = {"at": round(time.time(), 3), "error": result.error}
        return result

    def _reload(self) -> ReloadResult:
        if self.config_path is None:
            return ReloadResult(
                error="no config file to reload (the router was started from a dict)"
            )
        try:
            new = load_config(self.config_path, self._environ)
        except ConfigError as exc:
            log.error("reload refused, still running the previous config:\n%s", exc)
            return ReloadResult(error=str(exc))
        try:
            policy = policy_from_config(new, self._environ)
            check_apps_reload(self.config, new, self._environ)
        except ConfigError as exc:
            log.error("reload refused, still running the previous config:\n%s", exc)
            return ReloadResult(error=str(exc))
        old, self.config = self.config, new
        plan = plan_reload(self._started_config, old, new)
        if {"proxy", "upstream", "health", "apps"} & set(plan.apply):  # health: count_5xx
            self.engine.apply_config(engine_settings(new))
        if "apps" in plan.apply:
            finish = self.apps.reload(new, self.engine.set_apps)
            if finish is not None:
                self._spawn(finish)
        if self.tls is not None:
            self.tls.reload()  # SIGHUP also re-reads the certificate files, changed or not
        if "discovery.static" in plan.apply and new.discovery.static is not None:
            self.set_replicas(static_replicas(new.discovery.static))
        if "health" in plan.apply or "upstream" in plan.apply:
            reach = "upstream" in plan.apply
            self.health.reconfigure(
                new.health, health_session_factory(new, self._peer_check()) if reach else None
            )
        if "routing" in plan.apply or "health" in plan.apply:
            self.reconciler.set_policy(policy)  # panic_threshold, slow_start live in health
        result = ReloadResult(applied=list(plan.apply), restart_required=plan.restart_required)
        if result.restart_required:
            log.warning(
                "reload: %s differ from the running process and take effect only after a restart",
                ", ".join(result.restart_required),
            )
        log.info(
            "reload: %s",
            f"applied {', '.join(result.applied)}" if result.applied else "no change to apply",
        )
        return result

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
            self._spawn(self._load_self_attestation())
        for app in self.apps.planes:
            await app.start()
        try:
            await self.engine.start()
        except OSError as exc:
            raise listen_error(exc, self._proxy_listeners()) from None
        workers = worker_count(self.config)
        if workers > 1 and self._worker.count == 1:
            log.warning(
                "proxy.workers is %d but this process was not started by "
                "router.workers.run_workers: serving with one process",
                workers,
            )
        self._worker.listen(self.reconciler.set_overrides)
        self._start_reports()
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

    def _start_reports(self) -> None:
        """Workers > 0 report their counters to worker 0, which merges them."""
        link = self._worker
        if link.report_out is not None:
            self._spawn(send_reports(link.report_out, self.metrics.report_line))
        elif link.report_ins:
            self.metrics.peers = ReportInbox()
            self.metrics.peers.listen(link.report_ins)

    def _proxy_listeners(self) -> list[tuple[str, str]]:
        """(config key, HOST:PORT) of the traffic listeners, for a bind error message."""
        listeners = [("listen", self.config.listen)] if self.config.listen else []
        if self.config.listen_tls is not None:
            listeners.append(("listen_tls.listen", self.config.listen_tls.listen))
        return listeners

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
        if self.attestor is not None:
            await self.attestor.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()
        for app in self.apps.planes:
            await app.stop()
        if self.dns is not None and self._admin_enabled:
            await self.dns.stop()
        if self._admin_enabled:
            await self.admin.stop()
        self.reconciler.close()
