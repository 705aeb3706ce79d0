"""Answers the router makes itself behind Envoy, on loopback ports of its own.

Some paths on the public listeners are never an app's: ACME challenges (`acme_server.py`)
and the router's own attestation (`/.well-known/phala-router/attestation`, answered by
`router.self_attestation` through `router.proxy.well_known.AttestationEndpoint`). Envoy
cannot make those answers, so a route sends each path to a small aiohttp server the
router runs on 127.0.0.1, before the https redirect and before any app, as the Python
engines answer them in-process. Only the Envoy on this machine gets these routes: Envoys
fed over xDS cannot reach the router's loopback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from router.proxy.envoy.resources import Json
from router.proxy.well_known import ATTESTATION_PATH, AttestationEndpoint

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ATTESTATION_CLUSTER = "router-attestation"
# A fresh quote from the guest agent takes a while; the endpoint bounds its own work.
ATTESTATION_TIMEOUT = "30s"
Handler = Callable[[web.Request], Awaitable[web.Response]]


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (an ephemeral port) answering every path with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def loopback_cluster(name: str, port: int) -> Json:
    """A router's loopback server as a cluster (plain HTTP, a static address)."""
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }


def forwarded_client(request: web.Request) -> str:
    """The client Envoy names: the last X-Forwarded-For item is always the peer Envoy saw
    (the route's header rules write or append it), which is the address the Python engines
    pass for the per-client quote budget."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.rsplit(",", 1)[-1].strip() or (request.remote or "")


def attestation_handler(endpoint: AttestationEndpoint) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        local = await endpoint.answer(request.method, request.path_qs, forwarded_client(request))
        return web.Response(
            status=local.status,
            body=local.body,
            content_type=local.content_type,
            headers=dict(local.headers),
        )

    return handle


def attestation_route(cluster: str = ATTESTATION_CLUSTER) -> Json:
    """The attestation path (any query; Envoy's `path` match ignores it) to the router."""
    return {
        "match": {"path": ATTESTATION_PATH},
        "route": {"cluster": cluster, "timeout": ATTESTATION_TIMEOUT},
    }
