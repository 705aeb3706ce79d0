"""Shutdown order: /readyz turns 503 first; with proxy.shutdown_delay the router keeps
serving new requests during the delay, so a load balancer can notice before it closes."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support import eventually, running_replica, running_router, static_config


async def test_readyz_turns_503_while_requests_are_still_served_during_the_delay() -> None:
    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            proxy={"shutdown_delay": "1s"},
        )
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            stopping = asyncio.create_task(router.stop(grace=5))

            async def not_ready() -> bool:
                async with client.get(f"{router.admin_url}/readyz") as resp:
                    return resp.status == 503

            await eventually(not_ready)
            async with client.get(f"{router.url}/", headers={"Connection": "close"}) as resp:
                assert resp.status == 200  # still accepting during the delay
            assert not stopping.done()
            await asyncio.wait_for(stopping, 10)
