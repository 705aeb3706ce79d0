"""Issue 16: attestation that cannot fail open. Each attack the simulator can make is
refused with its own reason in every mode where it applies; a refusal after a pass removes
the replica at once (only the Cloud API / PCCS being unreachable is an outage); fresh mode
retries a lost fetch before removing a passing replica; a verdict is tied to the URL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.attestation.manager import Attestor
from router.attestation.settings import AttestationConfig
from router.models import AttestationVerdict, Replica
from router.simulator.quotes import (
    SIMULATED_KMS_ID,
    FixedQuote,
    Tamper,
    make_quote,
    simulated_os_measurement,
)
from tests.support import eventually
from tests.test_attestation_manager import APP_ID, COMPOSE_HASH, World, by_id, world

__all__ = ["world"]  # the fixture, imported for this module's tests

MODES = ["fresh", "guest-agent", "cloud"]
PINNED: dict[str, Any] = {"os_measurements": [simulated_os_measurement()]}

ATTACKS = [
    (Tamper.EVIL_OS, "os_measurement_mismatch"),
    (Tamper.OTHER_APP, "wrong_app"),
    (Tamper.DEBUG_TD, "debug_td"),
    (Tamper.SIGNER_SEAM, "mr_signer_seam"),
    (Tamper.LOCAL_KEY_PROVIDER, "key_provider_not_allowed"),
    (Tamper.GARBAGE, "malformed_quote"),
    (Tamper.SGX, "not_tdx"),
    (Tamper.WRONG_INSTANCE, "wrong_instance"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("tamper", "reason"), ATTACKS)
async def test_each_attack_is_refused_with_its_reason(
    world: World, mode: str, tamper: Tamper, reason: str
) -> None:
    good, bad = world.phala.add(1), world.phala.add(2)
    world.phala.quotes.set_tamper(bad.instance_id, tamper)
    attestor = world.attestor(mode=mode, **PINNED)
    attestor.update_replicas([world.replica(good), world.replica(bad)])
    verdicts = by_id(await attestor.attest_now())
    assert verdicts[good.instance_id].ok, verdicts[good.instance_id]
    refused = verdicts[bad.instance_id]
    assert (refused.ok, refused.reason) == (False, reason), refused
    assert refused.detail


async def test_evil_os_passes_without_pinned_measurements_and_says_os_unchecked(
    world: World,
) -> None:
    """What issue 16 found: the os-image-hash event is the guest's own word, so an evil OS
    that writes the victim's passes a label check. Only MRTD/RTMR0-2 catch it."""
    sim = world.phala.add(1)
    world.phala.quotes.set_tamper(sim.instance_id, Tamper.EVIL_OS)
    from router.simulator.quotes import SIMULATED_OS_IMAGE_HASH

    attestor = world.attestor(allowed_os_image_hashes=[SIMULATED_OS_IMAGE_HASH])
    attestor.update_replicas([world.replica(sim)])
    (verdict,) = await attestor.attest_now()
    assert verdict.ok
    assert dict(verdict.checks)["os"] == "unchecked"
    pinned = world.attestor(**PINNED)
    pinned.update_replicas([world.replica(sim)])
    (refused,) = await pinned.attest_now()
    assert refused.reason == "os_measurement_mismatch"
    assert dict(refused.checks)["os"] == "failed"


async def test_a_passing_verdict_names_the_os_entry_and_every_check(world: World) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor(**PINNED)
    attestor.update_replicas([world.replica(sim)])
    (verdict,) = await attestor.attest_now()
    assert verdict.ok
    assert verdict.os_measurement == "simulated-dstack"
    assert dict(verdict.checks) == dict.fromkeys(
        ("os", "app", "instance", "compose", "key_provider", "fresh"), "ok"
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tamper", [Tamper.GARBAGE, Tamper.SGX])
async def test_garbage_after_a_pass_removes_the_replica_at_once(
    world: World, mode: str, tamper: Tamper
) -> None:
    sim = world.phala.add(1)
    passing = world.attestor(mode=mode)
    passing.update_replicas([world.replica(sim)])
    assert (await passing.attest_now())[0].ok
    world.phala.quotes.set_tamper(sim.instance_id, tamper)
    (verdict,) = await passing.attest_now()
    assert not verdict.ok
    published = world.verdicts[-1]
    assert (published.ok, published.reason) == (False, verdict.reason)
    assert "last attempt" not in published.detail


async def test_same_quote_replayed_by_another_instance_is_refused(world: World) -> None:
    victim, other = world.phala.add(1), world.phala.add(2)
    quote, events = make_quote(
        APP_ID, victim.instance_id, COMPOSE_HASH, b"", key=world.phala.quotes.key
    )
    world.phala.quotes.set_tamper(
        other.instance_id, Tamper.FIXTURE, fixed=FixedQuote(quote.hex(), events)
    )
    for mode in ("guest-agent", "cloud", "fresh"):
        attestor = world.attestor(mode=mode)
        attestor.update_replicas([world.replica(other)])
        (verdict,) = await attestor.attest_now()
        assert verdict.reason == "wrong_instance", (mode, verdict)


async def test_static_replica_of_another_app_is_refused(world: World) -> None:
    """Static discovery: the replica carries no app id; attestation.app_id binds it."""
    sim = world.phala.add(1)
    world.phala.quotes.set_tamper(sim.instance_id, Tamper.OTHER_APP)
    config = AttestationConfig.model_validate(
        {"mode": "fresh", "verifier": "insecure-simulator", "app_id": APP_ID,
         "allowed_compose_hashes": [COMPOSE_HASH]}
    )  # fmt: skip
    verdicts: list[AttestationVerdict] = []
    attestor = Attestor(
        config,
        None,
        verdicts.append,
        session=world.session,
        trusted_simulator_keys=frozenset({world.phala.quotes.public_key}),
    )
    replica = world.replica(sim)
    static = Replica(
        id="static-1",
        url=replica.url,
        scheme="http",
        host=replica.host,
        port=80,
        metadata={"instance_id": sim.instance_id},
    )
    attestor.update_replicas([static])
    (verdict,) = await attestor.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "wrong_app")
    world.phala.quotes.set_tamper(sim.instance_id, Tamper.NONE)
    assert (await attestor.attest_now())[0].ok


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        ({"allowed_key_providers": ["kms", "local"]}, "ok"),
        ({"kms_ids": ["ab" * 32]}, "kms_not_allowed"),
        ({"kms_ids": [SIMULATED_KMS_ID]}, "ok"),
    ],
)
async def test_key_provider_can_be_allowed_and_the_kms_pinned(
    world: World, cfg: dict[str, Any], reason: str
) -> None:
    local, kms = world.phala.add(1), world.phala.add(2)
    world.phala.quotes.set_tamper(local.instance_id, Tamper.LOCAL_KEY_PROVIDER)
    attestor = world.attestor(**cfg)
    target = local if "allowed_key_providers" in cfg else kms
    attestor.update_replicas([world.replica(target)])
    (verdict,) = await attestor.attest_now()
    assert verdict.reason == reason, verdict


async def test_fresh_mode_retries_a_lost_fetch_before_removing_a_passing_replica(
    world: World,
) -> None:
    sim = world.phala.add(1)
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        # The quote server comes back while the router waits for its second retry.
        delays.append(delay)
        sim.silent = len(delays) < 2

    config = AttestationConfig.model_validate(
        {"mode": "fresh", "verifier": "insecure-simulator", "timeout": "2s", "interval": "10m",
         "fresh": {"retries": 2, "retry_backoff": "1s"}}
    )  # fmt: skip
    attestor = Attestor(
        config,
        APP_ID,
        world.verdicts.append,
        session=world.session,
        trusted_simulator_keys=frozenset({world.phala.quotes.public_key}),
        sleep=sleep,
    )
    attestor.update_replicas([world.replica(sim)])
    assert (await attestor.attest_now())[0].ok
    sim.silent = True
    (verdict,) = await attestor.attest_now()
    assert verdict.ok
    assert delays == [1.0, 2.0]  # backoff doubles
    assert all(v.ok for v in world.verdicts)  # never removed
    # Retries exhausted: removed.
    delays.clear()
    sim.silent = True

    async def stay_silent(delay: float) -> None:
        delays.append(delay)

    attestor._sleep = stay_silent
    (verdict,) = await attestor.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "fetch_failed")
    assert len(delays) == 2
    assert world.verdicts[-1].reason == "fetch_failed"


async def test_a_url_change_stops_the_old_verdict_and_reattests(world: World) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor()
    replica = world.replica(sim)
    attestor.update_replicas([replica])
    assert (await attestor.attest_now())[0].ok
    moved = Replica(
        id=replica.id,
        url=replica.url + ":8080",
        scheme="http",
        host=replica.host,
        port=8080,
        app_id=APP_ID,
        compose_hash=COMPOSE_HASH,
    )
    attestor.update_replicas([moved])
    assert (world.verdicts[-1].ok, world.verdicts[-1].reason) == (False, "endpoint_changed")
    assert attestor.verdicts[replica.id].reason == "endpoint_changed"
    node_moved = Replica(**{**_fields(replica), "metadata": {"node": "node-7"}})
    attestor.update_replicas([node_moved])
    assert (await attestor.attest_now())[0].ok


def _fields(replica: Replica) -> dict[str, Any]:
    return {name: getattr(replica, name) for name in Replica.__dataclass_fields__}


async def test_guest_agent_quote_must_bind_an_app_key(world: World) -> None:
    """GetAttestationForAppKey binds `dip1::secp256k1c-pk:<key>`: a quote made for anything
    else (e.g. a GetQuote answer replayed to the router) is refused."""
    sim = world.phala.add(1)
    quote, events = make_quote(
        APP_ID, sim.instance_id, COMPOSE_HASH, b"1234", key=world.phala.quotes.key
    )
    world.phala.quotes.set_tamper(
        sim.instance_id, Tamper.FIXTURE, fixed=FixedQuote(quote.hex(), events)
    )
    attestor = world.attestor(mode="guest-agent")
    attestor.update_replicas([world.replica(sim)])
    (verdict,) = await attestor.attest_now()
    assert (verdict.ok, verdict.reason) == (False, "wrong_report_data")
    assert "app key" in verdict.detail


async def test_a_verdict_for_the_old_url_is_not_published_after_the_url_changed(
    world: World,
) -> None:
    sim = world.phala.add(1)
    attestor = world.attestor()
    replica = world.replica(sim)
    attestor.update_replicas([replica])
    assert (await attestor.attest_now())[0].ok
    sim.hold = asyncio.Event()
    before = attestor._last_attempt[replica.id]
    round_ = asyncio.create_task(attestor.attest_now())
    await eventually(lambda: attestor._last_attempt[replica.id] != before)  # in flight
    moved = Replica(**{**_fields(replica), "url": replica.url + ":8080", "port": 8080})
    attestor.update_replicas([moved])  # while the old URL's attempt is in flight
    sim.hold.set()
    await round_
    assert attestor.verdicts[replica.id].reason == "endpoint_changed"
