"""Config of DNS publishing (`dns:`).

Names are checked with dnspython and stored absolute (with the trailing dot) so every
later comparison is between canonical names.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import dns.exception
import dns.name
from pydantic import Field, field_validator, model_validator

from router.settings_types import (
    Duration,
    EnvVarName,
    Frozen,
    HostPort,
    PositiveDuration,
    split_host_port,
)

TsigAlgorithm = Literal["hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1"]
Format = Literal["zone", "json", "octodns"]


def absolute_name(value: str) -> str:
    """`api.example.com` -> `api.example.com.` (lower case); ValueError naming the rule."""
    if not isinstance(value, str) or not value.strip(".").strip():
        raise ValueError("expected a DNS name such as api.example.com")
    try:
        name = dns.name.from_text(value.strip())
    except dns.exception.DNSException as exc:
        raise ValueError(f"{value!r} is not a valid DNS name: {exc}") from None
    if len(name.labels) < 3:  # at least two labels plus the root
        raise ValueError(f"{value!r} must have at least two labels, e.g. api.example.com")
    return name.to_text().lower()


def parse_nameserver(value: str) -> tuple[str, int]:
    """`10.0.0.53`, `10.0.0.53:5353`, `::1` or `[::1]:5353` -> (ip, port)."""
    if _ip(value) is not None and not value.startswith("["):
        return str(_ip(value)), 53
    try:
        host, port = split_host_port(value)
    except ValueError:
        host, port = value, 53
    if _ip(host) is None:
        raise ValueError(f"nameserver {value!r} must be an IP address with an optional :PORT")
    return str(_ip(host)), port


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_within(name: str, zone: str) -> bool:
    return dns.name.from_text(name).is_subdomain(dns.name.from_text(zone))


class FileSinkConfig(Frozen):
    type: Literal["file"]
    path: Path
    format: Format = "zone"
    # Run after each write, without a shell: a list of arguments, e.g.
    # ["rndc", "reload", "example.com"].
    post_write_command: tuple[str, ...] | None = None
    post_write_timeout: PositiveDuration = 30.0

    @field_validator("post_write_command")
    @classmethod
    def _argv(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError(
                "post_write_command is a list of arguments, e.g. [rndc, reload, example.com]"
            )
        return value


class Rfc2136SinkConfig(Frozen):
    type: Literal["rfc2136"]
    server: HostPort  # the primary that accepts dynamic updates, e.g. 10.0.0.53:53
    zone: str
    tsig_key_name: str | None = None
    # Name of the environment variable holding the base64 TSIG secret.
    tsig_secret_env: EnvVarName | None = None
    tsig_algorithm: TsigAlgorithm = "hmac-sha256"
    timeout: PositiveDuration = 5.0
    verify: bool = True

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return absolute_name(value)

    @model_validator(mode="after")
    def _tsig_pair(self) -> Rfc2136SinkConfig:
        if (self.tsig_key_name is None) != (self.tsig_secret_env is None):
            raise ValueError(
                "set both tsig_key_name and tsig_secret_env (the name of an environment "
                "variable holding the base64 secret), or neither for an unsigned update"
            )
        return self


DnsSinkConfig = Annotated[FileSinkConfig | Rfc2136SinkConfig, Field(discriminator="type")]


class DnsServerConfig(Frozen):
    listen: HostPort  # UDP and TCP, e.g. 127.0.0.1:5353
    # EDNS payload size we advertise and the largest UDP answer we send (RFC 9715 advice).
    udp_payload: int = Field(1232, ge=512, le=4096)
    tcp_idle_timeout: PositiveDuration = 10.0
    max_tcp_connections: int = Field(256, ge=1)


class DnsConfig(Frozen):
    name: str | None = None  # the round-robin name, e.g. api.example.com.
    zone: str | None = None  # when set: full zone output with SOA/NS; the server's apex
    ttl: int = Field(30, ge=0, le=86400)
    max_records: int = Field(8, ge=1, le=512)
    when_empty: Literal["fail_open", "fail_closed"] = "fail_open"
    service: str | None = None  # SRV _<service>._tcp.<name>
    region: str | None = None  # SRV priority: this region first, then the others
    txt_app_address: bool = False  # TXT _dstack-app-address.<name> = "<app_id>:<port>"
    app_port: int | None = Field(None, ge=1, le=65535)  # for the TXT; default from host names
    ns: tuple[str, ...] = ()  # NS names for the full zone; default ns1.<zone>
    hostmaster: str | None = None  # SOA RNAME; default hostmaster.<zone>
    # For resolving replica host names: "IP" or "IP:PORT"; empty = the system resolver.
    nameservers: tuple[str, ...] = ()
    resolve_timeout: PositiveDuration = 3.0
    refresh_interval: PositiveDuration = 60.0  # re-resolve host names this often
    sinks: tuple[DnsSinkConfig, ...] = ()
    min_interval: Duration = 5.0  # between two writes of one sink
    retry_interval: PositiveDuration = 10.0  # after a failed write
    server: DnsServerConfig | None = None

    @field_validator("name", "zone", "hostmaster")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else absolute_name(value)

    @field_validator("ns")
    @classmethod
    def _ns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(absolute_name(v) for v in value)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else None

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is None:
            return None
        service = value.removeprefix("_").lower()
        if not service or not all(c.isalnum() or c == "-" for c in service) or len(service) > 15:
            raise ValueError(
                f"{value!r} is not a service name: letters, digits and '-', at most 15, e.g. https"
            )
        return service

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_nameserver(item)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DnsConfig:
        if self.name is None:
            if self.sinks or self.server is not None:
                raise ValueError("dns.name is required when dns.sinks or dns.server is set")
            return self
        if self.zone is not None and not is_within(self.name, self.zone):
            raise ValueError(f"dns.name {self.name} is not inside dns.zone {self.zone}")
        for index, sink in enumerate(self.sinks):
            if isinstance(sink, Rfc2136SinkConfig) and not is_within(self.name, sink.zone):
                raise ValueError(
                    f"dns.sinks[{index}].zone {sink.zone} does not contain {self.name}"
                )
        return self

    @property
    def apex(self) -> str | None:
        """The zone the server is authoritative for: `zone`, else the name itself."""
        return self.zone or self.name
