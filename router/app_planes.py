"""Several apps in one router process: each app beyond the primary one gets its own control
plane (discovery, health, attestation) and its own reconciler, built by the composition
root from the app's view of the config, and the engines get one `AppDirectory` for all.

The primary app (the default app, else the first) keeps the wiring `RouterApp` has always
had (metrics, history, DNS, operator actions), so a config without `apps:` runs exactly as
before. Each reconciler stays the single writer of its app's snapshot; an app's failure
(a discovery outage, every replica down) changes no other app's snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from router.app_views import AppView, app_views, primary_view
from router.compose import ControlPlane, build_control_plane, policy_from_config, proxy_settings
from router.config import RouterConfig
from router.discovery.static import static_replicas
from router.errors import DiscoveryAuthError, DiscoveryError
from router.health.passive import PassiveDetector
from router.metrics import Metrics
from router.metrics_apps import merged_snapshot
from router.models import Replica
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import InFlightCounter, SnapshotSource
from router.proxy.settings import ProxySettings
from router.reconciler import Reconciler
from router.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class AppPlane:
    """One app's control plane and the reconciler that alone publishes its snapshot."""

    view: AppView
    reconciler: Reconciler
    plane: ControlPlane

    @property
    def name(self) -> str:
        return self.view.name

    def entry(self) -> AppEntry:
        reconciler = self.reconciler
        return AppEntry(self.name, lambda: reconciler.current, self.view.max_connections)

    async def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Static replicas or a first discovery pass, then the loops (as the primary app)."""
        config = self.view.config
        if config.discovery.static is not None:
            self.plane.set_replicas(static_replicas(config.discovery.static))
        discovery = self.plane.discovery
        if discovery is not None:
            try:
                await discovery.first_pass()
            except DiscoveryAuthError:
                raise
            except DiscoveryError as exc:
                log.warning("app %s: first discovery pass failed (%s); retrying", self.name, exc)
            spawn(discovery.run())
        spawn(self.plane.health.run())
        if self.plane.attestor is not None:
            spawn(self.plane.attestor.run())

    async def stop(self) -> None:
        await self.plane.aclose()
        self.reconciler.close()


def build_app_plane(
    view: AppView,
    in_flight: InFlightCounter,
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> AppPlane:
    reconciler = Reconciler(policy_from_config(view.config, environ), in_flight, clock=clock)
    plane = build_control_plane(
        view.config,
        reconciler,
        environ=environ,
        clock=clock,
        trusted_simulator_keys=trusted_simulator_keys,
    )
    return AppPlane(view, reconciler, plane)


def app_directory(
    primary: AppView, primary_source: SnapshotSource, others: list[AppPlane]
) -> AppDirectory:
    """Host -> app for the engines: every app's routes, the default app for the rest."""
    entries = {primary.name: AppEntry(primary.name, primary_source, primary.max_connections)}
    entries.update({p.name: p.entry() for p in others})
    views = [primary, *(p.view for p in others)]
    default = next((entries[v.name] for v in views if v.default), None)
    return AppDirectory(
        ((route, entries[view.name]) for view in views for route in view.routes), default
    )


class PassiveByApp:
    """The data plane reports every upstream attempt once; this hands it to the passive
    detector of the app that owns the replica (one dict get once the owner is known)."""

    def __init__(self, detectors: list[PassiveDetector]) -> None:
        self._detectors = detectors
        self._owner: dict[str, PassiveDetector] = {}

    def _owner_of(self, replica_id: str) -> PassiveDetector | None:
        owner = self._owner.get(replica_id)
        if owner is not None and owner.state(replica_id) is not None:
            return owner
        for detector in self._detectors:
            if detector.state(replica_id) is not None:
                if len(self._owner) > 100_000:  # replicas come and go: bound the cache
                    self._owner.clear()
                self._owner[replica_id] = detector
                return detector
        return None

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        owner = self._owner_of(replica.id)
        if owner is not None:
            owner.attempt_done(replica, ok, kind, status)

    def request_done(self, record: object) -> None:
        return None


@dataclass
class OtherApps:
    """What `RouterApp` adds for a config with `apps:`: the planes of the apps other than
    the primary one, the engines' directory and the passive-health observer."""

    primary: str
    planes: list[AppPlane]
    directory: AppDirectory | None
    passive: PassiveDetector | PassiveByApp

    @classmethod
    def build(
        cls,
        config: RouterConfig,
        in_flight: InFlightCounter,
        primary_source: SnapshotSource,
        primary_passive: PassiveDetector,
        *,
        environ: Mapping[str, str],
        clock: Callable[[], float],
        trusted_simulator_keys: frozenset[bytes],
    ) -> OtherApps:
        views = app_views(config)
        primary = primary_view(views)
        planes = [
            build_app_plane(
                view,
                in_flight,
                environ=environ,
                clock=clock,
                trusted_simulator_keys=trusted_simulator_keys,
            )
            for view in views
            if view is not primary
        ]
        directory = (
            app_directory(primary, primary_source, planes) if config.apps is not None else None
        )
        passive: PassiveDetector | PassiveByApp = primary_passive
        if planes:
            passive = PassiveByApp([primary_passive, *(p.plane.health.passive for p in planes)])
        return cls(primary.name, planes, directory, passive)

    def feed_metrics(self, primary: Reconciler, metrics: Metrics) -> None:
        """Metrics see every app's replicas, each labelled with its app."""
        reconcilers = [(self.primary, primary), *((p.name, p.reconciler) for p in self.planes)]

        def publish(_: Snapshot) -> None:
            snapshots = [reconciler.current for _, reconciler in reconcilers]
            metrics.app_of = {
                status.replica.id: name
                for (name, _), snapshot in zip(reconcilers, snapshots, strict=True)
                for status in snapshot.statuses
            }
            metrics.on_snapshot(merged_snapshot(snapshots))

        for _, reconciler in reconcilers:
            reconciler.subscribe(publish)
        publish(primary.current)

    def plane(self, name: str) -> AppPlane:
        for plane in self.planes:
            if plane.name == name:
                return plane
        raise LookupError(name)


def app_summaries(config: RouterConfig, documents: Mapping[str, Any]) -> list[dict[str, Any]]:
    """/status `apps`: each app's hosts, counts and replicas, in config order."""
    summaries = []
    for app in config.apps or ():
        document = documents[app.name]
        summaries.append(
            {
                "name": app.name,
                "hosts": list(app.hosts),
                "default": app.default,
                "app_id": document["app_id"],
                "policy": document["policy"],
                "snapshot_version": document["snapshot_version"],
                "replica_count": document["replica_count"],
                "routable_count": document["routable_count"],
                "replicas": document["replicas"],
            }
        )
    return summaries


def engine_settings(config: RouterConfig) -> ProxySettings:
    """The engine's slice; with `apps:`, its `connect_to` is every app's (the pools dial
    any app's replicas; config validation refuses a pattern two apps map differently)."""
    settings = proxy_settings(config)
    if config.apps is None:
        return settings
    connect_to: dict[str, str] = {}
    for app in config.apps:
        connect_to.update(app.discovery.connect_to)
    return dataclasses.replace(settings, connect_to=connect_to)
