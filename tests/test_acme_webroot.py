"""ACME HTTP-01 on the plain listener (`acme_webroot`): certbot --webroot renews while the
router holds port 80, even with the https redirect on; nothing else under the path leaks."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import trustme

from tests.support import running_replica, running_router
from tests.test_tls_listener import tls_config, write_pair


async def test_challenge_files_are_served_on_the_plain_listener_before_the_redirect(
    engine: str, tmp_path: Path
) -> None:
    webroot = tmp_path / "acme"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    (webroot / ".well-known" / "acme-challenge" / "tok-EN_1").write_bytes(b"tok-EN_1.thumbprint")
    (tmp_path / "secret.txt").write_text("outside the webroot")
    cert, key = write_pair(trustme.CA(), "localhost", tmp_path)
    async with running_replica("a") as a:
        config = tls_config(a.port, cert, key, engine, redirect_http=True)
        config["listen"] = "127.0.0.1:0"
        config["acme_webroot"] = str(webroot)
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            http_port = router.app.engine.addresses[1][1]
            base = f"http://localhost:{http_port}/.well-known/acme-challenge"

            async def get(url: str) -> tuple[int, str]:
                async with client.get(url, allow_redirects=False) as resp:
                    return resp.status, await resp.text()

            assert await get(f"{base}/tok-EN_1") == (200, "tok-EN_1.thumbprint")
            assert (await get(f"{base}/missing"))[0] == 404
            assert (await get(f"{base}/..%2F..%2Fsecret.txt"))[0] == 404
            assert (await get(f"http://localhost:{http_port}/other"))[0] == 308  # still redirected
    assert a.hits == 0  # no challenge request reached a replica
