"""The bootstrap Envoy starts from: node identity, admin on loopback, where LDS/CDS live.

Everything else arrives as dynamic resources, so the bootstrap never changes while the
router runs and Envoy never needs a restart to follow the config.
"""

from __future__ import annotations

import argparse
import json

from router.proxy.envoy.resources import Json
from router.proxy.envoy.tunnel import BOOTSTRAP_EXTENSION
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


def ads_bootstrap(admin_listen: str, server: str, *, node_id: str) -> Json:
    """A bootstrap for an Envoy that subscribes to a router's xDS server (ADS)."""
    host, port = split_host_port(admin_listen)
    xds_host, xds_port = split_host_port(server)
    ads: Json = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": NODE_ID},
        "admin": {"address": {"socket_address": {"address": host, "port_value": port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
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


def main(argv: list[str] | None = None) -> None:
    """`python -m router.proxy.envoy.bootstrap --xds ROUTER:PORT --node-id NAME` prints the
    bootstrap of an Envoy that takes its whole config from a router's xDS server."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--xds", required=True, help="the router's proxy.envoy.xds_listen")
    parser.add_argument("--node-id", required=True, help="this Envoy's name, e.g. its host")
    parser.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin address")
    args = parser.parse_args(argv)
    print(json.dumps(ads_bootstrap(args.admin, args.xds, node_id=args.node_id), indent=1))


if __name__ == "__main__":
    main()
