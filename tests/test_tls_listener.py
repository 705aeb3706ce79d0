"""TLS on the router's own listener: verified clients, hot certificate swaps, bad files."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.support import eventually, running_replica, running_router, static_config


def write_pair(ca: trustme.CA, name: str, directory: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert(name)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return cert_file, key_file


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def served_names(port: int, ca: trustme.CA) -> list[str]:
    """The DNS names of the certificate the listener presents to a new connection."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    cert = writer.get_extra_info("peercert")
    writer.close()
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_config(
    port: int, cert: Path, key: Path, engine: str = "aiohttp", **tls: object
) -> dict[str, object]:
    return static_config(
        [("a", f"http://127.0.0.1:{port}")],
        listen=None,
        listen_tls={
            "listen": "127.0.0.1:0",
            "cert_file": str(cert),
            "key_file": str(key),
            "reload_interval": "50ms",
            **tls,
        },
        health={"enabled": False},
        proxy={"engine": engine},
    )


async def test_verified_client_gets_through_with_forwarded_proto_https(
    engine: str, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = write_pair(ca, "localhost", tmp_path)
    async with (
        running_replica("a") as a,
        running_router(tls_config(a.port, cert, key, engine)) as router,
    ):
        port = router.app.engine.addresses[0][1]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"https://localhost:{port}/", ssl=client_context(ca)) as resp:
                assert resp.status == 200
                assert (await resp.json())["headers"]["X-Forwarded-Proto"] == "https"


async def test_new_certificate_serves_new_connections_while_old_stream_completes(
    engine: str, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = write_pair(ca, "old.test", tmp_path)
    async with (
        running_replica("a") as a,
        running_router(tls_config(a.port, cert, key, engine)) as router,
    ):
        port = router.app.engine.addresses[0][1]
        assert await served_names(port, ca) == ["old.test"]
        async with aiohttp.ClientSession() as client:
            context = client_context(ca)
            context.check_hostname = False
            async with client.get(f"https://127.0.0.1:{port}/sse", ssl=context) as resp:
                assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
                write_pair(ca, "new.test", tmp_path)

                async def switched() -> bool:
                    return await served_names(port, ca) == ["new.test"]

                await eventually(switched, timeout=5)
                a.release.set()
                assert await resp.content.readuntil(b"\n\n") == b"data: second\n\n"


async def test_broken_certificate_file_keeps_the_old_one(
    engine: str, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = write_pair(ca, "old.test", tmp_path)
    async with (
        running_replica("a") as a,
        running_router(tls_config(a.port, cert, key, engine)) as router,
    ):
        port = router.app.engine.addresses[0][1]
        cert.write_text(
            "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
        )
        assert router.app.tls.reload() is False
        assert "refused" in caplog.text
        assert await served_names(port, ca) == ["old.test"]


async def test_plain_listener_redirects_to_https_when_asked(
    engine: str, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = write_pair(ca, "localhost", tmp_path)
    config = tls_config(0, cert, key, engine, redirect_http=True)
    config["listen"] = "127.0.0.1:0"
    async with running_router(config) as router:
        https_port = router.app.engine.addresses[0][1]
        http_port = router.app.engine.addresses[1][1]
        async with aiohttp.ClientSession() as client:
            async with client.get(
                f"http://localhost:{http_port}/a?b=1", allow_redirects=False
            ) as resp:
                assert resp.status == 308
                assert resp.headers["Location"] == f"https://localhost:{https_port}/a?b=1"
