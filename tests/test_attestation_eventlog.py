"""Event-log replay on both fixture formats (dstack and legacy tappd)."""

from __future__ import annotations

import hashlib
import json

import pytest

from router.attestation.eventlog import (
    first_mismatch,
    parse_event_log,
    replay_rtmrs,
    runtime_claims,
    runtime_event,
)
from router.attestation.quote import decode_quote, parse_td_quote
from router.errors import AttestationError
from tests.attestation_support import (
    DSTACK,
    DSTACK_APP_ID,
    DSTACK_COMPOSE_HASH,
    DSTACK_INSTANCE_ID,
    fixture_json,
    fixture_path,
)


@pytest.mark.parametrize("name", [DSTACK, "dstack-appkey-getquote.json", "tappd-report.json"])
def test_event_log_replays_to_every_rtmr_of_its_quote(name: str) -> None:
    data = fixture_json(name)
    quote = parse_td_quote(decode_quote(data["quote"]))
    events = parse_event_log(data["event_log"])
    assert replay_rtmrs(events) == quote.rtmrs
    assert first_mismatch(events, quote.rtmrs) is None


def test_dstack_claims_are_read_from_rtmr3() -> None:
    claims = runtime_claims(parse_event_log(fixture_json(DSTACK)["event_log"]))
    assert claims.app_id == DSTACK_APP_ID
    assert claims.compose_hash == DSTACK_COMPOSE_HASH
    assert claims.instance_id == DSTACK_INSTANCE_ID
    assert claims.system_ready
    assert claims.key_provider is not None
    assert "local-sgx" in claims.key_provider


def test_events_appended_after_system_ready_cannot_redeclare_the_instance() -> None:
    events = json.loads(fixture_json(DSTACK)["event_log"])
    events.append(runtime_event("instance-id", bytes(20)))
    claims = runtime_claims(parse_event_log(events))
    assert claims.instance_id == DSTACK_INSTANCE_ID


def test_lite_event_log_with_empty_digests_is_recomputed_and_binds() -> None:
    data = fixture_json("dstack-appkey-getquote.json")
    raw_events = json.loads(data["event_log"])
    assert any(e["imr"] == 3 and e["digest"] == "" for e in raw_events)
    claims = runtime_claims(parse_event_log(raw_events))
    assert claims.instance_id == "050bf89570575fe8fab4cb8f0a62a9e64efe8ead"
    assert claims.os_image_hash == (
        "07a2388c7a6a1b6a646d443f1517990a4ec294471d63146cda9d56972765051d"
    )


def test_legacy_tappd_compose_hash_is_sha256_of_the_exact_app_compose_string() -> None:
    claims = runtime_claims(parse_event_log(fixture_json("tappd-report.json")["event_log"]))
    exact = fixture_path("tappd-app-compose.json").read_bytes()
    assert hashlib.sha256(exact).hexdigest() == claims.compose_hash
    # The same JSON re-serialised hashes differently: never hash a re-serialisation.
    reserialised = json.dumps(json.loads(exact)).encode()
    assert hashlib.sha256(reserialised).hexdigest() != claims.compose_hash


def test_tampered_tappd_event_is_detected() -> None:
    events = json.loads(fixture_json("tappd-report.json")["event_log"])
    app_id = next(e for e in events if e["event"] == "app-id")
    app_id["event_payload"] = "00" * 20
    with pytest.raises(AttestationError) as info:
        parse_event_log(events)
    assert info.value.reason == "event_digest_mismatch"
    assert "app-id" in info.value.detail


@pytest.mark.parametrize(
    ("log", "detail"),
    [
        ("not json", "not JSON"),
        ('{"imr": 3}', "not a JSON array"),
        ('[{"imr": 7, "event_type": 1}]', "imr must be 0-3"),
        ('[{"imr": 0, "event_type": 1, "digest": "zz"}]', "not hex"),
        ('[{"imr": 0, "event_type": 1, "digest": "00"}]', "48-byte digest"),
    ],
)
def test_malformed_event_log_is_refused_with_a_clear_reason(log: str, detail: str) -> None:
    with pytest.raises(AttestationError) as info:
        parse_event_log(log)
    assert info.value.reason == "malformed_event_log"
    assert detail in info.value.detail
