"""The `attested-tls` sidecar through a fake dstack socket: it serves the RA-TLS key dstack
hands it, the router (connection: ra-tls) verifies it and reaches the plain app behind it,
and a renewed key is verified again."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation import remote
from router.attestation.claims import Expectation
from router.attestation.simsig import public_key_bytes
from router.attested_tls import AttestedTls
from router.reach import ra_tls_context
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Identity, SimCa, ra_tls_certificate
from tests.support import eventually, running_router, static_config

ME = Identity("ab" * 20, "33" * 20, "cd" * 32)
QUOTE_KEY = ec.generate_private_key(ec.SECP256R1())
HOST = f"{ME.instance_id}-8443s.dstack.test"


class FakeDstack:
    """POST /GetTlsKey like the guest agent: a fresh key, its RA-TLS certificate chain."""

    def __init__(self) -> None:
        self.ca = SimCa()
        self.requests: list[dict[str, Any]] = []

    async def get_tls_key(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        key, cert = ra_tls_certificate(ME, QUOTE_KEY, self.ca, host=HOST)
        assert self.ca.cert is not None
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, self.ca.cert)]
        return web.json_response({"key": pem, "certificate_chain": chain})


async def serve(app: web.Application, site: type[web.BaseSite], **kw: Any) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await site(runner, **kw).start()
    return runner


@pytest.fixture
async def fake_dstack() -> AsyncIterator[tuple[str, FakeDstack]]:
    with tempfile.TemporaryDirectory(prefix="dstack", dir="/tmp") as folder:
        socket = Path(folder) / "dstack.sock"
        dstack = FakeDstack()
        dstack_app = web.Application()
        dstack_app.router.add_post("/GetTlsKey", dstack.get_tls_key)
        runner = await serve(dstack_app, web.UnixSite, path=str(socket))
        try:
            yield str(socket), dstack
        finally:
            await runner.cleanup()


@pytest.fixture
async def plain_app() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"app says hi to {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = await serve(app, web.TCPSite, host="127.0.0.1", port=0)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def sidecar(
    fake_dstack: tuple[str, FakeDstack], plain_app: int
) -> AsyncIterator[tuple[AttestedTls, int, FakeDstack]]:
    socket, dstack = fake_dstack
    side = AttestedTls(("127.0.0.1", plain_app), endpoint=socket, renew=3600)
    port = await side.start("127.0.0.1", 0)
    try:
        yield side, port, dstack
    finally:
        await side.stop()


async def test_the_router_reaches_the_app_through_the_sidecars_attested_tls(
    sidecar: tuple[AttestedTls, int, FakeDstack],
) -> None:
    side, port, dstack = sidecar
    assert dstack.requests[0]["usage_ra_tls"] is True
    assert dstack.requests[0]["usage_server_auth"] is True
    config = static_config(
        [(ME.instance_id, f"https://{HOST}:8443")],
        health={"interval": "0.2s", "healthy_threshold": 1, "timeout": "2s"},
        attestation={
            "connection": "ra-tls",
            "verifier": "insecure-simulator",
            "simulator_public_keys": [public_key_bytes(QUOTE_KEY.public_key()).hex()],
            "app_id": ME.app_id,
            "allowed_compose_hashes": [ME.compose_hash],
            "os_measurements": [simulated_os_measurement()],
        },
    )
    config["discovery"]["connect_to"] = {HOST: f"127.0.0.1:{port}"}
    async with running_router(config) as router, aiohttp.ClientSession() as client:

        async def answered() -> bool:
            async with client.get(f"{router.url}/hello") as response:
                return response.status == 200 and await response.text() == "app says hi to /hello"

        await eventually(answered, timeout=10)
        gate = router.app.ratls_gate
        before = gate.verifications
        await side.refresh()  # a renewed key: the next new connection is verified again
        await eventually(lambda: gate.verifications > before, timeout=10)
        assert await answered()


async def test_a_router_with_listen_tls_ra_tls_can_be_verified_by_a_client(
    fake_dstack: tuple[str, FakeDstack], plain_app: int
) -> None:
    """`listen_tls.ra_tls`: the router in a CVM serves dstack's RA-TLS key; what
    `phala-router verify` runs proves the router's identity, and traffic flows over it."""
    socket, dstack = fake_dstack
    config = static_config(
        [("app", f"http://127.0.0.1:{plain_app}")],
        listen=None,
        listen_tls={"listen": "127.0.0.1:0", "ra_tls": True, "dstack_socket": socket},
        health={"interval": "0.2s", "healthy_threshold": 1},
    )
    async with running_router(config) as router:
        port = router.app.engine.addresses[0][1]
        endpoint = remote.Endpoint(HOST, port)
        leaf = await remote.fetch_leaf(endpoint, 5.0, connect_host="127.0.0.1")
        expect = Expectation(ME.app_id, ME.instance_id, frozenset({ME.compose_hash}))
        verdict = await remote.verify_endpoint(
            leaf, expect, None, verifier="insecure-simulator",
            trusted_simulator_keys=frozenset({public_key_bytes(QUOTE_KEY.public_key())}),
        )  # fmt: skip
        assert verdict.ok, verdict.reason
        assert dstack.requests[0]["usage_ra_tls"] is True
        connector = aiohttp.TCPConnector(ssl=ra_tls_context())
        async with aiohttp.ClientSession(connector=connector) as client:

            async def answered() -> bool:
                async with client.get(f"https://127.0.0.1:{port}/x") as response:
                    return await response.text() == "app says hi to /x"

            await eventually(answered, timeout=10)
