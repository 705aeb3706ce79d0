"""Several apps under Envoy: virtual hosts pick the same app as the router's host table,
each app gets its own clusters, and a Host no app serves gets 421 (or the default app)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from router.app_views import app_views
from router.apps.hosts import HostRoute, HostTable, RouteConflict
from router.config import RouterConfig, parse_config
from router.errors import ClientRequestError
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import SnapshotSource
from router.proxy.envoy.chain_matcher import sni_matcher
from router.proxy.envoy.listeners import ListenerApps, listeners, local_replies
from router.proxy.envoy.resources import Json, clusters_and_endpoints
from router.proxy.envoy.routes import route_configuration
from router.proxy.envoy.sni import plan_sni_chains, sni_chains
from router.proxy.envoy.vhosts import (
    CATCH_ALL,
    AppCap,
    EnvoyApp,
    VirtualHostPlan,
    app_caps,
    plan_virtual_hosts,
)
from tests.test_envoy_mapping import dial, snapshot_of

# -- the plan agrees with the router's own lookup -------------------------------------------


def envoy_virtual_host(plans: list[VirtualHostPlan[str]], host: str) -> VirtualHostPlan[str]:
    """Envoy's choice of virtual host: exact domain, longest `*.suffix`, then `*`."""
    by_domain = {domain: plan for plan in plans for domain in plan.domains}
    if host in by_domain:
        return by_domain[host]
    wild = [d for d in by_domain if d.startswith("*.") and host.endswith(d[1:])]
    if wild:
        return by_domain[max(wild, key=len)]
    return by_domain[CATCH_ALL]


def envoy_route(plan: VirtualHostPlan[str], path: str) -> str | None:
    """First entry whose path-separated prefix matches (Envoy ignores the query)."""
    bare = path.partition("?")[0]
    for prefix, app in plan.entries:
        if not prefix or bare == prefix or bare.startswith(prefix + "/"):
            return app
    return None  # the 421 route


LABELS = st.sampled_from(["a", "b", "c"])
NAMES = st.lists(LABELS, min_size=1, max_size=3).map(".".join)
ROUTES = st.builds(
    HostRoute,
    st.one_of(NAMES, NAMES.map(lambda n: "*." + n)),
    st.sampled_from(["", "/v1", "/v1/x", "/v2"]),
)
PATHS = st.sampled_from(["/", "/v1", "/v1/", "/v1x", "/v1/x/y", "/v1?q=1", "/v2/z", "/v3"])


@settings(max_examples=300, deadline=None)
@given(
    routes=st.dictionaries(ROUTES, st.sampled_from(["api", "ui", "web"]), max_size=8),
    default=st.sampled_from([None, "fallback"]),
    requests=st.lists(st.tuples(NAMES, PATHS), min_size=1, max_size=10),
)
def test_envoy_picks_the_app_the_router_picks(
    routes: dict[HostRoute, str], default: str | None, requests: list[tuple[str, str]]
) -> None:
    try:
        table = HostTable(routes.items(), default)
    except RouteConflict:
        return
    plans = plan_virtual_hosts(routes.items(), default)
    for host, path in requests:
        assert envoy_route(envoy_virtual_host(plans, host), path) == table.lookup(host, path)


def test_trailing_dot_names_match_the_same_virtual_host() -> None:
    plans = plan_virtual_hosts([(HostRoute("api.example.com"), "api")], None)
    assert plans[0].domains == ("api.example.com", "api.example.com.")


# -- resources for a two-app config ---------------------------------------------------------


def two_apps(**extra: Any) -> RouterConfig:
    return parse_config(
        {
            "proxy": {"engine": "envoy"},
            "apps": [
                {
                    "name": "api",
                    "hosts": ["api.example.com", "*.api.example.com", "www.example.com/api"],
                    "max_connections": 5,
                    "discovery": {"static": [{"id": "api-0", "url": "http://10.0.0.1:8000"}]},
                },
                {
                    "name": "ui",
                    "hosts": ["www.example.com"],
                    "routing": {"sticky": {"mode": "header", "header_name": "x-user"}},
                    "discovery": {"static": [{"id": "ui-0", "url": "http://10.0.0.2:8000"}]},
                    **extra,
                },
            ],
        },
        {},
    )


def envoy_apps_of(cfg: RouterConfig, drained: frozenset[str] = frozenset()) -> list[EnvoyApp]:
    return [
        EnvoyApp(
            view.name,
            view.routes,
            view.default,
            snapshot_of(view.config, drained=drained),
            view.config,
            view.max_connections,
            cluster_prefix=view.name + ".",
        )
        for view in app_views(cfg)
    ]


def hosts_of(route_config: Json) -> dict[str, Json]:
    """Virtual hosts by name, without the 413 routes every host starts with."""
    hosts = {}
    for vhost in route_config["virtual_hosts"]:
        routes = [r for r in vhost["routes"] if r.get("direct_response", {}).get("status") != 413]
        hosts[vhost["name"]] = {**vhost, "routes": routes}
    return hosts


def clusters_of(route: Json) -> str:
    return str(route["route"]["cluster"]) if "route" in route else str(route["direct_response"])


def test_each_app_host_is_a_virtual_host_routing_to_its_own_cluster() -> None:
    cfg = two_apps()
    apps = envoy_apps_of(cfg)
    routes = route_configuration("untrusted-http", apps[0].snapshot, cfg, apps=apps)
    assert routes["ignore_port_in_host_matching"] is True
    hosts = hosts_of(routes)
    assert list(hosts) == ["api.example.com", "www.example.com", "*.api.example.com", "*"]
    assert hosts["*.api.example.com"]["domains"] == ["*.api.example.com", "*.api.example.com."]
    www = hosts["www.example.com"]["routes"]
    # the longer prefix first: /api (and below) to api, everything else to ui
    assert www[0]["match"]["path_separated_prefix"] == "/api"
    assert [r["route"]["cluster"] for r in www] == ["api.app", "api.app", "ui.app", "ui.app"]
    assert www[2]["match"]["prefix"] == "/"
    assert www[2]["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]
    assert "hash_policy" not in www[0]["route"]  # each app keeps its own routing
    unknown = hosts["*"]["routes"]
    assert [r["direct_response"]["status"] for r in unknown] == [421]
    assert json.loads(unknown[0]["direct_response"]["body"]["inline_string"]) == {
        "error": "misdirected_request"
    }


def test_the_default_app_takes_hosts_no_app_names() -> None:
    cfg = two_apps(default=True)
    apps = envoy_apps_of(cfg)
    hosts = hosts_of(route_configuration("untrusted-http", apps[0].snapshot, cfg, apps=apps))
    assert {r["route"]["cluster"] for r in hosts["*"]["routes"]} == {"ui.app"}
    # a path of api.example.com's wildcard level never falls to the default: it has a catch-all
    assert {r["route"]["cluster"] for r in hosts["*.api.example.com"]["routes"]} == {"api.app"}


def test_an_app_with_nothing_routable_answers_its_own_503() -> None:
    cfg = two_apps()
    apps = envoy_apps_of(cfg, drained=frozenset({"api-0"}))
    hosts = hosts_of(route_configuration("untrusted-http", apps[0].snapshot, cfg, apps=apps))
    api = hosts["api.example.com"]["routes"]
    assert [r["direct_response"]["status"] for r in api] == [503]
    www = hosts["www.example.com"]["routes"]
    assert www[0]["match"] == {"path_separated_prefix": "/api"}
    assert www[0]["direct_response"]["status"] == 503
    assert www[1]["route"]["cluster"] == "ui.app"


def test_each_app_gets_its_clusters_and_its_connection_cap() -> None:
    cfg = two_apps()
    by_name: dict[str, Json] = {}
    for app in envoy_apps_of(cfg):
        clusters, assignments = clusters_and_endpoints(
            app.snapshot,
            app.config,
            dial,
            lambda name: {"ads": {}},
            prefix=app.cluster_prefix,
            max_requests=app.max_connections,
        )
        by_name |= {c["name"]: c for c in clusters}
        assert [a["cluster_name"] for a in assignments] == [app.cluster_prefix + "app"]
    assert set(by_name) == {"api.app", "ui.app"}
    limits = {n: c["circuit_breakers"]["thresholds"][0]["max_requests"] for n, c in by_name.items()}
    assert limits == {"api.app": 5, "ui.app": cfg.proxy.max_connections}
    assert by_name["ui.app"]["lb_policy"] == "MAGLEV"  # ui's sticky header
    assert by_name["api.app"]["lb_policy"] == "ROUND_ROBIN"


def test_an_app_at_its_own_cap_gets_a_503_naming_it_other_overflows_the_plain_one() -> None:
    caps = app_caps(envoy_apps_of(two_apps()))
    assert caps == [AppCap("api", "api.", 5)]  # ui has no cap of its own
    first, plain = local_replies(caps)["mappers"][:2]
    assert first["body_format_override"]["json_format"] == {
        "error": "overloaded",
        "app": "api",
        "limit": 5,
    }
    condition = json.dumps(first["filter"])
    assert '"UO"' in condition
    assert 'xds.cluster_name.startsWith(\\"api.\\")' in condition
    assert plain["body_format_override"]["json_format"] == {"error": "overloaded"}
    # a cap above proxy.max_connections is never what trips the cluster: not named
    huge = two_apps()
    views = [replace(app, max_connections=10**6) for app in envoy_apps_of(huge)]
    assert app_caps(views) == []


# -- the SNI rule on listen_tls (sni.py) -----------------------------------------------------


def string_matches(match: Json, value: str) -> bool:
    """Envoy's StringMatcher as chain_matcher.py uses it."""
    if "exact" in match:
        return value.lower() == str(match["exact"]).lower()
    if "suffix" in match:
        return value.lower().endswith(str(match["suffix"]).lower())
    return re.fullmatch(match["safe_regex"]["regex"], value) is not None


def matched_chain(matcher: Json, sni: str | None) -> str:
    """Envoy's reading of the SNI matcher: the first predicate that holds names the chain;
    without SNI the server name input has no value and no predicate holds."""
    for entry in matcher["matcher_list"]["matchers"]:
        value_match = entry["predicate"]["single_predicate"]["value_match"]
        if sni is not None and string_matches(value_match, sni):
            return str(entry["on_match"]["action"]["typed_config"]["value"])
    return str(matcher["on_no_match"]["action"]["typed_config"]["value"])


def router_choice(directory: AppDirectory, host: str, path: str, sni: str | None) -> str | None:
    """The Python engines' app for the request, None for their 421."""
    try:
        return directory.resolve(host, path, sni).name
    except ClientRequestError:
        return None


NO_SNI = "no-sni"
# SNI names: listed or not (the label d is never an app's), any case, or none at all.
SNI_NAMES = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3).map(".".join)
SNIS = st.one_of(st.none(), SNI_NAMES, SNI_NAMES.map(str.upper))


@settings(max_examples=300, deadline=None)
@given(
    routes=st.dictionaries(ROUTES, st.sampled_from(["api", "ui", "web"]), max_size=8),
    default=st.sampled_from([None, "ui"]),
    requests=st.lists(st.tuples(SNIS, NAMES, PATHS), min_size=1, max_size=10),
)
def test_envoy_refuses_a_host_the_connections_sni_cannot_reach_as_the_router_does(
    routes: dict[HostRoute, str], default: str | None, requests: list[tuple[str | None, str, str]]
) -> None:
    entries = {name: AppEntry(name, cast(SnapshotSource, None)) for name in ["api", "ui", "web"]}
    try:
        directory = AppDirectory(
            [(route, entries[app]) for route, app in routes.items()],
            entries[default] if default else None,
        )
    except RouteConflict:
        return
    apps = frozenset(routes.values()) | ({default} if default else set())
    chains = {
        chain.server_name: chain for chain in plan_sni_chains(list(routes.items()), default, apps)
    }
    matcher = sni_matcher([(name, name) for name in chains], NO_SNI)
    plans = plan_virtual_hosts(routes.items(), default)
    for sni, host, path in requests:
        chosen = envoy_route(envoy_virtual_host(plans, host), path)
        chain = chains.get(matched_chain(matcher, sni))  # None: the chain without names
        if chain is not None and chain.reachable is not None and chosen not in chain.reachable:
            chosen = None  # the chain's route configuration answers 421 for that app
        assert chosen == router_choice(directory, host, path, sni), (sni, host, path)


def tls_listener_with_sni(tmp_path: Path) -> Json:
    """The TLS listener of two apps (one a wildcard, the other the default) behind
    trusted proxies 10.0.0.0/8."""
    pem = tmp_path / "cert.pem"
    trustme.CA().issue_cert("router.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    static = {"static": [{"id": "r", "url": "http://10.0.0.1:8000"}]}
    cfg = parse_config(
        {
            "listen_tls": {"listen": "127.0.0.1:8443", "cert_file": str(pem), "key_file": str(pem)},
            "proxy": {"engine": "envoy", "trusted_proxies": ["10.0.0.0/8"]},
            "apps": [
                {"name": "api", "hosts": ["api.example.com"], "discovery": static},
                {"name": "ui", "hosts": ["*.ui.example.com"], "default": True, "discovery": static},
            ],
        },
        {},
    )
    chains = sni_chains(envoy_apps_of(cfg), [])
    (https,) = listeners(cfg, {"https": ("127.0.0.1", 1)}, lambda k, n: {}, ListenerApps(chains))
    return https


def test_the_tls_listener_picks_chains_by_peer_then_sni_and_every_pick_is_a_chain(
    tmp_path: Path,
) -> None:
    https = tls_listener_with_sni(tmp_path)
    names = {chain["name"] for chain in https["filter_chains"]}
    assert all("filter_chain_match" not in chain for chain in https["filter_chains"])
    (trusted_entry,) = https["filter_chain_matcher"]["matcher_list"]["matchers"]
    ip = trusted_entry["predicate"]["single_predicate"]["custom_match"]["typed_config"]
    assert ip["cidr_ranges"] == [{"address_prefix": "10.0.0.0", "prefix_len": 8}]
    by_peer = {
        "trusted": trusted_entry["on_match"]["matcher"],
        "untrusted": https["filter_chain_matcher"]["on_no_match"]["matcher"],
    }
    for peer, matcher in by_peer.items():
        for sni, chain in [
            ("api.example.com", "https-sni-api.example.com"),
            ("x.y.ui.example.com", "https-sni-*.ui.example.com"),
            ("other.example.org", "https-sni-*"),  # an unlisted name: the default app only
            (None, "https"),  # no SNI: routed by Host
        ]:
            picked = matched_chain(matcher, sni)
            assert picked == f"{peer}-{chain}", sni
            assert picked in names


def test_the_tls_listener_matcher_packs_for_envoys_fed_over_xds(tmp_path: Path) -> None:
    xds = pytest.importorskip("router.proxy.envoy.xds", reason="grpcio and xds-protos: [envoy]")
    packed = xds.to_any(tls_listener_with_sni(tmp_path))  # every @type is known to the server
    assert packed.type_url.endswith("envoy.config.listener.v3.Listener")
