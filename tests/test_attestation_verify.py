"""Verification of real TDX quotes (fixtures; time pinned inside the collateral window)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from router.attestation.quote import fresh_report_data, parse_td_quote
from router.attestation.verify import Evidence, Expectation, verify_evidence
from router.models import AttestationVerdict
from tests.attestation_support import (
    DSTACK,
    DSTACK_APP_ID,
    DSTACK_COLLATERAL,
    DSTACK_COMPOSE_HASH,
    DSTACK_INSTANCE_ID,
    collateral,
    fixture_bytes,
    fixture_json,
    pinned_now,
)


def dstack_evidence(**changes: Any) -> Evidence:
    data = fixture_json(DSTACK)
    fields: dict[str, Any] = {
        "quote": bytes.fromhex(data["quote"]),
        "event_log": data["event_log"],
        "vm_config": data["vm_config"],
    }
    fields.update(changes)
    return Evidence(**fields)


def expect(**changes: Any) -> Expectation:
    fields: dict[str, Any] = {
        "app_id": DSTACK_APP_ID,
        "instance_id": DSTACK_INSTANCE_ID,
        "allowed_compose_hashes": frozenset({DSTACK_COMPOSE_HASH}),
        # The fixture's keys come from `local-sgx`, not a KMS: allowed here on purpose.
        "allowed_key_providers": frozenset({"kms", "local-sgx"}),
    }
    fields.update(changes)
    return Expectation(**fields)


def run(
    evidence: Evidence,
    expectation: Expectation,
    *,
    collateral_name: str | None = DSTACK_COLLATERAL,
    now: int | None = None,
) -> AttestationVerdict:
    return verify_evidence(
        evidence,
        expectation,
        replica_id="r1",
        collateral=collateral(collateral_name) if collateral_name else None,
        now_unix=now if now is not None else pinned_now(DSTACK_COLLATERAL),
        at=123.0,
        mode="cloud",
    )


def test_real_dstack_quote_verifies_and_its_bindings_are_extracted() -> None:
    verdict = run(dstack_evidence(), expect())
    assert verdict.ok, verdict
    assert verdict.reason == "ok"
    assert verdict.tcb_status == "UpToDate"
    assert verdict.app_id == DSTACK_APP_ID
    assert verdict.instance_id == DSTACK_INSTANCE_ID
    assert verdict.compose_hash == DSTACK_COMPOSE_HASH
    assert verdict.os_image_hash == json.loads(fixture_json(DSTACK)["vm_config"])["os_image_hash"]
    assert verdict.quote_digest == hashlib.sha256(dstack_evidence().quote).hexdigest()
    assert verdict.at == 123.0


def test_quote_of_another_app_is_refused() -> None:
    verdict = run(dstack_evidence(), expect(app_id="00" * 20))
    assert (verdict.ok, verdict.reason) == (False, "wrong_app")
    assert DSTACK_APP_ID in verdict.detail


def test_quote_of_another_instance_is_refused() -> None:
    verdict = run(dstack_evidence(), expect(instance_id="ab" * 20))
    assert (verdict.ok, verdict.reason) == (False, "wrong_instance")
    assert DSTACK_INSTANCE_ID in verdict.detail


def test_compose_hash_outside_the_allowed_set_is_refused() -> None:
    assert run(dstack_evidence(), expect(allowed_compose_hashes=frozenset({"11" * 32}))).reason == (
        "compose_not_allowed"
    )
    # An empty allowed set admits nothing (fail closed); None does not check.
    assert run(dstack_evidence(), expect(allowed_compose_hashes=frozenset())).reason == (
        "compose_not_allowed"
    )
    assert run(dstack_evidence(), expect(allowed_compose_hashes=None)).ok


def test_app_compose_that_does_not_hash_to_the_measured_compose_hash_is_refused() -> None:
    verdict = run(dstack_evidence(app_compose='{"name": "other"}'), expect())
    assert verdict.reason == "compose_mismatch"


@pytest.mark.parametrize("offset", [10, 200, 400, 600, 1000, 4000])
def test_one_flipped_bit_in_the_quote_is_refused(offset: int) -> None:
    raw = bytearray(dstack_evidence().quote)
    raw[offset] ^= 0x01
    verdict = run(dstack_evidence(quote=bytes(raw)), expect())
    assert not verdict.ok
    assert verdict.reason in {"bad_signature", "malformed_quote"}


def test_flipped_bit_in_the_dcap_sample_quote_is_refused() -> None:
    raw = fixture_bytes("qvl-tdx_quote")
    now = pinned_now("qvl-tdx_quote_collateral.json")
    ok = run(
        Evidence(quote=raw, event_log=[]),
        expect(app_id=None, instance_id=None, allowed_compose_hashes=None),
        collateral_name="qvl-tdx_quote_collateral.json",
        now=now,
    )
    # Signature and TCB pass; the sample has no event log, so replay is what fails.
    assert ok.tcb_status == "UpToDate"
    assert ok.reason == "rtmr_mismatch:0"
    flipped = bytearray(raw)
    flipped[300] ^= 0x80
    bad = run(
        Evidence(quote=bytes(flipped), event_log=[]),
        expect(),
        collateral_name="qvl-tdx_quote_collateral.json",
        now=now,
    )
    assert bad.reason == "bad_signature"


def test_outdated_tcb_sample_is_refused() -> None:
    verdict = run(
        Evidence(quote=fixture_bytes("qvl-tdx_quote_outdated"), event_log=[]),
        expect(),
        collateral_name="qvl-tdx_quote_outdated_collateral.json",
        now=pinned_now("qvl-tdx_quote_outdated_collateral.json"),
    )
    assert (verdict.ok, verdict.reason) == (False, "tcb_unknown")
    assert "TCB level" in verdict.detail


def test_tcb_status_outside_the_allowed_set_is_refused_by_name() -> None:
    verdict = run(dstack_evidence(), expect(allowed_tcb_statuses=frozenset({"SWHardeningNeeded"})))
    assert verdict.reason == "tcb_status:UpToDate"
    assert verdict.tcb_status == "UpToDate"


def test_sgx_quote_is_refused_as_not_tdx() -> None:
    verdict = run(
        Evidence(quote=fixture_bytes("qvl-sgx_quote"), event_log=[]),
        expect(),
        collateral_name="qvl-sgx_quote_collateral.json",
        now=pinned_now("qvl-sgx_quote_collateral.json"),
    )
    assert (verdict.ok, verdict.reason) == (False, "not_tdx")
    assert "SGX" in verdict.detail


def test_real_current_time_with_expired_collateral_is_refused_clearly() -> None:
    verdict = run(dstack_evidence(), expect(), now=int(time.time()))
    assert (verdict.ok, verdict.reason) == (False, "collateral_expired")
    assert "refresh" in verdict.detail


def test_no_collateral_fails_closed() -> None:
    verdict = run(dstack_evidence(), expect(), collateral_name=None)
    assert (verdict.ok, verdict.reason) == (False, "no_collateral")


def test_fresh_mode_requires_report_data_bound_to_this_nonce() -> None:
    real_report_data = parse_td_quote(dstack_evidence().quote).report_data
    assert run(dstack_evidence(), expect(report_data=real_report_data)).ok
    verdict = run(dstack_evidence(), expect(report_data=fresh_report_data(b"\x01" * 32)))
    assert (verdict.ok, verdict.reason) == (False, "stale_nonce")


def _tamper(event_log: str, name: str, payload: str, *, fix_digest: bool) -> str:
    events = json.loads(event_log)
    for event in events:
        if event["event"] == name:
            event["event_payload"] = payload
            if fix_digest:
                event["digest"] = ""  # recomputed from the new payload
    return json.dumps(events)


def test_tampered_event_is_detected() -> None:
    log = fixture_json(DSTACK)["event_log"]
    edited = _tamper(log, "instance-id", "ab" * 20, fix_digest=False)
    assert run(dstack_evidence(event_log=edited), expect()).reason == "event_digest_mismatch"
    # With its digest recomputed, the edit no longer replays to the quote's RTMR3.
    edited = _tamper(log, "instance-id", "ab" * 20, fix_digest=True)
    assert run(dstack_evidence(event_log=edited), expect()).reason == "rtmr_mismatch:3"


def test_tampered_boot_event_names_its_rtmr() -> None:
    events = json.loads(fixture_json(DSTACK)["event_log"])
    first_imr1 = next(e for e in events if e["imr"] == 1)
    first_imr1["digest"] = "00" * 48
    verdict = run(dstack_evidence(event_log=json.dumps(events)), expect())
    assert verdict.reason == "rtmr_mismatch:1"
