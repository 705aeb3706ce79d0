"""One exception tree for the whole router.

    RouterError
    ├── ConfigError              bad config: the CLI prints it and exits 2
    ├── StartupError             cannot start as configured (a port in use): one line, exit 2
    │   └── EnvoyStartError      the managed Envoy could not start (engine: envoy)
    ├── DiscoveryError           the Cloud API failed or answered garbage (last good set kept)
    │   └── DiscoveryAuthError   401/403: the API key is wrong (names the env var)
    ├── AttestationError         a quote could not be fetched or verified (fail closed)
    ├── DnsRenderError           `dns render` could not get its input (admin API, bad answer)
    ├── DnsSinkError             a DNS sink could not publish (logged, retried)
    └── ProxyError               a request could not be served; carries its HTTP mapping
        ├── NoRoutableReplica    503 + Retry-After
        ├── Overloaded           503 + Retry-After: every slot and queue place is taken
        ├── UpstreamConnectError 502 (nothing was sent: safe to retry anywhere)
        ├── UpstreamProtocolError 502 (bytes were sent: retry only idempotent requests)
        ├── UpstreamTimeout      504
        └── ClientRequestError   4xx for a malformed or refused client request

Library exceptions are translated at one boundary with `raise ... from`.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class ConfigError(RouterError):
    """The configuration is invalid; the message names each field and what is allowed."""


class StartupError(RouterError):
    """The config is valid but the router cannot start with it (e.g. a listen address is in
    use); the message is one line naming the address and the config key."""


class EnvoyStartError(StartupError):
    """The managed Envoy could not start (missing binary, bad bootstrap, port in use)."""


class DiscoveryError(RouterError):
    """The discovery source failed; the reconciler keeps the last good replica set.
    `kind` is the failure's counter key (error, timeout, auth, invalid, rate_limited) and
    `retry_after` the seconds the Cloud API asked to wait (429), if it said."""

    def __init__(
        self, message: str, *, kind: str = "error", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class DiscoveryAuthError(DiscoveryError):
    """The Cloud API refused the API key."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="auth")


class AttestationError(RouterError):
    """Attestation failed; `reason` is the short code shown in /status."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DnsRenderError(RouterError):
    """`dns render` could not get what it renders (admin API unreachable, bad answer)."""


class DnsSinkError(RouterError):
    """A sink could not publish; the publisher logs it and retries."""


class ProxyError(RouterError):
    status = 502
    code = "bad_gateway"

    def __init__(self, message: str = "", **fields: object) -> None:
        super().__init__(message or self.code)
        self.fields = fields

    def body(self) -> dict[str, object]:
        return {"error": self.code, **self.fields}


class NoRoutableReplica(ProxyError):
    status = 503
    code = "no_healthy_replica"


class Overloaded(ProxyError):
    """Every slot is taken and the queue is full (or the wait for a slot ran out)."""

    status = 503
    code = "overloaded"


class UpstreamConnectError(ProxyError):
    status = 502
    code = "upstream_connect_failed"


class UpstreamProtocolError(ProxyError):
    status = 502
    code = "upstream_protocol_error"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class ClientRequestError(ProxyError):
    status = 400
    code = "bad_request"

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
