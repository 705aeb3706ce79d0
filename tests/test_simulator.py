"""The local Phala Cloud: the gateway routes by Host/SNI like dstack-gateway, replicas answer
and honour their knobs, the Cloud API speaks both shapes and fails on demand, and the
control API drives it all. Requests dial the gateway with the replica's host name, as the
router does through `discovery.connect_to`."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.errors import ConfigError
from router.reach import client_ssl_context, make_connector
from router.simulator import (
    SimReplica,
    SimReplicaConfig,
    Simulator,
    SimulatorConfig,
    load_simulator_config,
    run_simulator,
)

KEY = {"X-API-Key": "sim-api-key"}
REPO = Path(__file__).resolve().parent.parent


def session_for(sim: Simulator) -> aiohttp.ClientSession:
    tls = client_ssl_context(ca_file=sim.ca_file)
    return aiohttp.ClientSession(connector=make_connector(sim.connect_to, tls))


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        tls=request.param,
        replicas=(
            SimReplicaConfig(region="us-east", node="n1"),
            SimReplicaConfig(region="eu-west", node="n2"),
            SimReplicaConfig(region="ap-south", status="stopped"),
        ),
    )
    async with Simulator(config) as simulator:
        yield simulator


@pytest.fixture
async def plain() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(replicas=(SimReplicaConfig(), SimReplicaConfig()))) as s:
        yield s


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as response:
        return response.status, await response.json(content_type=None)


# -- gateway -----------------------------------------------------------------------------------


async def test_each_replica_host_name_reaches_that_replica(sim: Simulator) -> None:
    running = [r for r in sim.replicas if r.up]
    async with session_for(sim) as session:
        for replica in running:
            for _ in range(2):  # a reused connection stays with its replica
                status, body = await get_json(session, sim.url_of(replica.instance_id) + "/hi?x=1")
                assert status == 200
                assert body["replica"] == replica.instance_id
                assert body["region"] == replica.region
                assert body["path"] == "/hi"
                assert body["query"] == "x=1"
                assert body["headers"]["Host"] == sim.host_of(replica.instance_id)
    assert [r.served for r in running] == [2, 2]


async def test_the_guest_agent_answers_on_port_8090(sim: Simulator) -> None:
    replica = sim.replicas[0]
    async with session_for(sim) as session:
        url = sim.url_of(replica.instance_id, 8090) + "/prpc/Info"
        async with session.post(url, json={}) as response:
            info = await response.json()
    assert info["app_id"] == sim.config.app_id
    assert info["instance_id"] == replica.instance_id
    assert info["compose_hash"] == replica.compose_hash
    assert json.loads(info["tcb_info"])["app_compose"] == replica.app_compose


async def test_a_stopped_replica_or_unknown_host_gets_no_answer(sim: Simulator) -> None:
    stopped = sim.replicas[2]
    unknown = f"{sim.scheme}://{'f' * 40}-8080.{sim.config.base_domain}/"
    async with session_for(sim) as session:
        for url in (sim.url_of(stopped.instance_id), unknown):
            if sim.config.tls:  # the TLS gateway just closes
                with pytest.raises(aiohttp.ClientError):
                    await get_json(session, url)
            else:
                status, body = await get_json(session, url)
                assert status in (404, 502)
                assert "error" in body


async def test_a_stopped_replica_comes_back_when_started(plain: Simulator) -> None:
    replica = plain.replicas[0]
    async with session_for(plain) as session:
        await plain.stop_replica(replica.instance_id)
        status, _ = await get_json(session, plain.url_of(replica.instance_id))
        assert status == 502
        await plain.start_replica(replica.instance_id)
        status, body = await get_json(session, plain.url_of(replica.instance_id))
        assert (status, body["replica"]) == (200, replica.instance_id)


async def test_streaming_and_websockets_pass_through_the_gateway(sim: Simulator) -> None:
    replica = sim.replicas[1]
    async with session_for(sim) as session:
        url = sim.url_of(replica.instance_id)
        async with session.get(url + "/stream?chunks=3&interval_ms=5") as response:
            lines = [json.loads(line) async for line in response.content if line.strip()]
        assert [line["chunk"] for line in lines] == [0, 1, 2]
        payload = b"x" * 300_000
        async with session.post(url + "/echo", data=payload) as response:
            assert await response.read() == payload
        ws_url = url.replace("http", "ws", 1) + "/ws"
        async with session.ws_connect(ws_url) as ws:
            assert (await ws.receive_json())["replica"] == replica.instance_id
            await ws.send_str("ping")
            assert (await ws.receive()).data == "ping"


async def test_the_app_id_host_reaches_some_running_replica(plain: Simulator) -> None:
    url = f"http://{plain.config.app_id}-8080.{plain.config.base_domain}/"
    seen = set()
    async with session_for(plain) as session:
        for _ in range(4):
            _, body = await get_json(session, url, headers={"Connection": "close"})
            seen.add(body["replica"])
    assert seen == {r.instance_id for r in plain.replicas}


async def test_tls_gateway_presents_a_wildcard_certificate_for_the_base_domain() -> None:
    async with Simulator(SimulatorConfig(tls=True)) as sim:
        assert sim.ca_file is not None
        host, port = sim.gateway_address.rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(sim.ca_file))
        name = sim.host_of(sim.replicas[0].instance_id)
        _, writer = await asyncio.open_connection(
            host, int(port), ssl=context, server_hostname=name
        )
        writer.close()
        # A name outside *.<base_domain> fails verification.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname="evil.example.com"
            )


# -- replica knobs ------------------------------------------------------------------------------


async def test_health_knob_and_error_rate(plain: Simulator) -> None:
    replica = plain.replicas[0]
    url = plain.url_of(replica.instance_id)
    async with session_for(plain) as session:
        assert (await get_json(session, url + "/health"))[0] == 200
        plain.set_health(replica.instance_id, 503)
        assert (await get_json(session, url + "/health"))[0] == 503
        plain.set_health(replica.instance_id, "reset")
        with pytest.raises(aiohttp.ClientError):
            await get_json(session, url + "/health")
        plain.set_health(replica.instance_id, "hang")
        with pytest.raises(asyncio.TimeoutError):
            await get_json(session, url + "/health", timeout=aiohttp.ClientTimeout(total=0.2))
        plain.set_error_rate(replica.instance_id, 1.0)
        status, body = await get_json(session, url + "/")
        assert (status, body["error"]) == (500, "injected")


async def test_reset_and_hang_modes_at_the_connection(plain: Simulator) -> None:
    replica = plain.replicas[0]
    url = plain.url_of(replica.instance_id)
    async with session_for(plain) as session:
        plain.set_mode(replica.instance_id, "reset")
        with pytest.raises(aiohttp.ClientError):
            await get_json(session, url)
        plain.set_mode(replica.instance_id, "hang")
        with pytest.raises(asyncio.TimeoutError):
            await get_json(session, url, timeout=aiohttp.ClientTimeout(total=0.2))
        plain.set_mode(replica.instance_id, "up")
        assert (await get_json(session, url))[0] == 200


async def test_capacity_queues_requests_beyond_it(plain: Simulator) -> None:
    replica = plain.replicas[0]
    plain.set_capacity(replica.instance_id, 1)
    url = plain.url_of(replica.instance_id) + "/slow?ms=100"
    async with session_for(plain) as session:
        started = time.monotonic()
        results = await asyncio.gather(*(get_json(session, url) for _ in range(3)))
        elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200, 200, 200]
    assert elapsed >= 0.3  # one at a time: served in sequence, not in parallel


async def test_latency_adds_service_time(plain: Simulator) -> None:
    replica = plain.replicas[0]
    plain.set_latency(replica.instance_id, 0.15)
    async with session_for(plain) as session:
        started = time.monotonic()
        await get_json(session, plain.url_of(replica.instance_id))
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        await get_json(session, plain.url_of(replica.instance_id) + "/health")
        assert time.monotonic() - started < 0.15  # health is not slowed by latency


async def test_shared_backend_limits_all_replicas_together() -> None:
    config = SimulatorConfig(
        shared_backend_rps=20, replicas=(SimReplicaConfig(), SimReplicaConfig())
    )
    async with Simulator(config) as sim, session_for(sim) as session:
        urls = [sim.url_of(r.instance_id) for r in sim.replicas]
        started = time.monotonic()
        await asyncio.gather(*(get_json(session, urls[n % 2]) for n in range(12)))
        elapsed = time.monotonic() - started
    # 2 requests of burst, then 20/s across both replicas: about half a second for 12.
    assert elapsed >= 0.4


# -- Cloud API -----------------------------------------------------------------------------------


async def test_cloud_api_requires_the_key_and_names_the_app(plain: Simulator) -> None:
    cvms = f"{plain.api_url}/apps/{plain.config.app_id}/cvms"
    async with aiohttp.ClientSession() as session:
        status, body = await get_json(session, cvms)
        assert status == 401
        assert "API key" in body["detail"]
        status, body = await get_json(session, cvms, headers={"X-API-Key": "nope"})
        assert status == 401
        status, _ = await get_json(session, f"{plain.api_url}/apps/{'e' * 40}/cvms", headers=KEY)
        assert status == 404
        status, records = await get_json(session, cvms, headers=KEY)
        assert status == 200
        assert {r["instance_id"] for r in records} == {r.instance_id for r in plain.replicas}
        assert records[0]["gateway"]["base_domain"] == "sim.phala.local"

        legacy = {**KEY, "X-Phala-Version": "2025-10-28"}
        _, old = await get_json(session, cvms, headers=legacy)
        assert old[0]["hosted"]["instance_id"] == records[0]["instance_id"]
        assert old[0]["gateway_domain"] == "sim.phala.local"

        _, app = await get_json(
            session, f"{plain.api_url}/apps/app_{plain.config.app_id}", headers=KEY
        )
        assert app["cvm_count"] == 2


async def test_status_batch_and_attestations(plain: Simulator) -> None:
    first, second = plain.replicas
    await plain.stop_replica(second.instance_id)
    async with aiohttp.ClientSession() as session:
        body = {"vm_uuids": [first.vm_uuid, second.vm_uuid, "unknown"]}
        async with session.post(f"{plain.api_url}/status/batch", json=body, headers=KEY) as r:
            statuses = await r.json()
        assert statuses[first.vm_uuid]["status"] == "running"
        assert statuses[second.vm_uuid]["status"] == "stopped"
        assert "unknown" not in statuses

        # No quote provider plugged in: quotes are null; attestations need no API key.
        url = f"{plain.api_url}/apps/{plain.config.app_id}/attestations"
        _, document = await get_json(session, url)
        assert [i["quote"] for i in document["instances"]] == [None, None]

        calls: list[tuple[str, bytes]] = []

        def provider(replica: SimReplica, report_data: bytes) -> tuple[str, list[dict[str, Any]]]:
            calls.append((replica.instance_id, report_data))
            return "ab" * 8, [
                {"imr": 3, "event": "instance-id", "event_payload": replica.instance_id}
            ]

        plain.quote_provider = provider
        _, document = await get_json(session, url)
        running, stopped = document["instances"]
        assert running["quote"] == "ab" * 8
        assert running["tcb_info"]["event_log"][0]["event_payload"] == first.instance_id
        assert stopped["quote"] is None  # stopped instances have no quote
        _, one = await get_json(session, f"{plain.api_url}/cvms/{first.vm_uuid}/attestation")
        assert one["is_online"] is True
        assert one["tcb_info"]["app_compose"] == first.app_compose
        assert all(len(data) == 64 for _, data in calls)


@pytest.mark.parametrize(
    ("mode", "status", "check"),
    [
        ("500", 500, "detail"),
        ("429", 429, "retry"),
        ("garbage", 200, "html"),
        ("invalid", 200, "schema"),
    ],
)
async def test_break_api_modes(plain: Simulator, mode: str, status: int, check: str) -> None:
    cvms = f"{plain.api_url}/apps/{plain.config.app_id}/cvms"
    plain.break_api(mode)
    async with aiohttp.ClientSession() as session, session.get(cvms, headers=KEY) as response:
        assert response.status == status
        text = await response.text()
        if check == "retry":
            assert response.headers["Retry-After"] == "1"
        if check == "html":
            assert text.startswith("<html>")
        if check == "schema":
            assert not isinstance(json.loads(text), list)


async def test_timeout_mode_hangs_until_the_api_is_fixed(plain: Simulator) -> None:
    cvms = f"{plain.api_url}/apps/{plain.config.app_id}/cvms"
    plain.break_api("timeout")
    async with aiohttp.ClientSession() as session:
        call = asyncio.create_task(get_json(session, cvms, headers=KEY))
        done, _ = await asyncio.wait({call}, timeout=0.2)
        assert not done
        plain.break_api("ok")
        status, _ = await asyncio.wait_for(call, 5)
        assert status == 200
    with pytest.raises(ValueError, match="unknown API mode"):
        plain.break_api("sometimes")


# -- control API, run_simulator, config ------------------------------------------------------------


async def test_control_api_drives_the_simulator(plain: Simulator) -> None:
    base = plain.control_url
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/replicas", json={"region": "sa-east"}) as response:
            assert response.status == 201
            added = await response.json()
        rid = added["instance_id"]
        assert plain.replica(rid).region == "sa-east"

        async with session.patch(
            f"{base}/replicas/{rid[:8]}",
            json={"region": "eu-north", "latency": "20ms", "health": 500},
        ) as response:
            assert (await response.json())["region"] == "eu-north"
        assert plain.replica(rid).latency == 0.02
        assert plain.replica(rid).health == 500

        async with session.post(f"{base}/replicas/{rid}/stop") as response:
            assert (await response.json())["status"] == "stopped"
        assert not plain.replica(rid).up
        async with session.post(f"{base}/replicas/{rid}/start") as response:
            assert (await response.json())["up"] is True

        async with session.put(f"{base}/api-mode", json={"mode": "429"}) as response:
            assert (await response.json())["mode"] == "429"
        async with session.put(f"{base}/api-mode", json={"mode": "bad"}) as response:
            assert response.status == 400
            assert "unknown API mode" in (await response.json())["error"]
        async with session.patch(f"{base}/replicas/{rid}", json={"error_rate": 3}) as response:
            assert response.status == 400
            assert "error_rate" in (await response.json())["error"]
        async with session.delete(f"{base}/replicas/{rid}") as response:
            assert response.status == 200
        async with session.get(f"{base}/replicas/{rid}") as response:
            assert response.status == 404
        async with session.put(f"{base}/shared-backend", json={"rps": 50}) as response:
            assert (await response.json())["rps"] == 50
        assert plain.ctx.shared_backend is not None
        async with session.put(f"{base}/shared-backend", json={"rps": -1}) as response:
            assert response.status == 400
        _, summary = await get_json(session, f"{base}/")
        assert summary["api_mode"] == "429"
        assert len(summary["replicas"]) == 2


async def test_run_simulator_serves_until_cancelled() -> None:
    ready: asyncio.Future[Simulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_simulator(SimulatorConfig(), ready.set_result))
    sim = await asyncio.wait_for(ready, 5)
    async with session_for(sim) as session:
        status, _ = await get_json(session, sim.url_of(sim.replicas[0].instance_id))
        assert status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sim.replicas[0].up


def test_the_example_simulator_config_loads() -> None:
    config = load_simulator_config(REPO / "config" / "sim.yaml")
    assert len(config.replicas) == 4
    assert {r.region for r in config.replicas} >= {"us-east", "eu-west", "ap-southeast"}
    assert [r.status for r in config.replicas].count("stopped") == 1


def test_bad_simulator_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("replicas:\n  - region: x\n    error_rate: 2\n    instance_id: zz\n")
    with pytest.raises(ConfigError) as error:
        load_simulator_config(path)
    assert "replicas[0].error_rate" in str(error.value)
    assert "replicas[0].instance_id" in str(error.value)


async def test_router_overlay_is_a_valid_router_config() -> None:
    from router.config import parse_config

    async with Simulator(SimulatorConfig.demo(tls=True)) as sim:
        config = parse_config(sim.router_overlay(), environ={})
        phala = config.discovery.phala
        assert phala is not None
        assert (phala.app_id, phala.scheme, phala.port) == (sim.config.app_id, "https", 8080)
        assert config.discovery.connect_to == sim.connect_to
        assert config.upstream_tls.ca_file == sim.ca_file
        assert [r.status for r in sim.replicas].count("stopped") == 1
        assert len({r.region for r in sim.replicas}) == 3


async def test_banner_curl_line_reaches_a_replica(plain: Simulator) -> None:
    banner = plain.banner()
    assert plain.api_url in banner
    assert plain.control_url in banner
    first = plain.replicas[0]
    curl = next(line for line in banner.splitlines() if "--connect-to" in line).split()
    # curl --connect-to HOST:PORT:IP:PORT URL: dial IP:PORT, keep the URL's host name.
    _, _, dial_host, dial_port = curl[2].split(":")
    reader, writer = await asyncio.open_connection(dial_host, int(dial_port))
    writer.write(f"GET / HTTP/1.1\r\nHost: {plain.host_of(first.instance_id)}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(
    plain: Simulator,
) -> None:
    host, port = plain.gateway_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    name = plain.host_of(plain.replicas[0].instance_id)
    writer.write(f"GET /x HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    writer.write_eof()  # like `printf ... | nc`: the request, then EOF at once
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert plain.replicas[0].instance_id.encode() in answer
    writer.close()
