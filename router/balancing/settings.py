"""Config of request routing (`routing:`).

`routing.policy` picks the balancer; `routing.geo` configures proximity routing and
`routing.sticky` adds session affinity on top of any policy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.balancing.regions import normalise_region, region_coordinates
from router.settings_types import EnvVarName, Frozen

LocationSource = Literal["region_hint", "latlon_header", "country_header", "geoip"]

_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_COOKIE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Sticky hash tables: below this, shares are too coarse; above, builds take seconds.
MIN_TABLE_SIZE = 251
MAX_TABLE_SIZE = 16_777_259


def is_prime(value: int) -> bool:
    if value < 2:
        return False
    if value % 2 == 0:
        return value == 2
    divisor = 3
    while divisor * divisor <= value:
        if value % divisor == 0:
            return False
        divisor += 2
    return True


def _check_header(value: str | None) -> str | None:
    if value is not None and not _HEADER.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name, e.g. CF-IPCountry")
    return value


class RegionCoordinates(Frozen):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class GeoConfig(Frozen):
    # Tried in order; the first source that yields a location wins. Header sources are
    # believed only from `proxy.trusted_proxies`; the region hint from any client (it only
    # selects a region, never a replica, and spill-over still applies).
    client_location: tuple[LocationSource, ...] = (
        "region_hint",
        "latlon_header",
        "country_header",
        "geoip",
    )
    country_headers: tuple[str, ...] = ("CF-IPCountry", "CloudFront-Viewer-Country")
    latitude_header: str | None = "CloudFront-Viewer-Latitude"
    longitude_header: str | None = "CloudFront-Viewer-Longitude"
    # null disables the hint.
    region_hint_header: str | None = "X-Preferred-Region"
    # A MaxMind .mmdb (GeoLite2/GeoIP2 Country or City); without it the embedded
    # geoip2fast database (GeoLite2 Country) is used.
    geoip_database: Path | None = None
    # Where clients with an unknown location go; null = round-robin over every region.
    default_region: str | None = None
    # Coordinates for region ids missing from the built-in table, or to correct it.
    regions: dict[str, RegionCoordinates] = Field(default_factory=dict)
    # Envoy's overprovisioning factor: a region keeps all its traffic while
    # healthy/total >= 1/overprovisioning (~72% at 1.4) and sheds proportionally below.
    overprovisioning: float = Field(1.4, ge=1.0, le=100.0)
    within_region: Literal["round_robin", "least_request"] = "round_robin"

    @field_validator("country_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            _check_header(name)
        return value

    @field_validator("latitude_header", "longitude_header", "region_hint_header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        return _check_header(value)

    @field_validator("client_location")
    @classmethod
    def _sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({s for s in value if value.count(s) > 1})
        if dupes:
            raise ValueError(f"sources listed twice: {', '.join(dupes)}")
        return value

    @field_validator("geoip_database")
    @classmethod
    def _mmdb(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file (a MaxMind .mmdb)")
        return value

    @field_validator("default_region")
    @classmethod
    def _default(cls, value: str | None) -> str | None:
        return normalise_region(value) if value else None

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: dict[str, RegionCoordinates]) -> dict[str, RegionCoordinates]:
        return {normalise_region(k): v for k, v in value.items()}

    @model_validator(mode="after")
    def _default_known(self) -> GeoConfig:
        if self.default_region is None:
            return self
        if region_coordinates(self.default_region, self.regions) is None:
            raise ValueError(
                f"default_region {self.default_region!r} has no known coordinates; "
                "use a built-in region id (e.g. us-east-1, eu-west-1) or add it under "
                "routing.geo.regions with lat and lon"
            )
        return self


class StickyConfig(Frozen):
    mode: Literal["off", "cookie", "header", "ip"] = "off"
    cookie_name: str = "router_replica"
    cookie_secure: bool = False
    header_name: str = "X-Session-Id"
    # Name of the environment variable holding the HMAC key that signs sticky cookies.
    # Unset: a random per-process key (cookies stop working across restarts and routers).
    key_env: EnvVarName | None = None
    # How `header` and `ip` keys are placed: maglev (O(1) lookup in a prebuilt table of
    # `maglev_table_size` slots, a prime), ring (O(log n) on a ring of at most `ring_size`
    # points; a full-weight replica holds ring_size / N rounded up to a power of two) or rendezvous (no table, O(replicas) per new key, exact 1/N remapping).
    hash: Literal["maglev", "ring", "rendezvous"] = "maglev"
    maglev_table_size: int = Field(65_537, ge=MIN_TABLE_SIZE, le=MAX_TABLE_SIZE)
    ring_size: int = Field(65_536, ge=MIN_TABLE_SIZE, le=MAX_TABLE_SIZE)

    @field_validator("mode", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` as false.
        return "off" if value is False else value

    @field_validator("cookie_name")
    @classmethod
    def _cookie(cls, value: str) -> str:
        if not _COOKIE.fullmatch(value):
            raise ValueError(f"{value!r} is not a cookie name (letters, digits, - _ . only)")
        return value

    @field_validator("header_name")
    @classmethod
    def _header(cls, value: str) -> str:
        _check_header(value)
        return value

    @field_validator("maglev_table_size")
    @classmethod
    def _prime(cls, value: int) -> int:
        if not is_prime(value):
            raise ValueError(
                f"{value} is not prime; Maglev needs a prime table size, e.g. 65537, "
                "131071, 262147, 524287 or 1048573 (about 100x the replicas for even shares)"
            )
        return value


class RoutingConfig(Frozen):
    policy: Literal["round_robin", "geo", "least_request"] = "round_robin"
    # Adds X-Router-Route (the one-line explanation of each choice) to responses.
    debug_headers: bool = False
    # Only replicas running one of these compose hashes take traffic; null = any.
    compose_hashes: tuple[str, ...] | None = None
    geo: GeoConfig = GeoConfig()
    sticky: StickyConfig = StickyConfig()

    @field_validator("compose_hashes")
    @classmethod
    def _hashes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        cleaned = tuple(h.strip().lower().removeprefix("0x") for h in value)
        for item in cleaned:
            if not re.fullmatch(r"[0-9a-f]{64}", item):
                raise ValueError(f"{item!r} is not a compose hash (64 hex digits, sha256)")
        return cleaned
