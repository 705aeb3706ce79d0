"""The aiohttp data plane: aiohttp's server in front, one shared aiohttp ClientSession behind.

This module is the engine's lifecycle (listeners, the client session, reloads); each
request goes to `aiohttp_forward.Forwarder`.

Bodies stream both ways (never buffered whole), WebSockets are piped frame by frame, and the
retry rule is the one in `router.proxy.retry`: a failed connect moves to another replica for
any method; after bytes went out only bodiless idempotent requests are retried; nothing is
retried once the response has started streaming to the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from router.proxy.aiohttp_forward import Forwarder
from router.proxy.aiohttp_server import HeadTimedServer
from router.proxy.aiohttp_sessions import UpstreamSessions
from router.proxy.aiohttp_support import QuietServerLog
from router.proxy.apps import AppDirectory
from router.proxy.base import InFlightCounter, Observers, SnapshotSource
from router.proxy.request_rules import MAX_HEADER_BLOCK, MAX_HEADER_COUNT
from router.proxy.settings import ProxySettings
from router.proxy.well_known import AttestationEndpoint
from router.reach import AttestedReach, PeerCheck, make_connector, upstream_context
from router.settings_types import split_host_port
from router.tls import ServerTLS


class AiohttpEngine:
    def __init__(
        self,
        config: ProxySettings,
        snapshots: SnapshotSource,
        observers: Observers,
        in_flight: InFlightCounter,
        tls: ServerTLS | None = None,
        apps: AppDirectory | None = None,
        peer_check: PeerCheck | None = None,
        attestation: AttestationEndpoint | None = None,
    ) -> None:
        self._config = config
        self._tls = tls
        self._peer_check = peer_check
        self._sessions = UpstreamSessions(self._new_session, config.proxy.drain_timeout)
        # One app (the single-app layout) unless a directory of several is given.
        self._forwarder = Forwarder(
            config, apps or AppDirectory.single(snapshots), observers, in_flight, self._sessions
        )
        self._forwarder.attestation = attestation
        self._admission = self._forwarder.admission
        self._runner: web.ServerRunner | None = None
        self._sites: list[web.TCPSite] = []
        self._accepted = 0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._runner is None:
            return []
        return [(a[0], a[1]) for a in self._runner.addresses]

    def connection_counts(self) -> tuple[int, int]:
        """(open, accepted) client connections, for metrics."""
        server = self._runner.server if self._runner is not None else None
        return (len(server.connections) if server is not None else 0), self._accepted

    def _new_session(self, attested: AttestedReach | None) -> aiohttp.ClientSession:
        """The shared session (None), or an RA-TLS app's: checked by that app's gate."""
        config = self._config
        connector = make_connector(
            config.connect_to,
            attested.tls
            if attested is not None
            else upstream_context(config.upstream_tls, config.ra_tls, config.kms_root),
            keepalive_timeout=config.proxy.idle_timeout,
            peer_check=attested.check if attested is not None else self._peer_check,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=self._forwarder.timeout,
            # One field may use the whole head budget; response_problem() checks the total.
            max_field_size=MAX_HEADER_BLOCK,
            max_headers=MAX_HEADER_COUNT + 1,
        )

    def set_apps(self, apps: AppDirectory) -> None:
        self._forwarder.apps = apps
        self._sessions.keep_only(entry.attested for entry in apps.entries)

    def apply_config(self, config: ProxySettings) -> None:
        """Take a reloaded config. Listen addresses need a restart (the app says so); how
        replicas are reached changes by swapping in a new client session, and the old one
        closes once its in-flight requests had their drain time."""
        reach_changed = (
            config.connect_to,
            config.upstream_tls,
            config.proxy.idle_timeout,
        ) != (
            self._config.connect_to,
            self._config.upstream_tls,
            self._config.proxy.idle_timeout,
        )
        self._config = config
        self._forwarder.configure(config)
        self._sessions.drain_timeout = config.proxy.drain_timeout
        if reach_changed:
            self._sessions.renew()

    async def start(self) -> None:
        self._sessions.start()
        cfg = self._config.proxy
        # The low-level server: every request reaches `handle`, with no URL dispatcher (it
        # would answer 404 itself for CONNECT's authority form and encoded newlines).
        server = HeadTimedServer(
            self._forwarder.handle,
            head_timeout=cfg.client_header_timeout,
            access_log=None,
            # aiohttp's keep-alive timer closes a connection with no request this long after
            # it opened or after its previous response.
            keepalive_timeout=cfg.client_idle_timeout,
            logger=QuietServerLog(logging.getLogger("aiohttp.server")),
        )
        self._runner = web.ServerRunner(
            server, shutdown_timeout=cfg.drain_timeout, handle_signals=False
        )
        await self._runner.setup()
        self._count_accepted(self._runner.server)
        if self._config.listen_tls is not None and self._tls is not None:
            host, port = split_host_port(self._config.listen_tls.listen)
            site = web.TCPSite(
                self._runner, host, port, backlog=1024, ssl_context=self._tls.context
            )
            await site.start()
            self._sites.append(site)
            self._forwarder.https_port = self._runner.addresses[-1][1]
        if self._config.listen is not None:
            host, port = split_host_port(self._config.listen)
            site = web.TCPSite(self._runner, host, port, backlog=1024)
            await site.start()
            self._sites.append(site)

    def _count_accepted(self, server: web.Server | None) -> None:
        # aiohttp counts open connections but not accepted ones: wrap its per-connection hook.
        if server is None:
            return
        made = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            self._accepted += 1
            made(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]

    async def stop(self, grace: float) -> None:
        if self._runner is not None:
            self._runner._shutdown_timeout = grace  # the grace period is decided at stop time
            await self._runner.cleanup()
        await self._sessions.close()
