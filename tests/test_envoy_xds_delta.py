"""Delta (incremental) xDS: an Envoy subscribed with `--delta` gets only what changed, and
follows a drain as the state-of-the-world one does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.envoy_support import require_envoy
from tests.support import eventually, free_port, running_replica, running_router
from tests.test_envoy_engine import envoy_addresses, envoy_config

ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CLUSTERS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

xds = pytest.importorskip("router.proxy.envoy.xds", reason="grpcio and xds-protos: [envoy]")
delta = pytest.importorskip("router.proxy.envoy.xds_delta", reason="the [envoy] extra")
discovery = pytest.importorskip("envoy.service.discovery.v3.discovery_pb2")


def assignment(name: str, port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "192.0.2.1", "port_value": port}}
    return {
        "@type": ENDPOINTS,
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def held(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    packed = {r["cluster_name"]: xds.to_any(r) for r in resources}
    return packed, {n: delta.resource_version(p) for n, p in packed.items()}


def answer(stream: Any, resources: list[dict[str, Any]]) -> tuple[list[str], list[str]] | None:
    current, versions = held(resources)
    response = delta.delta_response(stream, ENDPOINTS, current, versions, "n")
    if response is None:
        return None
    return [r.name for r in response.resources], list(response.removed_resources)


def test_only_what_changed_is_sent_and_removals_are_named() -> None:
    stream = delta.DeltaStream()
    subscribe = discovery.DeltaDiscoveryRequest(
        type_url=ENDPOINTS, resource_names_subscribe=["app", "geo-eu"]
    )
    delta.apply_request(stream, subscribe, xds.WILDCARD_TYPES)
    first = [assignment("app", 1), assignment("geo-eu", 1), assignment("other", 1)]
    assert answer(stream, first) == (["app", "geo-eu"], [])  # only what it subscribed to
    assert answer(stream, first) is None  # nothing changed: nothing sent
    changed = [assignment("app", 2), assignment("geo-eu", 1), assignment("other", 9)]
    assert answer(stream, changed) == (["app"], [])
    assert answer(stream, [assignment("app", 2)]) == ([], ["geo-eu"])


def test_a_reconnecting_envoy_gets_only_what_changed_while_it_was_away() -> None:
    resources = [assignment("app", 1), assignment("geo-eu", 1)]
    _, versions = held(resources)
    stream = delta.DeltaStream()
    again = discovery.DeltaDiscoveryRequest(
        type_url=ENDPOINTS,
        resource_names_subscribe=["app", "geo-eu"],
        initial_resource_versions={"app": versions["app"], "geo-eu": "stale"},
    )
    delta.apply_request(stream, again, xds.WILDCARD_TYPES)
    assert answer(stream, resources) == (["geo-eu"], [])


def test_clusters_are_a_wildcard_subscription_answered_even_when_empty() -> None:
    stream = delta.DeltaStream()
    delta.apply_request(
        stream, discovery.DeltaDiscoveryRequest(type_url=CLUSTERS), xds.WILDCARD_TYPES
    )
    response = delta.delta_response(stream, CLUSTERS, {}, {}, "n")
    assert response is not None  # Envoy waits for a first answer of each type
    assert list(response.resources) == []


async def test_an_envoy_on_delta_xds_follows_a_drain(tmp_path: Path) -> None:
    require_envoy()
    from router.proxy.envoy.bootstrap import ads_bootstrap
    from router.proxy.envoy.process import EnvoyProcess
    from router.proxy.envoy.settings import EnvoyConfig

    address = f"127.0.0.1:{free_port()}"
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        config = envoy_config(replicas, proxy={"envoy": {"xds_listen": address}})
        async with running_router(config) as router:
            path = tmp_path / "bootstrap.json"
            document = ads_bootstrap("127.0.0.1:0", address, node_id="edge-delta", delta=True)
            assert document["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
            path.write_text(json.dumps(document))
            second = EnvoyProcess(EnvoyConfig(), path, drain_seconds=1)
            await second.start()
            try:

                async def holds(expected: set[str]) -> bool:
                    return await envoy_addresses(router, second.admin_url) == expected

                both = {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
                await eventually(lambda: holds(both), timeout=10)
                router.app.drain("a", True)
                await eventually(lambda: holds({f"127.0.0.1:{b.port}"}), timeout=10)
            finally:
                await second.stop(1.0)
