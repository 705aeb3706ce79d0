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

from router.apps.certificates import ServedCertificate, served_certificates
from router.apps.settings import (
    APP_SECTIONS,
    AppConfig,
    app_names,
    check_apps,
    expand_apps,
    name_apps_in,
)
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

_NO_APPS = (
    "apps: the list is empty; list at least one app, or remove apps to serve one app "
    "from the top-level sections"
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
    # Several apps on the listener, chosen by Host (router/apps/). Unset: one implicit app
    # made of the top-level sections. Set: the top-level discovery, health, attestation,
    # routing and dns are defaults merged under each app's own, and the top-level fields
    # hold the primary app's (the default app, else the first); see router/app_views.py.
    apps: tuple[AppConfig, ...] | None = None

    @model_validator(mode="after")
    def _h2_replicas_need_envoy(self) -> RouterConfig:
        h2 = [r.id for r in self.discovery.static or () if r.effective_protocol != "http1"]
        if h2 and self.proxy.engine != "envoy":
            raise ValueError(
                f"discovery.static {', '.join(h2)}: protocol h2/grpc (set, or a gateway "
                "-<port>g. URL) needs proxy.engine: envoy (the fast and aiohttp engines speak "
                "HTTP/1.1 to replicas)"
            )
        phala = self.discovery.phala
        if phala is not None and phala.grpc and self.proxy.engine != "envoy":
            raise ValueError(
                "discovery.phala.grpc needs proxy.engine: envoy (the fast and aiohttp engines "
                "speak HTTP/1.1 to replicas)"
            )
        return self

    @model_validator(mode="after")
    def _some_listener(self) -> RouterConfig:
        if self.listen is None and self.listen_tls is None:
            raise ValueError("set listen, listen_tls, or both: the router needs a listener")
        if self.apps is not None:
            if not self.apps:
                raise ValueError(_NO_APPS)
            check_apps(self.apps)
        if self.proxy.engine == "envoy" and self.listen_tls is not None and self.listen_tls.ra_tls:
            raise ValueError(
                "listen_tls.ra_tls: proxy.engine: envoy serves certificate files only (the "
                "router's own RA-TLS certificate is made in-process): use proxy.engine: fast "
                "or aiohttp, or give listen_tls cert_file and key_file"
            )
        if self.discovery.static is not None:
            problem = unbound_problem(self.discovery.static, self.attestation)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _certificates_by_host(self) -> RouterConfig:
        wanted = any(app.tls is not None for app in self.apps or ())
        if self.listen_tls is not None:
            wanted = wanted or bool(self.listen_tls.certificates)
        if not wanted:
            return self
        if self.listen_tls is None or self.listen_tls.ra_tls:
            raise ValueError(
                "apps[].tls: certificates by host name are served on listen_tls with "
                "cert_file and key_file (the default certificate); set listen_tls"
            )
        self.listen_certificates()  # raises for a host name with two certificates
        return self

    def listen_certificates(self) -> tuple[ServedCertificate, ...]:
        """The certificates listen_tls chooses by SNI (beyond its default cert_file)."""
        if self.listen_tls is None:
            return ()
        apps = [(a.name, [r.host for r in a.routes], a.tls) for a in self.apps or ()]
        return served_certificates(self.listen_tls.certificates, apps)

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
    several = "apps" in data
    if data.get("apps") == []:
        raise ConfigError(_NO_APPS)
    names = app_names(data)
    try:
        return RouterConfig.model_validate(_with_primary_app(expand_apps(data)))
    except ValidationError as exc:
        message = format_validation_error(exc, env)
        if several:  # the top-level sections mirror an app: report each problem once
            lines = message.splitlines()
            kept = [line for line in lines if not line.startswith(APP_SECTIONS)]
            message = name_apps_in("\n".join(kept or lines), names)
        raise ConfigError(message) from None


def _with_primary_app(data: dict[str, Any]) -> dict[str, Any]:
    """With `apps:`, the top-level app sections become the primary app's (already merged),
    so code that serves one app reads a complete config."""
    apps = data.get("apps")
    if not isinstance(apps, list) or not apps or not all(isinstance(a, dict) for a in apps):
        return data
    primary = next((a for a in apps if a.get("default") is True), apps[0])
    return {**data, **{k: copy.deepcopy(primary[k]) for k in APP_SECTIONS if k in primary}}


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
    data = config_dump(config)

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


def config_dump(config: RouterConfig) -> dict[str, Any]:
    """The config as JSON-able data, each setting once: with `apps:`, the top-level app
    sections (a mirror of the primary app) are left out."""
    data = config.model_dump(mode="json")
    if config.apps is None:
        data.pop("apps", None)
        return data
    return {k: v for k, v in data.items() if k not in APP_SECTIONS}
