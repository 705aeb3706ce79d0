"""The aiohttp engine's request path: one client request checked, admitted, sent to a
replica (moving on to the next candidate as `router.proxy.retry` allows) and relayed back.

`aiohttp_engine.AiohttpEngine` owns the listeners and the client session and hands each
request to a `Forwarder`; a reload reconfigures the forwarder in place. The response is
relayed by `aiohttp_relay.relay_response`, a WebSocket by `aiohttp_ws`.
"""

from __future__ import annotations

import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from router import acme
from router.balancing.base import RequestContext
from router.errors import ClientRequestError, ProxyError, UpstreamProtocolError
from router.failures import PER_TRY_TIMEOUT, PROTOCOL, TIMEOUT, upstream_error
from router.models import Replica
from router.proxy.admission import Admission
from router.proxy.aiohttp_relay import REQUEST_ID_KEY, relay_response
from router.proxy.aiohttp_retry import PerTryTimeout, RetryTrack, send_with_per_try
from router.proxy.aiohttp_sessions import UpstreamSessions
from router.proxy.aiohttp_support import (
    CLOSE_AFTER,
    Outcome,
    RequestBody,
    client_timeout,
    discard_connection,
    error_response,
    redirect_to_https,
    response_problem,
    send_and_close,
    validate_request,
)
from router.proxy.aiohttp_ws import WS_OWN_HEADERS, relay
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import InFlightCounter, Observers, RequestRecord, no_routable_error
from router.proxy.headers import (
    IDEMPOTENT,
    REQUEST_ID,
    TrustedProxies,
    forward_request_headers,
    request_id,
)
from router.proxy.request_rules import connection_tokens
from router.proxy.retry import RetryPolicy, classify_client_error
from router.proxy.retry_budget import Retrier
from router.proxy.settings import ProxySettings
from router.proxy.well_known import AttestationEndpoint, is_attestation_target
from router.tls import server_name

log = logging.getLogger("router.proxy.aiohttp_engine")
# The failure kind outlier detection and the error metrics see for a per-try timeout.
_OBSERVED = {PER_TRY_TIMEOUT: TIMEOUT}


def _attempt_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) of a failed attempt, including the retry policy's per-try timeout."""
    if isinstance(exc, PerTryTimeout):
        return PER_TRY_TIMEOUT, upstream_error(PER_TRY_TIMEOUT, replica.id)
    return classify_client_error(exc, replica)


def _sni(request: web.BaseRequest) -> str | None:
    transport = request.transport
    return server_name(transport.get_extra_info("ssl_object")) if transport is not None else None


class Forwarder:
    """The request path, with the settings it reads (replaced together on a reload)."""

    def __init__(
        self,
        config: ProxySettings,
        apps: AppDirectory,
        observers: Observers,
        in_flight: InFlightCounter,
        sessions: UpstreamSessions,
    ) -> None:
        self.apps = apps
        self._sessions = sessions
        # Answers /.well-known/phala-router/attestation (router.proxy.well_known); None: routed.
        self.attestation: AttestationEndpoint | None = None
        self._observers = observers
        self._in_flight = in_flight
        self.admission = admission = Admission(
            config.proxy.max_connections, config.proxy.max_pending
        )
        self._retrier = Retrier(RetryPolicy.from_config(config.proxy), lambda: admission.active)
        # Set once the TLS listener is open, when listen_tls.redirect_http.
        self.https_port: int | None = None
        self.configure(config)

    def configure(self, config: ProxySettings) -> None:
        """Take (re)loaded settings: they apply to the next requests."""
        self._config = config
        self._proxy = config.proxy
        self._trusted = TrustedProxies(config.proxy.trusted_proxies)
        self._edge = config.edge_headers
        self.timeout = client_timeout(config)
        self._redirect_http = config.listen_tls is not None and config.listen_tls.redirect_http
        self._acme_webroot = config.acme_webroot
        self.admission.configure(config.proxy.max_connections, config.proxy.max_pending)
        self._retrier.configure(RetryPolicy.from_config(config.proxy))

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
        if self.attestation is not None and is_attestation_target(request.raw_path):
            local = await self.attestation.answer(request.method, request.raw_path, client)
            answer = web.Response(
                status=local.status, body=local.body, content_type=local.content_type,
                headers=dict(local.headers),
            )  # fmt: skip
            if outcome.close_after:
                answer.force_close()
            return answer
        if self._redirect_http and not request.secure:
            response = redirect_to_https(request, self.https_port)
            if outcome.close_after:
                response.force_close()
            return response
        try:
            path = validate_request(request, self._proxy.max_request_body)
            app = self.apps.resolve(request.headers.get("Host"), path, _sni(request))
            with app.slot():  # the app's own max_connections, then the listener's
                async with self.admission.slot(self._proxy.connect_timeout):
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
        session = self._sessions.for_app(app)
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
                got = await self._attempt(
                    request, url, headers, body, replica, track, (session, is_ws)
                )
                if isinstance(got, ProxyError):
                    last_error = got
                    continue
                if isinstance(got, web.StreamResponse):  # a WebSocket, relayed to its end
                    return got
                outcome.upstream_seconds = time.monotonic() - attempt_started
                outcome.explanation = ctx.explanation
                return await relay_response(
                    request,
                    got,
                    replica,
                    outcome,
                    ctx.response_headers,
                    verdict=self._retrier.policy.status_verdict(got.status, self._config.count_5xx),
                    observers=self._observers,
                    in_flight=self._in_flight,
                )
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
        via: tuple[aiohttp.ClientSession, bool],
    ) -> aiohttp.ClientResponse | web.StreamResponse | ProxyError:
        """One upstream attempt: the response to relay (a WebSocket: already relayed), or
        the error that moves the request to the next candidate (one that must not is raised).
        `via`: the app's upstream session, and whether this is a WebSocket upgrade."""
        policy = self._retrier.policy
        session, is_ws = via
        self._in_flight.enter(replica.id)
        try:
            if is_ws:
                return await self._websocket(session, request, url, headers, replica, track.outcome)
            upstream = await send_with_per_try(
                session.request(
                    request.method,
                    url,
                    headers=CIMultiDict(headers),
                    data=body.chunks() if request.body_exists else None,
                    allow_redirects=False,
                    timeout=self.timeout,
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

    async def _websocket(
        self,
        session: aiohttp.ClientSession,
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
        upstream = await session.ws_connect(
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
