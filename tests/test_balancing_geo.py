"""The geo policy: nearest region, Envoy spill-over, failover, unknown locations."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.balancing.base import Member
from router.balancing.geo import level_health, priority_loads
from router.balancing.regions import Point
from tests.balancing_support import (
    FakeGeoIP,
    count_regions,
    ctx,
    factory,
    first,
    members,
    replica,
    shares,
)

THREE = {"us-east-1": 3, "eu-central-1": 3, "ap-southeast-1": 3}
GEO = {"policy": "geo"}


@pytest.mark.parametrize(
    ("country", "region"),
    [
        ("DE", "eu-central-1"),
        ("FR", "eu-central-1"),
        ("GB", "eu-central-1"),
        ("US", "us-east-1"),
        ("CA", "us-east-1"),
        ("BR", "us-east-1"),
        ("JP", "ap-southeast-1"),
        ("IN", "ap-southeast-1"),
        ("AU", "ap-southeast-1"),
    ],
)
def test_a_client_goes_to_the_nearest_region_by_country(country: str, region: str) -> None:
    picker = factory(GEO)(members(THREE), {})
    header = {"CF-IPCountry": country}
    for _ in range(5):
        assert first(picker, ctx(headers=header, trusted=True)).region == region


def test_geoip_locates_the_client_address() -> None:
    geoip = FakeGeoIP({"203.0.113.1": "JP", "198.51.100.1": "DE"})
    picker = factory(GEO, geoip=geoip)(members(THREE), {})
    assert first(picker, ctx("203.0.113.1")).region == "ap-southeast-1"
    assert first(picker, ctx("198.51.100.1")).region == "eu-central-1"


def test_country_headers_from_an_untrusted_peer_are_ignored() -> None:
    geoip = FakeGeoIP({"198.51.100.1": "DE"})
    picker = factory(GEO, geoip=geoip)(members(THREE), {})
    spoofed = {"CF-IPCountry": "JP", "CloudFront-Viewer-Latitude": "35.6"}
    assert first(picker, ctx("198.51.100.1", spoofed, trusted=False)).region == "eu-central-1"
    assert first(picker, ctx("198.51.100.1", spoofed, trusted=True)).region == "ap-southeast-1"


def test_latitude_longitude_headers_beat_the_country() -> None:
    picker = factory(GEO)(members(THREE), {})
    # A US visitor in Hawaii's neighbourhood is still nearer Virginia than Singapore, but
    # one in Tokyo (by coordinates) is nearer Singapore whatever the country says.
    headers = {
        "CF-IPCountry": "US",
        "CloudFront-Viewer-Latitude": "35.68",
        "CloudFront-Viewer-Longitude": "139.69",
    }
    assert first(picker, ctx(headers=headers, trusted=True)).region == "ap-southeast-1"


def test_the_region_hint_is_honoured_from_anyone_and_can_be_disabled() -> None:
    geoip = FakeGeoIP({"198.51.100.1": "DE"})
    hint = {"X-Preferred-Region": "AP-SOUTHEAST-1"}
    picker = factory(GEO, geoip=geoip)(members(THREE), {})
    assert first(picker, ctx("198.51.100.1", hint)).region == "ap-southeast-1"
    off = factory({"policy": "geo", "geo": {"region_hint_header": None}}, geoip=geoip)
    assert first(off(members(THREE), {}), ctx("198.51.100.1", hint)).region == "eu-central-1"
    # A hint naming no known region is ignored rather than trusted.
    bogus = {"X-Preferred-Region": "atlantis-9"}
    assert first(picker, ctx("198.51.100.1", bogus)).region == "eu-central-1"


def test_the_explanation_names_client_source_region_and_distance() -> None:
    picker = factory({"policy": "geo", "debug_headers": True})(members(THREE), {})
    context = ctx(headers={"CF-IPCountry": "DE"}, trusted=True)
    first(picker, context)
    assert context.explanation.startswith(
        "geo: client=DE via header CF-IPCountry -> eu-central-1 ("
    )
    assert context.explanation.endswith(" km)")
    km = int(context.explanation.rsplit("(", 1)[1].split()[0])
    assert 350 < km < 450  # Berlin to Frankfurt
    assert ("X-Router-Route", context.explanation) in context.response_headers


def test_no_debug_header_unless_enabled() -> None:
    picker = factory(GEO)(members(THREE), {})
    context = ctx(headers={"CF-IPCountry": "DE"}, trusted=True)
    first(picker, context)
    assert context.explanation
    assert context.response_headers == []


@pytest.mark.parametrize(
    ("healthy", "expected_local"),
    [(10, 1.0), (8, 1.0), (6, 0.84), (4, 0.56), (0, 0.0)],
)
def test_spill_over_follows_envoy_priority_load(healthy: int, expected_local: float) -> None:
    # Envoy: health = min(100%, 1.4 x healthy/total); the nearest level keeps that share
    # while the next level is fully healthy and takes the rest.
    assert priority_loads([level_health(healthy, 10, 1.4), 1.0])[0] == pytest.approx(expected_local)
    spec = {"eu-central-1": healthy, "us-east-1": 10}
    picker = factory(GEO)(members(spec, totals={"eu-central-1": 10}), {})
    n = 20000
    counts = count_regions(picker, lambda: ctx(headers={"CF-IPCountry": "DE"}, trusted=True), n)
    local, remote = shares(counts, ["eu-central-1", "us-east-1"])
    assert local == pytest.approx(expected_local, abs=0.015)
    assert local + remote == pytest.approx(1.0)


def test_spill_over_goes_to_the_next_nearest_region_first() -> None:
    spec = {"eu-central-1": 4, "eu-west-2": 10, "us-east-1": 10}
    picker = factory(GEO)(members(spec, totals={"eu-central-1": 10}), {})
    counts = count_regions(picker, lambda: ctx(headers={"CF-IPCountry": "DE"}, trusted=True), 10000)
    local, london, virginia = shares(counts, ["eu-central-1", "eu-west-2", "us-east-1"])
    assert local == pytest.approx(0.56, abs=0.02)
    assert london == pytest.approx(0.44, abs=0.02)
    assert virginia == 0


def test_when_every_level_is_degraded_load_is_normalised() -> None:
    # 2/10 and 3/10 healthy: health 28% and 42%, normalised to 40% / 60%.
    loads = priority_loads([level_health(2, 10, 1.4), level_health(3, 10, 1.4)])
    assert loads == pytest.approx([0.4, 0.6])
    spec = {"eu-central-1": 2, "us-east-1": 3}
    picker = factory(GEO)(members(spec, totals={"eu-central-1": 10, "us-east-1": 10}), {})
    counts = count_regions(picker, lambda: ctx(headers={"CF-IPCountry": "DE"}, trusted=True), 10000)
    assert shares(counts, ["eu-central-1", "us-east-1"]) == pytest.approx([0.4, 0.6], abs=0.02)


def test_an_empty_region_fails_over_completely_and_failover_covers_everyone() -> None:
    # Frankfurt has no routable replica (they are all down): it is not a level at all.
    spec = {"us-east-1": 2, "ap-southeast-1": 2}
    picker = factory(GEO)(members(spec, totals={"eu-central-1": 3}), {})
    context = ctx(headers={"CF-IPCountry": "DE"}, trusted=True)
    order = [r.id for r in picker.candidates(context)]
    assert [o.split("-")[0] for o in order[:2]] == ["us", "us"]
    assert sorted(order) == sorted(m.replica.id for m in members(spec))
    assert "us-east-1" in context.explanation


def test_failover_walks_the_region_then_the_next_regions_by_distance() -> None:
    picker = factory(GEO)(members(THREE), {})
    order = [r.region for r in picker.candidates(ctx(headers={"CF-IPCountry": "DE"}, trusted=True))]
    assert order == ["eu-central-1"] * 3 + ["us-east-1"] * 3 + ["ap-southeast-1"] * 3


def test_unknown_location_uses_the_default_region() -> None:
    cfg = {"policy": "geo", "geo": {"default_region": "ap-southeast-1"}}
    picker = factory(cfg)(members(THREE), {})
    context = ctx("192.0.2.99")
    assert first(picker, context).region == "ap-southeast-1"
    assert "default_region" in context.explanation


def test_unknown_location_without_default_is_round_robin_over_all() -> None:
    picker = factory(GEO)(members(THREE), {})
    counts = count_regions(picker, lambda: ctx("192.0.2.99"), 900)
    assert counts == {"us-east-1": 300, "eu-central-1": 300, "ap-southeast-1": 300}
    context = ctx("192.0.2.99")
    first(picker, context)
    assert context.explanation == "geo: client location unknown -> round-robin over all regions"


def test_an_unknown_replica_region_is_warned_once_and_ranked_farthest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = {"moon-base-1": 3, "us-east-1": 1}
    build = factory(GEO)
    with caplog.at_level(logging.WARNING, logger="router.balancing.geo"):
        picker = build(members(spec), {})
        build(members(spec), {})  # a second snapshot does not warn again
    warnings = [r for r in caplog.records if "moon-base-1" in r.getMessage()]
    assert len(warnings) == 1
    order = [r.region for r in picker.candidates(ctx(headers={"CF-IPCountry": "JP"}, trusted=True))]
    assert order == ["us-east-1", "moon-base-1", "moon-base-1", "moon-base-1"]


def test_region_overrides_and_country_code_regions() -> None:
    # "lab" is placed in Tokyo by config; "de" resolves through the country table.
    cfg = {"policy": "geo", "geo": {"regions": {"LAB": {"lat": 35.7, "lon": 139.7}}}}
    picker = factory(cfg)(members({"lab": 1, "de": 1}), {})
    assert first(picker, ctx(headers={"CF-IPCountry": "KR"}, trusted=True)).region == "lab"
    assert first(picker, ctx(headers={"CF-IPCountry": "PL"}, trusted=True)).region == "de"


def test_least_request_within_the_region() -> None:
    cfg = {"policy": "geo", "geo": {"within_region": "least_request"}}
    spec = {"eu-central-1": 2, "us-east-1": 2}
    busy = {"eu-central-1-0": 50}
    picker = factory(cfg)(members(spec), busy)
    for _ in range(50):
        chosen = first(picker, ctx(headers={"CF-IPCountry": "DE"}, trusted=True))
        assert chosen.id == "eu-central-1-1"


def test_a_replica_without_region_is_still_served() -> None:
    only = [Member(replica("solo"), 100.0)]
    picker = factory(GEO)(only, {})
    assert first(picker, ctx(headers={"CF-IPCountry": "DE"}, trusted=True)).id == "solo"


def test_no_members_yields_nothing() -> None:
    picker = factory(GEO)([], {})
    assert list(picker.candidates(ctx(headers={"CF-IPCountry": "DE"}, trusted=True))) == []


def test_geoip_coordinates_from_a_city_database_are_used() -> None:
    geoip = FakeGeoIP({"198.51.100.7": Point(1.3, 103.8)})
    picker = factory(GEO, geoip=geoip)(members(THREE), {})
    context = ctx("198.51.100.7")
    assert first(picker, context).region == "ap-southeast-1"
    assert "via geoip" in context.explanation


def test_a_spilled_request_says_why() -> None:
    spec = {"eu-central-1": 3, "us-east-1": 10}
    picker = factory(GEO)(members(spec, totals={"eu-central-1": 10}), {})
    explanations = set()
    for _ in range(200):
        context = ctx(headers={"CF-IPCountry": "DE"}, trusted=True)
        first(picker, context)
        explanations.add(context.explanation.split(" -> ")[1])
    assert any(e.startswith("eu-central-1 (") for e in explanations)
    assert any(
        e.startswith("us-east-1 (") and e.endswith("spill-over from eu-central-1 (3/10 routable)")
        for e in explanations
    )


@pytest.mark.parametrize(
    ("healthy_percent", "local_percent"),
    # The worked examples of Envoy's priority-level documentation (overprovisioning 1.4).
    [(100, 100), (72, 100), (71, 99.4), (50, 70), (25, 35), (0, 0)],
)
def test_priority_loads_match_envoys_table(healthy_percent: int, local_percent: float) -> None:
    loads = priority_loads([level_health(healthy_percent, 100, 1.4), 1.0])
    assert loads[0] * 100 == pytest.approx(local_percent)
    assert sum(loads) == pytest.approx(1.0)


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8))
def test_priority_loads_are_a_distribution_in_level_order(health: list[float]) -> None:
    loads = priority_loads(health)
    if sum(health) == 0:
        assert loads == [0.0] * len(health)
        return
    assert sum(loads) == pytest.approx(1.0)
    assert all(load >= 0 for load in loads)
    # A level only gets load beyond its own health share when the total is degraded.
    normalised = min(1.0, sum(health))
    for load, value in zip(loads, health, strict=True):
        assert load <= value / normalised + 1e-9


def test_the_explanation_follows_the_source_of_each_request() -> None:
    # Same country, different sources: each request is explained by its own source.
    picker = factory(GEO, geoip=FakeGeoIP({"198.51.100.1": "DE"}))(members(THREE), {})
    by_header = ctx(headers={"CF-IPCountry": "DE"}, trusted=True)
    by_geoip = ctx("198.51.100.1")
    first(picker, by_header)
    first(picker, by_geoip)
    assert "via header CF-IPCountry" in by_header.explanation
    assert "client=DE via geoip" in by_geoip.explanation
