"""The fast engine: `proxy.engine: fast`. Same interface and behaviour as the aiohttp engine,
built on asyncio protocols, httptools (llhttp) and, when the loop is uvloop, libuv I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from router.config import RouterConfig
from router.proxy.base import InFlightCounter, Observers, SnapshotSource
from router.proxy.fast.server import ClientConnection, EngineCore
from router.proxy.fast.upstream import Pool
from router.proxy.headers import TrustedProxies
from router.settings_types import split_host_port
from router.upstream import ConnectTo, client_ssl_context

log = logging.getLogger(__name__)


class FastEngine:
    def __init__(
        self,
        config: RouterConfig,
        snapshots: SnapshotSource,
        observers: Observers,
        in_flight: InFlightCounter,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._config = config
        self._snapshots = snapshots
        self._observers = observers
        self._in_flight = in_flight
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._core: EngineCore | None = None
        self.scheme = "http"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self._server.sockets]

    async def start(self) -> None:
        config, proxy = self._config, self._config.proxy
        tls = config.upstream_tls
        pool = Pool(
            ConnectTo(config.discovery.connect_to),
            client_ssl_context(tls.verify, tls.ca_file),
            connect_timeout=proxy.connect_timeout,
            response_timeout=proxy.response_timeout,
            idle_timeout=proxy.idle_timeout,
        )
        core = EngineCore(
            snapshots=self._snapshots,
            observers=self._observers,
            in_flight=self._in_flight,
            trusted=TrustedProxies(proxy.trusted_proxies),
            pool=pool,
            retries=proxy.retries,
            max_body=proxy.max_request_body,
            count_5xx=config.health.passive.count_5xx,
            idle_timeout=proxy.idle_timeout,
            header_timeout=proxy.client_header_timeout,
            body_timeout=proxy.client_body_timeout,
        )
        core.all_closed.set()
        self._core = core
        host, port = split_host_port(config.listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(core),
            host,
            port,
            backlog=1024,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle client connections, let requests in flight finish for
        up to `grace` seconds, then cut what is left."""
        core, server = self._core, self._server
        if core is None or server is None:
            return
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
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await server.wait_closed()
