"""RA-TLS with several apps, per engine: the app with `attestation.connection: ra-tls` has
its replicas checked by its own gate (through the simulated RA-TLS replicas and gateway
passthrough of tests/test_ratls_e2e.py), on connections no other app shares; the other app
serves as before, unchecked. Either app may be the primary one."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import pytest

from router.discovery.static import replica_from_url
from router.proxy.fast.pool import Pool
from router.reach import AttestedReach, ConnectTo, ra_tls_context
from tests.support import eventually, running_replica, running_router
from tests.test_ratls_e2e import ENGINES, replicas, router_config


def two_apps(engine: str, servers: list[Any], ui_port: int, ratls_first: bool) -> dict[str, Any]:
    """api: the RA-TLS replicas (router_config's attestation); ui: one plain replica."""
    single = router_config(engine, servers)
    api = {
        "name": "api",
        "hosts": ["api.localhost"],
        "discovery": single["discovery"],
        "attestation": single["attestation"],
    }
    ui = {
        "name": "ui",
        "hosts": ["ui.localhost"],
        "discovery": {"static": [{"id": "ui-0", "url": f"http://127.0.0.1:{ui_port}"}]},
    }
    return {
        "listen": single["listen"],
        "admin": single["admin"],
        "proxy": single["proxy"],
        "health": single["health"],
        "apps": [api, ui] if ratls_first else [ui, api],
    }


async def get(url: str, host: str, count: int) -> list[tuple[int, str]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"{url}/x", headers={"Host": host}) as response:
                answers.append((response.status, await response.text()))
    return answers


async def replicas_of(admin_url: str, app: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin_url}/status?app={app}") as response:
            data = await response.json()
    return {r["id"]: r for r in data["replicas"]}


async def reasons(admin_url: str, app: str) -> dict[str, str]:
    return {rid: r["reason"] for rid, r in (await replicas_of(admin_url, app)).items()}


async def all_routable(admin_url: str, app: str, count: int) -> bool:
    found = await replicas_of(admin_url, app)
    return len(found) == count and all(r["routable"] for r in found.values())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("ratls_first", [True, False], ids=["ratls-primary", "ratls-other"])
async def test_one_app_with_ra_tls_checks_its_replicas_and_leaves_the_other_alone(
    engine: str, ratls_first: bool
) -> None:
    async with (
        replicas(("good", "ok"), ("mitm", "plain")) as servers,
        running_replica("ui") as ui,
    ):
        good, mitm = servers
        config = two_apps(engine, servers, ui.port, ratls_first)
        async with running_router(config) as router:
            await eventually(lambda: good.requests > 0, timeout=10)

            async def mitm_refused() -> bool:
                found = await reasons(router.admin_url, "api")
                return "ra_tls_no_attestation" in found[mitm.identity.instance_id]

            await eventually(mitm_refused, timeout=10)
            await eventually(lambda: all_routable(router.admin_url, "ui", 1), timeout=10)
            api_answers = await get(router.url, "api.localhost", 8)
            assert set(api_answers) == {(200, "replica good")}
            ui_answers = await get(router.url, "ui.localhost", 4)
            assert [status for status, _ in ui_answers] == [200] * 4
            assert all('"replica": "ui"' in body for _, body in ui_answers)
        assert mitm.handshakes > 0  # the api app's gate reached it, and refused it
        assert mitm.bytes_after_handshake() == 0
        assert mitm.requests == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("ratls_first", [True, False], ids=["ratls-primary", "ratls-other"])
async def test_the_data_plane_checks_the_routed_apps_connections(
    engine: str, ratls_first: bool
) -> None:
    """Probes are rare here: the first new traffic connection to `a` after its key rotated
    to an unbound one is refused by the api app's gate before a byte is written, and the
    request moves on to `b`; the ui app keeps being served."""
    async with (
        replicas(("a", "ok"), ("b", "ok")) as servers,
        running_replica("ui") as ui,
    ):
        a = servers[0]
        config = two_apps(engine, servers, ui.port, ratls_first)
        config["health"] = {"interval": "60s", "healthy_threshold": 1, "timeout": "2s"}
        async with running_router(config) as router:
            await eventually(lambda: all_routable(router.admin_url, "api", 2), timeout=10)
            await eventually(lambda: all_routable(router.admin_url, "ui", 1), timeout=10)
            a.rotate("other_key")
            before = a.requests
            assert await get(router.url, "api.localhost", 4) == [(200, "replica b")] * 4
            assert a.requests == before
            found = await reasons(router.admin_url, "api")
            assert "ra_tls_key_binding_mismatch" in found[a.identity.instance_id]
            assert [status for status, _ in await get(router.url, "ui.localhost", 2)] == [200] * 2


async def test_an_apps_attested_connections_are_pooled_apart() -> None:
    async def never(host: str, port: int, leaf: bytes | None) -> str | None:
        return None

    pool = Pool(
        ConnectTo({}),
        ssl.create_default_context(),
        connect_timeout=1,
        response_timeout=1,
        idle_timeout=1,
    )
    replica = replica_from_url("r", "https://r.example:8443")
    api = AttestedReach("api", never, ra_tls_context())
    other = AttestedReach("api", never, ra_tls_context())  # e.g. the app after a reload
    shared, attested = pool.target(replica), pool.target(replica, api)
    assert shared.peer_check is None
    assert attested.peer_check is never
    assert attested.tls is api.tls
    keys = {shared.key, attested.key, pool.target(replica, other).key}
    assert len(keys) == 3  # no idle connection is handed across apps or gates
    assert pool.target(replica, api) is attested
    pool.close()
