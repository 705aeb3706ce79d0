"""Host and path matching of apps (router/apps/hosts.py): pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.apps.hosts import HostRoute, HostTable, RouteConflict, normalise_host, parse_route


def table(routes: dict[str, str], default: str | None = None) -> HostTable[str]:
    return HostTable(((parse_route(text), app) for text, app in routes.items()), default)


def test_exact_names_beat_wildcards_and_the_default() -> None:
    apps = table({"api.example.com": "api", "*.example.com": "wild"}, default="fallback")
    assert apps.lookup("api.example.com", "/") == "api"
    assert apps.lookup("ui.example.com", "/") == "wild"
    assert apps.lookup("a.b.example.com", "/") == "wild"  # any depth below the suffix
    assert apps.lookup("example.com", "/") == "fallback"  # a wildcard never names its apex
    assert apps.lookup("other.org", "/") == "fallback"


def test_without_a_default_an_unknown_host_has_no_app() -> None:
    apps = table({"api.example.com": "api"})
    assert apps.lookup("evil.example.net", "/") is None


def test_the_longest_wildcard_suffix_wins() -> None:
    apps = table({"*.example.com": "outer", "*.eu.example.com": "inner"})
    assert apps.lookup("x.eu.example.com", "/") == "inner"
    assert apps.lookup("x.us.example.com", "/") == "outer"


def test_the_longest_path_prefix_wins_on_path_segment_boundaries() -> None:
    apps = table(
        {"api.example.com": "api", "api.example.com/v2": "v2", "api.example.com/v2/admin": "admin"}
    )
    assert apps.lookup("api.example.com", "/v2/admin/users") == "admin"
    assert apps.lookup("api.example.com", "/v2/users") == "v2"
    assert apps.lookup("api.example.com", "/v2") == "v2"
    assert apps.lookup("api.example.com", "/v2?x=1") == "v2"
    assert apps.lookup("api.example.com", "/v20") == "api"  # not a segment of /v2
    assert apps.lookup("api.example.com", "/") == "api"


def test_a_host_whose_prefixes_do_not_match_falls_through_to_wildcard_then_default() -> None:
    apps = table({"api.example.com/v2": "v2", "*.example.com": "wild"}, default="fallback")
    assert apps.lookup("api.example.com", "/v1") == "wild"
    only_prefix = table({"api.example.com/v2": "v2"}, default="fallback")
    assert only_prefix.lookup("api.example.com", "/v1") == "fallback"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("API.Example.com", "api.example.com"),
        ("api.example.com:8443", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("[::1]:8080", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_host_headers_are_normalised(header: str, name: str) -> None:
    assert normalise_host(header) == name


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("API.example.com", HostRoute("api.example.com")),
        ("*.Example.com.", HostRoute("*.example.com")),
        ("api.localhost/v2/", HostRoute("api.localhost", "/v2")),
        ("localhost", HostRoute("localhost")),
    ],
)
def test_routes_are_parsed_and_normalised(text: str, route: HostRoute) -> None:
    assert parse_route(text) == route


@pytest.mark.parametrize(
    "text",
    [
        "",
        "https://api.example.com",
        "api.example.com:443",
        "*",
        "a.*.com",
        "*.*.com",
        "-a.com",
        "a b",
    ],
)
def test_bad_routes_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"host name|wildcard|required"):
        parse_route(text)


def test_two_apps_claiming_one_route_is_refused_naming_both() -> None:
    with pytest.raises(RouteConflict, match=r"api\.example\.com/v2.*\bone\b.*\btwo\b"):
        HostTable(
            [
                (parse_route("api.example.com/v2"), "one"),
                (parse_route("api.example.com/v2/"), "two"),
            ]
        )


def test_sni_reach_stops_at_a_catch_all() -> None:
    apps = table(
        {"api.example.com": "api", "api.example.com/v2": "v2", "*.example.com": "wild"}, "fallback"
    )
    assert apps.reachable("api.example.com") == {"api", "v2"}
    assert apps.reachable("ui.example.com") == {"wild"}
    assert apps.reachable("other.org") == {"fallback"}
    partial = table({"api.example.com/v2": "v2"}, default="fallback")
    assert partial.reachable("api.example.com") == {"v2", "fallback"}


# -- property: the table agrees with a brute-force reading of the precedence rules --------

_labels = st.sampled_from(["a", "b", "c"])
_names = st.lists(_labels, min_size=1, max_size=3).map(".".join)
_prefixes = st.sampled_from(["", "/x", "/x/y", "/y"])
_routes = st.builds(
    lambda wild, name, prefix: HostRoute(("*." if wild else "") + name, prefix),
    st.booleans(),
    _names,
    _prefixes,
)
_paths = st.sampled_from(["/", "/x", "/x/", "/x/y", "/x/y/z", "/xy", "/y?q", "/z"])


def _reference(
    routes: dict[HostRoute, int], host: str, path: str, default: int | None
) -> int | None:
    def prefix_ok(prefix: str) -> bool:
        return not prefix or path == prefix or path.startswith((prefix + "/", prefix + "?"))

    levels = [host] + ["*." + host.split(".", i)[i] for i in range(1, host.count(".") + 1)]
    for level in levels:
        matches = [
            (len(r.prefix), app)
            for r, app in routes.items()
            if r.host == level and prefix_ok(r.prefix)
        ]
        if matches:
            return max(matches)[1]
    return default


@given(
    st.dictionaries(_routes, st.integers(0, 5), max_size=8), _names, _paths, st.none() | st.just(99)
)
def test_lookup_matches_the_precedence_rules(
    routes: dict[HostRoute, int], host: str, path: str, default: int | None
) -> None:
    apps = HostTable(routes.items(), default)
    assert apps.lookup(host, path) == _reference(routes, host, path, default)
    if (found := apps.lookup(host, path)) is not None:
        assert found in apps.reachable(host)  # SNI reach covers every path's app
