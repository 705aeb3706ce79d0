"""Pieces of the aiohttp engine that are not the request flow itself: the streamed request
body (with client faults told apart from replica faults), error responses, the checks on a
replica's response head, the quiet server log, and small helpers. WebSockets: aiohttp_ws."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from router.errors import ClientRequestError, ProxyError
from router.models import Replica
from router.proxy.admission import retry_after
from router.proxy.request_rules import (
    MAX_HEADER_BLOCK,
    MAX_HEADER_COUNT,
    body_too_large,
    body_too_slow,
    check_declared_length,
    check_head,
)
from router.proxy.settings import ProxySettings

log = logging.getLogger("router.proxy.aiohttp_engine")

_CHUNK = 64 * 1024
CLOSE_AFTER = frozenset(
    {
        "body_too_large",
        "request_timeout",
        "client_body_incomplete",
        "http_version_not_supported",
    }
)


class RequestBody:
    """The client's request body as an async iterator that counts, caps, and remembers
    whether it has started (a started body cannot be sent again).

    A failure on the client's side (too large, too slow, cut off) is kept in `failure`:
    the client library reports it as a broken upstream connection, and it must be answered
    as the client's fault, never counted against the replica."""

    def __init__(self, request: web.BaseRequest, limit: int, pause_timeout: float) -> None:
        self._request = request
        self._limit = limit
        self._pause_timeout = pause_timeout
        self.started = False
        self.size = 0
        self.failure: ClientRequestError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        content = self._request.content
        while True:
            try:
                async with asyncio.timeout(self._pause_timeout):
                    chunk = await content.read(_CHUNK)
            except TimeoutError:
                self.failure = body_too_slow(self._pause_timeout)
                raise self.failure from None
            except Exception as exc:  # the client went away or sent a broken body
                self.failure = ClientRequestError(400, "client_body_incomplete", str(exc))
                raise self.failure from exc
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > self._limit:
                self.failure = body_too_large(self._limit)
                raise self.failure
            yield chunk


def response_problem(upstream: aiohttp.ClientResponse) -> str | None:
    """Why a replica's response head must not be relayed (the client gets a 502 and the
    connection to the replica is closed), or None. Only 200-599 are final statuses (aiohttp
    reads 100-199 as informational itself; 101 is only for the WebSocket path), and the
    head must fit the limits a client's head has: 32 KiB, 100 fields."""
    if not 200 <= upstream.status <= 599:
        return f"status {upstream.status} is not a final status (200-599)"
    fields = upstream.raw_headers
    if len(fields) > MAX_HEADER_COUNT:
        return f"{len(fields)} header fields (limit {MAX_HEADER_COUNT})"
    size = sum(len(name) + len(value) + 4 for name, value in fields)
    if size > MAX_HEADER_BLOCK:
        return f"header block of {size} bytes (limit {MAX_HEADER_BLOCK})"
    return None


def discard_connection(upstream: aiohttp.ClientResponse) -> None:
    """Close the connection a response came on, so it is never reused. aiohttp hands a
    connection back to its pool as soon as a body is complete, often before `request()`
    returns, so closing the response alone may leave it pooled: its protocol is closed too
    (the pool drops closed connections when it next looks)."""
    upstream.close()
    protocol = getattr(upstream, "_protocol", None)
    if isinstance(protocol, asyncio.BaseProtocol) and hasattr(protocol, "close"):
        protocol.close()


def transfer_codings(upstream: aiohttp.ClientResponse) -> str | None:
    """The replica's transfer codings other than chunked (`gzip`), relayed to the client
    with chunked added: the body bytes are still coded, and the client must know it."""
    codings = [
        token.strip()
        for value in upstream.headers.getall("Transfer-Encoding", [])
        for token in value.split(",")
        if token.strip() and token.strip().lower() != "chunked"
    ]
    return ", ".join(codings) or None


class RelayedResponse(web.StreamResponse):
    """A replica's response. aiohttp writes `Transfer-Encoding: chunked` itself, which
    would drop a coding such as gzip: it is put back in front of chunked."""

    def __init__(self, *, status: int, reason: str | None, codings: str | None) -> None:
        super().__init__(status=status, reason=reason)
        self._codings = codings

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self._codings and self.headers.get("Transfer-Encoding") == "chunked":
            self.headers["Transfer-Encoding"] = f"{self._codings}, chunked"


def redirect_to_https(request: web.BaseRequest, https_port: int | None) -> web.StreamResponse:
    """The 308 a plain-HTTP request gets when listen_tls.redirect_http is on."""
    host = request.headers.get("Host", "").rsplit(":", 1)[0] or "localhost"
    port = "" if https_port == 443 else f":{https_port}"
    path = request.raw_path if request.raw_path.startswith("/") else "/"
    return web.Response(status=308, headers={"Location": f"https://{host}{port}{path}"})


def validate_request(request: web.BaseRequest, max_body: int) -> str:
    """The origin-form target to forward, or the ClientRequestError refusing the request
    (the rules are `router.proxy.request_rules`, the fast engine's too)."""
    version = f"{request.version.major}.{request.version.minor}"
    hosts = request.headers.getall("Host", [])
    target = check_head(
        request.method, version, len(hosts), hosts[-1] if hosts else None, request.raw_path
    )
    check_declared_length(request.content_length, max_body)
    return target


def error_response(error: ProxyError) -> web.Response:
    response = web.json_response(error.body(), status=error.status)
    if (after := retry_after(error)) is not None:
        response.headers["Retry-After"] = after
    return response


class QuietServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp logs every malformed request at ERROR with a traceback, so any client could
    flood the log: a client's bad request becomes one DEBUG line; real failures stay ERROR."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug("%s: bad request (%s)", str(msg) % args, exc_info.message or exc_info.code)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kw)


async def send_and_close(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Answer, then close at once: the rest of the client's body is not worth reading (aiohttp
    would otherwise linger up to 10 s draining it)."""
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


def client_timeout(config: ProxySettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        sock_connect=config.proxy.connect_timeout,
        sock_read=config.proxy.response_timeout,
    )


async def close_later(session: aiohttp.ClientSession, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await session.close()


class Outcome:
    __slots__ = (
        "attempts",
        "bytes_in",
        "bytes_out",
        "close_after",
        "error",
        "explanation",
        "holds_retry",
        "replica",
        "retry_exhausted",
        "status",
        "tried",
        "upstream_seconds",
    )

    def __init__(self) -> None:
        self.attempts = 0
        self.replica: Replica | None = None
        self.status: int | None = None
        self.upstream_seconds: float | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.error: str | None = None
        self.explanation = ""
        self.close_after = False  # end the client connection after this response
        # The retry policy's bookkeeping (router/proxy/aiohttp_retry.py).
        self.holds_retry = False
        self.retry_exhausted = False
        self.tried: list[tuple[str, str]] | None = None
