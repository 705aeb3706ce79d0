"""Upstream connections under Envoy, mapped without sockets: replicas sharing a gateway
address stay distinct hosts, RA-TLS pins the attested key, gRPC replicas get ALPN h2."""

from __future__ import annotations

import base64
from typing import Any

from router.config import RouterConfig
from router.models import Replica
from router.proxy.envoy.resources import Json, clusters_and_endpoints
from router.proxy.envoy.tunnel import TUNNEL, TUNNEL_METADATA
from tests.test_envoy_mapping import config, endpoints_of, snapshot_of

GATEWAY = [
    {"id": "one", "url": "https://one-443.gw.example"},
    {"id": "two", "url": "https://two-443.gw.example"},
    {"id": "own", "url": "https://own.example.com"},
]


def through_gateway(replica: Replica) -> tuple[str, int]:
    """Every gateway host resolves to the one gateway address (as with dstack)."""
    return ("192.0.2.9", 443) if replica.host.endswith("gw.example") else ("192.0.2.1", 443)


def render(cfg: RouterConfig, **options: Any) -> tuple[Json, dict[str, Json]]:
    clusters, assignments = clusters_and_endpoints(
        snapshot_of(cfg), cfg, through_gateway, lambda name: {"ads": {}}, **options
    )
    return clusters[0], endpoints_of(assignments[0])


def matches_of(cluster: Json) -> dict[str, Json]:
    return {m["name"]: m for m in cluster["transport_socket_matches"]}


def test_replicas_sharing_a_gateway_address_stay_distinct_hosts() -> None:
    cluster, endpoints = render(config(replicas=GATEWAY))
    one, two, own = endpoints["one"], endpoints["two"], endpoints["own"]
    assert one["endpoint"]["address"] == {
        "envoy_internal_address": {"server_listener_name": TUNNEL, "endpoint_id": "one"}
    }
    assert two["endpoint"]["address"]["envoy_internal_address"]["endpoint_id"] == "two"
    assert one["metadata"]["filter_metadata"][TUNNEL_METADATA] == {"address": "192.0.2.9:443"}
    assert one["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "tls_host": "one-443.gw.example",
        "tunnel": True,
    }
    # a replica with an address of its own is dialled directly
    assert own["endpoint"]["address"]["socket_address"]["address"] == "192.0.2.1"
    assert TUNNEL_METADATA not in own["metadata"]["filter_metadata"]
    names = list(matches_of(cluster))
    tunnelled = [n for n in names if n.startswith(TUNNEL)]
    assert names[: len(tunnelled)] == tunnelled  # the more specific matches come first
    wrapped = matches_of(cluster)[f"{TUNNEL}-tls-one-443.gw.example"]["transport_socket"]
    inner = wrapped["typed_config"]["transport_socket"]["typed_config"]
    assert inner["sni"] == "one-443.gw.example"  # TLS still ends at the replica
    assert wrapped["typed_config"]["passthrough_metadata"][0]["name"] == TUNNEL_METADATA


def test_ra_tls_pins_the_verified_key_and_leaves_unverified_replicas_out() -> None:
    cfg = config(replicas=GATEWAY[1:], upstream_tls={"verify": True})
    digest = "ab" * 32
    cluster, endpoints = render(cfg, pins={"two": digest})
    assert set(endpoints) == {"two"}  # `own` has no verified key: Envoy must not dial it
    assert endpoints["two"]["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "tls_host": "two-443.gw.example",
        "spki": digest,
    }
    (pinned,) = [m for m in matches_of(cluster).values() if m["match"].get("spki") == digest]
    tls = pinned["transport_socket"]["typed_config"]
    checks = tls["common_tls_context"]["validation_context"]
    assert checks == {"verify_certificate_spki": [base64.b64encode(bytes.fromhex(digest)).decode()]}
    assert tls["max_session_keys"] == 0  # no resumption: every connection shows its key
    assert tls["sni"] == "two-443.gw.example"


def test_grpc_replicas_over_tls_offer_h2_by_alpn() -> None:
    cfg = config(replicas=[{"id": "g", "url": "https://g.example.com", "protocol": "grpc"}])
    cluster, _ = render(cfg)
    tls = matches_of(cluster)["tls-g.example.com"]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    options = cluster["typed_extension_protocol_options"]
    protocol = next(iter(options.values()))["explicit_http_config"]
    assert "http2_protocol_options" in protocol
