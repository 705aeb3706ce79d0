"""Pure record building and the three text formats, each parsed back."""

from __future__ import annotations

import json
import random
from typing import Any

import dns.zone
import pytest
import yaml

from router.config import parse_config
from router.dns.formats import render
from router.dns.records import (
    ReplicaSets,
    build_records,
    next_serial,
    records_from_admin_status,
    select,
)
from router.dns.settings import DnsConfig
from router.errors import ConfigError
from router.models import Replica

APP = "b" * 40
GATEWAY = "203.0.113.5"


def replica(n: int, *, host: str | None = None, region: str = "us", weight: int = 100) -> Replica:
    host = host or f"{n:040x}-8080.dstack.example.net"
    return Replica(
        id=f"r{n}",
        url=f"https://{host}",
        scheme="https",
        host=host,
        port=443,
        region=region,
        weight=weight,
        app_id=APP,
    )


def sets(routable: list[Replica], candidates: list[Replica] | None = None) -> ReplicaSets:
    return ReplicaSets(tuple(routable), tuple(candidates if candidates is not None else routable))


CFG = DnsConfig(name="api.example.com", service="https", region="us", txt_app_address=True)


def values(records: Any, rdtype: str) -> set[str]:
    return {r.value for r in records.records if r.type == rdtype}


def test_address_records_are_deduplicated_and_a_shared_gateway_is_noted() -> None:
    replicas = [replica(1), replica(2), replica(3, host="10.0.0.3")]
    addresses = {replicas[0].host: (GATEWAY,), replicas[1].host: (GATEWAY, "2001:db8::1")}
    records = build_records(CFG, sets(replicas), addresses)
    assert values(records, "A") == {GATEWAY, "10.0.0.3"}
    assert values(records, "AAAA") == {"2001:db8::1"}
    assert any(GATEWAY in n and "r1, r2" in n and "gateway" in n for n in records.notes)


def test_srv_per_replica_with_region_priority_and_weight() -> None:
    replicas = [replica(1, region="us", weight=300), replica(2, region="eu")]
    records = build_records(CFG, sets(replicas), {})
    srv = {r.value for r in records.records if r.name == "_https._tcp.api.example.com."}
    assert srv == {
        f"10 300 443 {replicas[0].host}.",
        f"20 100 443 {replicas[1].host}.",
    }


def test_txt_app_address_uses_the_app_id_and_port_from_the_host_name() -> None:
    records = build_records(CFG, sets([replica(1)]), {})
    txt = [r for r in records.records if r.type == "TXT"]
    assert [(t.name, t.value) for t in txt] == [
        ("_dstack-app-address.api.example.com.", f'"{APP}:8080"')
    ]


def test_unhealthy_replicas_are_left_out() -> None:
    up, down = replica(1, host="10.0.0.1"), replica(2, host="10.0.0.2")
    records = build_records(CFG, sets([up], [up, down]), {})
    assert values(records, "A") == {"10.0.0.1"}


def test_when_empty_fail_open_publishes_every_candidate() -> None:
    candidates = [replica(1, host="10.0.0.1"), replica(2, host="10.0.0.2")]
    records = build_records(CFG, sets([], candidates), {})
    assert values(records, "A") == {"10.0.0.1", "10.0.0.2"}
    assert any("fail_open" in n for n in records.notes)


def test_when_empty_fail_closed_publishes_no_address() -> None:
    cfg = CFG.model_copy(update={"when_empty": "fail_closed"})
    records = build_records(cfg, sets([], [replica(1, host="10.0.0.1")]), {})
    assert values(records, "A") == set()
    assert not [r for r in records.records if r.type == "SRV"]


def test_max_records_caps_each_rrset_and_the_pick_varies_per_render() -> None:
    replicas = [replica(i, host=f"10.0.0.{i}") for i in range(1, 21)]
    cfg = CFG.model_copy(update={"max_records": 3, "service": None})
    records = build_records(cfg, sets(replicas), {})
    rng = random.Random(7)
    picks = [frozenset(values(select(records, 3, rng), "A")) for _ in range(10)]
    assert all(len(p) == 3 for p in picks)
    assert len(set(picks)) > 1
    assert any("max_records=3" in n for n in select(records, 3, rng).notes)


def test_equal_sets_compare_equal_whatever_the_serial() -> None:
    a = build_records(CFG, sets([replica(1)]), {}, serial=1)
    b = build_records(CFG, sets([replica(1)]), {}, serial=2)
    assert a == b
    assert a != build_records(CFG, sets([replica(2)]), {}, serial=1)


def test_serial_grows_even_when_the_clock_does_not() -> None:
    assert next_serial(0, 1_700_000_000.5) == 1_700_000_000
    assert next_serial(1_700_000_000, 1_700_000_000.0) == 1_700_000_001
    assert next_serial(1_700_000_005, 1_600_000_000.0) == 1_700_000_006


# -- formats parsed back ------------------------------------------------------------------


def full_zone_records() -> Any:
    cfg = CFG.model_copy(update={"zone": "example.com."})
    replicas = [replica(1), replica(2, region="eu"), replica(3, host="10.0.0.3")]
    addresses = {replicas[0].host: (GATEWAY,), replicas[1].host: (GATEWAY,)}
    return build_records(cfg, sets(replicas), addresses, serial=2024010101)


def test_zone_fragment_parses_with_dnspython() -> None:
    records = build_records(CFG, sets([replica(1, host="10.0.0.1")]), {})
    text = render(records, "zone")
    zone = dns.zone.from_text(text, origin="example.com.", relativize=False, check_origin=False)
    a = zone.find_rdataset("api.example.com.", "A")
    assert {r.to_text() for r in a} == {"10.0.0.1"}
    assert a.ttl == 30


def test_full_zone_has_soa_ns_and_the_serial() -> None:
    text = render(full_zone_records(), "zone")
    assert "; " + GATEWAY in text  # the shared-gateway note is a zone comment
    zone = dns.zone.from_text(text, origin="example.com.", relativize=False)
    soa = zone.find_rdataset("example.com.", "SOA")[0]
    assert soa.serial == 2024010101
    ns = zone.find_rdataset("example.com.", "NS")
    assert {r.to_text() for r in ns} == {"ns1.example.com."}
    a = zone.find_rdataset("api.example.com.", "A")
    assert {r.to_text() for r in a} == {GATEWAY, "10.0.0.3"}
    srv = zone.find_rdataset("_https._tcp.api.example.com.", "SRV")
    assert {(r.priority, r.target.to_text()) for r in srv} == {
        (10, f"{replica(1).host}."),
        (20, f"{replica(2).host}."),
    }
    txt = zone.find_rdataset("_dstack-app-address.api.example.com.", "TXT")[0]
    assert txt.strings == (f"{APP}:8080".encode(),)


def test_json_is_a_list_of_name_type_ttl_value() -> None:
    records = full_zone_records()
    rows = json.loads(render(records, "json"))
    assert all(set(row) == {"name", "type", "ttl", "value"} for row in rows)
    types = {row["type"] for row in rows}
    assert types == {"SOA", "NS", "A", "SRV", "TXT"}
    assert {row["value"] for row in rows if row["type"] == "A"} == {GATEWAY, "10.0.0.3"}


def test_octodns_yaml_loads_with_relative_names() -> None:
    records = full_zone_records()
    text = render(records, "octodns")
    doc = yaml.safe_load(text)
    assert set(doc) == {"api", "_https._tcp.api", "_dstack-app-address.api"}
    assert doc["api"]["type"] == "A"
    assert doc["api"]["ttl"] == 30
    assert set(doc["api"]["values"]) == {GATEWAY, "10.0.0.3"}
    srv = doc["_https._tcp.api"]
    assert srv["type"] == "SRV"
    assert {v["target"] for v in srv["values"]} == {f"{replica(1).host}.", f"{replica(2).host}."}
    assert doc["_dstack-app-address.api"]["values"] == [f"{APP}:8080"]


def test_octodns_lists_several_types_at_one_name() -> None:
    replicas = [replica(1, host="10.0.0.1"), replica(2, host="2001:db8::2")]
    doc = yaml.safe_load(render(build_records(CFG, sets(replicas), {}), "octodns"))
    assert {entry["type"] for entry in doc["api"]} == {"A", "AAAA"}


def test_render_rejects_an_unknown_format() -> None:
    records = build_records(CFG, sets([]), {})
    with pytest.raises(ValueError, match="zone, json, octodns"):
        render(records, "bind")  # type: ignore[arg-type]


# -- admin /status and config -------------------------------------------------------------


def test_records_from_admin_status() -> None:
    status = {
        "app_id": APP,
        "replicas": [
            {"id": "a", "url": "https://10.0.0.1", "host": "10.0.0.1", "port": 443,
             "region": "us", "weight": 100, "routable": True, "platform_status": "running"},
            {"id": "b", "url": "https://10.0.0.2", "host": "10.0.0.2", "port": 443,
             "region": "eu", "weight": 100, "routable": False, "platform_status": "running"},
            {"id": "c", "url": "https://10.0.0.3", "host": "10.0.0.3", "port": 443,
             "routable": False, "platform_status": "stopped"},
        ],
    }  # fmt: skip
    parsed = records_from_admin_status(status)
    assert [r.id for r in parsed.routable] == ["a"]
    assert [r.id for r in parsed.candidates] == ["a", "b"]
    assert parsed.app_id == APP
    with pytest.raises(ValueError, match=r"replicas\[0\]"):
        records_from_admin_status({"replicas": [{"id": "x"}]})
    with pytest.raises(ValueError, match="'replicas'"):
        records_from_admin_status({"detail": "unauthorized"})


def base_config(dns_section: dict[str, Any]) -> dict[str, Any]:
    return {"discovery": {"static": [{"id": "a", "url": "https://10.0.0.1"}]}, "dns": dns_section}


def test_config_normalises_names_and_defaults() -> None:
    cfg = parse_config(base_config({"name": "API.Example.com", "service": "_HTTPS"}), {}).dns
    assert cfg.name == "api.example.com."
    assert cfg.service == "https"
    assert (cfg.ttl, cfg.max_records, cfg.when_empty) == (30, 8, "fail_open")
    assert cfg.apex == "api.example.com."


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"name": "api.example.com", "zone": "other.org"}, "not inside dns.zone"),
        ({"sinks": [{"type": "file", "path": "/tmp/x"}]}, "dns.name is required"),
        ({"name": "api.example.com", "when_empty": "maybe"}, "fail_open"),
        ({"name": "api.example.com", "nameservers": ["dns.google"]}, "IP address"),
        ({"name": "com"}, "at least two labels"),
        (
            {"name": "a.example.com", "sinks": [{"type": "rfc2136", "server": "127.0.0.1:53",
             "zone": "example.com", "tsig_key_name": "k"}]},
            "tsig_secret_env",
        ),
        ({"name": "a.example.com", "sinks": [{"type": "ftp"}]}, "file"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(base_config(section), {})
    assert "dns" in str(caught.value)
