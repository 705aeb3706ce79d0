"""`phala-router verify --nonce` against a router in a "CVM" (a fake guest agent): the router
serves an RA-TLS certificate and, on the same session, a quote made now for the client's
nonce. Both pass; a tampered, stale or another instance's nonce quote fails with exit 3."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation.simsig import public_key_bytes
from router.simulator.ratls import Identity, RaTlsServer
from tests.dstack_support import FakeGuestAgent, RouterCvm, guest_agent_socket
from tests.support import running_replica, running_router, static_config
from tests.test_ratls_verify_cli import run_cli


@dataclass
class CvmRouter:
    agent: FakeGuestAgent
    port: int


@pytest.fixture
async def cvm_router() -> AsyncIterator[CvmRouter]:
    agent = FakeGuestAgent()
    async with guest_agent_socket(agent) as socket, running_replica("r1") as replica:
        config = static_config(
            [("r1", f"http://127.0.0.1:{replica.port}")],
            listen=None,
            listen_tls={"listen": "127.0.0.1:0", "ra_tls": True, "dstack_socket": socket},
        )
        async with running_router(config) as router:
            yield CvmRouter(agent, router.app.engine.addresses[0][1])


async def verify(router: CvmRouter, *extra: str) -> tuple[int, str, str]:
    return await run_cli(
        f"https://router.test:{router.port}", "--connect", "127.0.0.1", "--nonce",
        "--insecure-simulator-key", router.agent.public_key.hex(),
        "--app-id", RouterCvm().app_id, *extra,
    )  # fmt: skip


async def test_verify_with_a_nonce_proves_the_certificate_and_a_quote_made_now(
    cvm_router: CvmRouter,
) -> None:
    code, out, err = await verify(cvm_router)
    assert code == 0, out + err
    assert "TLS key: bound" in out
    assert "fresh quote: PASS" in out
    # The router asked its guest agent for a quote with the nonce's binding.
    assert len(cvm_router.agent.quote_requests) >= 2


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [("tampered", "bad_signature"), ("stale", "stale_nonce"), ("other_instance", "wrong_instance")],
)
async def test_a_lying_nonce_quote_fails_with_exit_3(
    cvm_router: CvmRouter, tamper: str, reason: str
) -> None:
    cvm_router.agent.tamper = tamper
    code, out, err = await verify(cvm_router, "--json")
    assert code == 3, out + err
    document = json.loads(out)
    assert document["ok"] is True  # the certificate itself still verifies
    assert document["fresh_quote"]["reason"] == reason


async def test_a_server_without_the_endpoint_fails_the_nonce_check_with_exit_3() -> None:
    """An RA-TLS app that is not a router: its certificate verifies, but nothing answers the
    nonce, so `--nonce` cannot prove the CVM is live (`no_attestation_endpoint`)."""
    me = RouterCvm()
    quote_key = ec.generate_private_key(ec.SECP256R1())
    identity = Identity(me.app_id, me.instance_id, me.compose_hash)
    server = RaTlsServer("app", identity, quote_key, host="app.test")
    await server.start()
    try:
        code, out, err = await run_cli(
            f"https://app.test:{server.port}", "--connect", "127.0.0.1", "--nonce", "--json",
            "--insecure-simulator-key", public_key_bytes(quote_key.public_key()).hex(),
        )  # fmt: skip
    finally:
        await server.stop()
    assert code == 3, out + err
    document = json.loads(out)
    assert document["ok"] is True
    assert document["fresh_quote"]["reason"] == "no_attestation_endpoint"
    assert server.requests == 1  # the one nonce request, on the verified session
