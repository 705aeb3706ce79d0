"""Pieces of the aiohttp engine that are not the request flow itself: the streamed request
body (with client faults told apart from replica faults), error responses, WebSocket
piping, the quiet server log, and small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from router.config import RouterConfig
from router.errors import ClientRequestError, ProxyError
from router.models import Replica
from router.proxy.admission import retry_after

log = logging.getLogger("router.proxy.aiohttp_engine")

# Headers aiohttp's ws_connect writes itself; forwarding the client's would duplicate them.
WS_OWN_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
_CHUNK = 64 * 1024
HTTP_VERSIONS = frozenset({aiohttp.HttpVersion10, aiohttp.HttpVersion11})
CLOSE_AFTER = frozenset(
    {
        "body_too_large",
        "client_body_timeout",
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

    def __init__(self, request: web.Request, limit: int, pause_timeout: float) -> None:
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
                self.failure = ClientRequestError(
                    408, "client_body_timeout", f"no body data for {self._pause_timeout}s"
                )
                raise self.failure from None
            except Exception as exc:  # the client went away or sent a broken body
                self.failure = ClientRequestError(400, "client_body_incomplete", str(exc))
                raise self.failure from exc
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > self._limit:
                self.failure = ClientRequestError(
                    413, "body_too_large", f"limit {self._limit} bytes"
                )
                raise self.failure
            yield chunk


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


async def send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Answer, then close at once: the rest of the client's body is not worth reading (aiohttp
    would otherwise linger up to 10 s draining it)."""
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


def client_timeout(config: RouterConfig) -> aiohttp.ClientTimeout:
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
        # The retry policy's bookkeeping (router/proxy/aiohttp_retry.py).
        self.holds_retry = False
        self.retry_exhausted = False
        self.tried: list[tuple[str, str]] | None = None


WebSocketLike = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def proxy_websocket(
    session: aiohttp.ClientSession,
    request: web.Request,
    url: URL,
    headers: list[tuple[str, str]],
    connected: Callable[[], None],
    outcome: Outcome,
) -> web.StreamResponse:
    """Open the upstream WebSocket (a failure raises, so the attempt can move on), then
    accept the client's and pipe frames both ways until either side closes."""
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    upstream = await session.ws_connect(
        url, headers=CIMultiDict(headers), protocols=protocols, autoclose=False, autoping=False
    )
    connected()
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoclose=False,
        autoping=False,
    )
    await client.prepare(request)
    outcome.status = 101
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(pipe_ws(client, upstream))
            group.create_task(pipe_ws(upstream, client))
    except* (aiohttp.ClientError, ConnectionError):
        log.debug("websocket to %s ended with an error", url.host)
    finally:
        await upstream.close()
        await client.close()
    return client


async def pipe_ws(source: WebSocketLike, sink: WebSocketLike) -> None:
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type is aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            break
    await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)


def validate_request(request: web.Request, max_body: int) -> str:
    """The target path to forward, or the ClientRequestError that refuses the request."""
    if request.method == "CONNECT":
        raise ClientRequestError(405, "method_not_allowed", "CONNECT is not proxied")
    if request.version not in HTTP_VERSIONS:  # HTTP/0.9 would be forwarded as 1.1
        raise ClientRequestError(505, "http_version_not_supported", "use HTTP/1.0 or 1.1")
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1 or (not hosts and request.version == aiohttp.HttpVersion11):
        raise ClientRequestError(400, "bad_host", "HTTP/1.1 needs exactly one Host header")
    raw = request.raw_path
    if not raw.startswith("/"):
        # Absolute form: allowed only for the host the request is addressed to, so the
        # router can never be used as an open forward proxy.
        target = URL(raw, encoded=True)
        named = request.headers.get("Host", "").rsplit(":", 1)[0].lower()
        if not target.is_absolute() or (target.host or "").lower() != named:
            raise ClientRequestError(
                400, "absolute_uri_not_allowed", "absolute-form target for another host"
            )
        raw = target.raw_path_qs
    length = request.content_length
    if length is not None and length > max_body:
        raise ClientRequestError(413, "body_too_large", f"limit {max_body} bytes")
    return raw
