"""Reads of Envoy's admin API (loopback) for /status: Envoy's own view of each endpoint."""

from __future__ import annotations

from typing import Any

import aiohttp

from router.proxy.envoy.resources import Json

_COUNTERS = ("rq_total", "rq_error", "rq_success", "rq_timeout", "cx_active", "rq_active")


def _address(host: Json) -> str:
    address = host.get("address", {})
    internal = address.get("envoy_internal_address")
    if internal is not None:  # a replica behind a shared gateway address (tunnel.py)
        return f"{internal.get('server_listener_name')}/{internal.get('endpoint_id')}"
    socket = address.get("socket_address", {})
    return f"{socket.get('address')}:{socket.get('port_value')}"


def _counters(host: Json) -> dict[str, int]:
    found: dict[str, int] = {}
    for stat in host.get("stats", []):
        if stat.get("name") in _COUNTERS:
            found[stat["name"]] = int(stat.get("value", 0))
    return found


def endpoint_view(clusters_json: Json) -> list[Json]:
    """`/clusters?format=json` -> one row per (cluster, endpoint) with health and counters."""
    rows: list[Json] = []
    for cluster in clusters_json.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            health = host.get("health_status", {})
            flags = sorted(k for k, v in health.items() if v is True)
            rows.append(
                {
                    "cluster": cluster.get("name"),
                    "address": _address(host),
                    "hostname": host.get("hostname"),
                    "health": health.get("eds_health_status", "HEALTHY"),
                    "flags": flags,
                    "priority": host.get("priority", 0),
                    "weight": host.get("weight"),
                    **_counters(host),
                }
            )
    return rows


async def read_endpoints(session: aiohttp.ClientSession, admin_url: str) -> list[Json]:
    async with session.get(f"{admin_url}/clusters?format=json") as resp:
        resp.raise_for_status()
        document: dict[str, Any] = await resp.json(content_type=None)
    return endpoint_view(document)


async def read_prometheus(session: aiohttp.ClientSession, admin_url: str) -> str:
    """Envoy's own metrics in the Prometheus text format (envoy_* series)."""
    async with session.get(f"{admin_url}/stats/prometheus") as resp:
        resp.raise_for_status()
        return await resp.text()


async def downstream_active(session: aiohttp.ClientSession, admin_url: str) -> int:
    """Requests in flight on Envoy's listeners (used to drain before stopping)."""
    async with session.get(f"{admin_url}/stats?filter=downstream_rq_active$&format=json") as resp:
        resp.raise_for_status()
        document: dict[str, Any] = await resp.json(content_type=None)
    return sum(
        int(s.get("value", 0))
        for s in document.get("stats", [])
        if str(s.get("name", "")).startswith("http.")
    )


async def client_connections(session: aiohttp.ClientSession, admin_url: str) -> tuple[int, int]:
    """(open, accepted) client connections over Envoy's HTTP listeners."""
    query = "filter=^http\\..*downstream_cx_(active|total)$&format=json"
    async with session.get(f"{admin_url}/stats?{query}") as resp:
        resp.raise_for_status()
        document: dict[str, Any] = await resp.json(content_type=None)
    totals = {"active": 0, "total": 0}
    for stat in document.get("stats", []):
        name = str(stat.get("name", ""))
        for kind in totals:
            if name.endswith(f"downstream_cx_{kind}"):
                totals[kind] += int(stat.get("value", 0))
    return totals["active"], totals["total"]
