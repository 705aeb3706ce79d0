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
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from router import acme
from router.balancing.base import RequestContext
from router.errors import (
    ClientRequestError,
    ProxyError,
    UpstreamProtocolError,
)
from router.failures import PER_TRY_TIMEOUT, PROTOCOL, TIMEOUT, upstream_error
from router.models import Replica
from router.proxy.admission import Admission
from router.proxy.aiohttp_retry import PerTryTimeout, RetryTrack, send_with_per_try
from router.proxy.aiohttp_server import HeadTimedServer
from router.proxy.aiohttp_support import (
    CLOSE_AFTER,
    Outcome,
    QuietServerLog,
    RelayedResponse,
    RequestBody,
    client_timeout,
    close_later,
    discard_connection,
    error_response,
    redirect_to_https,
    response_problem,
    send_and_close,
    transfer_codings,
    validate_request,
)
from router.proxy.aiohttp_ws import WS_OWN_HEADERS, relay
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import (
    InFlightCounter,
    Observers,
    RequestRecord,
    SnapshotSource,
    no_routable_error,
)
from router.proxy.headers import (
    IDEMPOTENT,
    REQUEST_ID,
    TrustedProxies,
    forward_request_headers,
    forward_response_headers,
    request_id,
)
from router.proxy.request_rules import MAX_HEADER_BLOCK, MAX_HEADER_COUNT, connection_tokens
from router.proxy.retry import RetryPolicy, classify_client_error
from router.proxy.retry_budget import Retrier
from router.proxy.settings import ProxySettings
from router.reach import PeerCheck, make_connector, upstream_context
from router.settings_types import split_host_port
from router.tls import ServerTLS, server_name

log = logging.getLogger(__name__)
# The failure kind outlier detection and the error metrics see for a per-try timeout.
_OBSERVED = {PER_TRY_TIMEOUT: TIMEOUT}


def _attempt_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) of a failed attempt, including the retry policy's per-try timeout."""
    if isinstance(exc, PerTryTimeout):
        return PER_TRY_TIMEOUT, upstream_error(PER_TRY_TIMEOUT, replica.id)
    return classify_client_error(exc, replica)


REQUEST_ID_KEY = web.RequestKey("request_id", str)


def _sni(request: web.BaseRequest) -> str | None:
    transport = request.transport
    return server_name(transport.get_extra_info("ssl_object")) if transport is not None else None


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
    ) -> None:
        self._config = config
        self._tls = tls
        self._peer_check = peer_check
        self._proxy = config.proxy
        # One app (the single-app layout) unless a directory of several is given.
        self._apps = apps or AppDirectory.single(snapshots)
        self._observers = observers
        self._in_flight = in_flight
        self._trusted = TrustedProxies(config.proxy.trusted_proxies)
        self._edge = config.edge_headers
        self._timeout = client_timeout(config)
        self._admission = Admission(config.proxy.max_connections, config.proxy.max_pending)
        admission = self._admission
        self._retrier = Retrier(RetryPolicy.from_config(config.proxy), lambda: admission.active)
        self._closing: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.ServerRunner | None = None
        self._sites: list[web.TCPSite] = []
        self._https_port: int | None = None
        self._redirect_http = config.listen_tls is not None and config.listen_tls.redirect_http
        self._accepted = 0
        self._acme_webroot = config.acme_webroot

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._runner is None:
            return []
        return [(a[0], a[1]) for a in self._runner.addresses]

    def connection_counts(self) -> tuple[int, int]:
        """(open, accepted) client connections, for metrics."""
        server = self._runner.server if self._runner is not None else None
        return (len(server.connections) if server is not None else 0), self._accepted

    def _new_session(self) -> aiohttp.ClientSession:
        connector = make_connector(
            self._config.connect_to,
            upstream_context(self._config.upstream_tls, self._config.ra_tls, self._config.kms_root),
            keepalive_timeout=self._proxy.idle_timeout,
            peer_check=self._peer_check,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=self._timeout,
            # One field may use the whole head budget; response_problem() checks the total.
            max_field_size=MAX_HEADER_BLOCK,
            max_headers=MAX_HEADER_COUNT + 1,
        )

    def set_apps(self, apps: AppDirectory) -> None:
        self._apps = apps

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
        self._proxy = config.proxy
        self._trusted = TrustedProxies(config.proxy.trusted_proxies)
        self._edge = config.edge_headers
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
        # The low-level server: every request reaches `handle`, with no URL dispatcher (it
        # would answer 404 itself for CONNECT's authority form and encoded newlines).
        server = HeadTimedServer(
            self.handle,
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
            self._https_port = self._runner.addresses[-1][1]
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
        if self._session is not None:
            await self._session.close()
        for task in self._closing:
            task.cancel()

    # -- request path ---------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        peer = request.remote or ""
        trusted = self._trusted.contains(peer)
        client = self._trusted.client_address(peer, request.headers.getall("X-Forwarded-For", []))
        rid = request[REQUEST_ID_KEY] = request_id(request.headers.get(REQUEST_ID), trusted)
        outcome = Outcome()
        # aiohttp's C parser carries a request's trailer fields over into the next request's
        # headers on the connection: after a chunked request, nothing more is read from it.
        # And `Connection: close` wins over keep-alive (RFC 9112 9.3); aiohttp's parser keeps
        # an HTTP/1.0 `keep-alive, close` request alive.
        outcome.close_after = "Transfer-Encoding" in request.headers or b"close" in (
            connection_tokens(",".join(request.headers.getall("Connection", [])).encode("latin-1"))
        )
        if self._acme_webroot is not None and not request.secure:
            challenge = acme.answer(self._acme_webroot, request.method, request.raw_path)
            if challenge is not None:  # ACME HTTP-01: answered here, never routed
                answer = web.Response(
                    status=challenge.status,
                    body=challenge.body,
                    content_type="text/plain",
                    headers={"Cache-Control": "no-store"},
                )
                if outcome.close_after:
                    answer.force_close()
                return answer
        if self._redirect_http and not request.secure:
            response = redirect_to_https(request, self._https_port)
            if outcome.close_after:
                response.force_close()
            return response
        try:
            path = validate_request(request, self._proxy.max_request_body)
            app = self._apps.resolve(request.headers.get("Host"), path, _sni(request))
            with app.slot():  # the app's own max_connections, then the listener's
                async with self._admission.slot(self._proxy.connect_timeout):
                    who = (peer, trusted, client)
                    response = await self._forward(request, path, app, who, outcome)
        except ProxyError as exc:
            outcome.error = exc.code
            response = error_response(exc)
            response.headers[REQUEST_ID] = rid
            if exc.code in CLOSE_AFTER:
                await send_and_close(request, response)
            elif isinstance(exc, ClientRequestError) or outcome.close_after:
                response.force_close()  # a refused request ends the connection
        status = outcome.status or response.status
        self._observers.request_done(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=request.query_string,
                host=request.host,
                protocol=f"HTTP/{request.version.major}.{request.version.minor}",
                request_id=rid,
                headers=request.headers,
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

    async def _forward(
        self,
        request: web.BaseRequest,
        path: str,
        app: AppEntry,
        who: tuple[str, bool, str],
        outcome: Outcome,
    ) -> web.StreamResponse:
        peer, trusted, client = who  # the peer, whether it is trusted, the client's address
        snapshot = app.snapshots()
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
        headers = self._upstream_headers(request, peer, trusted, is_ws)
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
                if isinstance(got, web.StreamResponse):  # a WebSocket, relayed to its end
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
        request: web.BaseRequest,
        url: URL,
        headers: list[tuple[str, str]],
        body: RequestBody,
        replica: Replica,
        track: RetryTrack,
        is_ws: bool,
    ) -> aiohttp.ClientResponse | web.StreamResponse | ProxyError:
        """One upstream attempt: the response to relay (a WebSocket: already relayed), or
        the error that moves the request to the next candidate (one that must not is raised)."""
        policy = self._retrier.policy
        self._in_flight.enter(replica.id)
        try:
            if is_ws:
                return await self._websocket(request, url, headers, replica, track.outcome)
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
            self._observers.attempt_done(replica, False, _OBSERVED.get(kind, kind), None)
            if policy.retryable(kind, sent=body.started, idempotent=track.idempotent):
                track.give_up(replica, kind)
                return error
            raise error from exc
        finally:
            self._in_flight.leave(replica.id)
        if (problem := response_problem(upstream)) is not None:
            discard_connection(upstream)  # its framing is not trusted any more
            self._observers.attempt_done(replica, False, PROTOCOL, None)
            log.debug("replica %s sent a bad response head: %s", replica.id, problem)
            raise upstream_error(PROTOCOL, replica.id, problem)
        status = upstream.status
        if status in policy.statuses and track.on_status(
            status, upstream.headers.get("Retry-After") if status == 503 else None, replica
        ):
            _, failure = policy.status_verdict(status, self._config.count_5xx)
            self._observers.attempt_done(replica, False, failure, status)
            track.give_up(replica, str(status))
            discard_connection(upstream)  # never relayed, and its connection is not reused
            return UpstreamProtocolError(f"upstream answered {status}", replica=replica.id)
        return upstream

    def _upstream_headers(
        self, request: web.BaseRequest, peer: str, trusted: bool, is_ws: bool
    ) -> list[tuple[str, str]]:
        headers = forward_request_headers(
            request.headers.items(),
            peer=peer,
            peer_trusted=trusted,
            scheme="https" if request.secure else "http",
            host=request.host,
            edge=self._edge,
        )
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
        headers.append((REQUEST_ID, request[REQUEST_ID_KEY]))
        if is_ws:
            headers = [(k, v) for k, v in headers if k.lower() not in WS_OWN_HEADERS]
        return headers

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("engine not started")
        return self._session

    async def _stream_back(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        replica: Replica,
        outcome: Outcome,
        extra_headers: list[tuple[str, str]],
    ) -> web.StreamResponse:
        status = upstream.status
        ok, kind = self._retrier.policy.status_verdict(status, self._config.count_5xx)
        self._observers.attempt_done(replica, ok, kind, status)
        self._in_flight.enter(replica.id)
        try:
            response = RelayedResponse(
                status=status,
                reason=upstream.reason,
                codings=transfer_codings(upstream)
                if request.version == aiohttp.HttpVersion11
                else None,
            )
            if outcome.close_after:
                response.force_close()
            for key, value in forward_response_headers(upstream.headers.items()):
                response.headers.add(key, value)
            for key, value in extra_headers:
                response.headers.add(key, value)
            response.headers[REQUEST_ID] = request[REQUEST_ID_KEY]
            length = upstream.content_length
            if length is not None and "Transfer-Encoding" not in upstream.headers:
                response.content_length = length
            elif request.version < aiohttp.HttpVersion11 and _may_have_body(request, status):
                # HTTP/1.0 has no chunked coding: the client learns where the body ends only
                # from the close (aiohttp would keep a keep-alive connection open).
                response.force_close()
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

    async def _websocket(
        self,
        request: web.BaseRequest,
        url: URL,
        headers: list[tuple[str, str]],
        replica: Replica,
        outcome: Outcome,
    ) -> web.StreamResponse:
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        upstream = await self._session_or_fail().ws_connect(
            url, headers=CIMultiDict(headers), protocols=protocols, autoclose=False, autoping=False
        )
        self._observers.attempt_done(replica, True, None, 101)
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoclose=False,
            autoping=False,
        )
        await client.prepare(request)
        outcome.status = 101
        await relay(client, upstream, self._proxy.idle_timeout)
        return client


def _may_have_body(request: web.BaseRequest, status: int) -> bool:
    return request.method != "HEAD" and status >= 200 and status not in (204, 304)
