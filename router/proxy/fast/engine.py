"""The fast engine: `proxy.engine: fast`. Same interface and behaviour as the aiohttp engine,
built on asyncio protocols, httptools (llhttp) and, when the loop is uvloop, libuv I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from router.proxy.admission import Admission
from router.proxy.apps import AppDirectory
from router.proxy.base import InFlightCounter, Observers, SnapshotSource
from router.proxy.fast.core import EngineCore
from router.proxy.fast.pool import Pool
from router.proxy.fast.server import ClientConnection
from router.proxy.fast.timer import DeadlineSweep
from router.proxy.headers import TrustedProxies
from router.proxy.retry import RetryPolicy
from router.proxy.retry_budget import Retrier
from router.proxy.settings import ProxySettings
from router.proxy.well_known import AttestationEndpoint
from router.reach import ConnectTo, PeerCheck, upstream_context
from router.settings_types import split_host_port
from router.tls import ServerTLS

log = logging.getLogger(__name__)


def _edge_headers(config: ProxySettings) -> frozenset[bytes]:
    return frozenset(name.encode("latin-1") for name in config.edge_headers)


class FastEngine:
    def __init__(
        self,
        config: ProxySettings,
        snapshots: SnapshotSource,
        observers: Observers,
        in_flight: InFlightCounter,
        *,
        reuse_port: bool = False,
        tls: ServerTLS | None = None,
        apps: AppDirectory | None = None,
        peer_check: PeerCheck | None = None,
        attestation: AttestationEndpoint | None = None,
    ) -> None:
        self._config = config
        self._attestation = attestation
        # One app (the single-app layout) unless a directory of several is given.
        self._apps = apps or AppDirectory.single(snapshots)
        self._observers = observers
        self._in_flight = in_flight
        self._reuse_port = reuse_port
        self._tls = tls
        self._peer_check = peer_check
        self._servers: list[asyncio.Server] = []
        self._core: EngineCore | None = None
        self._accepted = 0
        self.scheme = "http"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [
            (s.getsockname()[0], s.getsockname()[1]) for srv in self._servers for s in srv.sockets
        ]

    def connection_counts(self) -> tuple[int, int]:
        """(open, accepted) client connections, for metrics."""
        return (len(self._core.connections) if self._core else 0), self._accepted

    def _accept(self, core: EngineCore) -> ClientConnection:
        self._accepted += 1
        return ClientConnection(core)

    async def start(self) -> None:
        config, proxy = self._config, self._config.proxy
        pool = self._new_pool(config)
        admission = Admission(proxy.max_connections, proxy.max_pending)
        core = EngineCore(
            apps=self._apps,
            observers=self._observers,
            in_flight=self._in_flight,
            trusted=TrustedProxies(proxy.trusted_proxies),
            pool=pool,
            retries=proxy.retries,
            max_body=proxy.max_request_body,
            count_5xx=config.count_5xx,
            idle_timeout=proxy.idle_timeout,
            header_timeout=proxy.client_header_timeout,
            body_timeout=proxy.client_body_timeout,
            admission=admission,
            admission_wait=proxy.connect_timeout,
            retrier=Retrier(RetryPolicy.from_config(proxy), lambda: admission.active),
            sweep=DeadlineSweep(pool.loop),
            client_idle_timeout=proxy.client_idle_timeout,
            edge_headers=_edge_headers(config),
        )
        core.all_closed.set()
        core.acme_webroot = config.acme_webroot
        core.attestation = self._attestation
        self._core = core
        loop = asyncio.get_running_loop()
        # The TLS listener first, as in the aiohttp engine (addresses[0] is then https).
        listeners: list[tuple[str, ssl.SSLContext | None]] = []
        if config.listen_tls is not None and self._tls is not None:
            listeners.append((config.listen_tls.listen, self._tls.context))
        if config.listen is not None:
            listeners.append((config.listen, None))
        for listen, context in listeners:
            host, port = split_host_port(listen)
            self._servers.append(
                await loop.create_server(
                    lambda: self._accept(core),
                    host,
                    port,
                    backlog=1024,
                    reuse_port=self._reuse_port or None,
                    ssl=context,
                )
            )
        if (
            config.listen_tls is not None
            and config.listen_tls.redirect_http
            and len(self._servers) == 2
        ):
            core.redirect_https_port = self._servers[0].sockets[0].getsockname()[1]

    def set_apps(self, apps: AppDirectory) -> None:
        self._apps = apps
        if self._core is not None:
            self._core.apps = apps

    def apply_config(self, config: ProxySettings) -> None:
        """A reload: limits, timeouts, trust and retries apply to the next requests; a change
        in how replicas are reached swaps in a new upstream pool (the old one closes after
        the drain time, so requests on it finish)."""
        core, proxy = self._core, config.proxy
        old = self._config
        self._config = config
        if core is None:
            return
        core.trusted = TrustedProxies(proxy.trusted_proxies)
        core.retries = proxy.retries
        core.retrier.configure(RetryPolicy.from_config(proxy))
        core.max_body = proxy.max_request_body
        core.count_5xx = config.count_5xx
        core.idle_timeout = proxy.idle_timeout
        core.client_idle_timeout = proxy.client_idle_timeout
        core.edge_headers = _edge_headers(config)
        core.body_timeout = proxy.client_body_timeout
        core.admission.configure(proxy.max_connections, proxy.max_pending)
        core.admission_wait = proxy.connect_timeout
        reach = (
            config.connect_to,
            config.upstream_tls,
            proxy.connect_timeout,
            proxy.response_timeout,
            proxy.idle_timeout,
        )
        before = (
            old.connect_to,
            old.upstream_tls,
            old.proxy.connect_timeout,
            old.proxy.response_timeout,
            old.proxy.idle_timeout,
        )
        if reach != before:
            previous, core.pool = core.pool, self._new_pool(config)
            loop = asyncio.get_running_loop()
            loop.call_later(proxy.drain_timeout, previous.close)

    def _new_pool(self, config: ProxySettings) -> Pool:
        proxy, tls = config.proxy, config.upstream_tls
        return Pool(
            ConnectTo(config.connect_to),
            upstream_context(tls, config.ra_tls, config.kms_root),
            connect_timeout=proxy.connect_timeout,
            response_timeout=proxy.response_timeout,
            idle_timeout=proxy.idle_timeout,
            peer_check=self._peer_check,
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle client connections, let requests in flight finish for
        up to `grace` seconds, then cut what is left."""
        core, servers = self._core, self._servers
        if core is None or not servers:
            return
        for server in servers:
            server.close()
        core.draining = True
        for connection in list(core.connections):
            connection.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await core.all_closed.wait()
        for connection in list(core.connections):
            if connection.transport is not None:
                connection.transport.abort()
        core.pool.close()
        core.sweep.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for server in servers:
                    await server.wait_closed()
