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
from router.proxy.envoy.loopback import LoopbackServer, loopback_cluster
from router.proxy.envoy.resources import Json

ACME_CLUSTER = "acme-webroot"


class AcmeServer(LoopbackServer):
    """A loopback HTTP server answering challenge requests from `webroot`."""

    def __init__(self, webroot: Path) -> None:
        super().__init__(self._answer)
        self.webroot = webroot

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


def acme_cluster(port: int) -> Json:
    """The router's own challenge server on loopback (plain HTTP, a static address)."""
    return loopback_cluster(ACME_CLUSTER, port)
