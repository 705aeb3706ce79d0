"""`serve` with `dns.server`: the built-in DNS server follows the router's own snapshot."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rdatatype

from tests.support import eventually, free_port, running_replica, running_router, static_config


async def test_dns_answers_follow_operator_drain_in_a_running_router() -> None:
    async with running_replica("a") as a:
        dns_port = free_port()
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.2:{a.port}")],
            health={"enabled": False},
            dns={
                "name": "api.example.com.",
                "server": {"listen": f"127.0.0.1:{dns_port}"},
                "min_interval": "10ms",
            },
        )
        async with running_router(config) as router:

            async def addresses() -> set[str]:
                query = dns.message.make_query("api.example.com.", dns.rdatatype.A)
                answer = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, timeout=2)
                return {r.address for rrset in answer.answer for r in rrset}

            async def is_(expected: set[str]) -> bool:
                return await addresses() == expected

            await eventually(lambda: is_({"127.0.0.1", "127.0.0.2"}))
            router.app.drain("b", True)
            await eventually(lambda: is_({"127.0.0.1"}))
