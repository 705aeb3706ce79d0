"""Where a client is.

Client location comes from an ordered list of sources (`routing.geo.client_location`):
the region hint header (from anyone), latitude/longitude or country headers (only from a
trusted proxy), and GeoIP on the effective client address.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router.balancing.base import RequestContext
from router.balancing.regions import Point, country_table, normalise_region, region_coordinates
from router.balancing.settings import GeoConfig
from router.errors import ConfigError

log = logging.getLogger(__name__)

# Cloudflare sends XX for unknown and T1 for Tor; neither is a place.
_NOT_COUNTRIES = frozenset({"XX", "T1", "EU", "AP", "A1", "A2", "O1", "--"})


@dataclass(frozen=True, slots=True)
class ClientLocation:
    """A located client. `key` groups clients that route alike and are explained alike
    (routing plans and their explanations are cached by it)."""

    key: str
    point: Point
    label: str
    via: str


class GeoIP(Protocol):
    def lookup(self, ip: str) -> tuple[str | None, Point | None]:
        """(country code, coordinates when the database has them) for an address."""
        ...


class FastGeoIP:
    """The embedded GeoLite2 Country database of `geoip2fast` (IPv4 and IPv6, offline)."""

    def __init__(self) -> None:
        from geoip2fast import GeoIP2Fast

        self._db: Any = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")

    def lookup(self, ip: str) -> tuple[str | None, Point | None]:
        result = self._db.lookup(ip)
        if result.is_private:
            return None, None
        code = result.country_code
        return (code if isinstance(code, str) and len(code) == 2 else None), None


class MaxMindGeoIP:
    """A MaxMind GeoIP2/GeoLite2 Country or City `.mmdb` file."""

    def __init__(self, path: Path) -> None:
        import maxminddb

        try:
            self._reader: Any = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(
                f"routing.geo.geoip_database: {str(path)!r} is not a readable MaxMind "
                f".mmdb file: {exc}"
            ) from None

    def lookup(self, ip: str) -> tuple[str | None, Point | None]:
        try:
            record = self._reader.get(ip)
        except ValueError:  # not an IP address
            return None, None
        if not isinstance(record, dict):
            return None, None
        country = record.get("country") or record.get("registered_country") or {}
        code = country.get("iso_code") if isinstance(country, dict) else None
        location = record.get("location")
        point = None
        if isinstance(location, dict):
            lat, lon = location.get("latitude"), location.get("longitude")
            if isinstance(lat, int | float) and isinstance(lon, int | float):
                point = Point(float(lat), float(lon))
        return (code if isinstance(code, str) else None), point


def open_geoip(path: Path | None) -> GeoIP:
    return MaxMindGeoIP(path) if path is not None else FastGeoIP()


def _parse_degrees(text: str | None, limit: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and -limit <= value <= limit else None


class Locator:
    """Resolves a request to a client location, trying the configured sources in order."""

    def __init__(self, cfg: GeoConfig, geoip: GeoIP | None) -> None:
        self._cfg = cfg
        self._geoip = geoip
        self._countries = country_table()
        # Locations are immutable and few per country: build each once.
        self._by_country: dict[tuple[str, str], ClientLocation] = {}
        self._by_region: dict[str, ClientLocation | None] = {}
        self._sources = tuple(s for s in cfg.client_location if s != "geoip" or geoip is not None)
        # The database never changes while we run and the same clients come back: a lookup
        # costs microseconds, a cache hit tens of nanoseconds.
        self._geoip_cached = functools.lru_cache(maxsize=16384)(self._geoip_uncached)

    def locate(self, ctx: RequestContext) -> ClientLocation | None:
        for source in self._sources:
            if source == "region_hint":
                found = self._hint(ctx)
            elif source == "latlon_header":
                found = self._latlon(ctx) if ctx.peer_trusted else None
            elif source == "country_header":
                found = self._country_header(ctx) if ctx.peer_trusted else None
            else:
                found = self._geoip_cached(ctx.client_ip)
            if found is not None:
                return found
        return None

    def region_location(self, region: str, via: str) -> ClientLocation | None:
        """A client placed at a region (the hint, or `default_region`)."""
        key = normalise_region(region)
        cache_key = f"{via}:{key}"
        if cache_key not in self._by_region:
            point = region_coordinates(key, self._cfg.regions)
            label, how = (key, via) if via == "hint" else ("unknown", f"{via} {key}")
            self._by_region[cache_key] = (
                None if point is None else ClientLocation(f"region:{key}|{how}", point, label, how)
            )
            if len(self._by_region) > 1024:  # hints are client-chosen: keep the cache small
                self._by_region.clear()
        return self._by_region.get(cache_key)

    def _hint(self, ctx: RequestContext) -> ClientLocation | None:
        name = self._cfg.region_hint_header
        value = ctx.headers.get(name) if name else None
        if not value or len(value) > 64:
            return None
        return self.region_location(value, "hint")

    def _latlon(self, ctx: RequestContext) -> ClientLocation | None:
        lat_name, lon_name = self._cfg.latitude_header, self._cfg.longitude_header
        if not lat_name or not lon_name:
            return None
        lat = _parse_degrees(ctx.headers.get(lat_name), 90.0)
        lon = _parse_degrees(ctx.headers.get(lon_name), 180.0)
        if lat is None or lon is None:
            return None
        return self._point(lat, lon, "header")

    def _point(self, lat: float, lon: float, via: str) -> ClientLocation:
        # Rounded to ~10 km so nearby clients share a cached routing plan.
        lat, lon = round(lat, 1), round(lon, 1)
        return ClientLocation(f"ll:{lat},{lon}|{via}", Point(lat, lon), f"{lat},{lon}", via)

    def _country(self, code: str | None, via: str) -> ClientLocation | None:
        if not code:
            return None
        code = code.strip().upper()
        if code in _NOT_COUNTRIES:
            return None
        found = self._by_country.get((code, via))
        if found is None:
            point = self._countries.get(code)
            if point is None:
                return None
            found = self._by_country[(code, via)] = ClientLocation(
                f"cc:{code}|{via}", point, code, via
            )
        return found

    def _country_header(self, ctx: RequestContext) -> ClientLocation | None:
        for name in self._cfg.country_headers:
            found = self._country(ctx.headers.get(name), f"header {name}")
            if found is not None:
                return found
        return None

    def _geoip_uncached(self, ip: str) -> ClientLocation | None:
        assert self._geoip is not None
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]  # an IPv4 client seen through a dual-stack socket
        code, point = self._geoip.lookup(ip)
        if point is not None:
            located = self._point(point.lat, point.lon, "geoip")
            label = f"{code} ({located.label})" if code else located.label
            return ClientLocation(f"{located.key}|{code}", located.point, label, "geoip")
        return self._country(code, "geoip")
