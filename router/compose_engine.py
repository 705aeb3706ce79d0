"""The composition root's data-plane half: the engine `proxy.engine` names, built with its
slice of the config (`compose.proxy_settings`) and wired to what it reads (the snapshot
source, the app directory) and reports to (the observers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.attestation.ratls_gate import RaTlsGate
from router.attested_tls import DstackServerTLS
from router.compose import proxy_settings
from router.config import RouterConfig
from router.errors import ConfigError
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.apps import AppDirectory
from router.proxy.base import Engine, InFlightCounter, Observers, SnapshotSource
from router.proxy.fast import FastEngine
from router.proxy.well_known import AttestationEndpoint
from router.reach import PeerCheck
from router.snapshot import SnapshotListener
from router.tls import ServerTLS
from router.workers import worker_count


@dataclass
class EngineWiring:
    """What an engine reads and reports to, besides its settings."""

    snapshots: SnapshotSource
    observers: Observers
    in_flight: InFlightCounter
    subscribe: Callable[[SnapshotListener], None]  # the Envoy engine follows snapshots
    running_config: Callable[[], RouterConfig]  # the Envoy engine rereads it on reload
    apps: AppDirectory | None = None
    tls: ServerTLS | None = None
    peer_check: PeerCheck | None = None
    # The Envoy engine renders every app's virtual host and pins the keys RA-TLS verified.
    app_configs: Callable[[], Mapping[str, RouterConfig]] | None = None
    watch_apps: Callable[[SnapshotListener], None] | None = None
    ratls_gate: RaTlsGate | None = None
    # The router's own attestation, answered on /.well-known/phala-router/attestation.
    attestation: AttestationEndpoint | None = None


def build_engine(
    config: RouterConfig, wiring: EngineWiring, clock: Callable[[], float] = time.monotonic
) -> Engine:
    """The engine `proxy.engine` names, with its slice of the config."""
    if config.proxy.engine == "envoy":
        from router.proxy.envoy.engine import EnvoyEngine  # only with the [envoy] extra

        gate = wiring.ratls_gate
        engine = EnvoyEngine(
            config,
            wiring.snapshots,
            wiring.subscribe,
            clock=clock,
            config_source=wiring.running_config,
            apps=wiring.apps,
            app_configs=wiring.app_configs,
            connect_to=proxy_settings(config).connect_to,
            spki_pins=gate.pins if gate is not None else None,
            # The attestation path is the router's on every listener, as the Python engines
            # answer it (outside a CVM: 404 not_in_cvm, never routed).
            attestation=wiring.attestation,
        )
        if wiring.watch_apps is not None:
            wiring.watch_apps(engine.on_snapshot)
        if gate is not None:  # Envoy pins the key the router attested (upstream_tls.py)
            gate.pin_listeners.append(engine.republish)
        return engine
    if config.proxy.engine == "fast":
        return FastEngine(
            proxy_settings(config),
            wiring.snapshots,
            wiring.observers,
            wiring.in_flight,
            reuse_port=worker_count(config) > 1,
            tls=wiring.tls,
            apps=wiring.apps,
            peer_check=wiring.peer_check,
            attestation=wiring.attestation,
        )
    return AiohttpEngine(
        proxy_settings(config),
        wiring.snapshots,
        wiring.observers,
        wiring.in_flight,
        tls=wiring.tls,
        apps=wiring.apps,
        peer_check=wiring.peer_check,
        attestation=wiring.attestation,
    )


def server_tls(config: RouterConfig) -> ServerTLS | None:
    """The listener's TLS: the router's RA-TLS key, or the certificate files (with any
    per-host ones). ConfigError when a file does not load."""
    tls = config.listen_tls
    if tls is None:
        return None
    if tls.ra_tls:
        return DstackServerTLS(tls.dstack_socket, tls.ra_tls_renew)
    if tls.cert_file is None or tls.key_file is None:  # the config refuses this already
        raise ConfigError("listen_tls needs cert_file and key_file, or ra_tls: true")
    try:
        return ServerTLS(tls.cert_file, tls.key_file, config.listen_certificates())
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        problem = f"listen_tls: cannot load {tls.cert_file} and {tls.key_file}: {exc}"
        raise ConfigError(problem) from None
