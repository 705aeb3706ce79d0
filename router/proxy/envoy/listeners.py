"""Config -> Envoy listeners (LDS) and the TLS secret (SDS) as JSON-ready dicts. Pure.

Listeners change only when the config does (a reload); what follows the snapshot lives in
the route configurations and load assignments, so a snapshot change never touches a
listener and never drains a connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from router.proxy.envoy.geo import (
    clear_route_cache,
    geoip_filter,
    geoip_mapped,
    strip_geoip_header,
)
from router.proxy.envoy.resources import Json, duration
from router.proxy.envoy.routes import TRUSTED, UNTRUSTED
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


def _status_is(status: int) -> Json:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "_"}}
        }
    }


def _flags(*flags: str) -> Json:
    return {"response_flag_filter": {"flags": list(flags)}}


def _mapper(filter_: Json, status: int, body: dict[str, str], **headers: str) -> Json:
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


def _tls_failed() -> Json:
    """The last connect failure was a TLS handshake (Envoy records the TLS error text)."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "upstream.transport_failure_reason.contains('TLS_error')",
            },
        }
    }


def local_replies() -> Json:
    """The Python engines' JSON error bodies for the replies Envoy makes itself."""
    return {
        "mappers": [
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
    config: ConfigView, route_name: str, source: Source, *, trusted: bool
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
            "local_reply_config": local_replies(),
        },
    }
    if geoip:  # a client's own copy of the GeoIP header must not steer routing
        manager["typed_config"]["early_header_mutation_extensions"] = [strip_geoip_header()]
    return manager


def _downstream_tls(config: ConfigView, source: Source) -> Json:
    alpn = ["h2", "http/1.1"] if config.proxy.envoy.http2 else ["http/1.1"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "common_tls_context": {
                # A secret from its own file: Envoy re-reads it (and the certificate files
                # it names) when it changes, without touching the listener.
                "tls_certificate_sds_secret_configs": [
                    {"name": TLS_SECRET, "sds_config": source("secrets", TLS_SECRET)}
                ],
                "alpn_protocols": alpn,
            },
        },
    }


def _filter_chains(config: ConfigView, scheme: str, source: Source) -> list[Json]:
    chains: list[Json] = []
    tls = _downstream_tls(config, source) if scheme == "https" else None
    peers: list[tuple[str, tuple[str, ...] | None]] = [(UNTRUSTED, None)]
    if config.proxy.trusted_proxies:
        peers.insert(0, (TRUSTED, config.proxy.trusted_proxies))
    for kind, cidrs in peers:
        chain: Json = {
            "filters": [
                connection_manager(config, f"{kind}-{scheme}", source, trusted=kind == TRUSTED)
            ]
        }
        if cidrs is not None:
            chain["filter_chain_match"] = {"source_prefix_ranges": _prefix_ranges(cidrs)}
        else:
            chain["name"] = f"{kind}-{scheme}"
        if tls is not None:
            chain["transport_socket"] = tls
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


def listener(name: str, host: str, port: int, config: ConfigView, source: Source) -> Json:
    scheme = "https" if name == "https" else "http"
    return {
        "@type": LISTENER_TYPE,
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": _filter_chains(config, scheme, source),
        "per_connection_buffer_limit_bytes": 1024 * 1024,
    }


def listeners(
    config: ConfigView, addresses: dict[str, tuple[str, int]], source: Source
) -> list[Json]:
    """`addresses`: listener name (http, https) -> the bound host and port."""
    return [listener(name, h, p, config, source) for name, (h, p) in sorted(addresses.items())]


def tls_secret(config: ConfigView) -> list[dict[str, Any]]:
    tls = config.listen_tls
    # Config validation refuses listen_tls.ra_tls (no certificate files) with this engine.
    if tls is None or tls.cert_file is None or tls.key_file is None:
        return []
    return [
        {
            "@type": SECRET_TYPE,
            "name": TLS_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": str(tls.cert_file.resolve())},
                "private_key": {"filename": str(tls.key_file.resolve())},
            },
        }
    ]
