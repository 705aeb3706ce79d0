"""The composition root's data-plane half: the engine `proxy.engine` names, built with its
slice of the config (`compose.proxy_settings`) and wired to what it reads (the snapshot
source, the app directory) and reports to (the observers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router.compose import proxy_settings
from router.config import RouterConfig
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.apps import AppDirectory
from router.proxy.base import Engine, InFlightCounter, Observers, SnapshotSource
from router.proxy.fast import FastEngine
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


def build_engine(
    config: RouterConfig, wiring: EngineWiring, clock: Callable[[], float] = time.monotonic
) -> Engine:
    """The engine `proxy.engine` names, with its slice of the config."""
    if config.proxy.engine == "envoy":
        from router.proxy.envoy.engine import EnvoyEngine  # only with the [envoy] extra

        return EnvoyEngine(
            config,
            wiring.snapshots,
            wiring.subscribe,
            clock=clock,
            config_source=wiring.running_config,
        )
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
        )
    return AiohttpEngine(
        proxy_settings(config),
        wiring.snapshots,
        wiring.observers,
        wiring.in_flight,
        tls=wiring.tls,
        apps=wiring.apps,
        peer_check=wiring.peer_check,
    )
