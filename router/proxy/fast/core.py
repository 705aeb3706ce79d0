"""What every connection of one fast engine shares: settings, the pool, admission, the
retry state and the observers, in one `EngineCore` built by `engine.py` (and updated in
place on a reload).

Kept apart from `server.py` so that the request side (`exchange.py`) can read the core
without importing the client connection: the dependency runs server -> exchange only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from router.proxy.admission import Admission
from router.proxy.apps import AppDirectory
from router.proxy.base import InFlightCounter, Observers
from router.proxy.fast.pool import Pool
from router.proxy.fast.timer import DeadlineSweep
from router.proxy.headers import TrustedProxies
from router.proxy.retry_budget import Retrier
from router.proxy.well_known import AttestationEndpoint


class OpenConnection(Protocol):
    """What the engine needs of a client connection when it stops."""

    transport: asyncio.Transport | None

    def drain(self) -> None: ...


@dataclass(slots=True)
class EngineCore:
    """What every connection of one engine shares."""

    # Host (and SNI) -> the app's snapshot source (router/proxy/apps.py).
    apps: AppDirectory
    observers: Observers
    in_flight: InFlightCounter
    trusted: TrustedProxies
    pool: Pool
    retries: int
    max_body: int
    count_5xx: bool
    idle_timeout: float
    header_timeout: float
    body_timeout: float
    admission: Admission
    # How long a request may wait for an admission slot (the connect timeout, as aiohttp).
    admission_wait: float
    retrier: Retrier
    # Checks every client connection's timeout (one loop timer for all of them).
    sweep: DeadlineSweep
    # Set when listen_tls.redirect_http: plain-HTTP requests get a 308 to this https port.
    redirect_https_port: int | None = None
    # An idle keep-alive client connection is closed after this (proxy.client_idle_timeout).
    client_idle_timeout: float = 60.0
    # Headers (lower-case) removed from requests of untrusted peers (headers.edge_names).
    edge_headers: frozenset[bytes] = frozenset()
    # Set when acme_webroot: ACME challenge files answered on the plain listener.
    acme_webroot: Path | None = None
    # Answers /.well-known/phala-router/attestation (router.proxy.well_known); None: routed.
    attestation: AttestationEndpoint | None = None
    draining: bool = False
    connections: set[OpenConnection] = field(default_factory=set)
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)
