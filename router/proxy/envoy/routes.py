"""Snapshot -> Envoy route configurations (RDS) as JSON-ready dicts. Pure.

Two route configurations carry the trust rule: `trusted` serves peers in
`proxy.trusted_proxies` (their forwarding and edge headers are believed) and `untrusted`
everyone else (those headers are removed and the forwarding headers rewritten, and geo
routing ignores country headers). The listener picks one by the peer's address.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.apps import IMPLICIT_APP
from router.balancing.regions import normalise_region, region_coordinates
from router.proxy.envoy.geo import GEOIP_HEADER, location_matches
from router.proxy.envoy.loopback import attestation_route
from router.proxy.envoy.replies import (
    EVERY_PATH,
    acme_route,
    body_limit_routes,
    misdirected_route,
    no_replica_route,
)
from router.proxy.envoy.resources import (
    MAIN_CLUSTER,
    Json,
    duration,
    geo_cluster,
    h2_upstream,
)
from router.proxy.envoy.sni import restricted_suffix
from router.proxy.envoy.vhosts import EnvoyApp, VirtualHostPlan, apps_plan
from router.proxy.envoy.view import ConfigView
from router.proxy.headers import FORWARDING, IDEMPOTENT, edge_names
from router.snapshot import Snapshot

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TRUSTED = "trusted"
UNTRUSTED = "untrusted"
# Envoy's own note of the client address; the replica gets X-Forwarded-For instead.
ENVOY_ADDED = "x-envoy-external-address"
# Connect failures never reached the replica: safe to retry for any method.
CONNECT_RETRY_ON = "connect-failure,refused-stream"


def _header(name: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> Json:
    return {"header": {"key": name, "value": value}, "append_action": action}


# proxy.retry_on names -> Envoy retry_on tokens ("timeout": a per-try timeout, which Envoy
# retries as a gateway error, and a read timeout, which it counts as a reset).
_RETRY_TOKENS = {
    "connect-failure": ("connect-failure", "refused-stream"),
    "reset": ("reset",),
    "gateway-error": ("gateway-error",),
    "timeout": ("gateway-error", "reset"),
    "retriable-status-codes": ("retriable-status-codes",),
}


def idempotent_retry_on(config: ConfigView) -> str:
    """`proxy.retry_on` as Envoy's retry_on (connect-failure is always on)."""
    names: tuple[str, ...] = config.proxy.retry_on
    tokens: list[str] = []
    for name in ("connect-failure", *names):
        for token in _RETRY_TOKENS.get(name, ()):
            if token not in tokens:
                tokens.append(token)
    return ",".join(tokens)


def retry_policy(config: ConfigView, retry_on: str) -> Json:
    policy: Json = {
        "retry_on": retry_on,
        "num_retries": config.proxy.retries,
        # Each retry goes to a replica not tried yet for this request.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    codes = config.proxy.retriable_status_codes
    if codes and "retriable-status-codes" in retry_on:
        policy["retriable_status_codes"] = list(codes)
    per_try = config.proxy.per_try_timeout
    if per_try is not None and retry_on != CONNECT_RETRY_ON:
        policy["per_try_timeout"] = duration(per_try)
    return policy


def hash_policy(config: ConfigView) -> list[Json]:
    """routing.sticky -> consistent-hash keys (the cluster uses Maglev or a ring hash)."""
    sticky = config.routing.sticky
    if sticky.mode == "cookie":
        # Envoy sets the cookie itself when absent (a session cookie: ttl 0).
        return [{"cookie": {"name": sticky.cookie_name, "ttl": "0s", "path": "/"}}]
    if sticky.mode == "header":
        return [{"header": {"header_name": sticky.header_name}}]
    if sticky.mode == "ip":
        return [{"connection_properties": {"source_ip": True}}]
    return []


def route_action(config: ConfigView, cluster: str, retry_on: str) -> Json:
    action: Json = {
        "cluster": cluster,
        # Host (and with auto_sni the SNI) = the replica's own host name.
        "auto_host_rewrite": True,
        # response_timeout bounds the wait for the first byte and every gap after it;
        # Envoy's idle timeout is that rule, its route timeout would cut long streams.
        "timeout": "0s",
        "idle_timeout": duration(config.proxy.response_timeout),
        "retry_policy": retry_policy(config, retry_on),
    }
    hashes = hash_policy(config)
    if hashes:
        action["hash_policy"] = hashes
    return action


def _idempotent_match() -> Json:
    methods = "|".join(sorted(IDEMPOTENT))
    return {
        "name": ":method",
        "string_match": {"safe_regex": {"regex": f"^({methods})$"}},
    }


def path_match(prefix: str) -> Json:
    """An app's path prefix as Envoy's match: the whole path or `prefix` followed by `/`
    (the router's rule: `/v2` takes `/v2`, `/v2/x` and `/v2?q`, never `/v2x`)."""
    return {"path_separated_prefix": prefix} if prefix else dict(EVERY_PATH)


def _routes_to(
    config: ConfigView, cluster: str, headers: Sequence[Json], path: Json = EVERY_PATH
) -> list[Json]:
    """Two routes to `cluster`: idempotent methods retry on more failures."""
    return [
        {
            "match": {**path, "headers": [*headers, _idempotent_match()]},
            "route": route_action(config, cluster, idempotent_retry_on(config)),
        },
        {
            "match": {**path, "headers": list(headers)},
            "route": route_action(config, cluster, CONNECT_RETRY_ON),
        },
    ]


def geo_routes(
    snapshot: Snapshot,
    config: ConfigView,
    *,
    trusted: bool,
    prefix: str = "",
    path: Json = EVERY_PATH,
) -> list[Json]:
    """Per client-origin routes, in the locator's order (geo.py). `prefix` names the app's
    clusters, `path` is the app's path match."""
    routes: list[Json] = []
    for origin, headers in location_matches(snapshot, config, trusted=trusted):
        routes += _routes_to(config, prefix + geo_cluster(origin), headers, path)
    return routes


def _default_cluster(config: ConfigView, prefix: str = "") -> str:
    geo = config.routing.geo
    if (
        config.routing.policy == "geo"
        and geo.default_region
        and region_coordinates(geo.default_region, geo.regions) is not None
    ):
        return prefix + geo_cluster(normalise_region(geo.default_region))
    return prefix + MAIN_CLUSTER


# Hop-by-hop headers Envoy forwards by itself; TE is removed per app (kept for gRPC).
HOP_BY_HOP = ("proxy-authorization", "proxy-connection", "keep-alive")


def app_routes(app: EnvoyApp, prefix: str, *, trusted: bool) -> list[Json]:
    """The routes of one app under its path `prefix` ("" = every path)."""
    path = path_match(prefix)
    snapshot, config = app.snapshot, app.config
    if not snapshot.routable:
        return [no_replica_route(snapshot, path)]
    clusters = app.cluster_prefix
    routes: list[Json] = []
    if config.routing.policy == "geo":
        routes = geo_routes(snapshot, config, trusted=trusted, prefix=clusters, path=path)
    routes += _routes_to(config, _default_cluster(config, clusters), [], path)
    if not h2_upstream(snapshot):  # `TE: trailers` only means something to gRPC over h2
        for route in routes:
            route["request_headers_to_remove"] = ["te"]
    return routes


def virtual_host(
    plan: VirtualHostPlan[EnvoyApp], *, trusted: bool, reachable: frozenset[str] | None = None
) -> Json:
    """`reachable`: on a TLS chain whose SNI may reach only these apps (sni.py), the others'
    routes answer 421 instead, as the Python engines do."""
    routes: list[Json] = []
    for prefix, app in plan.entries:
        if reachable is None or app.name in reachable:
            routes += app_routes(app, prefix, trusted=trusted)
        else:
            routes.append(misdirected_route(path_match(prefix)))
    if not plan.has_catch_all:
        routes.append(misdirected_route())
    return {"name": plan.name, "domains": list(plan.domains), "routes": routes}


def single_app(snapshot: Snapshot, config: ConfigView) -> EnvoyApp:
    """A config without `apps:`: one app that takes every Host."""
    return EnvoyApp(IMPLICIT_APP, (), True, snapshot, config)


def _header_rules(config: ConfigView, *, trusted: bool, scheme: str) -> Json:
    rules = _forwarding_rules(config, trusted=trusted, scheme=scheme)
    # The GeoIP filter's header is Envoy's own note (geo.py), not for the replica.
    removed = {*rules["request_headers_to_remove"], *HOP_BY_HOP, GEOIP_HEADER}
    rules["request_headers_to_remove"] = sorted(removed)
    rules["response_headers_to_remove"] = ["proxy-authenticate", "keep-alive"]
    return rules


def _forwarding_rules(config: ConfigView, *, trusted: bool, scheme: str) -> Json:
    if trusted:
        return {
            "request_headers_to_remove": [ENVOY_ADDED],
            "request_headers_to_add": [
                # The peer appended to what the trusted proxy sent (Envoy's own append is off).
                _header(
                    "X-Forwarded-For",
                    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "APPEND_IF_EXISTS_OR_ADD",
                ),
                _header("X-Forwarded-Proto", scheme, "ADD_IF_ABSENT"),
                _header("X-Forwarded-Host", "%REQ(:AUTHORITY)%", "ADD_IF_ABSENT"),
            ],
        }
    geo = config.routing.geo
    edge = edge_names(
        config.proxy.edge_headers, geo.country_headers, (geo.latitude_header, geo.longitude_header)
    )
    removed = sorted((edge | FORWARDING | {ENVOY_ADDED}) - {"x-forwarded-for"})
    return {
        "request_headers_to_remove": removed,
        "request_headers_to_add": [
            # Only the peer itself: what an untrusted client claims is dropped.
            _header("X-Forwarded-For", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"),
            _header("X-Forwarded-Proto", scheme),
            _header("X-Forwarded-Host", "%REQ(:AUTHORITY)%"),
        ],
    }


def _redirect_to(https_port: int) -> Json:
    """listen_tls.redirect_http: plain requests get a 308 to the same URL over https."""
    return {
        "match": {"prefix": "/"},
        "redirect": {
            "https_redirect": True,
            "port_redirect": https_port,
            "response_code": "PERMANENT_REDIRECT",
        },
    }


def route_configuration(
    name: str,
    snapshot: Snapshot,
    config: ConfigView,
    *,
    scheme: str = "http",
    https_port: int | None = None,
    apps: Sequence[EnvoyApp] | None = None,
    acme_cluster: str | None = None,
    reachable: frozenset[str] | None = None,
    attestation_cluster: str | None = None,
) -> Json:
    """The route configuration `name` (trusted or untrusted peers, per listener scheme):
    one virtual host per app host name (`apps`; None: the one app of `snapshot`).
    `acme_cluster`: where ACME challenges go on the plain listener (acme_webroot).
    `reachable`: only these apps are served (an SNI chain's, sni.py), the rest get 421.
    `attestation_cluster`: the router's own attestation path goes there (loopback.py)."""
    trusted = name.startswith(TRUSTED)
    tls = config.listen_tls
    if scheme == "http" and tls is not None and tls.redirect_http and https_port is not None:
        hosts = [{"name": "redirect", "domains": ["*"], "routes": [_redirect_to(https_port)]}]
    else:
        plans = apps_plan(apps if apps is not None else [single_app(snapshot, config)])
        hosts = [virtual_host(p, trusted=trusted, reachable=reachable) for p in plans]
        for host in hosts:
            host["routes"] = [*body_limit_routes(config.proxy.max_request_body), *host["routes"]]
    if scheme == "http" and acme_cluster is not None:
        for host in hosts:  # before the redirect and before any app, as the Python engines
            host["routes"] = [acme_route(acme_cluster), *host["routes"]]
    if attestation_cluster is not None:  # never an app's path, on every listener
        for host in hosts:
            host["routes"] = [attestation_route(attestation_cluster), *host["routes"]]
    resource: Json = {
        "@type": ROUTE_TYPE,
        "name": name,
        "virtual_hosts": hosts,
        # The router ignores a Host's port when it picks the app.
        "ignore_port_in_host_matching": True,
        **_header_rules(config, trusted=trusted, scheme=scheme),
    }
    return resource


def peer_kinds(config: ConfigView) -> list[str]:
    return [TRUSTED, UNTRUSTED] if config.proxy.trusted_proxies else [UNTRUSTED]


def restricted_route_name(kind: str, reachable: frozenset[str]) -> str:
    """The route configuration of TLS chains whose SNI reaches only `reachable`."""
    return f"{kind}-https-only-{restricted_suffix(reachable)}"


def route_names(
    config: ConfigView, restricted: Sequence[frozenset[str]] = ()
) -> list[tuple[str, str, frozenset[str] | None]]:
    """(route configuration name, scheme, apps it is restricted to) for every listener and
    peer class, and for every restriction of SNI chains (`restricted`, sni.py)."""
    names: list[tuple[str, str, frozenset[str] | None]] = []
    schemes = (["http"] if config.listen else []) + (["https"] if config.listen_tls else [])
    for scheme in schemes:
        for kind in peer_kinds(config):
            names.append((f"{kind}-{scheme}", scheme, None))
            if scheme == "https":
                names += [(restricted_route_name(kind, r), scheme, r) for r in restricted]
    return names


def all_routes(
    snapshot: Snapshot,
    config: ConfigView,
    https_port: int | None = None,
    apps: Sequence[EnvoyApp] | None = None,
    acme_cluster: str | None = None,
    restricted: Sequence[frozenset[str]] = (),
    attestation_cluster: str | None = None,
) -> list[dict[str, Any]]:
    return [
        route_configuration(
            name,
            snapshot,
            config,
            scheme=scheme,
            https_port=https_port,
            apps=apps,
            acme_cluster=acme_cluster,
            reachable=reachable,
            attestation_cluster=attestation_cluster,
        )
        for name, scheme, reachable in route_names(config, restricted)
    ]
