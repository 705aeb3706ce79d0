"""Routing policies through the real data plane (aiohttp engine) on 127.0.0.1.

Replicas in three regions; the snapshot is built by `build_snapshot` with the policy from
`make_picker_factory`, as the router does. Clients differ only by the headers they send.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

from router.balancing.factory import make_picker_factory
from router.compose import proxy_settings
from router.config import parse_config
from router.discovery.static import replica_from_url
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.base import InFlightCounter, Observers
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot
from tests import support
from tests.support import running_replica, static_config

REGIONS = {"fra": "eu-central-1", "iad": "us-east-1", "sin": "ap-southeast-1"}
ENV = {"STICKY_KEY": "k" * 32}
# Public addresses the embedded GeoIP database places on three continents.
LONDON, VIRGINIA, SYDNEY = "81.2.69.142", "8.8.8.8", "1.1.1.1"


class World:
    """Six replicas (two per region) behind one engine; `snapshot` can be rebuilt."""

    def __init__(
        self, replicas: dict[str, support.TestReplica], routing: dict[str, Any], trusted: bool
    ):
        proxy = {"trusted_proxies": ["127.0.0.1/32" if trusted else "10.9.9.9/32"]}
        self.replicas = replicas
        self.config = parse_config(
            static_config([], routing=routing, proxy=proxy)
            | {
                "discovery": {
                    "static": [
                        {
                            "id": name,
                            "url": f"http://127.0.0.1:{r.port}",
                            "region": REGIONS[name[:3]],
                        }
                        for name, r in replicas.items()
                    ]
                }
            },
            environ=ENV,
        )
        self.policy = Policy(picker_factory=make_picker_factory(self.config.routing, environ=ENV))
        self.in_flight = InFlightCounter()
        self.snapshot = self.build()

    def build(self, drained: frozenset[str] = frozenset()) -> Snapshot:
        static = self.config.discovery.static or ()
        replicas = [replica_from_url(e.id, e.url, region=e.region) for e in static]
        return build_snapshot(
            version=1,
            now=0.0,
            replicas=replicas,
            health={},
            verdicts={},
            policy=self.policy,
            overrides=Overrides(drained=drained),
            in_flight=self.in_flight,
            health_enabled=False,
        )


@asynccontextmanager
async def world(
    routing: dict[str, Any], *, trusted: bool = True
) -> AsyncIterator[tuple[World, str, AsyncExitStack]]:
    async with AsyncExitStack() as stack:
        replicas = {}
        for name in ("fra-0", "fra-1", "iad-0", "iad-1", "sin-0", "sin-1"):
            replicas[name] = await stack.enter_async_context(running_replica(name))
        setup = World(replicas, routing, trusted)
        engine = AiohttpEngine(
            proxy_settings(setup.config), lambda: setup.snapshot, Observers(), setup.in_flight
        )
        await engine.start()
        try:
            host, port = engine.addresses[0]
            yield setup, f"http://{host}:{port}/", stack
        finally:
            await engine.stop(0.5)


async def region_of(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[str, Mapping[str, str]]:
    async with session.get(url, headers=headers) as response:
        assert response.status == 200
        body = json.loads(await response.read())
        return REGIONS[body["replica"][:3]], response.headers


GEO = {"policy": "geo", "debug_headers": True}


async def test_clients_on_three_continents_land_in_their_nearest_region() -> None:
    async with world(GEO) as (_, url, _stack), aiohttp.ClientSession() as session:
        for country, region in (
            ("DE", "eu-central-1"),
            ("US", "us-east-1"),
            ("AU", "ap-southeast-1"),
        ):
            got, headers = await region_of(session, url, {"CF-IPCountry": country})
            assert got == region
            assert (
                f"client={country} via header CF-IPCountry -> {region}" in headers["X-Router-Route"]
            )
        for address, region in (
            (LONDON, "eu-central-1"),
            (VIRGINIA, "us-east-1"),
            (SYDNEY, "ap-southeast-1"),
        ):
            got, headers = await region_of(
                session, url, {"X-Forwarded-For": f"{address}, 127.0.0.1"}
            )
            assert got == region
            assert "via geoip" in headers["X-Router-Route"]


async def test_the_same_headers_from_an_untrusted_peer_are_ignored() -> None:
    async with world(GEO, trusted=False) as (_, url, _stack), aiohttp.ClientSession() as session:
        for headers in ({"CF-IPCountry": "AU"}, {"X-Forwarded-For": SYDNEY}):
            _, response_headers = await region_of(session, url, headers)
            # 127.0.0.1 is not in any GeoIP database: the location is unknown.
            assert "client location unknown" in response_headers["X-Router-Route"]
        # The region hint is a preference anyone may state.
        got, _ = await region_of(session, url, {"X-Preferred-Region": "ap-southeast-1"})
        assert got == "ap-southeast-1"


async def test_killing_the_nearest_region_moves_traffic_without_a_failed_request() -> None:
    async with world(GEO) as (setup, url, _stack), aiohttp.ClientSession() as session:
        german = {"CF-IPCountry": "DE"}
        assert (await region_of(session, url, german))[0] == "eu-central-1"
        for name in ("fra-0", "fra-1"):
            runner = setup.replicas[name].runner
            assert runner is not None
            await runner.cleanup()  # the replica is gone; health has not noticed yet
        # Each request fails over inside the router (connection refused is safe to retry)
        # to the next nearest region: Frankfurt -> Virginia (Singapore is farther).
        for _ in range(6):
            got, _ = await region_of(session, url, german)
            assert got == "us-east-1"


async def test_a_sticky_client_keeps_its_replica_until_it_is_drained() -> None:
    routing = {**GEO, "sticky": {"mode": "cookie", "key_env": "STICKY_KEY"}}
    async with world(routing) as (setup, url, _stack):
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as session:

            async def replica_now() -> str:
                async with session.get(url, headers={"CF-IPCountry": "DE"}) as response:
                    return str(json.loads(await response.read())["replica"])

            home = await replica_now()
            assert home.startswith("fra")
            assert {await replica_now() for _ in range(8)} == {home}
            setup.snapshot = setup.build(drained=frozenset({home}))
            moved = await replica_now()
            assert moved != home
            assert moved.startswith("fra")  # still the nearest region
            assert {await replica_now() for _ in range(8)} == {moved}
