"""The TLS listener's filter chain choice as Envoy's matcher API (`filter_chain_matcher`).

Envoy's classic `filter_chain_match` sends a client whose SNI names no configured host to
the same chain as a client that sends no SNI, so such a client would be routed by Host
alone; the router lets it reach only the default app (router/proxy/apps.py). The matcher
API tells the two apart: `ServerNameInput` has no value without SNI (no predicate matches,
`on_no_match` picks the chain without names) and a value for any name (the `.+` predicate
picks the unlisted-name chain). Once a listener uses the matcher, the peer split by
`proxy.trusted_proxies` has to be expressed there too (Envoy ignores `filter_chain_match`).
The order of the predicates is the router's precedence: exact names, then the longest
`*.suffix`, then any other name. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.proxy.envoy.resources import Json
from router.proxy.envoy.sni import ANY_OTHER_NAME

_NETWORK_INPUTS = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
SERVER_NAME_INPUT = _NETWORK_INPUTS + "ServerNameInput"
SOURCE_IP_INPUT = _NETWORK_INPUTS + "SourceIPInput"
IP_MATCHER = "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def _to_chain(chain: str) -> Json:
    """The matcher's action: the name of the filter chain to use."""
    return {"action": {"name": chain, "typed_config": {"@type": STRING_VALUE, "value": chain}}}


def server_name_match(server_name: str) -> Json:
    """The string match of one chain's server name (SNI case does not matter, as in the
    router, which lower-cases it)."""
    if server_name == ANY_OTHER_NAME:
        return {"safe_regex": {"google_re2": {}, "regex": ".+"}}
    if server_name.startswith("*."):  # any depth below the suffix, never the suffix itself
        return {"suffix": server_name[1:], "ignore_case": True}
    return {"exact": server_name, "ignore_case": True}


def _precedence(server_name: str) -> tuple[int, int]:
    if server_name == ANY_OTHER_NAME:
        return (2, 0)
    if server_name.startswith("*."):
        return (1, -len(server_name))  # the longest wildcard first
    return (0, 0)


def sni_matcher(named: Sequence[tuple[str, str]], no_sni: str) -> Json:
    """`named`: (server name, chain name); `no_sni`: the chain of clients without SNI."""
    ordered = sorted(named, key=lambda pair: (_precedence(pair[0]), pair[0]))
    matchers = [
        {
            "predicate": {
                "single_predicate": {
                    "input": {"name": "server_name", "typed_config": {"@type": SERVER_NAME_INPUT}},
                    "value_match": server_name_match(server_name),
                }
            },
            "on_match": _to_chain(chain),
        }
        for server_name, chain in ordered
    ]
    return {"matcher_list": {"matchers": matchers}, "on_no_match": _to_chain(no_sni)}


def peer_matcher(trusted_ranges: Sequence[Json], trusted: Json, untrusted: Json) -> Json:
    """Connections from `trusted_ranges` (CidrRange dicts) go through the `trusted`
    matcher, all others through `untrusted`; no ranges: `untrusted` alone."""
    if not trusted_ranges:
        return untrusted
    from_trusted = {
        "single_predicate": {
            "input": {"name": "source_ip", "typed_config": {"@type": SOURCE_IP_INPUT}},
            "custom_match": {
                "name": "trusted_proxies",
                "typed_config": {
                    "@type": IP_MATCHER,
                    "cidr_ranges": list(trusted_ranges),
                    "stat_prefix": "trusted_proxies",
                },
            },
        }
    }
    return {
        "matcher_list": {
            "matchers": [{"predicate": from_trusted, "on_match": {"matcher": trusted}}]
        },
        "on_no_match": {"matcher": untrusted},
    }
