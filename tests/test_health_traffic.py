"""Health checking wired to the aiohttp data plane by hand (as `router.app` will): live
traffic ejects a resetting replica before the next probe without failing a client request,
and panic mode decides between a fast 503 and routing despite failing checks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.balancing.round_robin import RoundRobin
from router.compose import proxy_settings
from router.config import parse_config
from router.discovery.static import static_replicas
from router.health.active import HealthChecker
from router.health.probe import make_health_session
from router.models import HealthView
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.base import InFlightCounter, Observers
from router.reach import client_ssl_context
from router.reconciler import Reconciler
from router.snapshot import Policy
from tests.support import eventually, static_config


@dataclass
class RawReplica:
    """A replica on a bare socket: answers every request with `status` (and its own name),
    or, with `reset` set, reads the request and drops the connection."""

    name: str
    status: int = 200
    health_status: int = 200
    reset: bool = False
    health_hits: int = 0
    traffic_hits: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        is_health = head.startswith(b"GET /health ")
        if is_health:
            self.health_hits += 1
        else:
            self.traffic_hits += 1
        if self.reset:
            writer.transport.abort()
            return
        status = self.health_status if is_health else self.status
        body = self.name.encode()
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        await writer.drain()
        writer.close()


@asynccontextmanager
async def raw_replica(name: str, **fields: Any) -> AsyncIterator[RawReplica]:
    replica = RawReplica(name, **fields)
    server = await asyncio.start_server(replica.handle, "127.0.0.1", 0)
    replica.port = server.sockets[0].getsockname()[1]
    try:
        yield replica
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def wired_router(
    replicas: list[RawReplica], **health: Any
) -> AsyncIterator[tuple[str, Reconciler, HealthChecker]]:
    config = parse_config(
        static_config(
            [(r.name, f"http://{r.name}.test") for r in replicas],
            discovery={"connect_to": {f"{r.name}.test": f"127.0.0.1:{r.port}" for r in replicas}},
            health=health,
        ),
        {},
    )
    cfg = config.health
    in_flight = InFlightCounter()
    policy = Policy(picker_factory=RoundRobin, panic_threshold=cfg.panic_threshold)
    reconciler = Reconciler(policy, in_flight)

    def sink(rid: str, view: HealthView, urgent: bool) -> None:
        reconciler.set_health(rid, view, urgent=urgent)

    checker = HealthChecker(
        cfg,
        sink,
        lambda: make_health_session(config.discovery.connect_to, client_ssl_context(), cfg),
        rng=random.Random(2),
    )
    engine = AiohttpEngine(
        proxy_settings(config), lambda: reconciler.current, Observers([checker.passive]), in_flight
    )
    assert config.discovery.static is not None
    members = static_replicas(config.discovery.static)
    reconciler.set_replicas(members)
    checker.update_replicas(members)
    task = asyncio.create_task(checker.run())
    await engine.start()
    host, port = engine.addresses[0]
    try:
        yield f"http://{host}:{port}", reconciler, checker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.stop(0.5)
        reconciler.close()


def routable(reconciler: Reconciler) -> list[str]:
    return [r.id for r in reconciler.current.routable]


async def test_a_resetting_replica_is_ejected_by_traffic_before_the_next_probe(
    client: aiohttp.ClientSession,
) -> None:
    async with raw_replica("good") as good, raw_replica("bad") as bad:
        # First checks come fast (unhealthy_interval), the next ones only in a minute.
        health = {"interval": "60s", "unhealthy_interval": "50ms"}
        async with wired_router([good, bad], **health) as (url, reconciler, checker):
            await eventually(lambda: routable(reconciler) == ["bad", "good"])
            bad.reset = True
            probes_before = bad.health_hits
            bodies = []
            for _ in range(20):
                async with client.get(f"{url}/work") as response:
                    assert response.status == 200  # retried on the good replica
                    bodies.append(await response.text())
            assert set(bodies) == {"good"}
            assert routable(reconciler) == ["good"]
            assert reconciler.current.by_id["bad"].state == "ejected"
            hits = bad.traffic_hits
            for _ in range(20):
                async with client.get(f"{url}/more") as response:
                    assert response.status == 200
            assert bad.traffic_hits == hits  # ejected: no more traffic at all
            assert bad.health_hits == probes_before  # traffic, not a probe, found it
            view = checker.view("bad")
            assert view is not None
            assert view.ejections == 1


async def test_all_replicas_failing_gives_a_fast_503_naming_the_cause_when_panic_is_off(
    client: aiohttp.ClientSession,
) -> None:
    async with (
        raw_replica("a", health_status=500) as a,
        raw_replica("b", health_status=500) as b,
        wired_router([a, b], interval="50ms", unhealthy_interval="50ms") as (url, reconciler, _),
    ):
        await eventually(lambda: a.health_hits > 0 and b.health_hits > 0)
        await eventually(
            lambda: (
                len(reconciler.current.statuses) == 2
                and not reconciler.current.routable
                and all(s.state == "unhealthy" for s in reconciler.current.statuses)
            )
        )
        started = time.monotonic()
        async with client.get(f"{url}/work") as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            body = await response.json()
        assert time.monotonic() - started < 0.5
        assert body["error"] == "no_healthy_replica"
        assert a.traffic_hits == b.traffic_hits == 0
        reasons = {s.replica.id: s.reason for s in reconciler.current.statuses}
        assert reasons == {"a": "unhealthy: status 500", "b": "unhealthy: status 500"}


async def test_panic_mode_routes_despite_failing_checks(client: aiohttp.ClientSession) -> None:
    async with (
        raw_replica("a", health_status=500) as a,
        raw_replica("b", health_status=500) as b,
        wired_router([a, b], interval="50ms", unhealthy_interval="50ms", panic_threshold=50) as (
            url,
            reconciler,
            _,
        ),
    ):
        await eventually(lambda: reconciler.current.panic)
        async with client.get(f"{url}/work") as response:
            assert response.status == 200
        assert a.traffic_hits + b.traffic_hits == 1
        assert all(
            s.reason == "panic: routed despite failing health" for s in reconciler.current.statuses
        )
