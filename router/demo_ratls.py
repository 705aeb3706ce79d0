"""`phala-router demo --attestation ra-tls`: attested connections, shown end to end.

Four simulated CVMs serve RA-TLS (their own key, a certificate whose simulator-signed quote
binds it) behind a simulated gateway TLS passthrough (`<instance_id>-8443s.<base>`: it reads
the SNI and relays raw bytes, so TLS ends inside the CVM). Two are honest; `mitm` presents a
CA-signed certificate with no attestation (a man in the middle) and `impostor` another
instance's genuine certificate. The router runs `attestation.connection: ra-tls`: it
verifies every new upstream session before writing a byte, so only the honest two get
traffic, and the status page says why the others do not. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from router.app import RouterApp
from router.attestation.simsig import public_key_bytes
from router.config import parse_config
from router.signals import wait_for_signal
from router.simulator.passthrough import Passthrough
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Behaviour, Identity, RaTlsServer, SimCa

APP_ID = "d3" * 20
COMPOSE_HASH = "c0" * 32
BASE_DOMAIN = "dstack-sim.local"
# (name, region, behaviour); instance ids are derived from the position.
CVMS: tuple[tuple[str, str, Behaviour], ...] = (
    ("eu-1", "eu-west", "ok"),
    ("us-1", "us-east", "ok"),
    ("mitm", "eu-west", "plain"),
    ("impostor", "us-east", "other_instance"),
)
WHAT_EACH_SHOWS = {
    "ok": "an honest CVM: its session is verified, it gets traffic",
    "plain": "a man in the middle with a CA-signed certificate and no attestation: refused "
    "after the handshake, it receives no request byte (ra_tls_no_attestation)",
    "other_instance": "another instance's genuine certificate (a leaked or relayed key): "
    "refused (ra_tls_wrong_instance)",
}


def instance_id(index: int) -> str:
    return f"{index + 1:02x}" * 20


@dataclass
class RaTlsCloud:
    """The simulated CVMs and the passthrough in front of them."""

    servers: list[RaTlsServer]
    passthrough: Passthrough
    quote_key: ec.EllipticCurvePrivateKey

    def router_overlay(self) -> dict[str, Any]:
        """The router's discovery and attestation sections for these CVMs."""
        static = [
            {"id": s.name, "url": f"https://{s.host}:8443", "region": region,
             "instance_id": s.identity.instance_id}
            for s, (_, region, _) in zip(self.servers, CVMS, strict=True)
        ]  # fmt: skip
        return {
            "discovery": {
                "static": static,
                # Every CVM host dials the passthrough, which picks the CVM by SNI.
                "connect_to": {f"*.{BASE_DOMAIN}": f"127.0.0.1:{self.passthrough.port}"},
            },
            "attestation": {
                "connection": "ra-tls",
                "verifier": "insecure-simulator",
                "simulator_public_keys": [public_key_bytes(self.quote_key.public_key()).hex()],
                "app_id": APP_ID,
                "allowed_compose_hashes": [COMPOSE_HASH],
                "os_measurements": [simulated_os_measurement()],
            },
        }


@contextlib.asynccontextmanager
async def ra_tls_cloud() -> AsyncIterator[RaTlsCloud]:
    quote_key, ca = ec.generate_private_key(ec.SECP256R1()), SimCa()
    routes: dict[str, int] = {}
    passthrough = Passthrough(routes)
    eu_1 = Identity(APP_ID, instance_id(0), COMPOSE_HASH)  # whom the impostor claims to be
    servers = [
        RaTlsServer(
            name,
            Identity(APP_ID, instance_id(index), COMPOSE_HASH),
            quote_key,
            ca=ca,
            behaviour=behaviour,
            host=f"{instance_id(index)}-8443s.{BASE_DOMAIN}",
            impersonate=eu_1,
        )
        for index, (name, _, behaviour) in enumerate(CVMS)
    ]
    await passthrough.start()
    try:
        for server in servers:
            await server.start()
            routes[server.host] = server.port
        yield RaTlsCloud(servers, passthrough, quote_key)
    finally:
        await passthrough.stop()
        for server in servers:
            await server.stop()


def ra_tls_banner(app: RouterApp, cloud: RaTlsCloud) -> str:
    host, port = app.engine.addresses[0]
    router, admin = f"http://{host}:{port}", f"http://127.0.0.1:{app.admin.port}"
    cvms = [
        f"  {s.name:<9} {s.host.split('.')[0]}  {WHAT_EACH_SHOWS[s.behaviour]}"
        for s in cloud.servers
    ]
    return "\n".join(
        [
            "",
            "phala-router demo: RA-TLS upstreams (attestation.connection: ra-tls)",
            f"  router        {router}",
            f"  status page   {admin}/status.html   (JSON: {admin}/status)",
            f"  passthrough   127.0.0.1:{cloud.passthrough.port}  (the gateway's "
            f"<instance_id>-8443s.{BASE_DOMAIN}: relays raw TLS, holds no key)",
            "",
            "The CVMs:",
            *cvms,
            "",
            "What each request's session proves: it ends inside a TDX CVM whose quote (in the",
            "certificate) passes every check: signature, TCB, OS measurements, app, compose and",
            "THIS replica's instance; and the quote binds the session key (report_data =",
            "sha512('ratls-cert:' + SPKI)). Not proven: availability (the gateway can still drop",
            "connections), or anything about quotes signed by real Intel hardware: this demo's",
            "quotes are simulator-signed (verifier: insecure-simulator).",
            "",
            "Try:",
            f"  for i in 1 2 3 4; do curl -s {router}/; echo; done        # only eu-1 and us-1",
            f"  curl -s {admin}/status | python3 -m json.tool | grep -E '\"(id|reason)\"'",
            "",
            "Ctrl-C to stop.",
        ]
    )


async def run_ra_tls_demo(
    *,
    port: int,
    admin_port: int,
    policy: str = "round_robin",
    access_log: bool = False,
    stop: asyncio.Event | None = None,
    ready: Callable[[RouterApp, RaTlsCloud], None] | None = None,
) -> None:
    async with ra_tls_cloud() as cloud:
        config = {
            "listen": f"127.0.0.1:{port}",
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
            **cloud.router_overlay(),
            "health": {"interval": "2s", "unhealthy_interval": "500ms", "timeout": "1s"},
            "routing": {"policy": policy, "debug_headers": True},
        }
        app = RouterApp(
            parse_config(config, os.environ), environ=os.environ, access_log_enabled=access_log
        )
        try:
            await app.start()
            print(ra_tls_banner(app, cloud), flush=True)
            if ready is not None:
                ready(app, cloud)
            await (wait_for_signal() if stop is None else stop.wait())
        finally:
            await app.stop(2)
