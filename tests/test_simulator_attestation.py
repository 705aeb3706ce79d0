"""The simulator's attestation side as a `phala-router simulate` user meets it: the banner
names the key to trust, a key file keeps that key across runs, the control API turns the
per-replica knobs, and with attestation off nothing pretends to attest."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from router.config import parse_config
from router.errors import ConfigError
from router.simulator import Simulator, SimulatorConfig, load_simulator_config
from router.simulator.settings import SimReplicaConfig


async def test_banner_prints_the_public_key_to_trust() -> None:
    async with Simulator(SimulatorConfig(attestation=True)) as sim:
        banner = sim.banner()
        assert sim.quote_public_key.hex() in banner
        assert "insecure-simulator" in banner
        assert "INSECURE" in banner
        assert sim.summary()["quote_public_key"] == sim.quote_public_key.hex()
    async with Simulator(SimulatorConfig()) as plain:
        assert "public key" not in plain.banner()
        assert plain.summary()["quote_public_key"] is None


def test_attestation_section_is_a_valid_router_config() -> None:
    sim = Simulator(SimulatorConfig(attestation=True, fresh_path="/attest"))
    config = parse_config(
        {
            "listen": "127.0.0.1:0",
            "discovery": {
                "static": [{"id": "a", "url": "http://a.example", "instance_id": "ab" * 20}]
            },
            "attestation": sim.attestation_section("fresh", interval="1s"),
        },
        {},
    )
    assert config.attestation.verifier == "insecure-simulator"
    assert config.attestation.app_id == sim.config.app_id
    assert [m.name for m in config.attestation.os_measurements] == ["simulated-dstack"]
    assert config.attestation.fresh.path == "/attest"
    assert config.attestation.simulator_public_keys == (sim.quote_public_key.hex(),)


def test_a_key_file_keeps_the_public_key_across_runs(tmp_path: Path) -> None:
    key_file = tmp_path / "sim-quote-key.pem"
    first = Simulator(SimulatorConfig(attestation=True, quote_key_file=key_file))
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = Simulator(SimulatorConfig(attestation=True, quote_key_file=key_file))
    assert first.quote_public_key == second.quote_public_key
    assert Simulator(SimulatorConfig(attestation=True)).quote_public_key != (first.quote_public_key)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("not a key", "is not an unencrypted PEM private key"),
        ("no folder", "does not exist"),
    ],
)
def test_a_bad_key_file_is_refused_at_config_load_naming_the_field(
    tmp_path: Path, setup: str, message: str
) -> None:
    key_file = tmp_path / "key.pem"
    if setup == "not a key":
        key_file.write_text("hello")
    else:
        key_file = tmp_path / "missing" / "key.pem"
    path = tmp_path / "sim.yaml"
    path.write_text(f"attestation: true\nquote_key_file: {key_file}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_simulator_config(path)
    assert "quote_key_file" in str(caught.value)


def test_simulator_yaml_takes_the_attestation_keys(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "attestation: true\n"
        "replicas:\n"
        "  - {region: us-east}\n"
        "  - {region: eu-west, attestation: wrong_instance}\n"
    )
    config = load_simulator_config(path)
    assert config.attestation is True
    assert [r.attestation for r in config.replicas] == ["ok", "wrong_instance"]


async def test_control_api_turns_the_attestation_knob() -> None:
    config = SimulatorConfig(attestation=True, replicas=(SimReplicaConfig(),))
    async with Simulator(config) as sim, aiohttp.ClientSession() as session:
        rid = sim.replicas[0].instance_id
        url = f"{sim.control_url}/replicas/{rid}"
        async with session.patch(url, json={"attestation": "stale_nonce"}) as response:
            assert response.status == 200
            assert (await response.json())["attestation"] == "stale_nonce"
        assert sim.replica(rid).attestation == "stale_nonce"
        async with session.patch(url, json={"attestation": "sometimes"}) as response:
            assert response.status == 400
            assert "attestation" in (await response.json())["error"]


async def test_without_attestation_no_source_pretends_to_attest() -> None:
    async with Simulator(SimulatorConfig(replicas=(SimReplicaConfig(),))) as sim:
        rid = sim.replicas[0].instance_id
        gateway = f"http://{sim.gateway_address}"
        connector = aiohttp.TCPConnector(force_close=True)  # the gateway routes per connection
        async with aiohttp.ClientSession(connector=connector) as session:
            agent_host = {"Host": sim.host_of(rid, sim.config.guest_agent_port)}
            async with session.post(
                f"{gateway}/prpc/GetAttestationForAppKey", headers=agent_host, json={}
            ) as response:
                assert response.status == 404
            fresh = f"{gateway}{sim.ctx.fresh_path}?nonce={'00' * 32}"
            async with session.get(fresh, headers={"Host": sim.host_of(rid)}) as response:
                assert "quote" not in await response.json()  # just the app answering
