"""Replicas that share one address (the dstack gateway) as distinct Envoy hosts. Pure.

Every replica behind a Phala gateway is dialled at the gateway's IP and port and told
apart only by its TLS SNI (docs: PHALA.md, "many replicas share one gateway address").
Envoy keeps one host per address in a load assignment and drops the rest, so such
replicas would all collapse into the first. Each of them instead gets an internal address
(`envoy_internal_address` with the replica id as `endpoint_id`, unique per replica): the
cluster's TLS runs over Envoy's user-space socket to the internal listener `phala-tunnel`,
whose TCP proxy relays the bytes to the real address, read from the endpoint's metadata
(`internal_upstream` passes it on; an ORIGINAL_DST cluster dials it). TLS, SNI and the
certificate checks are unchanged: they still end at the replica.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from router.proxy.envoy.upstream_tls import Json

TUNNEL = "phala-tunnel"
# Endpoint metadata namespace holding the real address (`ip:port`) of a tunnelled replica.
TUNNEL_METADATA = "phala.tunnel"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
INTERNAL_UPSTREAM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
)
BOOTSTRAP_EXTENSION: Json = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {
        "@type": "type.googleapis.com/"
        "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
    },
}


def address_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def shared_addresses(addresses: Iterable[tuple[str, int] | None]) -> frozenset[tuple[str, int]]:
    """Dial addresses used by more than one https replica."""
    counts = Counter(address for address in addresses if address is not None)
    return frozenset(address for address, count in counts.items() if count > 1)


def tunnelled_endpoint(replica_id: str, ip: str, port: int) -> tuple[Json, Json]:
    """(endpoint address, metadata namespace entry) of a replica reached through the tunnel."""
    address = {
        "envoy_internal_address": {"server_listener_name": TUNNEL, "endpoint_id": replica_id}
    }
    return address, {TUNNEL_METADATA: {"address": address_text(ip, port)}}


def tunnel_matches(matches: Sequence[Json]) -> list[Json]:
    """Each transport socket match again for tunnelled endpoints (first, as more specific):
    the same socket wrapped in `internal_upstream`, which hands the real address on."""
    twins = []
    for match in matches:
        twins.append(
            {
                "name": f"{TUNNEL}-{match['name']}",
                "match": {**match["match"], "tunnel": True},
                "transport_socket": {
                    "name": "envoy.transport_sockets.internal_upstream",
                    "typed_config": {
                        "@type": INTERNAL_UPSTREAM_TYPE,
                        "passthrough_metadata": [{"kind": {"host": {}}, "name": TUNNEL_METADATA}],
                        "transport_socket": match["transport_socket"],
                    },
                },
            }
        )
    return [*twins, *matches]


def tunnel_cluster(connect_timeout: str) -> Json:
    """Dials the address the tunnelled endpoint's metadata names (never anything else: only
    this router's own endpoints reach the internal listener)."""
    return {
        "@type": CLUSTER_TYPE,
        "name": TUNNEL,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": connect_timeout,
        "original_dst_lb_config": {
            "metadata_key": {"key": TUNNEL_METADATA, "path": [{"key": "address"}]}
        },
        # The app clusters already cap connections; this one must never refuse first.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1_000_000,
                    "max_pending_requests": 1_000_000,
                    "max_requests": 1_000_000,
                }
            ]
        },
    }


def tunnel_listener() -> Json:
    return {
        "@type": LISTENER_TYPE,
        "name": TUNNEL,
        "internal_listener": {},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY_TYPE,
                            "stat_prefix": TUNNEL,
                            "cluster": TUNNEL,
                        },
                    }
                ]
            }
        ],
    }
