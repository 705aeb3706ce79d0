"""Config of discovery (`discovery:`): Phala Cloud (`discovery.phala`), a static list
(`discovery.static`) and `connect_to`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from router.settings_types import EnvVarName, Frozen, HostPort, PositiveDuration

_HEX40 = re.compile(r"[0-9a-f]{40}")
# The dstack gateway's gRPC names: `<id>-<port>g.<base_domain>` (TLS ends at the gateway,
# which speaks HTTP/2 to clients): PHALA.md, "Endpoints and the dstack gateway".
_GATEWAY_GRPC = re.compile(r"^[0-9a-z]+-\d+g\.", re.IGNORECASE)
Protocol = Literal["http1", "h2", "grpc"]


def host_protocol(host: str) -> Protocol:
    """`grpc` for a gateway `-<port>g.` host name, else `http1`."""
    return "grpc" if _GATEWAY_GRPC.match(host) else "http1"


def normalise_app_id(value: object) -> str:
    """`app_<40 hex>` or `<40 hex>` -> the 40 lower-case hex digits the Cloud API expects."""
    if not isinstance(value, str):
        raise ValueError("app_id must be a string of 40 hex digits, e.g. 'app_0123...abcd'")
    text = value.strip().lower().removeprefix("app_")
    if not _HEX40.fullmatch(text):
        raise ValueError(
            f"{value!r} is not a Phala app_id: expected 40 hex digits, optionally prefixed "
            "with 'app_' (as shown in the Phala Cloud dashboard)"
        )
    return text


class PhalaDiscoveryConfig(Frozen):
    # The app whose replicas (CVMs) the router fronts; an `app_` prefix is accepted.
    app_id: str
    api_url: str = "https://cloud-api.phala.com/api/v1"
    # Name of the environment variable holding the API key; the key never sits in a file.
    api_key_env: EnvVarName = "PHALA_CLOUD_API_KEY"
    # Sent as X-Phala-Version; both the 2026-01-21 and legacy 2025-10-28 shapes are parsed.
    api_version: str = Field("2026-01-21", pattern=r"^\d{4}-\d{2}-\d{2}$")
    # The app's port on the replica: the URL is {scheme}://{instance_id}-{port}.{base_domain}.
    port: int = Field(80, ge=1, le=65535)
    scheme: Literal["https", "http"] = "https"
    # Reach replicas through the gateway's TLS passthrough, {instance_id}-{port}s.{base}: TLS
    # then ends inside the CVM (needed by attestation.connection: ra-tls).
    tls_passthrough: bool = False
    # Reach replicas through the gateway's gRPC names, {instance_id}-{port}g.{base}: HTTP/2
    # with TLS ended at the gateway (needs proxy.engine: envoy).
    grpc: bool = False
    interval: PositiveDuration = 15.0
    timeout: PositiveDuration = 10.0
    # Failed refreshes retry with jitter, backing off exponentially up to this. None (the
    # default) = `interval`: a recovered API is then noticed within one interval; raise it
    # to spare the Cloud API during long outages at the cost of noticing recovery later.
    max_backoff: PositiveDuration | None = None
    # An empty answer after a non-empty one is believed only when it repeats this many times.
    empty_confirmations: int = Field(2, ge=1, le=100)
    # Used only for records that name no gateway domain (neither gateway nor endpoints).
    base_domain: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "api_key cannot be written in the config: put the key in an environment "
                "variable and name it in api_key_env (default PHALA_CLOUD_API_KEY)"
            )
        return data

    @field_validator("app_id", mode="before")
    @classmethod
    def _app_id(cls, value: object) -> str:
        return normalise_app_id(value)

    @model_validator(mode="after")
    def _one_gateway_kind(self) -> PhalaDiscoveryConfig:
        if self.grpc and (self.tls_passthrough or self.scheme != "https"):
            raise ValueError(
                "grpc (the gateway's -<port>g names, TLS ended at the gateway) goes with "
                "scheme: https and without tls_passthrough; choose one of them"
            )
        return self

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value):
            raise ValueError(
                f"{value!r} is not an http(s) URL, e.g. https://cloud-api.phala.com/api/v1"
            )
        return value.rstrip("/")

    @field_validator("base_domain")
    @classmethod
    def _base_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().strip(".").lower()
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", name):
            raise ValueError(f"{value!r} is not a domain name, e.g. dstack-prod5.phala.network")
        return name


class StaticReplicaConfig(Frozen):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    url: str
    region: str | None = None
    weight: int = Field(100, ge=1, le=10000)
    # The Phala instance id this replica's quote must name (attestation; 40 hex).
    instance_id: str | None = Field(None, pattern=r"^(0x)?[0-9a-fA-F]{40}$")
    # How the replica is spoken to: h2 or grpc (HTTP/2 with prior knowledge, or ALPN over
    # TLS) needs `proxy.engine: envoy`; the Python engines speak HTTP/1.1 only.
    # Unset: grpc for the gateway's `-<port>g.` host names, else http1.
    protocol: Protocol | None = None

    @property
    def effective_protocol(self) -> Protocol:
        if self.protocol is not None:
            return self.protocol
        return host_protocol(self.url.split("://", 1)[-1])

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
