"""`proxy.engine: envoy`: the router's control plane drives a local Envoy through files.

On every snapshot the engine renders the resources (pure mapping in `resources.py`,
`routes.py`, `listeners.py`) and replaces the changed files; Envoy picks each rename up
by itself, so a change reaches it without a restart or a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from router.proxy.apps import AppDirectory
from router.proxy.base import SnapshotSource
from router.proxy.envoy import admin_api
from router.proxy.envoy.acme_server import ACME_CLUSTER, AcmeServer, acme_cluster
from router.proxy.envoy.bootstrap import bootstrap
from router.proxy.envoy.dialer import Dialer, bind_port
from router.proxy.envoy.files import ResourceFiles
from router.proxy.envoy.listeners import ListenerApps, Source, listeners, tls_secret
from router.proxy.envoy.loopback import (
    ATTESTATION_CLUSTER,
    LoopbackServer,
    attestation_handler,
    loopback_cluster,
)
from router.proxy.envoy.process import EnvoyProcess
from router.proxy.envoy.resources import Json, clusters_and_endpoints, duration
from router.proxy.envoy.routes import all_routes
from router.proxy.envoy.sni import restrictions, sni_chains
from router.proxy.envoy.tunnel import tunnel_cluster, tunnel_listener
from router.proxy.envoy.vhosts import EnvoyApp, app_caps, envoy_apps
from router.proxy.envoy.view import ConfigView
from router.proxy.settings import ProxySettings
from router.proxy.well_known import AttestationEndpoint

if TYPE_CHECKING:
    from router.proxy.envoy.xds import XdsServer
from router.reach import ConnectTo
from router.snapshot import Snapshot, SnapshotListener

log = logging.getLogger(__name__)
VIEW_REFRESH_SECONDS = 1.0
DNS_REFRESH_SECONDS = 30.0
MetricsRender = Callable[[], Awaitable[tuple[bytes, str]]]
ADS_SOURCE: Json = {"ads": {}, "resource_api_version": "V3"}


class EnvoyEngine:
    def __init__(
        self,
        config: ConfigView,
        snapshots: SnapshotSource,
        subscribe: Callable[[SnapshotListener], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        config_source: Callable[[], ConfigView] | None = None,
        apps: AppDirectory | None = None,
        app_configs: Callable[[], Mapping[str, ConfigView]] | None = None,
        connect_to: Mapping[str, str] | None = None,
        spki_pins: Mapping[str, str] | None = None,
        attestation: AttestationEndpoint | None = None,
    ) -> None:
        # The app's current config, read at every publish: a reload that changes only
        # routing reaches Envoy with the snapshot the new policy builds.
        self._config = config
        self._config_source = config_source
        self._snapshots = snapshots
        self._clock = clock
        # With `apps:`: every app's hosts and snapshot, and each app's own config by name.
        self._apps = apps
        self._app_configs = app_configs
        if connect_to is None:
            connect_to = config.discovery.connect_to
        self._dialer = Dialer(ConnectTo(connect_to))
        # With RA-TLS: replica id -> the SPKI digest the router verified (the gate's, live).
        self._pins = spki_pins
        self._addresses: dict[str, tuple[str, int]] = {}
        self.files: ResourceFiles | None = None
        self.process: EnvoyProcess | None = None
        self.published_version: int | None = None
        self.endpoints_view: list[Json] = []
        self.connections = (0, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self.xds: XdsServer | None = None
        self.acme: AcmeServer | None = None
        # The router's own attestation path, answered on loopback (loopback.py).
        self._attestation = attestation
        self.attestation_server: LoopbackServer | None = None
        self._resolving: set[str] = set()
        subscribe(self._on_snapshot)

    @property
    def config(self) -> ConfigView:
        return self._config_source() if self._config_source is not None else self._config

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [self._addresses[n] for n in ("http", "https") if n in self._addresses]

    def _directory(self) -> Path:
        configured = self.config.proxy.envoy.config_dir
        if configured is not None:
            configured.mkdir(parents=True, exist_ok=True)
            return configured
        self._temporary = tempfile.TemporaryDirectory(prefix="phala-router-envoy-")
        return Path(self._temporary.name)

    async def start(self) -> None:
        directory = self._directory()
        self.files = ResourceFiles(directory)
        if self.config.acme_webroot is not None:
            self.acme = AcmeServer(self.config.acme_webroot)
            await self.acme.start()
        if self._attestation is not None:
            self.attestation_server = LoopbackServer(attestation_handler(self._attestation))
            await self.attestation_server.start()
        if self.config.listen:
            self._addresses["http"] = bind_port(self.config.listen)
        if self.config.listen_tls:
            self._addresses["https"] = bind_port(self.config.listen_tls.listen)
        xds_listen = self.config.proxy.envoy.xds_listen
        if xds_listen is not None:
            from router.proxy.envoy.xds import XdsServer  # grpcio, only when serving xDS

            self.xds = XdsServer(xds_listen, self.config.proxy.envoy.xds_tls)
            await self.xds.start()
        snapshot = self._snapshots()
        for app in self._envoy_apps() or ():
            await self._dialer.resolve(self._dialer.unresolved(app.snapshot))
        await self._dialer.resolve(self._dialer.unresolved(snapshot))
        self.publish(snapshot)
        path = directory / "bootstrap.json"
        document = bootstrap(
            self.config.proxy.envoy.admin_listen,
            self.files.source("listeners"),
            self.files.source("clusters"),
        )
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")
        self.process = EnvoyProcess(
            self.config.proxy.envoy, path, drain_seconds=self.config.proxy.drain_timeout
        )
        await self.process.start()
        self._spawn(self._refresh_view())
        self._spawn(self._refresh_addresses())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _source(self, kind: str, name: str) -> Json:
        assert self.files is not None
        return self.files.source(kind, name)

    def _https_port(self) -> int | None:
        address = self._addresses.get("https")
        return address[1] if address is not None else None

    def _envoy_apps(self) -> list[EnvoyApp] | None:
        """Every app with its current snapshot; None without `apps:` (one implicit app)."""
        if self._apps is None:
            return None
        configs = self._app_configs() if self._app_configs is not None else {}
        return envoy_apps(self._apps, configs, self.config)

    def render(
        self, snapshot: Snapshot, source: Source, *, local: bool = True
    ) -> dict[str, list[Json]]:
        """Every resource for `snapshot` (with `apps:`, for every app's current snapshot),
        by kind, with config sources from `source`. `local`: for the Envoy on this machine
        (which alone can reach the router's loopback ACME server)."""
        config = self.config
        acme = self.acme if local else None
        apps = self._envoy_apps()
        clusters: list[Json] = []
        assignments: list[Json] = []
        for app in apps or ():
            app_clusters, app_assignments = clusters_and_endpoints(
                app.snapshot,
                app.config,
                self._dialer,
                lambda name: source("endpoints", name),
                prefix=app.cluster_prefix,
                max_requests=app.max_connections,
            )
            clusters += app_clusters
            assignments += app_assignments
        if apps is None:
            clusters, assignments = clusters_and_endpoints(
                snapshot,
                config,
                self._dialer,
                lambda name: source("endpoints", name),
                pins=self._pins,
            )
        sni = sni_chains(apps, config.listen_certificates()) if config.listen_tls else []
        # Replicas sharing a gateway address go through the tunnel (tunnel.py).
        clusters.append(tunnel_cluster(duration(config.proxy.connect_timeout)))
        if acme is not None:
            clusters.append(acme_cluster(acme.port))
        attestation = self.attestation_server if local else None
        if attestation is not None:
            clusters.append(loopback_cluster(ATTESTATION_CLUSTER, attestation.port))
        return {
            "endpoints": assignments,
            "clusters": clusters,
            "routes": all_routes(
                snapshot,
                config,
                self._https_port(),
                apps,
                acme_cluster=ACME_CLUSTER if acme is not None else None,
                restricted=restrictions(sni),
                attestation_cluster=ATTESTATION_CLUSTER if attestation is not None else None,
            ),
            "secrets": tls_secret(config, sni),
            "listeners": [
                *listeners(config, self._addresses, source, ListenerApps(sni, app_caps(apps))),
                tunnel_listener(),
            ],
        }

    def set_apps(self, apps: AppDirectory) -> None:
        """A reload changed the apps (or their hosts): re-render every virtual host."""
        self._apps = apps
        self.publish(self._snapshots())

    def republish(self) -> None:
        """Something the snapshot does not carry changed (an attested key): render again."""
        self.publish(self._snapshots())

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Any app's reconciler published (subscribe it to each app's reconciler)."""
        self._on_snapshot(snapshot)

    def publish(self, snapshot: Snapshot) -> None:
        """Write the resources for `snapshot`: endpoints before the clusters naming them,
        clusters before the routes naming them, routes before listeners. Unchanged files
        are left alone, so a membership change rewrites only load assignments."""
        files = self.files
        if files is None:
            return
        rendered = self.render(snapshot, files.source)
        for kind in ("endpoints", "secrets"):
            for resource in rendered[kind]:
                files.write(kind, resource.get("name") or resource["cluster_name"], [resource])
        files.write("clusters", "all", rendered["clusters"])
        for route in rendered["routes"]:
            files.write("routes", route["name"], [route])
        files.write("listeners", "all", rendered["listeners"])
        if self.xds is not None:
            by_ads = self.render(snapshot, lambda kind, name: dict(ADS_SOURCE), local=False)
            self.xds.update(r for kind in by_ads.values() for r in kind)
        self.published_version = snapshot.version

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        # Publish at once (a membership change must not wait on DNS); replicas whose host
        # has not resolved yet join when it does.
        self.publish(snapshot)
        missing = self._dialer.unresolved(snapshot) - self._resolving
        if missing:
            self._spawn(self._resolve_then_publish(missing))

    async def _resolve_then_publish(self, hosts: set[str]) -> None:
        self._resolving |= hosts
        try:
            if await self._dialer.resolve(hosts):
                self.publish(self._snapshots())
        finally:
            self._resolving -= hosts

    async def _refresh_addresses(self) -> None:
        """Re-resolve replica host names now and then; publish when one moved."""
        while True:
            await asyncio.sleep(DNS_REFRESH_SECONDS)
            if await self._dialer.refresh():
                self.publish(self._snapshots())

    def apply_config(self, config: ProxySettings) -> None:
        """Push a reloaded config: the app's whole config is read through `config_source`
        at each publish; listen addresses keep their first value."""
        self._dialer = Dialer(ConnectTo(config.connect_to))
        self.publish(self._snapshots())

    async def _refresh_view(self) -> None:
        """Keep Envoy's endpoint view for /status fresh (it is read synchronously)."""
        async with aiohttp.ClientSession() as session:
            while True:
                process = self.process
                if process is not None and process.admin_url and process.started.is_set():
                    with contextlib.suppress(aiohttp.ClientError, ValueError):
                        self.endpoints_view = await admin_api.read_endpoints(
                            session, process.admin_url
                        )
                        self.connections = await admin_api.client_connections(
                            session, process.admin_url
                        )
                await asyncio.sleep(VIEW_REFRESH_SECONDS)

    def connection_counts(self) -> tuple[int, int]:
        """(open, accepted) client connections as Envoy last reported them."""
        return self.connections

    def status_view(self) -> dict[str, Any]:
        process = self.process
        return {
            "name": "envoy",
            "pid": process.process.pid if process and process.process else None,
            "restarts": process.restarts if process else 0,
            "published_snapshot": self.published_version,
            "endpoints": self.endpoints_view,
        }

    async def prometheus(self) -> str:
        process = self.process
        if process is None or process.admin_url is None:
            return ""
        async with aiohttp.ClientSession() as session:
            return await admin_api.read_prometheus(session, process.admin_url)

    def with_envoy_metrics(self, render: MetricsRender) -> MetricsRender:
        """/metrics = the router's `router_*` series followed by Envoy's `envoy_*` ones
        (both the Prometheus text format; the names cannot collide)."""

        async def both() -> tuple[bytes, str]:
            body, content_type = await render()
            try:
                envoy = await self.prometheus()
            except (aiohttp.ClientError, OSError):
                return body, content_type  # Envoy restarting: serve the router's own series
            return body + envoy.encode(), content_type

        return both

    async def stop(self, grace: float) -> None:
        """Drain Envoy's listeners, let in-flight requests finish (up to grace), stop."""
        for task in list(self._tasks):
            task.cancel()
        process = self.process
        if process is not None:
            await process.drain_listeners()
            await self._wait_idle(process, grace)
            await process.stop(grace)
        if self.xds is not None:
            await self.xds.stop()
        for server in (self.acme, self.attestation_server):
            if server is not None:
                await server.stop()
        if self._temporary is not None:
            self._temporary.cleanup()

    async def _wait_idle(self, process: EnvoyProcess, grace: float) -> None:
        if process.admin_url is None:
            return
        deadline = self._clock() + grace
        async with aiohttp.ClientSession() as session:
            while self._clock() < deadline:
                try:
                    if await admin_api.downstream_active(session, process.admin_url) == 0:
                        return
                except (aiohttp.ClientError, ValueError):
                    return
                await asyncio.sleep(0.05)
