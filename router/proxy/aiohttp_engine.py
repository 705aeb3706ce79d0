"""The aiohttp data plane: aiohttp's server in front, one shared aiohttp ClientSession behind.

Bodies stream both ways (never buffered whole), WebSockets are piped frame by frame, and the
retry rule is the one in `router.proxy.retry`: a failed connect moves to another replica for
any method; after bytes went out only bodiless idempotent requests are retried; nothing is
retried once the response has started streaming to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from router.balancing.base import RequestContext
from router.config import RouterConfig
from router.errors import (
    ClientRequestError,
    ProxyError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from router.models import Replica
from router.proxy.admission import Admission
from router.proxy.aiohttp_retry import (
    PerTryTimeout,
    RetryTrack,
    send_with_per_try,
)
from router.proxy.aiohttp_support import (
    CLOSE_AFTER,
    WS_OWN_HEADERS,
    Outcome,
    QuietServerLog,
    RequestBody,
    client_timeout,
    close_later,
    error_response,
    proxy_websocket,
    send_and_close,
    validate_request,
)
from router.proxy.base import (
    InFlightCounter,
    Observers,
    RequestRecord,
    SnapshotSource,
    no_routable_error,
)
from router.proxy.headers import (
    IDEMPOTENT,
    TrustedProxies,
    forward_request_headers,
    forward_response_headers,
)
from router.proxy.retry import PER_TRY_TIMEOUT, RetryPolicy, classify_client_error
from router.proxy.retry_budget import Retrier
from router.settings_types import split_host_port
from router.tls import ServerTLS
from router.upstream import client_ssl_context, make_connector

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TIMEOUTS = frozenset({"timeout", PER_TRY_TIMEOUT})


def _upstream_headers(
    request: web.Request, peer: str, trusted: bool, is_ws: bool
) -> list[tuple[str, str]]:
    headers = forward_request_headers(
        request.headers.items(),
        peer=peer,
        peer_trusted=trusted,
        scheme="https" if request.secure else "http",
        host=request.host,
    )
    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    if is_ws:
        headers = [(k, v) for k, v in headers if k.lower() not in WS_OWN_HEADERS]
    return headers


def _attempt_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) of a failed attempt, including the retry policy's own timeouts."""
    if isinstance(exc, PerTryTimeout):
        return PER_TRY_TIMEOUT, UpstreamTimeout("per-try timeout", replica=replica.id)
    return classify_client_error(exc, replica)


class AiohttpEngine:
    def __init__(
        self,
        config: RouterConfig,
        snapshots: SnapshotSource,
        observers: Observers,
        in_flight: InFlightCounter,
        tls: ServerTLS | None = None,
    ) -> None:
        self._config = config
        self._tls = tls
        self._proxy = config.proxy
        self._snapshots = snapshots
        self._observers = observers
        self._in_flight = in_flight
        self._trusted = TrustedProxies(config.proxy.trusted_proxies)
        self._timeout = client_timeout(config)
        self._admission = Admission(config.proxy.max_connections, config.proxy.max_pending)
        admission = self._admission
        self._retrier = Retrier(RetryPolicy.from_config(config.proxy), lambda: admission.active)
        self._closing: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._sites: list[web.TCPSite] = []
        self._https_port: int | None = None
        self._redirect_http = config.listen_tls is not None and config.listen_tls.redirect_http

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._runner is None:
            return []
        return [(a[0], a[1]) for a in self._runner.addresses]

    def _new_session(self) -> aiohttp.ClientSession:
        tls = self._config.upstream_tls
        connector = make_connector(
            self._config.discovery.connect_to,
            client_ssl_context(tls.verify, tls.ca_file),
            keepalive_timeout=self._proxy.idle_timeout,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=self._timeout,
        )

    def apply_config(self, config: RouterConfig) -> None:
        """Take a reloaded config. Listen addresses need a restart (the app says so); how
        replicas are reached changes by swapping in a new client session, and the old one
        closes once its in-flight requests had their drain time."""
        reach_changed = (
            config.discovery.connect_to,
            config.upstream_tls,
            config.proxy.idle_timeout,
        ) != (
            self._config.discovery.connect_to,
            self._config.upstream_tls,
            self._config.proxy.idle_timeout,
        )
        self._config = config
        self._proxy = config.proxy
        self._trusted = TrustedProxies(config.proxy.trusted_proxies)
        self._timeout = client_timeout(config)
        self._admission.configure(config.proxy.max_connections, config.proxy.max_pending)
        self._retrier.configure(RetryPolicy.from_config(config.proxy))
        if reach_changed and self._session is not None:
            old, self._session = self._session, self._new_session()
            loop = asyncio.get_running_loop()
            self._closing.add(loop.create_task(close_later(old, config.proxy.drain_timeout)))

    async def start(self) -> None:
        self._session = self._new_session()
        cfg = self._proxy
        # Every request reaches `handle`, bypassing aiohttp's URL dispatcher: it would answer
        # 404 itself for CONNECT's authority form and for paths holding an encoded newline.
        app = web.Application(
            client_max_size=cfg.max_request_body or 1024**4, middlewares=[self._everything]
        )
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=cfg.drain_timeout,
            handle_signals=False,
            # aiohttp closes a connection whose request head is not complete this long after
            # it opened or after the previous response: the slowloris cut-off.
            keepalive_timeout=cfg.client_header_timeout,
            logger=QuietServerLog(logging.getLogger("aiohttp.server")),
        )
        await self._runner.setup()
        if self._config.listen_tls is not None and self._tls is not None:
            host, port = split_host_port(self._config.listen_tls.listen)
            site = web.TCPSite(
                self._runner, host, port, backlog=1024, ssl_context=self._tls.context
            )
            await site.start()
            self._sites.append(site)
            self._https_port = self._runner.addresses[-1][1]
        if self._config.listen is not None:
            host, port = split_host_port(self._config.listen)
            site = web.TCPSite(self._runner, host, port, backlog=1024)
            await site.start()
            self._sites.append(site)

    async def stop(self, grace: float) -> None:
        if self._runner is not None:
            self._runner._shutdown_timeout = grace  # the grace period is decided at stop time
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        for task in self._closing:
            task.cancel()

    # -- request path ---------------------------------------------------------------------

    @web.middleware
    async def _everything(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        return await self.handle(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        peer = request.remote or ""
        trusted = self._trusted.contains(peer)
        client = self._trusted.client_address(peer, request.headers.getall("X-Forwarded-For", []))
        outcome = Outcome()
        if self._redirect_http and not request.secure:
            return self._redirect_to_https(request)
        try:
            path = validate_request(request, self._proxy.max_request_body)
            async with self._admission.slot(self._proxy.connect_timeout):
                response = await self._forward(request, path, peer, trusted, client, outcome)
        except ProxyError as exc:
            outcome.error = exc.code
            response = error_response(exc)
            if exc.code in CLOSE_AFTER:
                await send_and_close(request, response)
            elif isinstance(exc, ClientRequestError):
                response.force_close()  # a refused request ends the connection
        status = outcome.status or response.status
        self._observers.request_done(
            RequestRecord(
                method=request.method,
                path=request.path,
                status=status,
                client=client,
                replica=outcome.replica,
                retries=max(outcome.attempts - 1, 0),
                upstream_seconds=outcome.upstream_seconds,
                total_seconds=time.monotonic() - started,
                bytes_in=outcome.bytes_in,
                bytes_out=outcome.bytes_out,
                error=outcome.error,
                explanation=outcome.explanation,
                attempts=tuple(outcome.tried) if outcome.tried else (),
                retry_budget_exhausted=outcome.retry_exhausted,
            )
        )
        return response

    def _redirect_to_https(self, request: web.Request) -> web.StreamResponse:
        host = request.headers.get("Host", "").rsplit(":", 1)[0] or "localhost"
        port = "" if self._https_port == 443 else f":{self._https_port}"
        path = request.raw_path if request.raw_path.startswith("/") else "/"
        return web.Response(status=308, headers={"Location": f"https://{host}{port}{path}"})

    async def _forward(
        self,
        request: web.Request,
        path: str,
        peer: str,
        trusted: bool,
        client: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        snapshot = self._snapshots()
        if not snapshot.routable:
            raise no_routable_error(snapshot)
        ctx = RequestContext(
            client_ip=client,
            method=request.method,
            path=path,
            headers=request.headers,
            peer_trusted=trusted,
        )
        is_ws = (
            request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower()
        )
        headers = _upstream_headers(request, peer, trusted, is_ws)
        has_body = request.body_exists
        body = RequestBody(request, self._proxy.max_request_body, self._proxy.client_body_timeout)
        track = RetryTrack(
            self._retrier,
            outcome,
            self._retrier.candidates(snapshot.picker.candidates(ctx)),
            idempotent=request.method in IDEMPOTENT and not has_body,
        )
        last_error: ProxyError | None = None
        try:
            for replica in track.candidates:
                if outcome.attempts > self._proxy.retries:
                    break
                track.attempt_starting()
                outcome.attempts += 1
                outcome.replica = replica
                url = URL(
                    f"{replica.scheme}://{replica.authority}{replica.path_prefix}{path}",
                    encoded=True,
                )
                attempt_started = time.monotonic()
                got = await self._attempt(request, url, headers, body, replica, track, is_ws)
                if isinstance(got, ProxyError):
                    last_error = got
                    continue
                if isinstance(got, web.StreamResponse):  # a WebSocket, piped to its end
                    return got
                outcome.upstream_seconds = time.monotonic() - attempt_started
                outcome.explanation = ctx.explanation
                return await self._stream_back(request, got, replica, outcome, ctx.response_headers)
        finally:
            outcome.bytes_in = body.size
            track.finish()
        raise last_error or no_routable_error(snapshot)

    async def _attempt(
        self,
        request: web.Request,
        url: URL,
        headers: list[tuple[str, str]],
        body: RequestBody,
        replica: Replica,
        track: RetryTrack,
        is_ws: bool,
    ) -> aiohttp.ClientResponse | web.StreamResponse | ProxyError:
        """One upstream attempt: the response to relay (a WebSocket: already piped), or the
        error that moves the request to the next candidate (one that must not is raised)."""
        policy = self._retrier.policy
        self._in_flight.enter(replica.id)
        try:
            if is_ws:
                return await proxy_websocket(
                    self._session_or_fail(),
                    request,
                    url,
                    headers,
                    lambda: self._observers.attempt_done(replica, True, None, 101),
                    track.outcome,
                )
            upstream = await send_with_per_try(
                self._session_or_fail().request(
                    request.method,
                    url,
                    headers=CIMultiDict(headers),
                    data=body.chunks() if request.body_exists else None,
                    allow_redirects=False,
                    timeout=self._timeout,
                ),
                track,
                policy.per_try_timeout,
                self._proxy.response_timeout,
                track.on_per_try_timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, PerTryTimeout) as exc:
            if body.failure is not None:  # the client's fault, not the replica's
                raise body.failure from exc
            kind, error = _attempt_error(exc, replica)
            self._observers.attempt_done(
                replica, False, "timeout" if kind in _TIMEOUTS else kind, None
            )
            if policy.retryable(kind, sent=body.started, idempotent=track.idempotent):
                track.give_up(replica, kind)
                return error
            raise error from exc
        finally:
            self._in_flight.leave(replica.id)
        status = upstream.status
        if status in policy.statuses and track.on_status(
            status, upstream.headers.get("Retry-After") if status == 503 else None, replica
        ):
            _, failure = policy.status_verdict(status, self._config.health.passive.count_5xx)
            self._observers.attempt_done(replica, False, failure, status)
            track.give_up(replica, str(status))
            upstream.close()  # never relayed, and its connection is not reused
            return UpstreamProtocolError(f"upstream answered {status}", replica=replica.id)
        return upstream

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("engine not started")
        return self._session

    async def _stream_back(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        replica: Replica,
        outcome: Outcome,
        extra_headers: list[tuple[str, str]],
    ) -> web.StreamResponse:
        status = upstream.status
        count_5xx = self._config.health.passive.count_5xx
        ok, kind = self._retrier.policy.status_verdict(status, count_5xx)
        self._observers.attempt_done(replica, ok, kind, status)
        self._in_flight.enter(replica.id)
        try:
            response = web.StreamResponse(status=status, reason=upstream.reason)
            for key, value in forward_response_headers(upstream.headers.items()):
                response.headers.add(key, value)
            for key, value in extra_headers:
                response.headers.add(key, value)
            length = upstream.content_length
            if length is not None and "Transfer-Encoding" not in upstream.headers:
                response.content_length = length
            try:
                await response.prepare(request)
            except ConnectionResetError:
                outcome.error = "client_disconnected"  # the client's doing: not a replica fault
                return response
            outcome.status = status
            try:
                async for chunk in upstream.content.iter_any():
                    outcome.bytes_out += len(chunk)
                    try:
                        await response.write(chunk)
                    except ConnectionResetError:
                        outcome.error = "client_disconnected"
                        return response
            except (TimeoutError, aiohttp.ClientError) as exc:
                # The status line is gone: all we can do is cut the connection.
                kind, _ = classify_client_error(exc, replica)
                self._observers.attempt_done(replica, False, kind, status)
                outcome.error = f"upstream_{kind}_mid_body"
                if request.transport is not None:
                    request.transport.close()
                return response
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response
        finally:
            upstream.release()
            self._in_flight.leave(replica.id)
