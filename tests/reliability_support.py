"""Faults on demand for the reliability suite and bench/chaos.py: a fleet of replicas that can
be killed abruptly (listener closed, every connection reset, like SIGKILL), hung (accept and
never answer) and restarted on the same address; a bounded load loop that records every
request; and an observer that timestamps the router's upstream attempts per replica."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class FleetLoad:
    in_flight: int = 0
    peak: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)


@dataclass
class FleetReplica:
    """One replica: an aiohttp app on a fixed 127.0.0.1 port that survives restarts."""

    name: str
    latency: float = 0.0
    # "up", "hang" (every request, health checks included, hangs) or "503" (requests other
    # than health checks get a 503, as from an app under load or a gateway in front of it)
    mode: str = "up"
    port: int = 0
    served: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    runner: web.AppRunner | None = None
    fleet_load: FleetLoad | None = None  # shared by a fleet: requests on all its replicas
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self.runner is not None and bool(self.runner.sites)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "hang":
            await self._release.wait()  # until killed or un-hung
        if request.path == "/health":
            return web.json_response({"ok": True, "replica": self.name})
        if self.mode == "503":
            await request.read()
            return web.Response(status=503, text="busy")
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.fleet_load is not None:
            self.fleet_load.enter()
        try:
            body = await request.read()
            if self.latency:
                await asyncio.sleep(self.latency)  # simulated service time
            self.served += 1
            return web.json_response(
                headers={"X-Replica": self.name},
                data={
                    "replica": self.name,
                    "method": request.method,
                    "path": request.raw_path,
                    "body_bytes": len(body),
                    "headers": list(request.headers.items()),
                },
            )
        finally:
            self.in_flight -= 1
            if self.fleet_load is not None:
                self.fleet_load.in_flight -= 1

    async def start(self) -> None:
        if self.runner is None:
            self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
            await self.runner.setup()
        self._release = asyncio.Event()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def kill(self) -> None:
        """Abrupt: the port refuses connections and every open connection is reset."""
        assert self.runner is not None
        for site in list(self.runner.sites):
            await site.stop()
        server = self.runner.server
        if server is not None:
            for handler in list(server.connections):
                if handler.transport is not None:
                    handler.transport.abort()
        self._release.set()

    def unhang(self) -> None:
        self.mode = "up"
        self._release.set()

    async def close(self) -> None:
        self._release.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@asynccontextmanager
async def fleet(count: int, latency: float = 0.0) -> AsyncIterator[list[FleetReplica]]:
    shared = FleetLoad()
    replicas = [FleetReplica(f"r{i}", latency=latency, fleet_load=shared) for i in range(count)]
    try:
        for replica in replicas:
            await replica.start()
        yield replicas
    finally:
        for replica in replicas:
            await replica.close()


def fleet_config(replicas: list[FleetReplica], **sections: Any) -> dict[str, Any]:
    """A router config on ephemeral ports, static discovery of the fleet, fast health checks."""
    health = {
        "interval": "100ms",
        "unhealthy_interval": "50ms",
        "timeout": "200ms",
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
        "passive": {"consecutive_failures": 3, "base_ejection": "30s"},
        **sections.pop("health", {}),
    }
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "discovery": {"static": [{"id": r.name, "url": r.url} for r in replicas]},
        "health": health,
        "proxy": {"connect_timeout": "500ms", "response_timeout": "2s", "drain_timeout": "2s"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


# -- the router's view: upstream attempts -------------------------------------------------


@dataclass
class Attempt:
    at: float
    replica: str
    ok: bool
    kind: str | None


class AttemptLog:
    """A TrafficObserver that timestamps every upstream attempt (added to the app's observers)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.attempts: list[Attempt] = []

    def attempt_done(self, replica: Any, ok: bool, kind: str | None, status: int | None) -> None:
        self.attempts.append(Attempt(self._clock(), replica.id, ok, kind))

    def request_done(self, record: Any) -> None:
        return None

    def last_to(self, replica: str) -> float | None:
        times = [a.at for a in self.attempts if a.replica == replica]
        return max(times) if times else None

    def failed_to(self, replica: str, since: float = 0.0) -> int:
        return sum(1 for a in self.attempts if a.replica == replica and not a.ok and a.at >= since)


# -- load ---------------------------------------------------------------------------------


@dataclass
class Result:
    started: float
    ended: float
    method: str
    status: int  # 0: the connection failed
    replica: str | None
    error: str | None = None


@dataclass
class Load:
    """Records of a load run, with the figures the suite and the bench report."""

    results: list[Result] = field(default_factory=list)

    def failures(self, method: str | None = None) -> list[Result]:
        return [
            r
            for r in self.results
            if (method is None or r.method == method) and not 200 <= r.status < 300
        ]

    def by_replica(self) -> Counter[str]:
        return Counter(r.replica for r in self.results if r.replica)

    def latency_p(self, q: float) -> float:
        times = sorted(r.ended - r.started for r in self.results)
        if not times:
            return 0.0
        return times[min(len(times) - 1, int(q * len(times)))]

    def max_gap(self) -> float:
        """The longest time with no successful answer at all (clients saw a stall)."""
        ends = sorted(r.ended for r in self.results if 200 <= r.status < 300)
        if len(ends) < 2:
            return 0.0
        return max(b - a for a, b in itertools.pairwise(ends))


async def run_load(
    url: str,
    *,
    clients: int,
    until: Callable[[], bool],
    method_of: Callable[[int], str] = lambda n: "GET",
    path: str = "/work",
    max_requests: int = 100_000,
    session: aiohttp.ClientSession | None = None,
    on_result: Callable[[Result], Awaitable[None] | None] | None = None,
    honour_retry_after: bool = False,
) -> Load:
    """`clients` workers send requests back to back until `until()` holds (checked before
    each request) or `max_requests` were sent in all. POSTs carry a small body. Polite
    clients (`honour_retry_after`) pause as a 503's Retry-After says."""
    load = Load()
    sent = 0
    own = session is None
    client = session or aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )

    async def worker() -> None:
        nonlocal sent
        while not until() and sent < max_requests:
            n = sent
            sent += 1
            method = method_of(n)
            started = time.monotonic()
            data = b"x" * 64 if method == "POST" else None
            try:
                async with client.request(method, f"{url}{path}?n={n}", data=data) as resp:
                    body = await resp.read()
                    replica = resp.headers.get("X-Replica") or _replica_in(body)
                    result = Result(started, time.monotonic(), method, resp.status, replica)
                    if resp.status != 200:
                        result.error = body[:200].decode(errors="replace")
                    pause = resp.headers.get("Retry-After", "") if resp.status == 503 else ""
            except aiohttp.ClientError as exc:
                result = Result(started, time.monotonic(), method, 0, None, repr(exc))
                pause = ""
            load.results.append(result)
            if on_result is not None:
                maybe = on_result(result)
                if maybe is not None:
                    await maybe
            if honour_retry_after and pause.isdigit():
                await asyncio.sleep(int(pause))  # the client's own backoff, as asked

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(clients):
                group.create_task(worker())
    finally:
        if own:
            await client.close()
    return load


def _replica_in(body: bytes) -> str | None:
    """The simulator's replicas name themselves in a JSON body."""
    try:
        found = json.loads(body).get("replica")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None
