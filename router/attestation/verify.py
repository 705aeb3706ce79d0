"""Verify one replica's attestation evidence against what the router expects.

Pure: time comes in as arguments, collateral is handed in; no network, no clock. The checks
run in a fixed order and the first failure names the verdict's reason:

    malformed_quote | not_tdx            the bytes are not a TDX quote (checked first)
    debug_td                             TD attributes say debug: the host can read the TD
    mr_signer_seam                       the TDX module is not Intel's (mr_signer_seam != 0)
    no_collateral                        (dcap) nothing to check Intel's signature against
    collateral_expired                   (dcap) the collateral's CRLs / TCB info are out of date
    bad_signature                        the quote is not signed by a trusted quoting enclave
    tcb_unknown | tcb_status:<Status>    the platform's TCB level is not acceptable
    advisory_denied                      an Intel advisory in attestation.denied_advisories
    malformed_event_log | event_digest_mismatch | rtmr_mismatch:<i>
                                         the event log does not replay to the quote's RTMRs
    os_measurement_mismatch              MRTD/RTMR0-2 match no attestation.os_measurements entry
    wrong_app | wrong_instance           the quote is another app's, or another replica's
    compose_mismatch                     the app_compose given does not hash to the event
    compose_not_allowed                  the measured compose hash is not in the allowed set
    key_provider_not_allowed | kms_not_allowed
                                         keys not from an allowed provider / pinned KMS
    os_image_not_allowed                 the os-image-hash LABEL is not in the allowed set
    stale_nonce                          (fresh) the quote was not made for our nonce
    wrong_report_data                    (guest-agent) report_data binds no app key, or not
                                         the one the agent says
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dcap_qvl

from router.attestation import simsig
from router.attestation.claims import (
    Checks,
    Expectation,
    check_bindings,
    check_key_provider,
    check_os,
    check_os_image_label,
    check_report_data,
)
from router.attestation.eventlog import first_mismatch, parse_event_log, runtime_claims
from router.attestation.quote import TdQuote, parse_td_quote, quote_digest
from router.errors import AttestationError
from router.models import AttestationVerdict

__all__ = [
    "Evidence",
    "Expectation",
    "SignatureResult",
    "check_platform",
    "check_signature",
    "check_tcb",
    "is_simulated_quote",
    "measured_values",
    "verify_evidence",
]

log = logging.getLogger(__name__)

Verifier = Literal["dcap", "insecure-simulator"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a source returned for one replica."""

    quote: bytes
    event_log: str | Sequence[Any]
    vm_config: str | None = None
    # The exact app_compose string when the source gives it (Cloud API tcb_info).
    app_compose: str | None = None
    source: str = ""
    # The report_data the source says the quote carries (guest agent, quote server).
    report_data: bytes | None = None
    # Which RTMRs the event log must replay to: an RA-TLS certificate carries RTMR3 only.
    replay_imrs: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True, slots=True)
class SignatureResult:
    tcb_status: str
    advisory_ids: tuple[str, ...]
    simulated: bool


def is_simulated_quote(raw: bytes) -> bool:
    """True for a quote the simulator signed (no Intel collateral needed or usable)."""
    try:
        return simsig.is_simulated(parse_td_quote(raw).signature_data)
    except AttestationError:
        return False


def _dcap_failure(message: str) -> AttestationError:
    """Translate dcap-qvl's ValueError text into a reason code."""
    lowered = message.lower()
    if "expired" in lowered:
        return AttestationError(
            "collateral_expired",
            f"the collateral is not valid at this time (refresh it from the PCCS): {message}",
        )
    if "no matching tcb level" in lowered:
        return AttestationError("tcb_unknown", f"the platform's TCB level is unknown: {message}")
    return AttestationError("bad_signature", message)


def check_signature(
    raw: bytes,
    quote: TdQuote,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
    now_unix: int,
    verifier: Verifier,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> SignatureResult:
    """Intel's signature chain via dcap-qvl, or (insecure-simulator only) the simulator's."""
    if simsig.is_simulated(quote.signature_data):
        if verifier != "insecure-simulator":
            raise AttestationError(
                "bad_signature",
                "a simulator-signed quote; it is accepted only with "
                "attestation.verifier: insecure-simulator",
            )
        simsig.check(quote.signed, quote.signature_data, trusted_simulator_keys)
        return SignatureResult("UpToDate", (), simulated=True)
    if collateral is None:
        raise AttestationError("no_collateral", "no Intel collateral for this quote's platform")
    try:
        report = dcap_qvl.verify(raw, collateral, now_unix)
    except ValueError as exc:
        raise _dcap_failure(str(exc)) from None
    return SignatureResult(str(report.status), tuple(report.advisory_ids), simulated=False)


def _os_image_hash(vm_config: str | None, from_event: str | None) -> str | None:
    if from_event:
        return from_event
    if not vm_config:
        return None
    try:
        value = json.loads(vm_config).get("os_image_hash")
    except (ValueError, AttributeError):
        return None
    return value.lower() if isinstance(value, str) else None


def check_platform(quote: TdQuote) -> None:
    """What dstack's validate_tcb refuses before anything else: a debug TD (its memory is
    readable by the host) and a TDX module not signed by Intel (mr_signer_seam != 0).
    dcap-qvl may check some of this too; we do not rely on it silently."""
    if quote.is_debug:
        raise AttestationError(
            "debug_td", "the TD attributes say DEBUG: the host can read and change its memory"
        )
    if any(quote.mr_signer_seam):
        raise AttestationError(
            "mr_signer_seam",
            f"mr_signer_seam is {quote.mr_signer_seam.hex()[:16]}..., not zero: "
            "the TDX module is not Intel's",
        )


def check_tcb(expect: Expectation, signature: SignatureResult) -> None:
    if signature.tcb_status not in expect.allowed_tcb_statuses:
        raise AttestationError(
            f"tcb_status:{signature.tcb_status}",
            f"TCB status {signature.tcb_status} is not in attestation.allowed_tcb_statuses "
            f"({', '.join(sorted(expect.allowed_tcb_statuses))})",
        )
    denied = sorted(set(signature.advisory_ids) & expect.denied_advisories)
    if denied:
        raise AttestationError(
            "advisory_denied",
            f"the platform is affected by {', '.join(denied)} (attestation.denied_advisories)",
        )


def measured_values(quote: TdQuote) -> tuple[str, str, str, str]:
    """MRTD, RTMR0, RTMR1, RTMR2 as hex: what `os_measurements` entries hold."""
    return (quote.mr_td.hex(), quote.rtmrs[0].hex(), quote.rtmrs[1].hex(), quote.rtmrs[2].hex())


def verify_evidence(
    evidence: Evidence,
    expect: Expectation,
    *,
    replica_id: str,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
    now_unix: int,
    at: float,
    verifier: Verifier = "dcap",
    mode: str = "",
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> AttestationVerdict:
    """Every check, in order; the verdict carries the evidence gathered so far.

    `now_unix` is wall-clock seconds for the collateral's validity window; `at` is the
    router's own (monotonic) clock, which `max_age` is measured against."""
    found: dict[str, Any] = {"quote_digest": quote_digest(evidence.quote)}
    checks = Checks(expect)

    def verdict(reason: str, detail: str = "") -> AttestationVerdict:
        return AttestationVerdict(
            replica_id=replica_id, ok=reason == "ok", reason=reason, at=at, detail=detail,
            mode=mode, checks=checks.result(reason), wall_at=float(now_unix), **found,
        )  # fmt: skip

    try:
        quote = parse_td_quote(evidence.quote)
        found["measurements"] = measured_values(quote)
        check_platform(quote)
        signature = check_signature(
            evidence.quote, quote, collateral, now_unix, verifier, trusted_simulator_keys
        )
        found["tcb_status"] = signature.tcb_status
        found["advisory_ids"] = signature.advisory_ids
        check_tcb(expect, signature)
        events = parse_event_log(evidence.event_log)
        claims = runtime_claims(events)
        found.update(
            app_id=claims.app_id,
            instance_id=claims.instance_id,
            compose_hash=claims.compose_hash,
            os_image_hash=_os_image_hash(evidence.vm_config, claims.os_image_hash),
            key_provider=claims.key_provider,
        )
        bad = first_mismatch(events, quote.rtmrs, evidence.replay_imrs)
        if bad is not None:
            raise AttestationError(
                f"rtmr_mismatch:{bad}",
                f"replaying the event log does not give the quote's RTMR{bad}",
            )
        found["os_measurement"] = check_os(expect, found["measurements"], checks)
        check_bindings(expect, claims, evidence.app_compose, checks)
        check_key_provider(expect, claims.key_provider, checks)
        check_os_image_label(expect, found["os_image_hash"])
        check_report_data(expect, quote.report_data, checks, evidence.report_data)
    except AttestationError as exc:
        return verdict(exc.reason, exc.detail)
    if signature.simulated:
        log.warning(
            "replica %s: admitted on a SIMULATED quote (attestation.verifier: insecure-simulator); "
            "this proves nothing about real hardware",
            replica_id,
        )
    return verdict("ok", "simulated quote (insecure)" if signature.simulated else "")
