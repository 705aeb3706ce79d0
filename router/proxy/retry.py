"""The retry rule and the translation of client-library failures into the error tree."""

from __future__ import annotations

import asyncio

import aiohttp

from router.errors import ProxyError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from router.models import Replica

# Failures that happen before any byte of the request left: safe to retry for any method.
PRE_SEND = frozenset({"connect", "tls", "connect_timeout"})


def retryable(kind: str, *, sent: bool, idempotent: bool) -> bool:
    """Connect failures move on for any method (unless a body already started streaming);
    after bytes were sent, only bodiless idempotent requests are retried."""
    if kind in PRE_SEND and not sent:
        return True
    return idempotent


def classify_client_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) for one failed upstream attempt. kind: connect, tls, connect_timeout,
    timeout, reset."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        return "tls", UpstreamConnectError("TLS handshake failed", replica=replica.id, cause="tls")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout", UpstreamConnectError(
            "connect timed out", replica=replica.id, cause="connect_timeout"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", UpstreamConnectError(
            "connect failed", replica=replica.id, cause="connect"
        )
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return "timeout", UpstreamTimeout("upstream timed out", replica=replica.id)
    return "reset", UpstreamProtocolError(
        "upstream closed or reset the connection", replica=replica.id
    )
