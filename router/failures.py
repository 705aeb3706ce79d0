"""What can go wrong with one upstream attempt, named once: the failure kinds both engines
report (to passive health, metrics and the retry rule) and the error each one becomes.

Kept at the top of `router/` and free of I/O because both planes use it: the engines
classify failures into these kinds, passive health explains an ejection by them."""

from __future__ import annotations

from router.errors import ProxyError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout

# Before any byte of the request left: safe to retry for any method.
CONNECT = "connect"
TLS = "tls"
CONNECT_TIMEOUT = "connect_timeout"
# After the request (or part of it) was sent.
TIMEOUT = "timeout"
RESET = "reset"
# An attempt abandoned because `proxy.per_try_timeout` passed (the request may move on).
PER_TRY_TIMEOUT = "per_try_timeout"
# The replica answered, with a 5xx (counted only when health.passive.count_5xx).
STATUS_5XX = "5xx"
# The replica answered with a status in `proxy.retry_on`: a gateway error (502, 503, 504)
# or another of `retriable_status_codes` (a failure whatever count_5xx says).
GATEWAY_ERROR = "gateway_error"
RETRIABLE_STATUS = "retriable_status"
# The replica's response head broke the rules (status outside 200-599, too many fields).
PROTOCOL = "protocol"

PRE_SEND = frozenset({CONNECT, TLS, CONNECT_TIMEOUT})

_DIAL_MESSAGES = {
    TLS: "TLS handshake failed",
    CONNECT_TIMEOUT: "connect timed out",
    CONNECT: "connect failed",
}


def upstream_error(kind: str, replica_id: str, reason: str | None = None) -> ProxyError:
    """The error a failed attempt of `kind` becomes (502 for connect, reset and protocol,
    504 for a timeout); `reason` replaces the generic message of a reset or protocol error."""
    if kind in _DIAL_MESSAGES:
        return UpstreamConnectError(_DIAL_MESSAGES[kind], replica=replica_id, cause=kind)
    if kind == TIMEOUT:
        return UpstreamTimeout("upstream timed out", replica=replica_id)
    if kind == PER_TRY_TIMEOUT:
        return UpstreamTimeout("per-try timeout", replica=replica_id)
    return UpstreamProtocolError(
        reason or "upstream closed or reset the connection", replica=replica_id
    )
