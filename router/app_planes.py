"""Several apps in one router process: each app beyond the primary one gets its own control
plane (discovery, health, attestation) and its own reconciler, built by the composition
root from the app's view of the config, and the engines get one `AppDirectory` for all.

The primary app (the default app, else the first) keeps the wiring `RouterApp` has always
had (metrics, history, DNS, operator actions), so a config without `apps:` runs exactly as
before. Each reconciler stays the single writer of its app's snapshot; an app's failure
(a discovery outage, every replica down) changes no other app's snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.app_views import AppView, app_views, primary_view
from router.compose import ControlPlane, build_app_control, policy_from_config
from router.config import RouterConfig
from router.discovery.shared import CloudPolls
from router.discovery.static import static_replicas
from router.errors import ConfigError, DiscoveryAuthError, DiscoveryError
from router.health.passive import PassiveDetector
from router.metrics import Metrics
from router.metrics_apps import merged_snapshot
from router.models import Replica
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import InFlightCounter, SnapshotSource
from router.reach import AttestedReach, PeerCheck, upstream_context
from router.reconciler import Reconciler
from router.snapshot import Overrides, Snapshot

log = logging.getLogger(__name__)
# How long a reload waits for a new app's first passing health checks before routing to it.
_READY_WAIT = 30.0


@dataclass
class AppPlane:
    """One app's control plane and the reconciler that alone publishes its snapshot."""

    view: AppView
    reconciler: Reconciler
    plane: ControlPlane
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    _entry: AppEntry | None = None

    @property
    def name(self) -> str:
        return self.view.name

    def entry(self) -> AppEntry:
        """The engines' handle on this app: one object for the plane's life, so its count
        of requests in flight (max_connections) survives directory swaps."""
        if self._entry is None:
            reconciler = self.reconciler
            gate = self.plane.ratls_gate
            attested = attested_reach(self.view, gate.check if gate is not None else None)
            self._entry = AppEntry(self.name, lambda: reconciler.current, attested=attested)
        self._entry.limit = self.view.max_connections
        return self._entry

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(coro))

    async def start(self) -> None:
        """Static replicas or a first discovery pass, then the loops (as the primary app)."""
        spawn = self._spawn
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

    async def ready(self, deadline: float) -> None:
        """Until the app has a routable replica (its first health checks passed), at most
        until `deadline` (loop time): a host moved to a new app then never sees a 503."""
        loop = asyncio.get_running_loop()
        while not self.reconciler.current.routable and loop.time() < deadline:
            await asyncio.sleep(0.02)  # polling with a deadline: the reconciler has no event

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.plane.aclose()
        self.reconciler.close()


def attested_reach(view: AppView, check: PeerCheck | None) -> AttestedReach | None:
    """With `apps:`, how the engines reach an app with `attestation.connection: ra-tls`:
    its own gate's check on connections of its own (None: the app has no RA-TLS)."""
    if check is None:
        return None
    config = view.config
    context = upstream_context(config.upstream_tls, True, config.attestation.kms_root)
    return AttestedReach(view.name, check, context)


def build_app_plane(
    view: AppView,
    in_flight: InFlightCounter,
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    polls: CloudPolls | None = None,
) -> AppPlane:
    plane = build_app_control(
        view.config,
        in_flight,
        app=view.name,
        environ=environ,
        clock=clock,
        trusted_simulator_keys=trusted_simulator_keys,
        polls=polls,
    )
    return AppPlane(view, plane.reconciler, plane)


def app_directory(
    primary: AppView,
    primary_entry: AppEntry,
    others: list[AppPlane],
    leaving: Sequence[AppPlane] = (),
) -> AppDirectory:
    """Host -> app for the engines: every app's routes, the default app for the rest.
    `leaving` apps (being replaced on reload) keep only routes no other app claims."""
    primary_entry.limit = primary.max_connections
    entries = {primary.name: primary_entry}
    entries.update({p.name: p.entry() for p in others})
    views = [primary, *(p.view for p in others)]
    routes = [(route, entries[view.name]) for view in views for route in view.routes]
    claimed = {route for route, _ in routes}
    for plane in leaving:
        entry = plane.entry()
        routes += [(r, entry) for r in plane.view.routes if r not in claimed]
    default = next((entries[v.name] for v in views if v.default), None)
    return AppDirectory(routes, default)


class PassiveByApp:
    """The data plane reports every upstream attempt once; this hands it to the passive
    detector of the app that owns the replica (one dict get once the owner is known)."""

    def __init__(self, detectors: list[PassiveDetector]) -> None:
        self._detectors = detectors
        self._owner: dict[str, PassiveDetector] = {}

    def set_detectors(self, detectors: list[PassiveDetector]) -> None:
        self._detectors = detectors
        self._owner = {}

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
    the primary one, the engines' directory and the passive-health observer; `reload`
    applies a new `apps:` list."""

    primary: AppView
    primary_entry: AppEntry
    primary_passive: PassiveDetector
    planes: list[AppPlane]
    directory: AppDirectory | None
    passive: PassiveDetector | PassiveByApp
    build_plane: Callable[[AppView], AppPlane]
    publish: Callable[[Snapshot], None] = lambda _: None
    # Told of every snapshot of the apps beyond the primary (the Envoy engine renders all).
    watchers: list[Callable[[Snapshot], None]] = dataclasses.field(default_factory=list)

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
        polls: CloudPolls | None = None,
        primary_check: PeerCheck | None = None,
    ) -> OtherApps:
        """`primary_check`: the primary app's RA-TLS gate check, if it has one."""

        def build_plane(view: AppView) -> AppPlane:
            return build_app_plane(
                view,
                in_flight,
                environ=environ,
                clock=clock,
                trusted_simulator_keys=trusted_simulator_keys,
                polls=polls,
            )

        views = app_views(config)
        primary = primary_view(views)
        planes = [build_plane(view) for view in views if view is not primary]
        entry = AppEntry(
            primary.name, primary_source, attested=attested_reach(primary, primary_check)
        )
        directory = app_directory(primary, entry, planes) if config.apps is not None else None
        passive: PassiveDetector | PassiveByApp = primary_passive
        if config.apps is not None:
            passive = PassiveByApp([primary_passive, *(p.plane.health.passive for p in planes)])
        return cls(primary, entry, primary_passive, planes, directory, passive, build_plane)

    @property
    def primary_name(self) -> str:
        return self.primary.name

    def configs(self) -> dict[str, RouterConfig]:
        """Each running app's view of the config, by app name."""
        views = [self.primary, *(p.view for p in self.planes)]
        return {view.name: view.config for view in views}

    def watch(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener` with every snapshot of the other apps, present and future."""
        self.watchers.append(listener)
        for plane in self.planes:
            plane.reconciler.subscribe(listener)

    def feed_metrics(self, primary: Reconciler, metrics: Metrics) -> None:
        """Metrics see every app's replicas, each labelled with its app."""

        def publish(_: Snapshot) -> None:
            named = [(self.primary.name, primary.current)]
            named += [(p.name, p.reconciler.current) for p in self.planes]
            metrics.app_of = {s.replica.id: name for name, snap in named for s in snap.statuses}
            metrics.on_snapshot(merged_snapshot(snap for _, snap in named))

        self.publish = publish
        for reconciler in (primary, *(p.reconciler for p in self.planes)):
            reconciler.subscribe(publish)
        publish(primary.current)

    def _swap(self, planes: list[AppPlane], leaving: Sequence[AppPlane] = ()) -> AppDirectory:
        self.planes = planes
        self.directory = app_directory(self.primary, self.primary_entry, planes, leaving)
        if isinstance(self.passive, PassiveByApp):
            detectors = [self.primary_passive, *(p.plane.health.passive for p in planes)]
            self.passive.set_detectors(detectors)
        self.publish(self.primary_entry.snapshots())
        return self.directory

    def reload(
        self, config: RouterConfig, set_directory: Callable[[AppDirectory], None]
    ) -> Coroutine[Any, Any, None] | None:
        """Apply a new `apps:` list (same primary app). Now: removed apps leave the
        directory and changed hosts of running apps apply. The coroutine returned starts the
        new or changed apps, adds them once they can serve, then stops what they replace."""
        views = [v for v in app_views(config) if v.name != self.primary.name]
        self.primary = primary_view(app_views(config))
        old = {p.name: p for p in self.planes}
        kept, fresh = [], []
        for view in views:
            plane = old.get(view.name)
            if plane is not None and plane.view.config == view.config:
                plane.view = view  # hosts, default or max_connections only: no new plane
                kept.append(plane)
            else:
                fresh.append(self.build_plane(view))
        names = {view.name for view in views}
        retired = [p for p in self.planes if p not in kept]
        # Until its successor can serve, a changed app keeps serving its hosts no running
        # app has taken; a removed app's hosts leave now.
        set_directory(self._swap(kept, [p for p in retired if p.name in names]))
        for plane in fresh:
            plane.reconciler.subscribe(self.publish)
            for listener in self.watchers:
                plane.reconciler.subscribe(listener)
        if not fresh and not retired:
            return None
        return self._finish_reload(kept, fresh, retired, set_directory)

    async def _finish_reload(
        self,
        kept: list[AppPlane],
        fresh: list[AppPlane],
        retired: list[AppPlane],
        set_directory: Callable[[AppDirectory], None],
    ) -> None:
        deadline = asyncio.get_running_loop().time() + _READY_WAIT
        for plane in fresh:
            await plane.start()
        for plane in fresh:
            await plane.ready(deadline)
        set_directory(self._swap([*kept, *fresh]))
        for plane in retired:  # in-flight requests hold their snapshot, not the plane
            await plane.stop()
        log.info(
            "reload: apps %s started, %s stopped",
            ", ".join(p.name for p in fresh) or "none",
            ", ".join(p.name for p in retired) or "none",
        )

    def plane(self, name: str) -> AppPlane:
        for plane in self.planes:
            if plane.name == name:
                return plane
        raise LookupError(name)

    def apply_overrides(self, app: str, overrides: Overrides) -> None:
        """Another app's drain or active limit, forwarded by worker 0."""
        try:
            self.plane(app).reconciler.set_overrides(overrides)
        except LookupError:  # e.g. worker 0 reloaded an app this worker does not run yet
            log.warning("worker overrides for app %s ignored: no such app here", app)


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
                "drained": document["drained"],
                "replicas": document["replicas"],
            }
        )
    return summaries


def check_apps_reload(running: RouterConfig, new: RouterConfig, environ: Mapping[str, str]) -> None:
    """ConfigError when a reload cannot apply `new`'s apps live: `apps:` added or removed
    as a whole, or another primary app (the top-level sections would change owner), or an
    app whose routing policy cannot be built."""
    if (running.apps is None) != (new.apps is None):
        raise ConfigError("apps: adding or removing the apps list needs a restart")
    if running.apps is None:
        return
    before, after = primary_view(app_views(running)), primary_view(app_views(new))
    if before.name != after.name:
        raise ConfigError(
            f"apps: the primary app (the default one, else the first) changed from "
            f"{before.name} to {after.name}; keep it, or restart to apply"
        )
    for view in app_views(new):
        try:
            policy_from_config(view.config, environ)
        except ConfigError as exc:
            raise ConfigError(f"app {view.name}: {exc}") from None
