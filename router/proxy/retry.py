"""The retry rule and the translation of client-library failures into the error tree."""

from __future__ import annotations

import asyncio

import aiohttp

from router.errors import ProxyError
from router.failures import (
    CONNECT,
    CONNECT_TIMEOUT,
    PRE_SEND,
    RESET,
    TIMEOUT,
    TLS,
    upstream_error,
)
from router.models import Replica


def retryable(kind: str, *, sent: bool, idempotent: bool) -> bool:
    """Connect failures move on for any method (unless a body already started streaming);
    after bytes were sent, only bodiless idempotent requests are retried."""
    if kind in PRE_SEND and not sent:
        return True
    return idempotent


def classify_client_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) for one failed upstream attempt of the aiohttp client."""
    kind = RESET
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        kind = TLS
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = CONNECT_TIMEOUT
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = CONNECT
    elif isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        kind = TIMEOUT
    return kind, upstream_error(kind, replica.id)
