"""Client location sources, the shipped tables, distances and GeoIP backends."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from router.balancing.locate import FastGeoIP, Locator, MaxMindGeoIP
from router.balancing.regions import (
    Point,
    country_table,
    haversine_km,
    region_coordinates,
    region_table,
)
from router.balancing.settings import GeoConfig, RoutingConfig
from router.config import parse_config
from router.errors import ConfigError
from tests.balancing_support import FakeGeoIP, ctx


def test_haversine_matches_known_distances() -> None:
    london, paris = Point(51.5074, -0.1278), Point(48.8566, 2.3522)
    assert haversine_km(london, paris) == pytest.approx(344, abs=3)
    new_york, sydney = Point(40.7128, -74.0060), Point(-33.8688, 151.2093)
    assert haversine_km(new_york, sydney) == pytest.approx(15990, rel=0.01)
    assert haversine_km(paris, paris) == 0
    # Antipodes: half the circumference, no math domain error.
    assert haversine_km(Point(0, 0), Point(0, 180)) == pytest.approx(20015, rel=0.001)


def test_the_country_table_covers_every_country_with_sane_coordinates() -> None:
    table = country_table()
    assert len(table) >= 240
    for code in ("US", "DE", "JP", "BR", "IN", "AU", "ZA", "SG", "CN", "RU"):
        assert code in table
    for point in table.values():
        assert -90 <= point.lat <= 90
        assert -180 <= point.lon <= 180
    # Multi-zone countries sit where most users are, not at a geometric centre.
    assert haversine_km(table["RU"], Point(55.75, 37.62)) < 50  # Moscow
    assert haversine_km(table["CA"], Point(43.65, -79.38)) < 50  # Toronto


def test_region_lookup_table_overrides_country_codes_and_numbered_ids() -> None:
    table = region_table()
    for region in ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"):
        assert region in table
    assert region_coordinates("US_EAST_1") == table["us-east-1"]
    assert region_coordinates("sg") == country_table()["SG"]
    assert region_coordinates("eu-west-7") == table["eu-west"]
    assert region_coordinates("mars-1") is None
    overrides = GeoConfig.model_validate({"regions": {"Mars-1": {"lat": 1, "lon": 2}}}).regions
    assert region_coordinates("mars-1", overrides) == Point(1, 2)
    assert region_coordinates("us-east-1", {"us-east-1": overrides["mars-1"]}) == Point(1, 2)


def locator(data: dict[str, Any] | None = None, geoip: FakeGeoIP | None = None) -> Locator:
    return Locator(GeoConfig.model_validate(data or {}), geoip)


def test_sources_are_tried_in_the_configured_order() -> None:
    geoip = FakeGeoIP({"198.51.100.1": "FR"})
    headers = {"CF-IPCountry": "JP", "X-Preferred-Region": "us-west-2"}
    default = locator(geoip=geoip).locate(ctx("198.51.100.1", headers, trusted=True))
    assert default is not None
    assert (default.label, default.via) == ("us-west-2", "hint")
    geoip_first = locator({"client_location": ["geoip", "country_header"]}, geoip)
    found = geoip_first.locate(ctx("198.51.100.1", headers, trusted=True))
    assert found is not None
    assert (found.label, found.via) == ("FR", "geoip")


def test_trusted_headers_need_a_trusted_peer_and_valid_values() -> None:
    loc = locator(geoip=None)
    headers = {"CloudFront-Viewer-Country": "br"}
    assert loc.locate(ctx(headers=headers, trusted=False)) is None
    found = loc.locate(ctx(headers=headers, trusted=True))
    assert found is not None
    assert found.key == "cc:BR|header CloudFront-Viewer-Country"
    for junk in ("XX", "T1", "ZZ", ""):
        assert loc.locate(ctx(headers={"CF-IPCountry": junk}, trusted=True)) is None
    bad_latlon = {"CloudFront-Viewer-Latitude": "95", "CloudFront-Viewer-Longitude": "10"}
    assert loc.locate(ctx(headers=bad_latlon, trusted=True)) is None
    nan = {"CloudFront-Viewer-Latitude": "nan", "CloudFront-Viewer-Longitude": "10"}
    assert loc.locate(ctx(headers=nan, trusted=True)) is None
    good = {"CloudFront-Viewer-Latitude": "48.137", "CloudFront-Viewer-Longitude": "11.575"}
    found = loc.locate(ctx(headers=good, trusted=True))
    assert found is not None
    assert found.key == "ll:48.1,11.6|header"


def test_custom_header_names() -> None:
    loc = locator({"country_headers": ["X-Geo-Country"], "region_hint_header": "X-Region"})
    found = loc.locate(ctx(headers={"X-Geo-Country": "KR"}, trusted=True))
    assert found is not None
    assert found.label == "KR"
    found = loc.locate(ctx(headers={"X-Region": "eu-north-1"}))
    assert found is not None
    assert found.label == "eu-north-1"


def test_the_embedded_geoip_database_works_offline() -> None:
    geoip = FastGeoIP()
    assert geoip.lookup("8.8.8.8")[0] == "US"
    assert geoip.lookup("81.2.69.142")[0] == "GB"
    assert geoip.lookup("2a00:1450:4001::1")[0] == "DE"
    assert geoip.lookup("127.0.0.1") == (None, None)
    assert geoip.lookup("10.1.2.3") == (None, None)
    assert geoip.lookup("not-an-ip") == (None, None)
    # A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 addresses.
    found = Locator(GeoConfig(), geoip).locate(ctx("::ffff:81.2.69.142"))
    assert found is not None
    assert found.label == "GB"


# A minimal MaxMind DB writer (format spec: maxmind.github.io/MaxMind-DB), enough to test
# that a real .mmdb file is read: one IPv4 /8 network mapped to a City-style record.
def _mmdb_value(value: Any) -> bytes:
    if isinstance(value, dict):
        out = bytes([0xE0 | len(value)])
        for key, item in value.items():
            out += _mmdb_value(key) + _mmdb_value(item)
        return out
    if isinstance(value, str):
        raw = value.encode()
        return bytes([0x40 | len(raw)]) + raw
    if isinstance(value, float):
        return bytes([0x68]) + struct.pack(">d", value)
    if isinstance(value, list):
        return bytes([len(value), 4]) + b"".join(_mmdb_value(v) for v in value)
    if isinstance(value, tuple):  # (type, int): unsigned integers
        kind: int = value[0]
        number: int = value[1]
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        if kind == 9:  # uint64 is an extended type
            return bytes([len(raw), 2]) + raw
        return bytes([(kind << 5) | len(raw)]) + raw
    raise TypeError(value)


def write_mmdb(path: Path, first_octet: int, record: dict[str, Any]) -> None:
    node_count = 8
    data = _mmdb_value(record)
    tree = b""
    for depth in range(8):
        bit = (first_octet >> (7 - depth)) & 1
        onward = depth + 1 if depth < 7 else node_count + 16  # data offset 0
        left, right = (onward, node_count) if bit == 0 else (node_count, onward)
        tree += left.to_bytes(3, "big") + right.to_bytes(3, "big")
    metadata = {
        "node_count": (6, node_count),
        "record_size": (5, 24),
        "ip_version": (5, 4),
        "database_type": "Test-City",
        "languages": ["en"],
        "binary_format_major_version": (5, 2),
        "binary_format_minor_version": (5, 0),
        "build_epoch": (9, 1700000000),
        "description": {"en": "router test"},
    }
    blob = tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + _mmdb_value(metadata)
    path.write_bytes(blob)


def test_a_maxmind_city_database_gives_country_and_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    record = {"country": {"iso_code": "DE"}, "location": {"latitude": 48.14, "longitude": 11.58}}
    write_mmdb(path, 81, record)
    geoip = MaxMindGeoIP(path)
    assert geoip.lookup("81.2.3.4") == ("DE", Point(48.14, 11.58))
    assert geoip.lookup("82.2.3.4") == (None, None)
    assert geoip.lookup("garbage") == (None, None)
    found = Locator(GeoConfig(), geoip).locate(ctx("81.9.9.9"))
    assert found is not None
    assert found.label == "DE (48.1,11.6)"
    assert found.via == "geoip"


def test_a_broken_mmdb_file_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.mmdb"
    path.write_bytes(b"this is not a MaxMind database")
    with pytest.raises(ConfigError, match=r"routing.geo.geoip_database: .* not a readable"):
        MaxMindGeoIP(path)


def base(routing: dict[str, Any]) -> dict[str, Any]:
    return {"discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:9"}]}, "routing": routing}


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"policy": "nearest"}, "routing.policy"),
        ({"geo": {"default_region": "atlantis"}}, "default_region 'atlantis' has no known"),
        ({"geo": {"client_location": ["geoip", "geoip"]}}, "sources listed twice: geoip"),
        ({"geo": {"client_location": ["gps"]}}, "routing.geo.client_location[0]"),
        ({"geo": {"country_headers": ["bad header"]}}, "not an HTTP header name"),
        ({"geo": {"overprovisioning": 0.5}}, "routing.geo.overprovisioning"),
        ({"geo": {"regions": {"x": {"lat": 91, "lon": 0}}}}, "routing.geo.regions.x.lat"),
        ({"geo": {"geoip_database": "/nonexistent.mmdb"}}, "not a readable file"),
        ({"sticky": {"mode": "cookie", "key_env": "not a name"}}, "environment variable name"),
        ({"sticky": {"cookie_name": "a b"}}, "not a cookie name"),
        ({"compose_hashes": ["abc"]}, "64 hex digits"),
    ],
)
def test_bad_routing_config_names_the_field_and_what_is_allowed(
    routing: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(base(routing), environ={})
    assert message in str(caught.value)


def test_a_full_routing_section_parses() -> None:
    routing = {
        "policy": "geo",
        "debug_headers": True,
        "compose_hashes": ["0x" + "AB" * 32],
        "geo": {
            "client_location": ["country_header", "geoip"],
            "region_hint_header": None,
            "default_region": "US-EAST-1",
            "regions": {"Lab_1": {"lat": 1.5, "lon": 2.5}},
            "within_region": "least_request",
        },
        "sticky": {"mode": "cookie", "key_env": "ROUTER_STICKY_KEY"},
    }
    cfg = parse_config(base(routing), environ={}).routing
    assert isinstance(cfg, RoutingConfig)
    assert cfg.compose_hashes == ("ab" * 32,)
    assert cfg.geo.default_region == "us-east-1"
    assert "lab-1" in cfg.geo.regions
    assert cfg.geo.region_hint_header is None


@pytest.mark.parametrize(
    "module",
    ["router.balancing.locate", "router.balancing", "router.balancing.geo", "router.config"],
)
def test_modules_import_on_their_own(module: str) -> None:
    # Import cycles only show when a module is imported first, in a fresh interpreter.
    import subprocess
    import sys

    code = f"import {module}; from router.balancing import make_picker_factory"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_documented_routing_section_is_valid_config() -> None:
    # router/balancing/README.md's YAML block parses as is (YAML reads `mode: off` as false).
    import re

    import yaml

    readme = Path(__file__).parent.parent / "router" / "balancing" / "README.md"
    match = re.search(r"```yaml\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    assert match is not None
    cfg = parse_config({**base({}), **yaml.safe_load(match.group(1))}, environ={}).routing
    assert cfg.policy == "geo"
    assert cfg.sticky.mode == "off"
