"""A simulated Phala app for the scaling sweep, in its own process.

    python -m bench.simtarget --replicas 8 --capacity 4 --latency-ms 50 [--backend-rps 200]

Every replica serves at most `capacity` requests at once, each taking `latency-ms`, so one
replica carries capacity / latency requests per second; the optional shared backend (a
database all replicas use) caps the whole app at `backend-rps`. Prints one JSON line once
everything listens (the router config overlay, the API key, the control URL), then runs
until SIGTERM/SIGINT. Its own process, so the replicas never share an event loop with the
router or the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from router.simulator import SimReplicaConfig, Simulator, SimulatorConfig

API_KEY_ENV = "PHALA_CLOUD_API_KEY"
REGIONS = ("us-east", "eu-west", "ap-southeast")


def simulator_config(
    replicas: int, capacity: int, latency_ms: float, backend_rps: float | None
) -> SimulatorConfig:
    """N identical replicas spread over three regions (the round-robin sweep ignores it)."""
    return SimulatorConfig(
        replicas=tuple(
            SimReplicaConfig(
                region=REGIONS[i % len(REGIONS)],
                node=f"node-{i + 1}",
                latency=latency_ms / 1000,
                capacity=capacity,
            )
            for i in range(replicas)
        ),
        shared_backend_rps=backend_rps,
    )


def ready_document(sim: Simulator) -> dict[str, Any]:
    return {
        "overlay": sim.router_overlay(api_key_env=API_KEY_ENV),
        "api_key_env": API_KEY_ENV,
        "api_key": sim.config.api_key,
        "control_url": sim.control_url,
        "replica_ids": [r.instance_id for r in sim.replicas],
    }


async def serve(config: SimulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        print(json.dumps(ready_document(sim)), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simtarget", description=__doc__)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=4, help="concurrent requests per replica")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="service time")
    parser.add_argument("--backend-rps", type=float, default=None, help="shared backend cap")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.capacity < 1 or args.latency_ms < 0:
        parser.error("--replicas and --capacity must be >= 1, --latency-ms >= 0")
    if args.backend_rps is not None and args.backend_rps <= 0:
        parser.error("--backend-rps must be > 0")
    config = simulator_config(args.replicas, args.capacity, args.latency_ms, args.backend_rps)
    try:
        import uvloop

        uvloop.run(serve(config))
    except ImportError:
        asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
