"""`acme_webroot` under Envoy: ACME HTTP-01 challenges answered by the router itself.

Envoy cannot serve files from a directory whose tokens come and go, so the router answers
them (router/acme.py: GET/HEAD, ACME-alphabet tokens, files inside the webroot only) on a
loopback port of its own, and the plain listener's route for
`/.well-known/acme-challenge/` sends those requests there, before the https redirect and
before any app (`routes.acme_route`), as the Python engines do.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from router import acme
from router.proxy.envoy.resources import Json

ACME_CLUSTER = "acme-webroot"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class AcmeServer:
    """A loopback HTTP server answering challenge requests from `webroot`."""

    def __init__(self, webroot: Path) -> None:
        self.webroot = webroot
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        found = acme.answer(self.webroot, request.method, request.raw_path)
        if found is None:  # Envoy sends only challenge paths; anything else is not ours
            return web.Response(status=404, text="not an ACME challenge\n")
        return web.Response(
            status=found.status,
            body=found.body,
            content_type="text/plain",
            headers={"Cache-Control": "no-store"},
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def acme_cluster(port: int) -> Json:
    """The router's own challenge server on loopback (plain HTTP, a static address)."""
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "@type": CLUSTER_TYPE,
        "name": ACME_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ACME_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }
