"""OS measurements and the platform checks on the real dstack quote (fixtures read in place;
skipped with a reason when absent): it passes with its own MRTD/RTMR0-2 pinned, fails with
os_measurement_mismatch against another entry, `attest --measurements` prints the entry that
makes it pass; a debug TD, a foreign TDX module and denied advisories are refused by name;
collateral that expired since the last round removes the replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dcap_qvl
import httpx
import pytest
import yaml
from aiohttp import web

from router.attestation.claims import Expectation
from router.attestation.collateral import CollateralStore, quote_fmspc
from router.attestation.manager import Attestor
from router.attestation.measurements import OsMeasurement
from router.attestation.settings import AttestationConfig
from router.attestation.verify import SignatureResult, check_tcb
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica
from router.simulator.quotes import simulated_os_measurement
from tests.attestation_support import (
    DSTACK,
    DSTACK_APP_ID,
    DSTACK_COLLATERAL,
    DSTACK_COMPOSE_HASH,
    DSTACK_INSTANCE_ID,
    collateral,
    fixture_bytes,
    fixture_json,
    fixture_path,
    pinned_now,
    serve,
)
from tests.test_attestation_verify import dstack_evidence, expect, run
from tests.test_cli import run_cli


# What the dstack fixture's quote measures (MRTD, RTMR0-2), as `attest --measurements` and
# dstack-mr print them; a 16-CPU, 64 GiB VM shape per its vm_config.
def fixture_entry(name: str = "dstack-fixture") -> OsMeasurement:
    quote = bytes.fromhex(fixture_json(DSTACK)["quote"])
    body = quote[48 : 48 + 584]
    return OsMeasurement(
        name=name,
        mrtd=body[136:184].hex(),
        rtmr0=body[328:376].hex(),
        rtmr1=body[376:424].hex(),
        rtmr2=body[424:472].hex(),
    )


def test_real_quote_passes_with_its_own_measurements_pinned() -> None:
    verdict = run(dstack_evidence(), expect(os_measurements=(fixture_entry(),)))
    assert verdict.ok, verdict
    assert verdict.os_measurement == "dstack-fixture"
    assert dict(verdict.checks)["os"] == "ok"


def test_real_quote_fails_against_another_entry() -> None:
    other = OsMeasurement.model_validate(simulated_os_measurement("other-image"))
    verdict = run(dstack_evidence(), expect(os_measurements=(other,)))
    assert (verdict.ok, verdict.reason) == (False, "os_measurement_mismatch")
    assert "other-image" in verdict.detail
    assert "attest --measurements" in verdict.detail


def test_the_real_log_has_no_os_image_hash_event_and_the_label_option_does_not_refuse_it() -> None:
    """The os-image-hash option is a label check: with no such event in the real log it
    compares vm_config's label only, and it never stands in for the measurements."""
    label = json.loads(fixture_json(DSTACK)["vm_config"])["os_image_hash"]
    verdict = run(dstack_evidence(), expect(allowed_os_image_hashes=frozenset({label})))
    assert verdict.ok, verdict
    assert dict(verdict.checks)["os"] == "unchecked"


def _with_body_byte(offset: int, value: int) -> bytes:
    quote = bytearray(bytes.fromhex(fixture_json(DSTACK)["quote"]))
    quote[48 + offset] = value
    return bytes(quote)


@pytest.mark.parametrize(
    ("offset", "reason"), [(120, "debug_td"), (64, "mr_signer_seam")]
)  # td_attributes bit 0; mr_signer_seam's first byte
def test_debug_td_and_foreign_tdx_module_are_refused_by_name(offset: int, reason: str) -> None:
    verdict = run(dstack_evidence(quote=_with_body_byte(offset, 0x01)), expect())
    assert (verdict.ok, verdict.reason) == (False, reason)


def test_the_fixture_key_provider_is_local_sgx_and_refused_by_default() -> None:
    verdict = run(dstack_evidence(), expect(allowed_key_providers=frozenset({"kms"})))
    assert (verdict.ok, verdict.reason) == (False, "key_provider_not_allowed")
    assert "local-sgx" in verdict.detail


def test_denied_advisories_are_refused_even_at_an_allowed_status() -> None:
    expectation = Expectation(
        app_id=None,
        instance_id=None,
        allowed_compose_hashes=None,
        allowed_tcb_statuses=frozenset({"SWHardeningNeeded"}),
        denied_advisories=frozenset({"INTEL-SA-00837"}),
    )
    check_tcb(expectation, SignatureResult("SWHardeningNeeded", ("INTEL-SA-00615",), False))
    with pytest.raises(AttestationError) as info:
        check_tcb(
            expectation,
            SignatureResult("SWHardeningNeeded", ("INTEL-SA-00615", "INTEL-SA-00837"), False),
        )
    assert info.value.reason == "advisory_denied"
    assert "INTEL-SA-00837" in info.value.detail


def _fixture_config(**extra: Any) -> AttestationConfig:
    return AttestationConfig.model_validate(
        {
            "timeout": "2s",
            "allowed_compose_hashes": [DSTACK_COMPOSE_HASH],
            "allowed_key_providers": ["kms", "local-sgx"],  # the fixture's is local-sgx
            "os_measurements": [fixture_entry().model_dump()],
            "collateral": {"pccs_url": None, "file": str(fixture_path(DSTACK_COLLATERAL))},
            **extra,
        }
    )


def _listing(quote_hex: str) -> dict[str, Any]:
    data = fixture_json(DSTACK)
    return {
        "instances": [
            {"instance_id": DSTACK_INSTANCE_ID, "status": "running", "quote": quote_hex,
             "tcb_info": {"event_log": json.loads(data["event_log"])}}
        ]
    }  # fmt: skip


REPLICA = Replica(
    id=DSTACK_INSTANCE_ID, url="https://x.example", scheme="https", host="x.example",
    port=443, app_id=DSTACK_APP_ID, compose_hash=DSTACK_COMPOSE_HASH,
)  # fmt: skip


async def test_collateral_expired_since_the_last_round_removes_the_replica() -> None:
    """Cloud mode, the real quote: every round verifies again, so collateral that expired
    since the last round removes the replica (it is not a source outage)."""
    listing = _listing(fixture_json(DSTACK)["quote"])

    async def attestations(request: web.Request) -> web.Response:
        return web.json_response(listing)

    app = web.Application()
    app.router.add_get("/apps/{app_id}/attestations", attestations)
    now = [float(pinned_now(DSTACK_COLLATERAL))]
    verdicts: list[AttestationVerdict] = []
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as cloud:
        attestor = Attestor(
            _fixture_config(mode="cloud"),
            DSTACK_APP_ID,
            verdicts.append,
            cloud=cloud,
            wall_clock=lambda: now[0],
        )
        attestor.update_replicas([REPLICA])
        (first,) = await attestor.attest_now()
        now[0] += 40 * 24 * 3600  # past the collateral's nextUpdate
        (second,) = await attestor.attest_now()
    assert first.ok, first
    assert (second.ok, second.reason) == (False, "collateral_expired")
    assert (verdicts[-1].ok, verdicts[-1].reason) == (False, "collateral_expired")


async def test_a_quote_of_another_platform_is_not_excused_by_a_pccs_outage() -> None:
    """A passing replica that now sends a quote for a platform (FMSPC) whose collateral the
    PCCS cannot give is removed: that is new evidence nobody checked, not an outage."""
    listing = _listing(fixture_json(DSTACK)["quote"])
    known = collateral(DSTACK_COLLATERAL)

    async def attestations(request: web.Request) -> web.Response:
        return web.json_response(listing)

    async def pccs(url: str, raw: bytes) -> dcap_qvl.QuoteCollateralV3:
        if quote_fmspc(raw) == "90C06F000000":
            return known
        raise OSError("PCCS unreachable")

    app = web.Application()
    app.router.add_get("/apps/{app_id}/attestations", attestations)
    verdicts: list[AttestationVerdict] = []
    config = _fixture_config(mode="cloud", collateral={"pccs_url": "http://pccs.invalid"})
    wall = float(pinned_now(DSTACK_COLLATERAL))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as cloud:
        attestor = Attestor(
            config,
            DSTACK_APP_ID,
            verdicts.append,
            cloud=cloud,
            wall_clock=lambda: wall,
            collateral=CollateralStore(config.collateral, wall_clock=lambda: wall, fetcher=pccs),
        )
        attestor.update_replicas([REPLICA])
        assert (await attestor.attest_now())[0].ok
        listing.update(_listing(fixture_bytes("qvl-tdx_quote").hex()))  # FMSPC B0C06F000000
        (second,) = await attestor.attest_now()
    assert second.reason == "pccs_unreachable"
    assert (verdicts[-1].ok, verdicts[-1].reason) == (False, "pccs_unreachable")


async def test_attest_measurements_prints_the_entry_that_makes_the_fixture_pass(
    tmp_path: Path,
) -> None:
    data = fixture_json(DSTACK)

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(data)  # a replayed quote: fresh mode refuses it, but it is read

    app = web.Application()
    app.router.add_get("/.well-known/phala-router/attest", answer)
    async with serve(app) as url:
        config = {
            "listen": "127.0.0.1:0",
            "discovery": {
                "static": [{"id": "fixture", "url": url, "instance_id": DSTACK_INSTANCE_ID}]
            },
            "attestation": {
                "mode": "fresh",
                "app_id": DSTACK_APP_ID,
                "collateral": {"pccs_url": None, "file": str(fixture_path(DSTACK_COLLATERAL))},
            },
        }
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out, err = await run_cli("attest", "-c", str(path), "--measurements")
        failed_code, _, _ = await run_cli("attest", "-c", str(path))
    assert code == 0, err
    assert "trust on first use" in out
    printed = yaml.safe_load(out)["os_measurements"]
    (entry,) = (OsMeasurement.model_validate(e) for e in printed)
    assert entry.mrtd == fixture_entry().mrtd
    verdict = run(dstack_evidence(), expect(os_measurements=(entry,)))
    assert verdict.ok, verdict
    assert failed_code == 3  # documented: a replica failed attestation
