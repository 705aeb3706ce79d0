"""The router's configuration: a YAML file, then `PHALA_ROUTER_*` environment overrides.

Every model is frozen and forbids unknown keys. `load_config()` is the one entry point; it
raises `ConfigError` whose message names each bad field by its dotted path, the bad value and
what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from router.attestation.binding import unbound_problem
from router.attestation.settings import AttestationConfig
from router.balancing.settings import RoutingConfig
from router.config_source import EnvOverrides, apply_env, load_yaml
from router.discovery.settings import PhalaDiscoveryConfig
from router.dns.settings import DnsConfig
from router.errors import ConfigError
from router.health.settings import HealthConfig
from router.proxy.retry_settings import (
    DEFAULT_RETRY_ON,
    RetryBudgetConfig,
    RetryOn,
    check_codes_enabled,
    check_retry_on,
    check_status_codes,
)
from router.settings_types import (
    Duration,
    EnvVarName,
    Frozen,
    HostPort,
    PositiveDuration,
    is_loopback,
    split_host_port,
)


class AdminConfig(Frozen):
    listen: HostPort = "127.0.0.1:9090"
    # Name of the environment variable holding the admin token; the token itself never
    # appears in a config file.
    token_env: EnvVarName | None = None

    @model_validator(mode="after")
    def _token_required_off_loopback(self) -> AdminConfig:
        host, _ = split_host_port(self.listen)
        if not is_loopback(host) and self.token_env is None:
            raise ValueError(
                f"admin.listen {self.listen!r} is not a loopback address: set admin.token_env "
                "to the name of an environment variable holding an admin token"
            )
        return self


class StaticReplicaConfig(Frozen):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    url: str
    region: str | None = None
    weight: int = Field(100, ge=1, le=10000)
    # The Phala instance id this replica's quote must name (attestation; 40 hex).
    instance_id: str | None = Field(None, pattern=r"^(0x)?[0-9a-fA-F]{40}$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(
                f"{value!r} is not an http(s) URL with a host, e.g. https://replica-1.example.com:443"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else None


class DiscoveryConfig(Frozen):
    static: tuple[StaticReplicaConfig, ...] | None = None
    phala: PhalaDiscoveryConfig | None = None
    # Like curl --connect-to: dial this address for hosts matching the pattern, keeping the
    # host name for the Host header and TLS SNI. Patterns are exact names or `*.suffix`.
    connect_to: dict[str, HostPort] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        if (self.static is None) == (self.phala is None):
            raise ValueError("set exactly one of discovery.static (a list) or discovery.phala")
        if self.static is not None:
            ids = [r.id for r in self.static]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"discovery.static has duplicate ids: {', '.join(dupes)}")
        for pattern in self.connect_to:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9._-]+", pattern):
                raise ValueError(
                    f"connect_to key {pattern!r} must be a host name or *.suffix, e.g. *.example.com"
                )
        return self


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
    engine: Literal["aiohttp", "fast"] = "fast"
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


class ListenTLSConfig(Frozen):
    """TLS on the router's own listener (in addition to, or instead of, `listen`)."""

    listen: HostPort
    cert_file: Path
    key_file: Path
    # Answer plain-HTTP requests on `listen` with a redirect to https.
    redirect_http: bool = False
    # How often the certificate files are checked for changes (also reloaded on SIGHUP).
    reload_interval: PositiveDuration = 5.0

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value


class MetricsConfig(Frozen):
    # Per-request series (requests, latency, errors by replica). Off saves a few hundred
    # nanoseconds per request; replica states, health and discovery series stay.
    requests: bool = True


class RouterConfig(Frozen):
    # Plain-HTTP listener; null to serve only TLS (listen_tls).
    listen: HostPort | None = "127.0.0.1:8080"
    listen_tls: ListenTLSConfig | None = None
    # A directory whose .well-known/acme-challenge/ files are served on the plain listener
    # (ACME HTTP-01, e.g. certbot --webroot -w DIR), even with listen_tls.redirect_http.
    acme_webroot: Path | None = None
    admin: AdminConfig = AdminConfig()
    discovery: DiscoveryConfig
    upstream_tls: UpstreamTLSConfig = UpstreamTLSConfig()
    routing: RoutingConfig = RoutingConfig()
    proxy: ProxyConfig = ProxyConfig()
    health: HealthConfig = HealthConfig()
    attestation: AttestationConfig = AttestationConfig()
    dns: DnsConfig = DnsConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _some_listener(self) -> RouterConfig:
        if self.listen is None and self.listen_tls is None:
            raise ValueError("set listen, listen_tls, or both: the router needs a listener")
        if self.discovery.static is not None:
            problem = unbound_problem(self.discovery.static, self.attestation)
            if problem:
                raise ValueError(problem)
        return self

    @field_validator("acme_webroot")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(
                f"{str(value)!r} must be an absolute path, e.g. /var/lib/phala-router/acme"
            )
        return value


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in {"tagged-union"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, env: EnvOverrides | None = None) -> str:
    """One line per problem: `dotted.path: message (got: value)`. A value that came from an
    environment variable is never shown (it may be a secret in the wrong variable); the
    variable is named instead."""
    lines = []
    for item in error.errors(include_url=False):
        where = _format_location(tuple(item["loc"]))
        variable = env.variable_for(tuple(item["loc"])) if env else None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; config/reference.yaml lists every key)"
        elif item["type"] == "missing":
            message = "required but missing"
        got = item.get("input")
        shown = "" if item["type"] in {"missing", "extra_forbidden"} else f" (got: {got!r})"
        if isinstance(got, dict | list):
            shown = ""
        if variable is not None:
            shown = f" (set by environment variable {variable}; value not shown)"
        lines.append(f"{where}: {message}{shown}")
    text = "\n".join(lines)
    return env.scrub(text) if env else text


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> RouterConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping of sections (listen, discovery, ...)")
    data = copy.deepcopy(data)  # overrides are applied to a copy: the caller's dict stays
    env = apply_env(data, os.environ if environ is None else environ)
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, env)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> RouterConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc.strerror}") from None
    return parse_config(load_yaml(text, str(file)), environ)


def redacted(config: RouterConfig) -> dict[str, Any]:
    """The effective config for display. Secrets are only ever env var names, but values of
    keys that look secret are masked anyway in case a later section adds one."""
    data = config.model_dump(mode="json")

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if re.search(r"(secret|password|token|key)$", k) and v else mask(v))
                if not k.endswith("_env")
                else v
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    result: dict[str, Any] = mask(data)
    return result
