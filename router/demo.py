"""`phala-router demo`: the router in front of a simulated Phala Cloud, no account needed.

Two apps on one router, both in one simulated cloud (one Cloud API, one TLS gateway, one
API key): `api` (4 replicas in 3 regions, one of them stopped; the default app, so a bare
127.0.0.1 reaches it) and `ui` (2 replicas), chosen by Host (`api.localhost`,
`ui.localhost`). Prints where to look and runs until Ctrl-C. Everything listens on
127.0.0.1 only. `--attestation ra-tls` runs `demo_ratls.py` instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from router.app import RouterApp
from router.config import parse_config
from router.demo_ratls import run_ra_tls_demo
from router.signals import wait_for_signal
from router.simulator import SimAppConfig, SimReplicaConfig, Simulator, SimulatorConfig

API_KEY_ENV = "PHALA_CLOUD_API_KEY"
# The second app of the demo's cloud: its own app id, so its instance ids differ from api's.
UI_APP_ID = "app_" + "5e" * 20


def _port_or_any(port: int) -> int:
    """The preferred port when it is free, else an ephemeral one (0)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def demo_simulator_config(attestation: bool) -> SimulatorConfig:
    """The demo's cloud: api's 4 replicas (SimulatorConfig.demo) and ui's 2, one gateway."""
    ui = SimAppConfig(
        app_id=UI_APP_ID,
        app_name="sim-ui",
        replicas=(
            SimReplicaConfig(region="us-east", node="node-ui-1"),
            SimReplicaConfig(region="eu-west", node="node-ui-2"),
        ),
    )
    return SimulatorConfig.demo(tls=True, attestation=attestation, apps=(ui,))


def demo_apps(sim: Simulator, attestation: str) -> list[dict[str, Any]]:
    """api (the simulator's first app) and ui, each discovered by its own app_id."""
    apps: list[dict[str, Any]] = [
        {"name": "api", "hosts": ["api.localhost"], "default": True},
        {"name": "ui", "hosts": ["ui.localhost"]},
    ]
    for app, app_id in zip(apps, sim.app_ids, strict=True):
        app["discovery"] = {"phala": {"app_id": app_id}}
        if attestation != "off":  # the same quote signer; each app's quotes name its app_id
            app["attestation"] = sim.attestation_section(attestation, app_id=app_id, interval="30s")
    return apps


def demo_router_config(
    sim: Simulator, *, port: int, admin_port: int, policy: str, attestation: str
) -> dict[str, Any]:
    """One router for every app of `sim`: the top-level discovery (API URL, key, gateway)
    is every app's default; each app adds its app_id."""
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
    if len(sim.app_ids) > 1:
        config["apps"] = demo_apps(sim, attestation)
    elif attestation != "off":
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
            *(_app_lines(router, admin) if len(sim.app_ids) > 1 else []),
            f"  curl -s {admin}/status | python3 -m json.tool | grep -E '\"(id|state|reason)\"'",
            f"  curl -s -X POST {sim.control_url}/replicas/<id>/stop      # watch it leave the rotation",
            f"  curl -si -H 'CF-IPCountry: DE' {router}/ | grep X-Router-Route   # --policy geo: eu-west",
            f"  curl -si -H 'CF-IPCountry: US' {router}/ | grep X-Router-Route   # --policy geo: us-east",
            "",
            "Ctrl-C to stop.",
        ]
    )


def _app_lines(router: str, admin: str) -> list[str]:
    """The two apps, by Host (curl >= 7.78 also resolves http://ui.localhost:PORT itself)."""
    return [
        f'  curl -s -H \'Host: api.localhost\' {router}/ | grep -o \'"replica": *"[^"]*"\'   # app api',
        f'  curl -s -H \'Host: ui.localhost\' {router}/ | grep -o \'"replica": *"[^"]*"\'    # app ui',
        f'  curl -s {admin}/status | python3 -c \'import json,sys; [print(a["name"], a["hosts"], a["routable_count"]) for a in json.load(sys.stdin)["apps"]]\'',
    ]


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
    if attestation == "ra-tls":  # attested connections: a demo of its own (demo_ratls.py)
        await run_ra_tls_demo(
            port=_port_or_any(port), admin_port=_port_or_any(admin_port), policy=policy,
            access_log=access_log, stop=stop,
        )  # fmt: skip
        return
    sim = Simulator(demo_simulator_config(attestation != "off"))
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
