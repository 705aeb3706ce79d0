"""`phala-router demo`: the router in front of a simulated Phala Cloud, no account needed.

Starts the simulator (4 replicas in 3 regions behind a TLS gateway, one of them stopped),
then the router with `discovery.phala` pointed at it, prints where to look, and runs until
Ctrl-C. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from router.app import RouterApp
from router.config import parse_config
from router.signals import wait_for_signal
from router.simulator import Simulator, SimulatorConfig

API_KEY_ENV = "PHALA_CLOUD_API_KEY"


def _port_or_any(port: int) -> int:
    """The preferred port when it is free, else an ephemeral one (0)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def demo_router_config(
    sim: Simulator, *, port: int, admin_port: int, policy: str, attestation: str
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        **sim.router_overlay(api_key_env=API_KEY_ENV),
        "health": {"interval": "2s", "unhealthy_interval": "500ms", "timeout": "1s"},
        "routing": {"policy": policy, "debug_headers": True},
        # The demo's curl runs on this machine: trusting loopback lets it play a CDN that
        # sets CF-IPCountry, to show geo routing. Never trust client networks in production.
        "proxy": {"trusted_proxies": ["127.0.0.1/32"]},
    }
    config["discovery"]["phala"]["interval"] = "3s"
    if attestation != "off":
        config["attestation"] = sim.attestation_section(attestation, interval="30s")
    return config


def banner(app: RouterApp, sim: Simulator) -> str:
    host, port = app.engine.addresses[0]
    router = f"http://{host}:{port}"
    admin = f"http://127.0.0.1:{app.admin.port}"
    return "\n".join(
        [
            "",
            "phala-router demo: the router in front of a simulated Phala Cloud",
            f"  router        {router}",
            f"  status page   {admin}/status.html   (JSON: {admin}/status)",
            f"  metrics       {admin}/metrics",
            f"  simulator     {sim.control_url}/replicas   (Cloud API {sim.api_url})",
            "",
            "Try:",
            f"  for i in 1 2 3 4; do curl -s {router}/ | python3 -m json.tool | grep -E '\"(replica|region)\"'; done",
            f"  curl -s {admin}/status | python3 -m json.tool | grep -E '\"(id|state|reason)\"'",
            f"  curl -s -X POST {sim.control_url}/replicas/<id>/stop      # watch it leave the rotation",
            f"  curl -si -H 'CF-IPCountry: DE' {router}/ | grep X-Router-Route   # --policy geo: eu-west",
            f"  curl -si -H 'CF-IPCountry: US' {router}/ | grep X-Router-Route   # --policy geo: us-east",
            "",
            "Ctrl-C to stop.",
        ]
    )


async def run_demo(
    *,
    port: int = 8080,
    admin_port: int = 9090,
    policy: str = "round_robin",
    attestation: str = "off",
    access_log: bool = False,
    stop: asyncio.Event | None = None,
    ready: Callable[[RouterApp, Simulator], None] | None = None,
) -> None:
    sim = Simulator(SimulatorConfig.demo(tls=True, attestation=attestation != "off"))
    await sim.start()
    environ = {**os.environ, API_KEY_ENV: sim.config.api_key}
    config = parse_config(
        demo_router_config(
            sim,
            port=_port_or_any(port),
            admin_port=_port_or_any(admin_port),
            policy=policy,
            attestation=attestation,
        ),
        environ,
    )
    app = RouterApp(config, environ=environ, access_log_enabled=access_log)
    try:
        await app.start()
        print(sim.banner())
        print(banner(app, sim), flush=True)
        if ready is not None:
            ready(app, sim)
        if stop is None:
            await wait_for_signal()
        else:
            await stop.wait()
    finally:
        await app.stop(2)
        await sim.stop()
