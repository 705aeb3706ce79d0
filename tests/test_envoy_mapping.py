"""The snapshot -> Envoy resources mapping, tested without sockets or an Envoy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import RouterConfig, parse_config
from router.discovery.static import static_replicas
from router.errors import ConfigError
from router.models import HealthView, Replica, ReplicaState
from router.proxy.envoy.files import ResourceFiles
from router.proxy.envoy.listeners import listeners
from router.proxy.envoy.resources import (
    MAIN_CLUSTER,
    Json,
    clusters_and_endpoints,
    geo_cluster,
)
from router.proxy.envoy.routes import all_routes, route_configuration
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot

HEALTHY = HealthView(ReplicaState.HEALTHY, healthy_since=0.0)
UNHEALTHY = HealthView(ReplicaState.UNHEALTHY)


def config(**sections: Any) -> RouterConfig:
    replicas = sections.pop(
        "replicas",
        [
            {"id": "a", "url": "https://a.example.com", "region": "us-east-1"},
            {"id": "b", "url": "http://10.0.0.2:8080", "region": "eu-west-1", "weight": 50},
            {"id": "c", "url": "https://c.example.com:8443", "region": "ap-southeast-1"},
        ],
    )
    proxy = {"engine": "envoy", **sections.pop("proxy", {})}
    return parse_config({"discovery": {"static": replicas}, "proxy": proxy, **sections}, {})


def snapshot_of(
    cfg: RouterConfig,
    health: dict[str, HealthView] | None = None,
    drained: frozenset[str] = frozenset(),
) -> Snapshot:
    from router.compose import policy_from_config

    assert cfg.discovery.static is not None
    replicas = static_replicas(cfg.discovery.static)
    views = {r.id: HEALTHY for r in replicas} | (health or {})
    policy: Policy = policy_from_config(cfg, {"STICKY": "k" * 32})
    return build_snapshot(
        version=1,
        now=10.0,
        replicas=replicas,
        health=views,
        verdicts={},
        policy=policy,
        overrides=Overrides(drained=drained),
        in_flight={},
    )


def dial(replica: Replica) -> tuple[str, int]:
    return "192.0.2.1", replica.port


def app_routes_of(route_config: Json) -> list[Json]:
    """The routes of the only virtual host, without the 413 ones every host starts with."""
    routes: list[Json] = route_config["virtual_hosts"][0]["routes"]
    return [r for r in routes if r.get("direct_response", {}).get("status") != 413]


def resources(cfg: RouterConfig, snap: Snapshot) -> tuple[list[Json], list[Json]]:
    return clusters_and_endpoints(snap, cfg, dial, lambda name: {"ads": {}, "name": name})


def endpoints_of(assignment: Json) -> dict[str, Json]:
    return {
        ep["metadata"]["filter_metadata"]["phala.router"]["replica"]: ep | {"locality": loc}
        for loc in assignment["endpoints"]
        for ep in loc["lb_endpoints"]
    }


def test_endpoints_are_the_routable_set_with_weights_regions_and_host_names() -> None:
    cfg = config()
    snap = snapshot_of(cfg, health={"c": UNHEALTHY}, drained=frozenset({"a"}))
    _, assignments = resources(cfg, snap)
    main = endpoints_of(assignments[0])
    assert set(main) == {"b"}  # a drained, c failing health
    b = main["b"]
    assert b["load_balancing_weight"] == 50
    assert b["locality"]["locality"] == {"region": "eu-west-1"}
    assert b["endpoint"]["hostname"] == "10.0.0.2:8080"
    assert b["endpoint"]["address"]["socket_address"] == {
        "address": "192.0.2.1",
        "port_value": 8080,
    }


def test_https_replicas_get_sni_and_certificate_name_of_their_host() -> None:
    cfg = config()
    clusters, assignments = resources(cfg, snapshot_of(cfg))
    main = endpoints_of(assignments[0])
    assert main["a"]["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "tls_host": "a.example.com"
    }
    assert main["b"]["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {}
    matches = {m["name"]: m for m in clusters[0]["transport_socket_matches"]}
    tls = matches["tls-c.example.com"]["transport_socket"]["typed_config"]
    assert tls["sni"] == "c.example.com"
    sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "DNS", "matcher": {"exact": "c.example.com"}}]
    assert matches["tls-c.example.com"]["match"] == {"tls_host": "c.example.com"}
    assert list(matches)[-1] == "plain"


def test_verification_off_sends_sni_but_checks_nothing() -> None:
    cfg = config(upstream_tls={"verify": False})
    clusters, _ = resources(cfg, snapshot_of(cfg))
    tls = clusters[0]["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert "validation_context" not in tls["common_tls_context"]
    assert tls["sni"] == "a.example.com"


def test_membership_changes_leave_the_clusters_untouched() -> None:
    """A drain or a failed check rewrites only endpoints: clusters (and pools) stay."""
    cfg = config()
    before, _ = resources(cfg, snapshot_of(cfg))
    after, _ = resources(cfg, snapshot_of(cfg, {"a": UNHEALTHY}, frozenset({"b"})))
    assert before == after


@pytest.mark.parametrize(
    ("routing", "envoy", "expected"),
    [
        ({}, {}, {"lb_policy": "ROUND_ROBIN"}),
        (
            {"policy": "least_request"},
            {},
            {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 2}},
        ),
        ({"sticky": {"mode": "header"}}, {}, {"lb_policy": "MAGLEV"}),
        ({"sticky": {"mode": "ip", "hash": "ring"}}, {}, {"lb_policy": "RING_HASH"}),
        ({"sticky": {"mode": "ip", "hash": "rendezvous"}}, {}, {"lb_policy": "MAGLEV"}),
    ],
)
def test_policies_map_to_envoy_load_balancers(
    routing: dict[str, Any], envoy: dict[str, Any], expected: Json
) -> None:
    cfg = config(routing=routing, proxy={"envoy": envoy})
    clusters, _ = resources(cfg, snapshot_of(cfg))
    assert {k: v for k, v in clusters[0].items() if k.startswith(("lb_", "least_"))} == expected
    assert clusters[0]["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}


@pytest.mark.parametrize(
    ("sticky", "hash_policy"),
    [
        (
            {"mode": "cookie", "cookie_name": "sid", "key_env": "STICKY"},
            [{"cookie": {"name": "sid", "ttl": "0s", "path": "/"}}],
        ),
        ({"mode": "header", "header_name": "X-User"}, [{"header": {"header_name": "X-User"}}]),
        ({"mode": "ip"}, [{"connection_properties": {"source_ip": True}}]),
    ],
)
def test_sticky_modes_become_hash_policies(sticky: Json, hash_policy: list[Json]) -> None:
    cfg = config(routing={"sticky": sticky})
    route = route_configuration("untrusted-http", snapshot_of(cfg), cfg)
    for entry in app_routes_of(route):
        assert entry["route"]["hash_policy"] == hash_policy


def test_retries_follow_the_router_rule() -> None:
    cfg = config(proxy={"retries": 3})
    routes = route_configuration("untrusted-http", snapshot_of(cfg), cfg)
    idempotent, other = app_routes_of(routes)
    method = idempotent["match"]["headers"][-1]
    assert method["name"] == ":method"
    assert "GET" in method["string_match"]["safe_regex"]["regex"]
    assert "POST" not in method["string_match"]["safe_regex"]["regex"]
    assert "reset" in idempotent["route"]["retry_policy"]["retry_on"]
    # Any method moves on after a connect failure, never after the request was sent.
    assert other["route"]["retry_policy"]["retry_on"] == "connect-failure,refused-stream"
    for entry in (idempotent, other):
        policy = entry["route"]["retry_policy"]
        assert policy["num_retries"] == 3
        assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")
        assert entry["route"]["auto_host_rewrite"] is True


def test_timeouts_limits_and_outlier_detection_come_from_the_config() -> None:
    cfg = config(
        proxy={
            "connect_timeout": "2s",
            "response_timeout": "1.5s",
            "max_connections": 10,
            "max_pending": 4,
        },
        health={"passive": {"consecutive_failures": 7, "base_ejection": "10s"}},
    )
    snap = snapshot_of(cfg)
    clusters, _ = resources(cfg, snap)
    app = clusters[0]
    assert app["connect_timeout"] == "2s"
    limits = app["circuit_breakers"]["thresholds"][0]
    assert (limits["max_connections"], limits["max_pending_requests"]) == (10, 4)
    outlier = app["outlier_detection"]
    assert outlier["consecutive_gateway_failure"] == 7
    assert outlier["base_ejection_time"] == "10s"
    route = app_routes_of(route_configuration("untrusted-http", snap, cfg))[0]
    assert route["route"]["idle_timeout"] == "1.5s"
    off = config(health={"passive": {"enabled": False}})
    assert "outlier_detection" not in resources(off, snapshot_of(off))[0][0]


def test_untrusted_peers_lose_edge_and_forwarding_headers() -> None:
    cfg = config(proxy={"trusted_proxies": ["10.0.0.0/8"]})
    snap = snapshot_of(cfg)
    untrusted = route_configuration("untrusted-http", snap, cfg)
    removed = set(untrusted["request_headers_to_remove"])
    assert {"cf-connecting-ip", "cf-ipcountry", "x-forwarded-proto", "forwarded"} <= removed
    xff = untrusted["request_headers_to_add"][0]
    assert xff["header"]["key"] == "X-Forwarded-For"
    assert xff["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"
    trusted = route_configuration("trusted-http", snap, cfg)
    assert "cf-ipcountry" not in trusted["request_headers_to_remove"]
    assert trusted["request_headers_to_add"][0]["append_action"] == "APPEND_IF_EXISTS_OR_ADD"
    chains = listeners(cfg, {"http": ("127.0.0.1", 8080)}, lambda k, n: {})[0]["filter_chains"]
    assert chains[0]["filter_chain_match"] == {
        "source_prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]
    }
    assert "filter_chain_match" not in chains[1]


def test_nothing_routable_answers_503_naming_the_states() -> None:
    cfg = config()
    snap = snapshot_of(cfg, drained=frozenset({"a", "b", "c"}))
    route = app_routes_of(route_configuration("untrusted-http", snap, cfg))[0]
    assert route["direct_response"]["status"] == 503
    body = json.loads(route["direct_response"]["body"]["inline_string"])
    assert body == {
        "error": "no_healthy_replica",
        "replicas": 3,
        "routable": 0,
        "states": {"draining": 3},
    }
    assert {
        "header": {"key": "Retry-After", "value": "5"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    } in route["response_headers_to_add"]


def test_geo_ranks_regions_into_priorities_per_client_origin() -> None:
    cfg = config(routing={"policy": "geo", "geo": {"overprovisioning": 1.5}})
    snap = snapshot_of(cfg, health={"b": UNHEALTHY})
    clusters, assignments = resources(cfg, snap)
    names = [c["name"] for c in clusters]
    assert names == [
        MAIN_CLUSTER,
        *(geo_cluster(r) for r in ("ap-southeast-1", "eu-west-1", "us-east-1")),
    ]
    by_name = {a["cluster_name"]: a for a in assignments}
    europe = by_name[geo_cluster("eu-west-1")]
    assert europe["policy"]["overprovisioning_factor"] == 150
    ranked = [(loc["priority"], loc["locality"]["region"]) for loc in europe["endpoints"]]
    assert ranked == [(0, "eu-west-1"), (1, "us-east-1"), (2, "ap-southeast-1")]
    # The failing member stays in its region as UNHEALTHY: Envoy spills over like the picker.
    assert europe["endpoints"][0]["lb_endpoints"][0]["health_status"] == "UNHEALTHY"
    assert "b" not in endpoints_of(by_name[MAIN_CLUSTER])


def test_geo_routes_read_the_hint_from_anyone_and_countries_only_from_trusted_peers() -> None:
    cfg = config(routing={"policy": "geo"}, proxy={"trusted_proxies": ["10.0.0.0/8"]})
    snap = snapshot_of(cfg)

    def clusters_by_header(name: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for entry in app_routes_of(route_configuration(name, snap, cfg)):
            headers = [h["name"] for h in entry["match"].get("headers", [])]
            found.setdefault(headers[0] if headers else "", set()).add(entry["route"]["cluster"])
        return found

    untrusted = clusters_by_header("untrusted-http")
    assert untrusted["X-Preferred-Region"] == {
        geo_cluster("eu-west-1"),
        geo_cluster("us-east-1"),
        geo_cluster("ap-southeast-1"),
    }
    assert "CF-IPCountry" not in untrusted
    assert "CF-IPCountry" in clusters_by_header("trusted-http")
    assert untrusted[":method"] == {MAIN_CLUSTER}  # unknown clients: every region


def test_tls_listener_offers_h2_and_plain_listener_speaks_h2c(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    trustme.CA().issue_cert("router.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    tls = {"listen": "127.0.0.1:8443", "cert_file": str(pem), "key_file": str(pem)}
    cfg = config(listen_tls=tls)
    found = listeners(cfg, {"http": ("127.0.0.1", 1), "https": ("127.0.0.1", 2)}, lambda k, n: {})
    plain, secure = found
    hcm = plain["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "AUTO"
    context = secure["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    http1 = config(listen_tls=tls, proxy={"envoy": {"http2": False}})
    hcm = listeners(http1, {"http": ("127.0.0.1", 1)}, lambda k, n: {})[0]
    assert hcm["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] == "HTTP1"


def test_admin_api_off_loopback_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"admin_listen.*loopback"):
        config(proxy={"envoy": {"admin_listen": "0.0.0.0:9901"}})


def test_files_are_replaced_whole_and_only_when_changed(tmp_path: Path) -> None:
    files = ResourceFiles(tmp_path)
    assert files.write("endpoints", "app", [{"x": 1}]) is True
    path = files.path("endpoints", "app")
    first = json.loads(path.read_text())
    assert first["resources"] == [{"x": 1}]
    inode = path.stat().st_ino
    assert files.write("endpoints", "app", [{"x": 1}]) is False
    assert path.stat().st_ino == inode
    assert files.write("endpoints", "app", [{"x": 2}]) is True
    assert path.stat().st_ino != inode  # a rename, never an in-place rewrite
    assert json.loads(path.read_text())["version_info"] != first["version_info"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


STATES = st.sampled_from(["healthy", "unhealthy", "pending", "drained"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(STATES, st.integers(1, 1000)), min_size=1, max_size=8))
def test_main_cluster_holds_exactly_the_routable_replicas(rows: list[tuple[str, int]]) -> None:
    replicas = [
        {
            "id": f"r{i}",
            "url": f"http://10.0.0.{i + 1}:80",
            "weight": weight,
            "region": ["us-east-1", "eu-west-1"][i % 2],
        }
        for i, (_, weight) in enumerate(rows)
    ]
    cfg = config(replicas=replicas)
    views = {
        f"r{i}": {"healthy": HEALTHY, "unhealthy": UNHEALTHY, "pending": HealthView()}.get(
            state, HEALTHY
        )
        for i, (state, _) in enumerate(rows)
    }
    drained = frozenset(f"r{i}" for i, (state, _) in enumerate(rows) if state == "drained")
    snap = snapshot_of(cfg, views, drained)
    _, assignments = resources(cfg, snap)
    main = endpoints_of(assignments[0])
    assert set(main) == {r.id for r in snap.routable}
    for rid, endpoint in main.items():
        assert endpoint["load_balancing_weight"] == round(snap.by_id[rid].weight)
        assert endpoint["health_status"] == "HEALTHY"
    assert all(r["name"].startswith(("untrusted", "trusted")) for r in all_routes(snap, cfg))


def test_fleet_example_config_is_valid_and_serves_xds() -> None:
    from router.config import load_config

    root = Path(__file__).parent.parent
    cfg = load_config(str(root / "deploy/envoy-fleet/router.yaml"), {"PHALA_CLOUD_API_KEY": "k"})
    assert cfg.proxy.engine == "envoy"
    assert cfg.proxy.envoy.xds_listen is not None


def test_replicas_whose_host_does_not_resolve_are_left_out() -> None:
    cfg = config()
    snap = snapshot_of(cfg)

    def partial(replica: Replica) -> tuple[str, int] | None:
        return None if replica.host == "a.example.com" else ("192.0.2.1", replica.port)

    _, assignments = clusters_and_endpoints(snap, cfg, partial, lambda name: {})
    assert set(endpoints_of(assignments[0])) == {"b", "c"}


def test_plain_listener_redirects_to_https_when_asked(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    trustme.CA().issue_cert("router.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    tls = {"listen": "127.0.0.1:8443", "cert_file": str(pem), "key_file": str(pem)}
    cfg = config(listen_tls={**tls, "redirect_http": True})
    snap = snapshot_of(cfg)
    plain = route_configuration("untrusted-http", snap, cfg, scheme="http", https_port=8443)
    assert plain["virtual_hosts"][0]["routes"] == [
        {
            "match": {"prefix": "/"},
            "redirect": {
                "https_redirect": True,
                "port_redirect": 8443,
                "response_code": "PERMANENT_REDIRECT",
            },
        }
    ]
    secure = route_configuration("untrusted-https", snap, cfg, scheme="https", https_port=8443)
    assert "redirect" not in app_routes_of(secure)[0]


def test_retry_policy_settings_map_to_envoy_retry_fields() -> None:
    cfg = config(
        proxy={
            "retry_on": ["reset", "retriable-status-codes"],
            "retriable_status_codes": [429],
            "per_try_timeout": "2s",
            "retry_budget": {"budget_percent": 10, "min_retry_concurrency": 5},
        }
    )
    snap = snapshot_of(cfg)
    idempotent, other = app_routes_of(route_configuration("untrusted-http", snap, cfg))
    policy = idempotent["route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,refused-stream,reset,retriable-status-codes"
    assert policy["retriable_status_codes"] == [429]
    assert policy["per_try_timeout"] == "2s"
    assert "per_try_timeout" not in other["route"]["retry_policy"]
    # Not mapped on purpose: Envoy's budget would refuse retries after connect failures.
    clusters, _ = resources(cfg, snap)
    assert "retry_budget" not in clusters[0]["circuit_breakers"]["thresholds"][0]
