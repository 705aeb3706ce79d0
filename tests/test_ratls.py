"""RA-TLS verification of a leaf certificate: both extension formats, the gate's checks on
the embedded quote, the key binding, and the real dstack quote inside a certificate."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from router.attestation.claims import Expectation
from router.attestation.measurements import OsMeasurement
from router.attestation.ratls import verify_certificate
from router.attestation.ratls_cert import (
    OID_ATTESTATION,
    _compact,
    _octet_string,
    _Scale,
    attestation_extensions,
    binding_report_data,
    decode_v0,
    encode_v0,
    read_attestation,
)
from router.attestation.simsig import public_key_bytes
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Behaviour, Identity, SimCa, _builder, ra_tls_certificate
from tests.attestation_support import (
    DSTACK,
    DSTACK_APP_ID,
    DSTACK_COLLATERAL,
    DSTACK_COMPOSE_HASH,
    DSTACK_INSTANCE_ID,
    collateral,
    fixture_json,
    pinned_now,
)

APP = "ab" * 20
ME = Identity(APP, "11" * 20, "cd" * 32)
OTHER = Identity(APP, "22" * 20, "cd" * 32)
QUOTE_KEY = ec.generate_private_key(ec.SECP256R1())
TRUSTED = frozenset({public_key_bytes(QUOTE_KEY.public_key())})


def expectation(identity: Identity = ME, **changes: object) -> Expectation:
    values: dict[str, object] = {
        "app_id": identity.app_id,
        "instance_id": identity.instance_id,
        "allowed_compose_hashes": frozenset({identity.compose_hash}),
        "os_measurements": (OsMeasurement(**simulated_os_measurement()),),
    }
    values.update(changes)
    return Expectation(**values)  # type: ignore[arg-type]


def leaf_der(behaviour: Behaviour = "ok", identity: Identity = ME) -> bytes:
    other = ec.generate_private_key(ec.SECP256R1()) if behaviour == "other_key" else None
    _, cert = ra_tls_certificate(
        identity,
        QUOTE_KEY,
        SimCa(),
        behaviour=behaviour,
        bind_to=other,
    )
    return cert.public_bytes(serialization.Encoding.DER)


def check(der: bytes | None, expect: Expectation | None = None) -> str:
    verdict = verify_certificate(
        der, expect or expectation(), replica_id="r1", collateral=None, now_unix=1_800_000_000,
        at=1.0, verifier="insecure-simulator", trusted_simulator_keys=TRUSTED,
    )  # fmt: skip
    return verdict.reason


def test_a_v0_certificate_of_this_replica_passes_with_every_check() -> None:
    der = leaf_der()
    found = read_attestation(der)
    assert found.format == "v0"
    assert {e["event"] for e in found.event_log} >= {"app-id", "instance-id", "compose-hash"}
    verdict = verify_certificate(
        der, expectation(), replica_id="r1", collateral=None, now_unix=1_800_000_000, at=1.0,
        verifier="insecure-simulator", trusted_simulator_keys=TRUSTED,
    )  # fmt: skip
    assert verdict.ok, verdict.detail
    assert dict(verdict.checks)["os"] == "ok"
    assert dict(verdict.checks)["instance"] == "ok"


def test_the_legacy_quote_and_event_log_extensions_are_read_too() -> None:
    der = leaf_der("legacy")
    assert read_attestation(der).format == "legacy"
    assert check(der) == "ok"


def test_a_quote_binding_another_key_is_refused() -> None:
    assert check(leaf_der("other_key")) == "ra_tls_key_binding_mismatch"


def test_another_instances_certificate_is_refused() -> None:
    assert check(leaf_der("ok", OTHER)) == "ra_tls_wrong_instance"


def test_a_plain_certificate_and_a_plain_connection_are_refused() -> None:
    assert check(leaf_der("plain")) == "ra_tls_no_attestation"
    assert check(None) == "ra_tls_no_tls"


def test_a_simulated_quote_needs_the_insecure_verifier_and_a_trusted_key() -> None:
    der = leaf_der()
    dcap = verify_certificate(
        der, expectation(), replica_id="r1", collateral=None, now_unix=1, at=1.0
    )
    assert dcap.reason == "ra_tls_bad_signature"
    assert check(der, expectation(os_measurements=())) == "ok"  # os: unchecked, still passes


def _cert_with(extensions: list[x509.UnrecognizedExtension]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "t")])
    builder = _builder(name, name, key.public_key())
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_v1_msgpack_and_truncated_payloads_fail_closed_with_their_reasons() -> None:
    v1 = _cert_with([x509.UnrecognizedExtension(OID_ATTESTATION, _octet_string(b"\x85abc"))])
    assert check(v1) == "ra_tls_unsupported_format"
    cut = encode_v0(b"q" * 100, [], bytes(64))[:50]
    truncated = _cert_with([x509.UnrecognizedExtension(OID_ATTESTATION, _octet_string(cut))])
    assert check(truncated) == "ra_tls_malformed_attestation"
    raw = _cert_with([x509.UnrecognizedExtension(OID_ATTESTATION, b"\x30\x00")])
    assert check(raw) == "ra_tls_malformed_attestation"


@given(st.integers(min_value=0, max_value=2**64))
def test_scale_compact_lengths_round_trip(value: int) -> None:
    cursor = _Scale(_compact(value))
    assert cursor.compact() == value
    assert cursor.at == len(cursor.data)


@given(
    st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=70)), max_size=5),
    st.binary(min_size=64, max_size=64),
)
def test_v0_payloads_round_trip(quote: bytes, runtime: list[tuple[str, bytes]], rd: bytes) -> None:
    events = [{"imr": 3, "event": name, "event_payload": data.hex()} for name, data in runtime]
    got_quote, got_events, got_rd, config = decode_v0(encode_v0(quote, events, rd))
    assert (got_quote, got_rd, config) == (quote, rd, "{}")
    assert [(e["event"], e["event_payload"]) for e in got_events] == [
        (name, data.hex()) for name, data in runtime
    ]


def test_the_real_dstack_quote_in_a_certificate_runs_dcap_and_fails_only_the_key_binding() -> None:
    """The real quote verifies (Intel signature, TCB, RTMR3 replay, bindings) at a pinned
    clock; its report_data cannot bind our test key, so the binding check must refuse it."""
    report = fixture_json(DSTACK)
    quote = bytes.fromhex(report["quote"])
    events = [e for e in json.loads(report["event_log"]) if e["imr"] == 3]
    spki_bound = binding_report_data(b"not this certificate's key")
    der = _cert_with(attestation_extensions(quote, events, spki_bound))
    expect = Expectation(
        app_id=DSTACK_APP_ID,
        instance_id=DSTACK_INSTANCE_ID,
        allowed_compose_hashes=frozenset({DSTACK_COMPOSE_HASH}),
        allowed_key_providers=frozenset({"local-sgx", "kms"}),
    )
    verdict = verify_certificate(
        der, expect, replica_id="real", collateral=collateral(DSTACK_COLLATERAL),
        now_unix=pinned_now(DSTACK_COLLATERAL), at=1.0,
    )  # fmt: skip
    assert verdict.reason == "ra_tls_key_binding_mismatch", verdict.detail
    assert verdict.tcb_status == "UpToDate"
    assert dict(verdict.checks)["instance"] == "ok"
    wrong = verify_certificate(
        der, replace(expect, instance_id="00" * 20), replica_id="real",
        collateral=collateral(DSTACK_COLLATERAL), now_unix=pinned_now(DSTACK_COLLATERAL), at=1.0,
    )  # fmt: skip
    assert wrong.reason == "ra_tls_wrong_instance"


@pytest.mark.parametrize("legacy", [False, True])
def test_the_quote_must_be_tdx(legacy: bool) -> None:
    sgx_like = b"\x03\x00\x02\x00" + bytes(4) + bytes(700)
    der = _cert_with(attestation_extensions(sgx_like, [], bytes(64), legacy=legacy))
    assert check(der) == "ra_tls_not_tdx"


def test_bytes_that_are_no_certificate_fail_closed() -> None:
    assert check(b"\x30\x03\x02\x01\x00") == "ra_tls_malformed_certificate"


@given(st.binary(max_size=400))
def test_any_attestation_payload_gives_a_reason_never_an_exception(payload: bytes) -> None:
    der = _cert_with([x509.UnrecognizedExtension(OID_ATTESTATION, _octet_string(payload))])
    assert check(der).startswith("ra_tls_")
