"""Where a client is, as Envoy route matches (routing.policy: geo). Pure.

The Python engines locate a client from an ordered list of sources
(router/balancing/locate.py); Envoy cannot run that code, so each source becomes header
matchers that send a request to the cluster of the client's origin region, in the same
order:

- `region_hint`: the hint header names a region (anyone may send it);
- `latlon_header` (trusted peers): the latitude and longitude headers, read as decimal
  text, fall into 10-degree cells; each cell goes to the region nearest its centre (the
  picker ranks from the exact point, so clients near a boundary may differ);
- `country_header` (trusted peers): each country goes to the region nearest the country;
- `geoip`: Envoy's GeoIP filter looks the client address up in `routing.geo.geoip_database`
  (a MaxMind file) and writes the country to `GEOIP_HEADER`, routed as a country. Without
  a database file (the embedded geoip2fast table) GeoIP is not mapped.

A request no matcher takes goes to the default route, as an unknown client does today.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.balancing.regions import Point, country_table
from router.proxy.envoy.resources import Json, geo_origins, rank_regions
from router.proxy.envoy.view import ConfigView
from router.snapshot import Snapshot

# Written by Envoy's GeoIP filter; a client's own copy is removed before the filter runs.
GEOIP_HEADER = "x-phala-router-geoip-country"
GEOIP_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.geoip.v3.Geoip"
MAXMIND_TYPE = "type.googleapis.com/envoy.extensions.geoip_providers.maxmind.v3.MaxMindConfig"
HEADER_MUTATION_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_FRACTION = r"(\.[0-9]*)?"


def _regex_of(values: Sequence[str]) -> str:
    return "^(" + "|".join(sorted(values)) + ")$"


def _exact(name: str, regex: str) -> Json:
    return {"name": name, "string_match": {"safe_regex": {"regex": regex}}}


def countries_by_origin(origins: Sequence[str], config: ConfigView) -> dict[str, list[str]]:
    """Each country goes to its nearest origin region (an approximation of the picker,
    which ranks regions from the country's own coordinates)."""
    grouped: dict[str, list[str]] = {}
    for code, point in sorted(country_table().items()):
        nearest = rank_regions(point, origins, config)[0]
        grouped.setdefault(nearest, []).append(code)
        grouped[nearest] += [code.lower()]
    return grouped


def _country_matches(
    origins: Sequence[str], config: ConfigView, headers: Sequence[str]
) -> list[tuple[str, list[Json]]]:
    found: list[tuple[str, list[Json]]] = []
    for origin, countries in countries_by_origin(origins, config).items():
        for header in headers:
            found.append((origin, [_exact(header, _regex_of(countries))]))
    return found


# -- latitude and longitude ----------------------------------------------------------------


def cell_regex(negative: bool, tens: int, limit: int) -> str:
    """Decimal text whose integer part is in [10*tens, 10*tens + 9] (and at most `limit`)."""
    sign = "-" if negative else r"\+?"
    if tens * 10 == limit:  # 90 or 180 itself, nothing beyond
        return rf"{sign}{limit}(\.0*)?"
    digits = "[0-9]" if tens == 0 else f"{tens}[0-9]"
    return sign + digits + _FRACTION


def cells(limit: int) -> list[tuple[str, float]]:
    """(regex, centre) of every 10-degree cell of [-limit, limit] by the text's shape."""
    found: list[tuple[str, float]] = []
    for negative in (False, True):
        for tens in range(limit // 10 + 1):
            centre = min(tens * 10 + 5, limit)
            found.append((cell_regex(negative, tens, limit), -centre if negative else centre))
    return found


def latlon_matches(origins: Sequence[str], config: ConfigView) -> list[tuple[str, list[Json]]]:
    """One match per latitude cell and origin: the longitude cells whose centre is nearest
    that origin."""
    geo = config.routing.geo
    lat_name, lon_name = geo.latitude_header, geo.longitude_header
    if not lat_name or not lon_name or not origins:
        return []
    found: list[tuple[str, list[Json]]] = []
    for lat_regex, lat in cells(90):
        by_origin: dict[str, list[str]] = {}
        for lon_regex, lon in cells(180):
            nearest = rank_regions(Point(lat, lon), origins, config)[0]
            by_origin.setdefault(nearest, []).append(lon_regex)
        for origin, lon_regexes in sorted(by_origin.items()):
            lon_match = _exact(lon_name, "^(" + "|".join(lon_regexes) + ")$")
            found.append((origin, [_exact(lat_name, f"^({lat_regex})$"), lon_match]))
    return found


# -- every source, in order ----------------------------------------------------------------


def geoip_mapped(config: ConfigView) -> bool:
    geo = config.routing.geo
    return (
        config.routing.policy == "geo"
        and "geoip" in geo.client_location
        and geo.geoip_database is not None
    )


def location_matches(
    snapshot: Snapshot, config: ConfigView, *, trusted: bool
) -> list[tuple[str, list[Json]]]:
    """(client origin region, header matchers) in the order the locator tries sources."""
    geo = config.routing.geo
    origins = geo_origins(snapshot, config)
    if not origins:
        return []
    found: list[tuple[str, list[Json]]] = []
    for source in geo.client_location:
        if source == "region_hint" and geo.region_hint_header:
            for origin in origins:
                match = {
                    "name": geo.region_hint_header,
                    "string_match": {"exact": origin, "ignore_case": True},
                }
                found.append((origin, [match]))
        elif source == "latlon_header" and trusted:
            found += latlon_matches(origins, config)
        elif source == "country_header" and trusted:
            found += _country_matches(origins, config, geo.country_headers)
        elif source == "geoip" and geoip_mapped(config):
            found += _country_matches(origins, config, [GEOIP_HEADER])
    return found


def geoip_filter(config: ConfigView) -> Json:
    """Envoy's GeoIP filter writing the client's country to GEOIP_HEADER."""
    database = config.routing.geo.geoip_database
    assert database is not None
    return {
        "name": "envoy.filters.http.geoip",
        "typed_config": {
            "@type": GEOIP_FILTER_TYPE,
            "provider": {
                "name": "envoy.geoip_providers.maxmind",
                "typed_config": {
                    "@type": MAXMIND_TYPE,
                    # A Country or City database both answer the country.
                    "country_db_path": str(database.resolve()),
                    "common_provider_config": {"geo_headers_to_add": {"country": GEOIP_HEADER}},
                },
            },
        },
    }


def clear_route_cache() -> Json:
    """Envoy picks the route before the GeoIP filter answers: pick it again after."""
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": LUA_TYPE,
            "default_source_code": {
                "inline_string": "function envoy_on_request(handle) handle:clearRouteCache() end"
            },
        },
    }


def strip_geoip_header() -> Json:
    """Removes a client's own GEOIP_HEADER before routing and before the filter runs."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": HEADER_MUTATION_TYPE,
            "mutations": [{"remove": GEOIP_HEADER}],
        },
    }
