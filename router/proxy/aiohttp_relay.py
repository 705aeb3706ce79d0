"""The aiohttp engine relays a replica's response: status, headers (hop-by-hop removed,
the request id and the picker's headers added) and the body streamed as it arrives.

How the body is framed toward the client is the rule both engines share,
`router.proxy.framing.response_framing`: aiohttp writes the framing headers itself, so
only the decisions it would take differently are applied here (a coding such as gzip kept
in front of chunked, and the close that ends a body of unknown length for HTTP/1.0).
Once the status line has gone, an upstream failure can only cut the client connection.
"""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

from router.models import Replica
from router.proxy.aiohttp_support import Outcome, RelayedResponse, transfer_codings
from router.proxy.base import InFlightCounter, Observers
from router.proxy.framing import ResponseFraming, response_framing
from router.proxy.headers import REQUEST_ID, forward_response_headers
from router.proxy.retry import classify_client_error

REQUEST_ID_KEY = web.RequestKey("request_id", str)


async def relay_response(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    replica: Replica,
    outcome: Outcome,
    extra_headers: list[tuple[str, str]],
    *,
    verdict: tuple[bool, str | None],
    observers: Observers,
    in_flight: InFlightCounter,
) -> web.StreamResponse:
    """Relay `upstream` to the client. `verdict`: (ok, failure kind) of the attempt, for
    outlier detection (`RetryPolicy.status_verdict`)."""
    status = upstream.status
    observers.attempt_done(replica, verdict[0], verdict[1], status)
    in_flight.enter(replica.id)
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
        elif _framing(request, upstream).close:
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
            observers.attempt_done(replica, False, kind, status)
            outcome.error = f"upstream_{kind}_mid_body"
            if request.transport is not None:
                request.transport.close()
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    finally:
        upstream.release()
        in_flight.leave(replica.id)


def _framing(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> ResponseFraming:
    version = f"{request.version.major}.{request.version.minor}"
    length = upstream.headers.get("Content-Length")
    codings = upstream.headers.getall("Transfer-Encoding", [])
    return response_framing(
        request.method,
        version,
        upstream.status,
        length.encode("latin-1") if length is not None else None,
        ", ".join(codings).encode("latin-1") if codings else None,
    )
