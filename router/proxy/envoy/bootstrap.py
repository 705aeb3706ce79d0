"""The bootstrap Envoy starts from: node identity, admin on loopback, where LDS/CDS live.

Everything else arrives as dynamic resources, so the bootstrap never changes while the
router runs and Envoy never needs a restart to follow the config.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from router.proxy.envoy.resources import Json
from router.proxy.envoy.tunnel import BOOTSTRAP_EXTENSION
from router.proxy.envoy.upstream_tls import UPSTREAM_TLS_TYPE
from router.settings_types import split_host_port

NODE_ID = "phala-router"
# Geo routing matches countries and coordinate cells with regexes (geo.py) larger than
# Envoy's default RE2 program-size limit (100), which would reject the whole route table.
RUNTIME: Json = {
    "layers": [
        {
            "name": "phala-router",
            "static_layer": {
                "re2.max_program_size.error_level": 1_000_000,
                "re2.max_program_size.warn_level": 1_000_000,
            },
        }
    ]
}


def bootstrap(admin_listen: str, lds: Json, cds: Json, *, node_id: str = NODE_ID) -> Json:
    host, port = split_host_port(admin_listen)
    return {
        "node": {"id": node_id, "cluster": NODE_ID},
        "admin": {"address": {"socket_address": {"address": host, "port_value": port}}},
        "dynamic_resources": {"lds_config": lds, "cds_config": cds},
        # Internal listeners: replicas sharing a gateway address (tunnel.py).
        "bootstrap_extensions": [BOOTSTRAP_EXTENSION],
        "layered_runtime": RUNTIME,
        # Overload protection is the per-cluster circuit breaker; this only states that
        # the listener has no extra cap of its own (Envoy warns without one).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 1_000_000,
                    },
                }
            ]
        },
    }


@dataclass(frozen=True)
class XdsClientTLS:
    """How a subscribing Envoy checks the router (`ca_file`, the name in its certificate)
    and proves itself (`cert_file`/`key_file`, for `proxy.envoy.xds_tls.client_ca_file`)."""

    ca_file: str
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def _xds_tls(tls: XdsClientTLS, xds_host: str) -> Json:
    name = tls.server_name or xds_host
    try:
        ipaddress.ip_address(name)
        san_type = "IP_ADDRESS"
    except ValueError:
        san_type = "DNS"
    common: Json = {
        "alpn_protocols": ["h2"],  # gRPC
        "validation_context": {
            "trusted_ca": {"filename": str(Path(tls.ca_file).resolve())},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
        },
    }
    if tls.cert_file and tls.key_file:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(Path(tls.cert_file).resolve())},
                "private_key": {"filename": str(Path(tls.key_file).resolve())},
            }
        ]
    context: Json = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if san_type == "DNS":
        context["sni"] = name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def ads_bootstrap(
    admin_listen: str,
    server: str,
    *,
    node_id: str,
    tls: XdsClientTLS | None = None,
    delta: bool = False,
) -> Json:
    """A bootstrap for an Envoy that subscribes to a router's xDS server (ADS); `tls` when
    the router serves xDS over TLS (`proxy.envoy.xds_tls`); `delta`: incremental xDS."""
    host, port = split_host_port(admin_listen)
    xds_host, xds_port = split_host_port(server)
    ads: Json = {"ads": {}, "resource_api_version": "V3"}
    document: Json = {
        "node": {"id": node_id, "cluster": NODE_ID},
        "admin": {"address": {"socket_address": {"address": host, "port_value": port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "bootstrap_extensions": [BOOTSTRAP_EXTENSION],
        "layered_runtime": RUNTIME,
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STRICT_DNS",
                    "connect_timeout": "2s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
    if tls is not None:
        document["static_resources"]["clusters"][0]["transport_socket"] = _xds_tls(tls, xds_host)
    return document


def main(argv: list[str] | None = None) -> None:
    """`python -m router.proxy.envoy.bootstrap --xds ROUTER:PORT --node-id NAME` prints the
    bootstrap of an Envoy that takes its whole config from a router's xDS server."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--xds", required=True, help="the router's proxy.envoy.xds_listen")
    parser.add_argument("--node-id", required=True, help="this Envoy's name, e.g. its host")
    parser.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin address")
    parser.add_argument("--xds-ca", help="CA of the router's xDS certificate (xds_tls)")
    parser.add_argument("--xds-name", help="the name in that certificate (default: the host)")
    parser.add_argument("--client-cert", help="this Envoy's certificate (mutual TLS)")
    parser.add_argument("--client-key", help="its private key")
    parser.add_argument(
        "--delta", action="store_true", help="incremental xDS (only what changed is sent)"
    )
    args = parser.parse_args(argv)
    if bool(args.client_cert) != bool(args.client_key) or (args.client_cert and not args.xds_ca):
        parser.error("--client-cert and --client-key go together, and need --xds-ca")
    tls = (
        XdsClientTLS(args.xds_ca, args.xds_name, args.client_cert, args.client_key)
        if args.xds_ca
        else None
    )
    document = ads_bootstrap(args.admin, args.xds, node_id=args.node_id, tls=tls, delta=args.delta)
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
