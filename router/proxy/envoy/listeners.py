"""Config -> Envoy listeners (LDS) and the TLS secret (SDS) as JSON-ready dicts. Pure.

Listeners change only when the config does (a reload); what follows the snapshot lives in
the route configurations and load assignments, so a snapshot change never touches a
listener and never drains a connection.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.proxy.envoy.chain_matcher import peer_matcher, sni_matcher
from router.proxy.envoy.geo import (
    clear_route_cache,
    geoip_filter,
    geoip_mapped,
    strip_geoip_header,
)
from router.proxy.envoy.resources import Json, duration
from router.proxy.envoy.routes import TRUSTED, UNTRUSTED, peer_kinds, restricted_route_name
from router.proxy.envoy.sni import SniChain
from router.proxy.envoy.vhosts import AppCap
from router.proxy.envoy.view import ConfigView
from router.proxy.headers import VIA

# (resource kind, name) -> the ConfigSource Envoy reads it from (file path or ADS).
Source = Callable[[str, str], Json]

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DOWNSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
# A type URL and a resource name, not credentials.
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
TLS_SECRET = "listen_tls"  # noqa: S105
TLS_INSPECTOR_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)


def _status_is(status: int) -> Json:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "_"}}
        }
    }


def _flags(*flags: str) -> Json:
    return {"response_flag_filter": {"flags": list(flags)}}


def _mapper(filter_: Json, status: int, body: dict[str, Any], **headers: str) -> Json:
    mapper: Json = {
        "filter": filter_,
        "status_code": status,
        "body_format_override": {"json_format": body},
    }
    if headers:
        mapper["headers_to_add"] = [
            {
                "header": {"key": k.replace("_", "-"), "value": v},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
            for k, v in headers.items()
        ]
    return mapper


def _cel(expression: str) -> Json:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


@dataclass(frozen=True)
class ListenerApps:
    """What several apps add to the listeners (both change only on reload): the TLS
    listener's chains by server name (sni.py) and each capped app's overload reply."""

    sni: Sequence[SniChain] = ()
    caps: Sequence[AppCap] = ()


NO_APPS = ListenerApps()


def _app_overloaded(cap: AppCap) -> Json:
    """The Python engines' 503 for an app at its cap names the app and the cap; Envoy knows
    the cluster the request was for, and each app's clusters carry its name."""
    on_cluster = _cel(f"xds.cluster_name.startsWith({json.dumps(cap.cluster_prefix)})")
    return _mapper(
        {"and_filter": {"filters": [_flags("UO"), on_cluster]}},
        503,
        {"error": "overloaded", "app": cap.name, "limit": cap.limit},
        Retry_After="1",
    )


def _tls_failed() -> Json:
    """The last connect failure was a TLS handshake (Envoy records the TLS error text)."""
    return _cel("upstream.transport_failure_reason.contains('TLS_error')")


def local_replies(caps: Sequence[AppCap] = ()) -> Json:
    """The Python engines' JSON error bodies for the replies Envoy makes itself."""
    return {
        "mappers": [
            *(_app_overloaded(cap) for cap in caps),
            _mapper(_flags("UO"), 503, {"error": "overloaded"}, Retry_After="1"),
            _mapper(_flags("UH", "NR"), 503, {"error": "no_healthy_replica"}, Retry_After="5"),
            _mapper(
                {"and_filter": {"filters": [_flags("UF", "URX"), _tls_failed()]}},
                502,
                {"error": "upstream_connect_failed", "cause": "tls"},
            ),
            _mapper(
                _flags("UF", "URX"),
                502,
                {"error": "upstream_connect_failed", "cause": "connect"},
            ),
            _mapper(_status_is(504), 504, {"error": "upstream_timeout"}),
            _mapper(_status_is(502), 502, {"error": "upstream_protocol_error"}),
            _mapper(_status_is(400), 400, {"error": "bad_request"}),
            _mapper(_status_is(413), 413, {"error": "body_too_large"}),
            _mapper(_status_is(408), 408, {"error": "request_timeout"}),
        ],
    }


def connection_manager(
    config: ConfigView,
    route_name: str,
    source: Source,
    *,
    trusted: bool,
    caps: Sequence[AppCap] = (),
) -> Json:
    proxy = config.proxy
    http2 = proxy.envoy.http2
    geoip = geoip_mapped(config)
    manager: Json = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": route_name,
            # AUTO speaks HTTP/1.1, and HTTP/2 to clients that start with its preface (h2c).
            "codec_type": "AUTO" if http2 else "HTTP1",
            "rds": {"route_config_name": route_name, "config_source": source("routes", route_name)},
            "http_filters": [
                *([geoip_filter(config), clear_route_cache()] if geoip else []),
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True},
                },
            ],
            "use_remote_address": True,
            # X-Forwarded-For is written by the route's header rules, as the Python engines do.
            "skip_xff_append": True,
            # A trusted proxy's X-Forwarded-For names the client (one hop, as the picker).
            "xff_num_trusted_hops": 1 if trusted else 0,
            "via": VIA,
            "server_header_transformation": "PASS_THROUGH",
            "generate_request_id": False,
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "request_headers_timeout": duration(proxy.client_header_timeout),
            "stream_idle_timeout": duration(max(proxy.client_body_timeout, proxy.response_timeout)),
            "common_http_protocol_options": {
                "idle_timeout": duration(proxy.client_idle_timeout),
                "headers_with_underscores_action": "ALLOW",
            },
            "http_protocol_options": {},
            "normalize_path": False,
            "local_reply_config": local_replies(caps),
        },
    }
    if geoip:  # a client's own copy of the GeoIP header must not steer routing
        manager["typed_config"]["early_header_mutation_extensions"] = [strip_geoip_header()]
    return manager


def _downstream_tls(config: ConfigView, source: Source, secret: str = TLS_SECRET) -> Json:
    alpn = ["h2", "http/1.1"] if config.proxy.envoy.http2 else ["http/1.1"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "common_tls_context": {
                # A secret from its own file: Envoy re-reads it (and the certificate files
                # it names) when it changes, without touching the listener.
                "tls_certificate_sds_secret_configs": [
                    {"name": secret, "sds_config": source("secrets", secret)}
                ],
                "alpn_protocols": alpn,
            },
        },
    }


def _peer_chain(
    config: ConfigView, kind: str, route: str, source: Source, apps: ListenerApps
) -> Json:
    """One filter chain for a class of peer (`kind`), routed by the configuration `route`."""
    manager = connection_manager(config, route, source, trusted=kind == TRUSTED, caps=apps.caps)
    chain: Json = {"name": route, "filters": [manager]}
    if kind == TRUSTED:
        chain["filter_chain_match"] = {
            "source_prefix_ranges": _prefix_ranges(config.proxy.trusted_proxies)
        }
    return chain


def _sni_chain(
    config: ConfigView, kind: str, sni: SniChain, source: Source, apps: ListenerApps
) -> Json:
    """The chain of connections whose SNI is `sni.server_name` (or a name only its wildcard
    covers, or any unlisted name): its certificate, and 421 for the apps it cannot reach.
    The listener's matcher picks it (chain_matcher.py)."""
    route = f"{kind}-https"
    if sni.reachable is not None:
        route = restricted_route_name(kind, sni.reachable)
    chain = _peer_chain(config, kind, route, source, apps)
    chain["name"] = _sni_chain_name(kind, sni.server_name)
    chain.pop("filter_chain_match", None)
    secret = TLS_SECRET if sni.certificate is None else sni.certificate.label
    chain["transport_socket"] = _downstream_tls(config, source, secret)
    return chain


def _sni_chain_name(kind: str, server_name: str) -> str:
    return f"{kind}-https-sni-{server_name}"


def _chain_matcher(config: ConfigView, sni: Sequence[SniChain]) -> Json:
    """The TLS listener's chain choice: peer class, then SNI (exact, longest wildcard, any
    other name); clients without SNI get the peer class's chain without names."""
    by_kind = {
        kind: sni_matcher(
            [(chain.server_name, _sni_chain_name(kind, chain.server_name)) for chain in sni],
            f"{kind}-https",
        )
        for kind in peer_kinds(config)
    }
    trusted = by_kind.get(TRUSTED)
    if trusted is None:
        return by_kind[UNTRUSTED]
    ranges = _prefix_ranges(config.proxy.trusted_proxies)
    return peer_matcher(ranges, trusted, by_kind[UNTRUSTED])


def _filter_chains(
    config: ConfigView, scheme: str, source: Source, apps: ListenerApps
) -> list[Json]:
    chains: list[Json] = []
    for kind in peer_kinds(config):
        chain = _peer_chain(config, kind, f"{kind}-{scheme}", source, apps)
        if scheme == "https":
            # Clients without SNI (and any SNI when no chain is chosen by name).
            chain["transport_socket"] = _downstream_tls(config, source)
            if apps.sni:  # the matcher picks chains (chain_matcher.py), not this field
                chain.pop("filter_chain_match", None)
            chains += [_sni_chain(config, kind, name, source, apps) for name in apps.sni]
        chains.append(chain)
    return chains


def _prefix_ranges(cidrs: tuple[str, ...]) -> list[Json]:
    ranges = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        ranges.append(
            {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}
        )
    return ranges


def listener(
    name: str,
    host: str,
    port: int,
    config: ConfigView,
    source: Source,
    apps: ListenerApps = NO_APPS,
) -> Json:
    scheme = "https" if name == "https" else "http"
    result: Json = {
        "@type": LISTENER_TYPE,
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": _filter_chains(config, scheme, source, apps),
        "per_connection_buffer_limit_bytes": 1024 * 1024,
    }
    if apps.sni and scheme == "https":  # chains chosen by SNI need the TLS ClientHello read first
        result["filter_chain_matcher"] = _chain_matcher(config, apps.sni)
        result["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR_TYPE},
            }
        ]
    return result


def listeners(
    config: ConfigView,
    addresses: dict[str, tuple[str, int]],
    source: Source,
    apps: ListenerApps = NO_APPS,
) -> list[Json]:
    """`addresses`: listener name (http, https) -> the bound host and port."""
    return [
        listener(name, h, p, config, source, apps) for name, (h, p) in sorted(addresses.items())
    ]


def _secret(name: str, cert_file: Path, key_file: Path) -> Json:
    return {
        "@type": SECRET_TYPE,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": str(cert_file.resolve())},
            "private_key": {"filename": str(key_file.resolve())},
        },
    }


def tls_secret(config: ConfigView, sni: Sequence[SniChain] = ()) -> list[dict[str, Any]]:
    """The listener's default certificate and each certificate an SNI chain serves."""
    tls = config.listen_tls
    # Config validation refuses listen_tls.ra_tls (no certificate files) with this engine.
    if tls is None or tls.cert_file is None or tls.key_file is None:
        return []
    by_label = {c.certificate.label: c.certificate for c in sni if c.certificate is not None}
    return [
        _secret(TLS_SECRET, tls.cert_file, tls.key_file),
        *(_secret(label, c.cert_file, c.key_file) for label, c in sorted(by_label.items())),
    ]
