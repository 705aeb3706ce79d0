"""Config of the retry policy (`proxy.retry_on`, `proxy.retriable_status_codes`,
`proxy.per_try_timeout`, `proxy.retry_budget`), kept next to the code that applies it.

The names are Envoy's (`retry_on: gateway-error,reset,connect-failure,retriable-status-codes`,
`retry_budget`), so an operator coming from Envoy, nginx (`proxy_next_upstream`) or HAProxy
(`retry-on`) can map them one to one; docs/retries.md has the table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from router.settings_types import Frozen

RetryOn = Literal["connect-failure", "reset", "timeout", "gateway-error", "retriable-status-codes"]

CONNECT_FAILURE: RetryOn = "connect-failure"
RESET: RetryOn = "reset"
TIMEOUT: RetryOn = "timeout"
GATEWAY_ERROR: RetryOn = "gateway-error"
RETRIABLE_STATUS_CODES: RetryOn = "retriable-status-codes"

DEFAULT_RETRY_ON: tuple[RetryOn, ...] = (CONNECT_FAILURE, RESET, TIMEOUT, GATEWAY_ERROR)
GATEWAY_STATUSES = frozenset({502, 503, 504})


class RetryBudgetConfig(Frozen):
    """Envoy's `retry_budget`: retries in flight are capped at `budget_percent` of the
    requests in flight, but at least `min_retry_concurrency` may always run."""

    budget_percent: float = Field(20.0, ge=0, le=100)
    min_retry_concurrency: int = Field(3, ge=0)


def check_retry_on(value: tuple[RetryOn, ...]) -> tuple[RetryOn, ...]:
    """connect-failure is always on (nothing reached the replica); duplicates are dropped."""
    kept: list[RetryOn] = ["connect-failure"]
    for name in value:
        if name not in kept:
            kept.append(name)
    return tuple(kept)


def check_status_codes(value: tuple[int, ...]) -> tuple[int, ...]:
    bad = [code for code in value if not 400 <= code <= 599]
    if bad:
        raise ValueError(
            f"{', '.join(map(str, bad))}: only error statuses (400 to 599) can be retried"
        )
    return tuple(sorted(set(value)))


def check_codes_enabled(retry_on: tuple[str, ...], codes: tuple[int, ...]) -> None:
    """The two settings only make sense together: say so instead of silently ignoring one."""
    listed = RETRIABLE_STATUS_CODES in retry_on
    if codes and not listed:
        raise ValueError(
            "proxy.retriable_status_codes is set but proxy.retry_on does not list "
            "retriable-status-codes; add it, or drop the codes"
        )
    if listed and not codes:
        raise ValueError(
            "proxy.retry_on lists retriable-status-codes but proxy.retriable_status_codes is "
            "empty; list the statuses to retry, e.g. [429]"
        )
