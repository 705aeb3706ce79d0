"""Geo routing's client location under Envoy: latitude/longitude headers from a trusted
proxy and GeoIP (a MaxMind file, through Envoy's GeoIP filter) pick the nearest region's
replica, as the Python engines' locator does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.proxy.envoy.geo import GEOIP_HEADER, cells
from tests.envoy_support import require_envoy
from tests.support import running_replica, running_router
from tests.test_envoy_engine import envoy_config
from tests.test_geo import write_mmdb

PARIS = {"CloudFront-Viewer-Latitude": "48.85", "CloudFront-Viewer-Longitude": "2.35"}
NEW_YORK = {"CloudFront-Viewer-Latitude": "40.71", "CloudFront-Viewer-Longitude": "-74.0"}


@settings(max_examples=300, deadline=None)
@given(
    degrees=st.floats(min_value=-180, max_value=180, allow_nan=False),
    shape=st.sampled_from(["{:.2f}", "{:.0f}", "{:.5f}", "{}"]),
)
def test_every_longitude_falls_in_exactly_one_cell_near_its_value(
    degrees: float, shape: str
) -> None:
    text = shape.format(degrees)
    if "e" in text:  # exponent notation is not matched (such clients go to the default)
        return
    found = [centre for regex, centre in cells(180) if re.fullmatch(regex, text)]
    assert len(found) == 1
    assert abs(found[0] - float(text)) <= 10


def test_out_of_range_latitudes_match_no_cell() -> None:
    for text in ("90.5", "91", "-95", "100"):
        assert not any(re.fullmatch(regex, text) for regex, _ in cells(90))
    assert any(re.fullmatch(regex, "90.0") for regex, _ in cells(90))


def geo_config(replicas: list[tuple[str, str]], **geo: Any) -> dict[str, Any]:
    config = envoy_config(
        replicas,
        routing={"policy": "geo", "geo": geo},
        proxy={"trusted_proxies": ["127.0.0.1/32"]},
    )
    regions = {"eu": "eu-west-1", "us": "us-east-1"}
    for entry in config["discovery"]["static"]:
        entry["region"] = regions[entry["id"]]
    return config


async def replica_for(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    async with client.get(f"{url}/x", headers=headers) as response:
        assert response.status == 200
        answer = await response.json()
        assert GEOIP_HEADER not in {k.lower() for k in answer["headers"]}  # Envoy's own note
        replica: str = answer["replica"]
        return replica


@pytest.mark.parametrize(
    ("source", "europe", "america"),
    [
        ("latlon_header", PARIS, NEW_YORK),
        ("country_header", {"CF-IPCountry": "FR"}, {"CF-IPCountry": "us"}),
    ],
)
async def test_locations_from_a_trusted_proxy_pick_the_nearest_region(
    source: str, europe: dict[str, str], america: dict[str, str]
) -> None:
    require_envoy()
    async with running_replica("eu") as eu, running_replica("us") as us:
        replicas = [("eu", f"http://127.0.0.1:{eu.port}"), ("us", f"http://127.0.0.1:{us.port}")]
        config = geo_config(replicas, client_location=[source])
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            for _ in range(4):
                assert await replica_for(client, router.url, europe) == "eu"
                assert await replica_for(client, router.url, america) == "us"


async def test_geoip_with_a_maxmind_file_routes_by_the_clients_country(tmp_path: Path) -> None:
    require_envoy()
    database = tmp_path / "country.mmdb"
    write_mmdb(database, 127, {"country": {"iso_code": "FR"}})  # every 127/8 client: France
    async with running_replica("eu") as eu, running_replica("us") as us:
        replicas = [("eu", f"http://127.0.0.1:{eu.port}"), ("us", f"http://127.0.0.1:{us.port}")]
        config = geo_config(replicas, client_location=["geoip"], geoip_database=str(database))
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            for _ in range(4):
                assert await replica_for(client, router.url, {}) == "eu"
                # a client cannot claim another country through the filter's own header
                assert await replica_for(client, router.url, {GEOIP_HEADER: "US"}) == "eu"


@pytest.mark.parametrize("source", ["latlon_header", "country_header"])
async def test_header_locations_from_untrusted_peers_are_ignored(source: str) -> None:
    require_envoy()
    async with running_replica("eu") as eu, running_replica("us") as us:
        replicas = [("eu", f"http://127.0.0.1:{eu.port}"), ("us", f"http://127.0.0.1:{us.port}")]
        config = geo_config(replicas, client_location=[source], default_region="us-east-1")
        config["proxy"]["trusted_proxies"] = ["10.0.0.0/8"]  # not this client
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            headers = PARIS | {"CF-IPCountry": "FR"}
            assert await replica_for(client, router.url, headers) == "us"
