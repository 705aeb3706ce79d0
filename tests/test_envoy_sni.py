"""Several apps on `listen_tls` through a real Envoy: the SNI picks each app's certificate,
and a TLS connection whose SNI names one app cannot reach another by changing Host (421),
as under the Python engines (the same test runs against the fast engine). A name no app or
certificate lists reaches only the default app; a client without SNI is routed by Host."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from tests.envoy_support import require_envoy
from tests.support import running_replica, running_router
from tests.test_apps_serve import routable
from tests.test_tls_certificates import config_with_certificates, served_names

CLAIMED_CLIENT = "198.51.100.7"  # believed from trusted proxies only


async def request_over_tls(
    port: int, ca: trustme.CA, sni: str | None, host: str
) -> tuple[int, bytes]:
    """One HTTPS request on a connection with SNI `sni` (None: no SNI) and a Host `host`."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False  # the SNI names the certificate; Host is what is tested
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=sni or ""
    )
    writer.write(
        f"GET /v2/x HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {CLAIMED_CLIENT}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# The same expectations under the fast engine show Envoy's mapping keeps its rule.
# "trusted": the client is a trusted proxy, whose connections take Envoy's other chains.
@pytest.mark.parametrize(
    ("engine", "trusted"), [("envoy", False), ("envoy", True), ("fast", False)]
)
async def test_sni_picks_certificates_and_a_host_of_another_app_gets_421(
    engine: str, trusted: bool, tmp_path: Path
) -> None:
    if engine == "envoy":
        require_envoy()
    ca = trustme.CA()
    async with running_replica("api") as api, running_replica("ui") as ui:
        config = config_with_certificates(ca, tmp_path, engine, api.port, ui.port)
        if trusted:
            config["proxy"]["trusted_proxies"] = ["127.0.0.0/8"]
        async with running_router(config) as router:
            await routable(router)
            port = router.app.engine.addresses[0][1]
            certificates = {
                "api.example.com": ["api.example.com"],
                "API.Example.COM": ["api.example.com"],
                "ui.example.com": ["ui.example.com"],
                "eu.docs.example.com": ["docs.example.com"],  # a listed wildcard
                "docs.example.com": ["default.example.net"],  # a wildcard never covers its apex
                "unknown.example.org": ["default.example.net"],
                None: ["default.example.net"],
            }
            for sni, names in certificates.items():
                assert await served_names(port, ca, sni) == names, sni
            seen = api.hits + ui.hits
            # ui is the default app: a name only the default serves reaches ui, never api
            for sni, host in [
                ("api.example.com", "ui.example.com"),
                ("ui.example.com", "api.example.com"),
                ("eu.docs.example.com", "api.example.com"),
                ("api.example.com", "other.example.com"),  # the default app is ui
                ("API.Example.COM", "ui.example.com"),
                ("unknown.example.org", "api.example.com"),  # an unlisted name: default only
                ("Unknown.Example.ORG", "api.example.com"),
            ]:
                status, body = await request_over_tls(port, ca, sni, host)
                assert (status, b"misdirected_request" in body) == (421, True), (sni, host)
            assert api.hits + ui.hits == seen  # no replica was contacted
            for sni, host, replica in [
                ("api.example.com", "api.example.com", b'"api"'),
                ("ui.example.com", "ui.example.com", b'"ui"'),
                ("eu.docs.example.com", "other.example.com", b'"ui"'),  # both reach ui
                ("unknown.example.org", "ui.example.com", b'"ui"'),
                ("unknown.example.org", "other.example.com", b'"ui"'),
                (None, "api.example.com", b'"api"'),  # no SNI: Host alone decides
                (None, "ui.example.com", b'"ui"'),
            ]:
                status, body = await request_over_tls(port, ca, sni, host)
                assert status == 200, (sni, host)
                assert replica in body, (sni, host)
                assert (CLAIMED_CLIENT.encode() in body) == trusted, (sni, host)
