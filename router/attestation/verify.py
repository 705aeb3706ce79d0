"""Verify one replica's attestation evidence against what the router expects.

Pure: time comes in as arguments, collateral is handed in; no network, no clock. The checks
run in a fixed order and the first failure names the verdict's reason:

    malformed_quote | not_tdx            the bytes are not a TDX quote
    no_collateral                        (dcap) nothing to check Intel's signature against
    collateral_expired                   (dcap) the collateral's CRLs / TCB info are out of date
    bad_signature                        the quote is not signed by a trusted quoting enclave
    tcb_unknown | tcb_status:<Status>    the platform's TCB level is not acceptable
    malformed_event_log | event_digest_mismatch | rtmr_mismatch:<i>
                                         the event log does not replay to the quote's RTMRs
    wrong_app | wrong_instance           the quote is another app's, or another replica's
    compose_mismatch                     the app_compose given does not hash to the event
    compose_not_allowed                  the measured compose hash is not in the allowed set
    os_image_not_allowed                 the OS image hash is not in the allowed set
    stale_nonce | wrong_report_data      (fresh) the quote was not made for our nonce
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dcap_qvl

from router.attestation import simsig
from router.attestation.eventlog import first_mismatch, parse_event_log, runtime_claims
from router.attestation.quote import TdQuote, parse_td_quote, quote_digest
from router.errors import AttestationError
from router.models import AttestationVerdict

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


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the quote must prove. None means "not checked" for that field."""

    app_id: str | None
    instance_id: str | None
    # None: any compose hash; an empty set: none (fail closed).
    allowed_compose_hashes: frozenset[str] | None
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_os_image_hashes: frozenset[str] = frozenset()
    # Fresh mode: the exact 64 bytes the quote's report_data must hold.
    report_data: bytes | None = None


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


def _norm(value: str | None) -> str | None:
    return value.strip().lower().removeprefix("0x") if value else None


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

    def verdict(reason: str, detail: str = "") -> AttestationVerdict:
        return AttestationVerdict(
            replica_id=replica_id, ok=reason == "ok", reason=reason, at=at, detail=detail,
            mode=mode, **found,
        )  # fmt: skip

    try:
        quote = parse_td_quote(evidence.quote)
        signature = check_signature(
            evidence.quote, quote, collateral, now_unix, verifier, trusted_simulator_keys
        )
        found["tcb_status"] = signature.tcb_status
        found["advisory_ids"] = signature.advisory_ids
        if signature.tcb_status not in expect.allowed_tcb_statuses:
            raise AttestationError(
                f"tcb_status:{signature.tcb_status}",
                f"TCB status {signature.tcb_status} is not in attestation.allowed_tcb_statuses "
                f"({', '.join(sorted(expect.allowed_tcb_statuses))})",
            )
        events = parse_event_log(evidence.event_log)
        claims = runtime_claims(events)
        found.update(
            app_id=claims.app_id,
            instance_id=claims.instance_id,
            compose_hash=claims.compose_hash,
            os_image_hash=_os_image_hash(evidence.vm_config, claims.os_image_hash),
        )
        bad = first_mismatch(events, quote.rtmrs)
        if bad is not None:
            raise AttestationError(
                f"rtmr_mismatch:{bad}",
                f"replaying the event log does not give the quote's RTMR{bad}",
            )
        _check_bindings(evidence, expect, claims.app_id, claims.instance_id, claims.compose_hash)
        _check_os_image(expect, claims.os_image_hash)
        _check_report_data(expect, quote.report_data)
    except AttestationError as exc:
        return verdict(exc.reason, exc.detail)
    if signature.simulated:
        log.warning(
            "replica %s: admitted on a SIMULATED quote (attestation.verifier: insecure-simulator); "
            "this proves nothing about real hardware",
            replica_id,
        )
    return verdict("ok", "simulated quote (insecure)" if signature.simulated else "")


def _check_bindings(
    evidence: Evidence,
    expect: Expectation,
    app_id: str | None,
    instance_id: str | None,
    compose_hash: str | None,
) -> None:
    if expect.app_id is not None and _norm(app_id) != _norm(expect.app_id):
        raise AttestationError(
            "wrong_app", f"the quote is for app {app_id or '(none)'}, expected {expect.app_id}"
        )
    if expect.instance_id is not None and _norm(instance_id) != _norm(expect.instance_id):
        raise AttestationError(
            "wrong_instance",
            f"the quote is for instance {instance_id or '(none)'}, expected {expect.instance_id}",
        )
    if evidence.app_compose is not None:
        # Hash the exact string given: a re-serialised JSON would hash differently.
        given = hashlib.sha256(evidence.app_compose.encode()).hexdigest()
        if given != compose_hash:
            raise AttestationError(
                "compose_mismatch",
                f"sha256(app_compose) is {given}, the measured compose-hash is {compose_hash}",
            )
    allowed = expect.allowed_compose_hashes
    if allowed is not None and (compose_hash is None or compose_hash not in allowed):
        known = ", ".join(sorted(h[:12] for h in allowed)) or (
            "none known: set attestation.allowed_compose_hashes"
        )
        raise AttestationError(
            "compose_not_allowed",
            f"compose hash {compose_hash or '(none)'} is not allowed (allowed: {known})",
        )


def _check_os_image(expect: Expectation, measured: str | None) -> None:
    """Only the measured `os-image-hash` event counts: vm_config is the replica's own word."""
    allowed = expect.allowed_os_image_hashes
    if not allowed or measured in allowed:
        return
    raise AttestationError(
        "os_image_not_allowed",
        f"measured OS image {measured or '(no os-image-hash event)'} is not in "
        "attestation.allowed_os_image_hashes",
    )


def _check_report_data(expect: Expectation, report_data: bytes) -> None:
    if expect.report_data is None or report_data == expect.report_data:
        return
    raise AttestationError(
        "stale_nonce", "report_data does not bind the nonce of this attempt (a replayed quote?)"
    )
