"""The retry rule, shared by both engines, and the translation of client-library failures
into the error tree.

Pure decisions only (no I/O, no clock): which failed attempts may move to another replica
(`RetryPolicy.retryable`), which responses are retried instead of relayed and count as a
failure of the replica (`RetryPolicy.statuses`, `status_verdict`), and the reason label a
retry is counted under. The state that spans requests (the retry budget, replicas that
asked for a pause with Retry-After) is `router.proxy.retry_budget`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from router import failures
from router.errors import ProxyError
from router.failures import PER_TRY_TIMEOUT, PRE_SEND, upstream_error
from router.models import Replica
from router.proxy.retry_settings import (
    DEFAULT_RETRY_ON,
    GATEWAY_ERROR,
    GATEWAY_STATUSES,
    RESET,
    RETRIABLE_STATUS_CODES,
    TIMEOUT,
)

if TYPE_CHECKING:
    from router.proxy.settings import ProxyConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`proxy.retries`, `retry_on`, `retriable_status_codes`, `per_try_timeout` and the
    budget, in the form the request path reads."""

    retries: int = 2
    retry_on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)
    # Responses retried on another replica (idempotent requests only) and counted as a
    # failure of the replica that sent them.
    statuses: frozenset[int] = GATEWAY_STATUSES
    per_try_timeout: float | None = None
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3

    @classmethod
    def from_config(cls, proxy: ProxyConfig) -> RetryPolicy:
        retry_on = frozenset(proxy.retry_on)
        statuses: set[int] = set()
        if GATEWAY_ERROR in retry_on:
            statuses |= GATEWAY_STATUSES
        if RETRIABLE_STATUS_CODES in retry_on:
            statuses |= set(proxy.retriable_status_codes)
        return cls(
            retries=proxy.retries,
            retry_on=retry_on,
            statuses=frozenset(statuses),
            per_try_timeout=proxy.per_try_timeout,
            budget_percent=proxy.retry_budget.budget_percent,
            min_retry_concurrency=proxy.retry_budget.min_retry_concurrency,
        )

    def retryable(self, kind: str, *, sent: bool, idempotent: bool) -> bool:
        """May a request whose attempt failed with `kind` (connect, tls, connect_timeout,
        reset, timeout, per_try_timeout) move on? Connect failures move any request while no
        body byte was committed; the rest only bodiless idempotent requests, as `retry_on`
        says."""
        if kind in PRE_SEND:
            return not sent or idempotent
        if not idempotent:
            return False
        if kind == failures.RESET:
            return RESET in self.retry_on
        if kind == failures.TIMEOUT or kind == PER_TRY_TIMEOUT:
            return TIMEOUT in self.retry_on
        return False

    def status_verdict(self, status: int, count_5xx: bool) -> tuple[bool, str | None]:
        """(ok, failure kind) of an attempt that got a response, for outlier detection: a
        gateway error or retriable status is a replica failure whatever `count_5xx` says;
        any other 5xx is one only under `passive.count_5xx`."""
        if status in self.statuses:
            gateway = status in GATEWAY_STATUSES
            return False, failures.GATEWAY_ERROR if gateway else failures.RETRIABLE_STATUS
        if status >= 500 and count_5xx:
            return False, failures.STATUS_5XX
        return True, None


def retry_reason(outcome: str) -> str:
    """The `retry_on` name a retry after this attempt outcome is counted under."""
    if outcome in PRE_SEND:
        return "connect-failure"
    if outcome == PER_TRY_TIMEOUT:
        return "per-try-timeout"
    if outcome == failures.TIMEOUT:
        return TIMEOUT
    if outcome.isdigit():
        return GATEWAY_ERROR if int(outcome) in GATEWAY_STATUSES else RETRIABLE_STATUS_CODES
    return RESET


def classify_client_error(exc: BaseException, replica: Replica) -> tuple[str, ProxyError]:
    """(kind, error) for one failed upstream attempt of the aiohttp client."""
    kind = failures.RESET
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        kind = failures.TLS
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = failures.CONNECT_TIMEOUT
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = failures.CONNECT
    elif isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        kind = failures.TIMEOUT
    return kind, upstream_error(kind, replica.id)
