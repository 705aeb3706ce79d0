"""Snapshot -> Envoy clusters and endpoints (CDS, EDS) as JSON-ready dicts. Pure.

The router stays the judge of membership: an endpoint is in Envoy's load assignment only
when the snapshot routes to it (health, attestation, drain, active-limit already applied),
so Envoy's own panic mode is switched off. Geo routing becomes one cluster per client
origin region whose localities are ranked by distance into Envoy priorities; those
clusters also carry the not-yet-healthy members as UNHEALTHY endpoints so Envoy's
overprovisioning arithmetic sees the same healthy/total ratio the geo picker does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.balancing.regions import Point, haversine_km, normalise_region, region_coordinates
from router.models import Replica, ReplicaState
from router.proxy.envoy.tunnel import shared_addresses, tunnel_matches, tunnelled_endpoint
from router.proxy.envoy.upstream_tls import MATCH_KEY, Pins, endpoint_match, socket_matches
from router.proxy.envoy.view import ConfigView
from router.snapshot import ReplicaStatus, Snapshot

Json = dict[str, Any]
# (replica) -> the address Envoy dials: an IP literal and port (connect_to applied), or
# None while its host name does not resolve (the replica is then left out).
Dial = Callable[[Replica], tuple[str, int] | None]
# (cluster name) -> the ConfigSource Envoy reads that cluster's endpoints from.
EdsSource = Callable[[str], Json]

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LOAD_ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAIN_CLUSTER = "app"
GEO_PREFIX = "geo-"
# Members the geo picker counts in a region's total although they take no traffic yet.
_WAITING = frozenset({ReplicaState.UNHEALTHY, ReplicaState.EJECTED, ReplicaState.PENDING})


def duration(seconds: float) -> str:
    """Protobuf JSON duration: `1.5s`."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def geo_cluster(region: str) -> str:
    return GEO_PREFIX + normalise_region(region)


def _lb_policy(config: ConfigView) -> Json:
    sticky = config.routing.sticky
    if sticky.mode != "off":
        # routing.sticky.hash: Envoy has Maglev and a ring hash; no rendezvous balancer, so
        # rendezvous maps to Maglev (both consistent; keys land on different replicas).
        return {"lb_policy": "RING_HASH" if sticky.hash == "ring" else "MAGLEV"}
    if config.routing.policy == "least_request" or (
        config.routing.policy == "geo" and config.routing.geo.within_region == "least_request"
    ):
        return {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 2}}
    return {"lb_policy": "ROUND_ROBIN"}


def outlier_detection(config: ConfigView) -> Json | None:
    """health.passive -> Envoy outlier detection (the router's detector mirrors it)."""
    passive = config.health.passive
    if not passive.enabled:
        return None
    consecutive = passive.consecutive_failures
    return {
        "consecutive_5xx": consecutive if passive.count_5xx else 2**31 - 1,
        "consecutive_gateway_failure": consecutive,
        "consecutive_local_origin_failure": consecutive,
        "split_external_local_origin_errors": not passive.count_5xx,
        "enforcing_consecutive_5xx": 100 if passive.count_5xx else 0,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_consecutive_local_origin_failure": 100,
        "interval": "1s",
        "base_ejection_time": duration(passive.base_ejection),
        "max_ejection_time": duration(passive.max_ejection),
        "max_ejection_percent": passive.max_ejected_percent,
        "enforcing_success_rate": 0,
        "enforcing_failure_percentage": 0,
    }


def _limits(config: ConfigView, max_requests: int | None = None) -> Json:
    """proxy.* limits; `max_requests` is an app's own cap (apps[].max_connections)."""
    proxy = config.proxy
    requests = proxy.max_connections
    if max_requests is not None:
        requests = min(requests, max_requests)
    limits: Json = {
        "priority": "DEFAULT",
        "max_connections": proxy.max_connections,
        "max_pending_requests": max(proxy.max_pending, 1),
        "max_requests": requests,
        "max_retries": max(proxy.max_connections // 4, 3),
    }
    # proxy.retry_budget is not mapped: Envoy's budget also refuses retries after connect
    # failures and resets, which the router's never does (a replica dying under more
    # in-flight requests than min_retry_concurrency would fail requests b could serve).
    return limits


def cluster(
    name: str,
    config: ConfigView,
    eds_source: EdsSource,
    *,
    h2: bool = False,
    tls: Sequence[Json] = (),
    max_requests: int | None = None,
) -> Json:
    """`tls`: the transport socket matches (upstream_tls.socket_matches)."""
    """One EDS cluster with the router's balancing, retries' partners and limits."""
    proxy = config.proxy
    protocol: Json = {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {}}
    resource: Json = {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"service_name": name, "eds_config": eds_source(name)},
        "connect_timeout": duration(proxy.connect_timeout),
        **_lb_policy(config),
        # Membership is decided by the router; Envoy must never route to excluded hosts.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "circuit_breakers": {"thresholds": [_limits(config, max_requests)]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS_TYPE,
                "common_http_protocol_options": {"idle_timeout": duration(proxy.idle_timeout)},
                "explicit_http_config": protocol,
            }
        },
        "transport_socket_matches": list(tls),
    }
    detection = outlier_detection(config)
    if detection is not None:
        resource["outlier_detection"] = detection
    return resource


def endpoint_weight(weight: float) -> int:
    """Envoy weights are whole numbers >= 1; the router's are floats (slow start)."""
    return max(1, round(weight))


@dataclass(frozen=True, slots=True)
class Dialling:
    """How one app's endpoints are reached: addresses, attested keys, shared addresses."""

    dial: Dial
    pins: Pins | None = None
    # https addresses several replicas share (a gateway): those go through the tunnel.
    shared: frozenset[tuple[str, int]] = frozenset()


def _dialling(snapshot: Snapshot, dial: Dial, pins: Pins | None) -> Dialling:
    https = (dial(s.replica) for s in snapshot.statuses if s.replica.scheme == "https")
    return Dialling(dial, pins, shared_addresses(https))


def lb_endpoint(
    status: ReplicaStatus, dial: Dial | Dialling, *, healthy: bool = True
) -> Json | None:
    """The endpoint Envoy dials for a replica; None while it cannot (no address yet, or
    RA-TLS and no attested key)."""
    how = dial if isinstance(dial, Dialling) else Dialling(dial)
    replica = status.replica
    address = how.dial(replica)
    spki = how.pins.get(replica.id) if how.pins is not None else None
    match = endpoint_match(replica.host, replica.scheme, spki, how.pins)
    if address is None or match is None:
        return None
    ip, port = address
    socket: Json = {"socket_address": {"address": ip, "port_value": port}}
    tunnel: Json = {}
    if replica.scheme == "https" and address in how.shared:
        socket, tunnel = tunnelled_endpoint(replica.id, ip, port)
        match = {**match, "tunnel": True}
    return {
        "endpoint": {"address": socket, "hostname": replica.authority},
        "health_status": "HEALTHY" if healthy else "UNHEALTHY",
        "load_balancing_weight": endpoint_weight(status.weight if healthy else 1),
        "metadata": {
            "filter_metadata": {
                MATCH_KEY: match,
                "phala.router": {"replica": replica.id},
                **tunnel,
            }
        },
    }


def _region(replica: Replica) -> str:
    return normalise_region(replica.region or "")


def load_assignment(
    name: str, localities: Sequence[tuple[str, int, list[Json]]], overprovisioning: float
) -> Json:
    return {
        "@type": LOAD_ASSIGNMENT_TYPE,
        "cluster_name": name,
        "endpoints": [
            {"locality": {"region": region}, "priority": priority, "lb_endpoints": endpoints}
            for region, priority, endpoints in localities
            if endpoints
        ],
        "policy": {"overprovisioning_factor": round(overprovisioning * 100)},
    }


def main_assignment(snapshot: Snapshot, dial: Dial | Dialling, name: str = MAIN_CLUSTER) -> Json:
    """Every routable replica, one locality per region, all at priority 0."""
    by_region: dict[str, list[Json]] = {}
    for status in snapshot.statuses:
        if not status.routable:
            continue
        if (endpoint := lb_endpoint(status, dial)) is not None:
            by_region.setdefault(_region(status.replica), []).append(endpoint)
    localities = [(region, 0, eps) for region, eps in sorted(by_region.items())]
    return load_assignment(name, localities, 1.4)


@dataclass(frozen=True, slots=True)
class GeoPlan:
    """Client origin regions (each a cluster) and the replica regions ranked for each."""

    origins: dict[str, list[str]]


def geo_origins(snapshot: Snapshot, config: ConfigView) -> list[str]:
    """Regions a client can be routed as: every replica region with coordinates, the
    default region and the configured extra regions."""
    geo = config.routing.geo
    names = {_region(s.replica) for s in snapshot.statuses if s.replica.region}
    names |= set(geo.regions)
    if geo.default_region:
        names.add(geo.default_region)
    return sorted(n for n in names if region_coordinates(n, geo.regions) is not None)


def rank_regions(origin: Point | None, regions: Sequence[str], config: ConfigView) -> list[str]:
    """Replica regions nearest first; regions without coordinates last (as the picker)."""
    overrides = config.routing.geo.regions

    def distance(region: str) -> float:
        point = region_coordinates(region, overrides) if region else None
        if origin is None or point is None:
            return math.inf
        return haversine_km(origin, point)

    return sorted(regions, key=lambda r: (distance(r), r))


def geo_assignment(
    origin: str,
    snapshot: Snapshot,
    config: ConfigView,
    dial: Dial | Dialling,
    prefix: str = "",
) -> Json:
    """The load assignment for clients located in `origin`: one priority per region."""
    members: dict[str, list[Json]] = {}
    for status in snapshot.statuses:
        if not status.routable and status.state not in _WAITING:
            continue
        endpoint = lb_endpoint(status, dial, healthy=status.routable)
        if endpoint is not None:
            members.setdefault(_region(status.replica), []).append(endpoint)
    point = region_coordinates(origin, config.routing.geo.regions)
    ranked = [r for r in rank_regions(point, list(members), config) if members[r]]
    localities = [(region, rank, members[region]) for rank, region in enumerate(ranked)]
    name = prefix + geo_cluster(origin)
    return load_assignment(name, localities, config.routing.geo.overprovisioning)


def h2_upstream(snapshot: Snapshot) -> bool:
    """Replicas marked `protocol: h2` or `grpc` (the gateway's `-<port>g` URLs)."""
    return any(s.replica.metadata.get("protocol") in {"h2", "grpc"} for s in snapshot.statuses)


def clusters_and_endpoints(
    snapshot: Snapshot,
    config: ConfigView,
    dial: Dial,
    eds_source: EdsSource,
    *,
    prefix: str = "",
    max_requests: int | None = None,
    pins: Pins | None = None,
) -> tuple[list[Json], list[Json]]:
    """(clusters, load assignments) for one app's snapshot; `prefix` names its clusters
    (`<app>.` with `apps:`), `max_requests` is its own cap on requests in flight, `pins`
    the attested keys with RA-TLS (upstream_tls.py)."""
    h2 = h2_upstream(snapshot)
    how = _dialling(snapshot, dial, pins)
    tls = socket_matches(config, snapshot, pins=pins, h2=h2)
    if how.shared:
        tls = tunnel_matches(tls)
    main = prefix + MAIN_CLUSTER

    def app_cluster(name: str) -> Json:
        return cluster(name, config, eds_source, h2=h2, tls=tls, max_requests=max_requests)

    clusters = [app_cluster(main)]
    assignments = [main_assignment(snapshot, how, main)]
    if config.routing.policy == "geo":
        for origin in geo_origins(snapshot, config):
            name = prefix + geo_cluster(origin)
            clusters.append(app_cluster(name))
            assignments.append(geo_assignment(origin, snapshot, config, how, prefix))
    return clusters, assignments
