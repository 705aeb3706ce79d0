"""RA-TLS verification: is this TLS peer an attested replica? Pure, apart from the warning
`verify_evidence` logs for a simulated quote.

The leaf certificate a replica presents carries a TDX quote (see `ratls_cert.py`). It passes
when the quote passes every check the gate runs (`verify_evidence`: platform, signature, TCB,
RTMR3 replay, OS measurements, app, **this replica's** instance, compose, key provider) and
its report_data is sha512(b"ratls-cert:" + the leaf's SubjectPublicKeyInfo DER). The TLS
handshake itself proved that the peer holds the private key of that leaf (CertificateVerify),
so the session ends inside the CVM that made the quote. Every failure's reason is
`ra_tls_<reason>`: `ra_tls_no_tls`, `ra_tls_no_attestation`, `ra_tls_unsupported_format`,
`ra_tls_malformed_attestation`, `ra_tls_key_binding_mismatch`, and `ra_tls_` + any reason of
`verify.py` (`ra_tls_bad_signature`, `ra_tls_wrong_instance`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import dcap_qvl

from router.attestation.claims import Expectation
from router.attestation.fetch import instance_id_of
from router.attestation.quote import parse_td_quote
from router.attestation.ratls_cert import CertAttestation, binding_report_data, read_attestation
from router.attestation.settings import AttestationConfig
from router.attestation.verify import Evidence, Verifier, verify_evidence
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica

REASON_PREFIX = "ra_tls_"
MODE = "ra-tls"


def ra_tls_reason(reason: str) -> str:
    return reason if reason.startswith(REASON_PREFIX) else REASON_PREFIX + reason


def base_expectation(
    cfg: AttestationConfig,
    app_id: str | None,
    replica: Replica,
    known: Iterable[Replica],
    kms_root_id: str | None = None,
) -> Expectation:
    """What any quote of `replica` must prove (no nonce, no app key: those are per mode).
    Compose hashes: the pinned set, else those discovery reports for the app's replicas.
    A pinned KMS root (`attestation.kms_root`) must be the attested key provider's id."""
    if cfg.allowed_compose_hashes:
        allowed = frozenset(cfg.allowed_compose_hashes)
    else:
        allowed = frozenset(r.compose_hash.lower() for r in known if r.compose_hash)
    kms_ids = frozenset(cfg.kms_ids) | ({kms_root_id} if kms_root_id else frozenset())
    return Expectation(
        app_id=app_id or cfg.app_id or replica.app_id,
        instance_id=instance_id_of(replica),
        allowed_compose_hashes=allowed,
        allowed_tcb_statuses=frozenset(cfg.allowed_tcb_statuses),
        allowed_os_image_hashes=frozenset(cfg.allowed_os_image_hashes),
        os_measurements=cfg.os_measurements,
        denied_advisories=frozenset(cfg.denied_advisories),
        allowed_key_providers=frozenset({"kms"})
        if kms_root_id
        else frozenset(cfg.allowed_key_providers),
        kms_ids=kms_ids,
    )


def failed(replica_id: str, exc: AttestationError, at: float, wall: float) -> AttestationVerdict:
    return AttestationVerdict(
        replica_id=replica_id, ok=False, reason=ra_tls_reason(exc.reason), at=at,
        detail=exc.detail, mode=MODE, wall_at=wall,
    )  # fmt: skip


def evidence_of(found: CertAttestation) -> Evidence:
    """The certificate's attestation as gate evidence: RTMR3 is all it can replay."""
    return Evidence(
        quote=found.quote,
        event_log=list(found.event_log),
        vm_config=found.vm_config,
        source="ra-tls certificate",
        replay_imrs=(3,),
    )


def verify_attestation(
    found: CertAttestation,
    expect: Expectation,
    *,
    replica_id: str,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
    now_unix: int,
    at: float,
    verifier: Verifier = "dcap",
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> AttestationVerdict:
    """The gate's checks on the certificate's quote, then the key binding."""
    verdict = verify_evidence(
        evidence_of(found), expect, replica_id=replica_id, collateral=collateral,
        now_unix=now_unix, at=at, verifier=verifier, mode=MODE,
        trusted_simulator_keys=trusted_simulator_keys,
    )  # fmt: skip
    if not verdict.ok:
        return replace(verdict, reason=ra_tls_reason(verdict.reason))
    expected = binding_report_data(found.spki_der)
    if parse_td_quote(found.quote).report_data != expected or found.report_data not in (
        None,
        expected,
    ):
        return replace(
            verdict,
            ok=False,
            reason=REASON_PREFIX + "key_binding_mismatch",
            detail="the quote's report_data is not sha512(b'ratls-cert:' + this certificate's "
            "public key): the quote was made for another key",
        )
    return verdict


def verify_certificate(
    leaf_der: bytes | None,
    expect: Expectation,
    *,
    replica_id: str,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
    now_unix: int,
    at: float,
    verifier: Verifier = "dcap",
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> AttestationVerdict:
    """Everything for one DER leaf (None: the connection had no TLS)."""
    try:
        if leaf_der is None:
            raise AttestationError("no_tls", "the connection is not TLS: nothing to verify")
        found = read_attestation(leaf_der)
    except AttestationError as exc:
        return failed(replica_id, exc, at, float(now_unix))
    return verify_attestation(
        found, expect, replica_id=replica_id, collateral=collateral, now_unix=now_unix,
        at=at, verifier=verifier, trusted_simulator_keys=trusted_simulator_keys,
    )  # fmt: skip
