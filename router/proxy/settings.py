"""Config of the data plane (`proxy:`, `listen_tls:`, `upstream_tls:`) and the slice of the
router config an engine receives (`ProxySettings`), so engines never see the whole root."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from router.apps.certificates import HostCertificate
from router.proxy.envoy.settings import EnvoyConfig
from router.proxy.retry_settings import (
    DEFAULT_RETRY_ON,
    RetryBudgetConfig,
    RetryOn,
    check_codes_enabled,
    check_retry_on,
    check_status_codes,
)
from router.settings_types import Duration, Frozen, HostPort, PositiveDuration


class UpstreamTLSConfig(Frozen):
    verify: bool = True
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value


class ProxyConfig(Frozen):
    engine: Literal["aiohttp", "fast", "envoy"] = "fast"
    # The Envoy engine's own settings (docs/envoy.md); ignored by the Python engines.
    envoy: EnvoyConfig = EnvoyConfig()
    # Processes serving the listener (SO_REUSEPORT), each a full router; "auto" = CPU cores.
    workers: int | Literal["auto"] = 1
    connect_timeout: PositiveDuration = 5.0
    # Time to the first response byte, and the longest gap between body chunks after it.
    response_timeout: PositiveDuration = 60.0
    # How long an idle pooled connection to a replica is kept; also the longest silence
    # allowed on an upgraded (WebSocket) tunnel before it is closed.
    idle_timeout: PositiveDuration = 60.0
    # How long an idle keep-alive connection from a client is kept open (both engines).
    client_idle_timeout: PositiveDuration = 60.0
    retries: int = Field(2, ge=0, le=10)
    # -- the retry policy (router/proxy/retry.py, docs/retries.md) --
    # What moves an idempotent bodiless request to another replica (connect-failure moves
    # any request and is always on); gateway-error is a 502, 503 or 504 from the replica.
    retry_on: tuple[RetryOn, ...] = DEFAULT_RETRY_ON
    # Statuses (400-599) retried like gateway errors when retry_on lists
    # retriable-status-codes, e.g. [429].
    retriable_status_codes: tuple[int, ...] = ()
    # One attempt may wait this long for the response head before another replica is tried
    # (while response_timeout, counted from the first attempt, has time left); unset: off.
    per_try_timeout: PositiveDuration | None = None
    # Retries in flight at most budget_percent of the requests in flight, at least
    # min_retry_concurrency (Envoy's retry_budget); a refused retry returns the response.
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    max_request_body: int = Field(100 * 1024 * 1024, ge=0)
    trusted_proxies: tuple[str, ...] = ()
    drain_timeout: PositiveDuration = 30.0
    # On SIGTERM, /readyz turns 503 this long before the listener closes, so a load
    # balancer polling /readyz stops sending new connections first (e.g. 5s behind one).
    shutdown_delay: Duration = 0.0
    # -- overload and slow clients (router/proxy/admission.py) --
    # Requests proxied at once (each holds one upstream connection); more wait in a queue of
    # max_pending for up to connect_timeout, and past that get 503 with Retry-After.
    max_connections: int = Field(2048, ge=1)
    max_pending: int = Field(2048, ge=0)
    # A request head must arrive within this of the connection opening or of the previous
    # response on it (so it also closes idle keep-alive connections); restart to change.
    client_header_timeout: PositiveDuration = 10.0
    # The longest pause allowed between two pieces of a request body (408 after).
    client_body_timeout: PositiveDuration = 60.0
    # Headers only a trusted edge (CDN, load balancer) may set: removed from requests of
    # peers outside trusted_proxies, as nginx's real-ip module and Envoy's edge settings do.
    # The geo routing headers (routing.geo.country_headers, latitude/longitude) are added.
    edge_headers: tuple[str, ...] = (
        "CF-Connecting-IP",
        "True-Client-IP",
        "X-Real-IP",
        "X-Client-IP",
        "X-Forwarded-Port",
        "CF-IPCountry",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 1 <= value <= 256):
            return value
        raise ValueError("must be a whole number from 1 to 256, or auto (one per CPU core)")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not an IP network; use CIDR notation, e.g. 10.0.0.0/8 or ::1/128"
                ) from None
        return value

    @field_validator("edge_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not an HTTP header name, e.g. CF-Connecting-IP")
        return value

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, value: tuple[RetryOn, ...]) -> tuple[RetryOn, ...]:
        return check_retry_on(value)

    @field_validator("retriable_status_codes")
    @classmethod
    def _retriable_codes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return check_status_codes(value)

    @model_validator(mode="after")
    def _codes_with_retry_on(self) -> ProxyConfig:
        check_codes_enabled(self.retry_on, self.retriable_status_codes)
        return self


class ListenTLSConfig(Frozen):
    """TLS on the router's own listener (in addition to, or instead of, `listen`)."""

    listen: HostPort
    # Required unless ra_tls.
    cert_file: Path | None = None
    key_file: Path | None = None
    # Answer plain-HTTP requests on `listen` with a redirect to https.
    redirect_http: bool = False
    # How often the certificate files are checked for changes (also reloaded on SIGHUP).
    reload_interval: PositiveDuration = 5.0
    # In a CVM: serve an RA-TLS key from the dstack guest agent instead of files, so clients
    # can verify the router (`phala-router verify`). Renewed every ra_tls_renew.
    ra_tls: bool = False
    ra_tls_renew: PositiveDuration = 43200.0
    # The dstack socket (default: DSTACK_SIMULATOR_ENDPOINT, then /var/run/dstack.sock, ...).
    dstack_socket: str | None = None
    # More certificates, chosen by the client's SNI; cert_file serves every other name and
    # clients without SNI. E.g. [{hosts: [api.example.com], cert_file: ..., key_file: ...}].
    # Each file is watched and reloaded like cert_file. (apps[].tls adds one per app.)
    certificates: tuple[HostCertificate, ...] = ()

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _source(self) -> ListenTLSConfig:
        if not self.ra_tls and (self.cert_file is None or self.key_file is None):
            raise ValueError(
                "listen_tls needs cert_file and key_file, or ra_tls: true (in a CVM: an RA-TLS "
                "key from dstack)"
            )
        if self.ra_tls and self.certificates:
            raise ValueError(
                "listen_tls.certificates needs certificate files: with ra_tls the listener "
                "serves the dstack RA-TLS key for every name"
            )
        return self


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What an engine needs from the config, built by `router.compose.proxy_settings`."""

    proxy: ProxyConfig
    upstream_tls: UpstreamTLSConfig
    # discovery.connect_to: dial addresses by host pattern (Host and SNI keep the name).
    connect_to: Mapping[str, str]
    listen: str | None
    listen_tls: ListenTLSConfig | None
    acme_webroot: Path | None
    # health.passive.count_5xx: whether a 5xx answer counts as a replica failure.
    count_5xx: bool
    # Lower-case names removed from requests of untrusted peers (edge + geo headers).
    edge_headers: frozenset[str]
    # attestation.connection: ra-tls: TLS to replicas is checked by the RA-TLS peer check
    # (no host-name/CA check); kms_root, when pinned, is the only CA the chain may lead to.
    ra_tls: bool = False
    kms_root: Path | None = None
