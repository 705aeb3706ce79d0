"""The router's configuration: a YAML file, then `PHALA_ROUTER_*` environment overrides.

Every model is frozen and forbids unknown keys. `load_config()` is the one entry point; it
raises `ConfigError` whose message names each bad field by its dotted path, the bad value and
what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator, model_validator

from router.attestation.binding import unbound_problem
from router.attestation.settings import AttestationConfig
from router.balancing.settings import RoutingConfig
from router.config_source import apply_env, format_validation_error, load_yaml
from router.discovery.settings import DiscoveryConfig
from router.dns.settings import DnsConfig
from router.errors import ConfigError
from router.health.settings import HealthConfig
from router.proxy.settings import ListenTLSConfig, ProxyConfig, UpstreamTLSConfig
from router.settings_types import (
    EnvVarName,
    Frozen,
    HostPort,
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
