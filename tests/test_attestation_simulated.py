"""Simulated quotes: real TDX v4 layout, replayable event log, simulator signature that
only `verifier: insecure-simulator` accepts, and the tamper knobs."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from router.attestation.quote import fresh_report_data, parse_td_quote
from router.attestation.verify import Evidence, Expectation, Verifier, verify_evidence
from router.models import AttestationVerdict
from router.simulator.quotes import (
    FixedQuote,
    SimulatedQuotes,
    Tamper,
    answer_fresh,
    make_quote,
    new_key,
)

APP_ID = "aa" * 20
INSTANCE_ID = "bb" * 20
COMPOSE_HASH = hashlib.sha256(b'{"docker_compose_file": "services: {}"}').hexdigest()
NONCE = bytes(range(32))


@dataclass(frozen=True)
class Replica:
    app_id: str = APP_ID
    instance_id: str = INSTANCE_ID
    compose_hash: str = COMPOSE_HASH


def check(
    quote_hex: str,
    events: list[dict[str, Any]],
    *,
    verifier: Verifier = "insecure-simulator",
    nonce: bytes = NONCE,
    trusted: frozenset[bytes] | None = None,
) -> AttestationVerdict:
    if trusted is None:  # trust the key that signed this quote (nothing is trusted by default)
        trusted = frozenset({parse_td_quote(bytes.fromhex(quote_hex)).signature_data[64:128]})
    return verify_evidence(
        Evidence(quote=bytes.fromhex(quote_hex), event_log=events),
        Expectation(
            app_id=APP_ID,
            instance_id=INSTANCE_ID,
            allowed_compose_hashes=frozenset({COMPOSE_HASH}),
            report_data=fresh_report_data(nonce),
        ),
        replica_id="sim-1",
        collateral=None,
        now_unix=0,
        at=1.0,
        verifier=verifier,
        mode="fresh",
        trusted_simulator_keys=trusted,
    )


def test_simulated_quote_has_the_tdx_v4_layout() -> None:
    report_data = fresh_report_data(NONCE)
    quote, _ = make_quote(APP_ID, INSTANCE_ID, COMPOSE_HASH, report_data, key=new_key())
    assert quote[:2] == b"\x04\x00"  # version 4
    assert quote[4:8] == b"\x81\x00\x00\x00"  # TDX
    assert quote[568:632] == report_data
    parsed = parse_td_quote(quote)
    assert parsed.rtmrs[3] == quote[376 + 48 * 3 : 376 + 48 * 4]
    assert parsed.mr_td == quote[184:232]


def test_simulated_quote_verifies_only_with_the_insecure_simulator_verifier(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quotes = SimulatedQuotes()
    quote_hex, events = quotes.provider(Replica(), fresh_report_data(NONCE))
    with caplog.at_level(logging.WARNING):
        verdict = check(quote_hex, events)
    assert verdict.ok, verdict
    assert (verdict.app_id, verdict.instance_id, verdict.compose_hash) == (
        APP_ID,
        INSTANCE_ID,
        COMPOSE_HASH,
    )
    assert "SIMULATED" in caplog.text
    refused = check(quote_hex, events, verifier="dcap")
    assert (refused.ok, refused.reason) == (False, "bad_signature")
    assert "insecure-simulator" in refused.detail


def test_simulator_key_can_be_pinned() -> None:
    quotes = SimulatedQuotes()
    quote_hex, events = quotes.provider(Replica(), fresh_report_data(NONCE))
    assert check(quote_hex, events, trusted=frozenset({quotes.public_key})).ok
    other = SimulatedQuotes().public_key
    assert check(quote_hex, events, trusted=frozenset({other})).reason == "bad_signature"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (Tamper.TAMPERED_QUOTE, "bad_signature"),
        (Tamper.WRONG_INSTANCE, "wrong_instance"),
        (Tamper.STALE_NONCE, "stale_nonce"),
    ],
)
def test_tamper_knobs_are_refused_with_their_reason(tamper: Tamper, reason: str) -> None:
    quotes = SimulatedQuotes()
    quotes.set_tamper(INSTANCE_ID, tamper)
    quote_hex, events = quotes.provider(Replica(), fresh_report_data(NONCE))
    verdict = check(quote_hex, events)
    assert (verdict.ok, verdict.reason) == (False, reason)


def test_fixture_knob_serves_the_given_quote() -> None:
    quotes = SimulatedQuotes()
    other_quote, other_events = make_quote(APP_ID, INSTANCE_ID, COMPOSE_HASH, b"old", key=new_key())
    quotes.set_tamper(
        INSTANCE_ID, Tamper.FIXTURE, fixed=FixedQuote(other_quote.hex(), other_events)
    )
    assert quotes.provider(Replica(), b"whatever") == (other_quote.hex(), other_events)


def test_disallowed_compose_hash_is_refused() -> None:
    quotes = SimulatedQuotes()
    quote_hex, events = quotes.provider(Replica(compose_hash="cc" * 32), fresh_report_data(NONCE))
    assert check(quote_hex, events).reason == "compose_not_allowed"


@dataclass(frozen=True)
class SimulatorReplica:
    """The simulator's replica record carries no app_id: the provider is told it."""

    instance_id: str = INSTANCE_ID
    compose_hash: str = COMPOSE_HASH


def test_fresh_answer_of_a_simulated_replica_verifies() -> None:
    quotes = SimulatedQuotes(app_id=APP_ID)
    status, body = answer_fresh(quotes.provider, SimulatorReplica(), NONCE.hex())
    assert status == 200
    assert body["report_data"] == fresh_report_data(NONCE).hex()
    assert check(body["quote"], json.loads(body["event_log"])).ok
    assert answer_fresh(quotes.provider, SimulatorReplica(), "nope")[0] == 400


def test_provider_without_any_app_id_says_so() -> None:
    with pytest.raises(ValueError, match="app_id"):
        SimulatedQuotes().provider(SimulatorReplica(), b"")
