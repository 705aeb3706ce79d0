"""The checks of what a verified quote claims: OS measurements, app/instance/compose
bindings, key provider, OS-image label, nonce. Pure; each raises AttestationError with
its own reason code and marks its entry in `Checks` when it passes.

Reason codes: os_measurement_mismatch, wrong_app, wrong_instance, compose_mismatch,
compose_not_allowed, key_provider_not_allowed, kms_not_allowed, os_image_not_allowed
(label only), stale_nonce, wrong_report_data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from router.attestation.eventlog import RuntimeClaims
from router.attestation.measurements import OsMeasurement, matching_entry
from router.errors import AttestationError

CHECK_NAMES = ("os", "app", "instance", "compose", "key_provider", "fresh")
# Which check a failing reason belongs to (the rest fail before any of these ran).
_CHECK_OF_REASON = {
    "os_measurement_mismatch": "os",
    "wrong_app": "app",
    "wrong_instance": "instance",
    "compose_mismatch": "compose",
    "compose_not_allowed": "compose",
    "key_provider_not_allowed": "key_provider",
    "kms_not_allowed": "key_provider",
    "stale_nonce": "fresh",
}


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the quote must prove. None / empty means "not checked" for that field."""

    app_id: str | None
    instance_id: str | None
    # None: any compose hash; an empty set: none (fail closed).
    allowed_compose_hashes: frozenset[str] | None
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_os_image_hashes: frozenset[str] = frozenset()
    # Fresh mode: the exact 64 bytes the quote's report_data must hold.
    report_data: bytes | None = None
    os_measurements: tuple[OsMeasurement, ...] = ()
    denied_advisories: frozenset[str] = frozenset()
    allowed_key_providers: frozenset[str] = frozenset({"kms"})
    kms_ids: frozenset[str] = frozenset()
    # Guest-agent mode: report_data must bind an app key (`dip1::secp256k1c-pk:<key>`).
    report_data_prefix: bytes | None = None


class Checks:
    """The state of each named check during one verification."""

    def __init__(self, expect: Expectation) -> None:
        configured = {
            "os": bool(expect.os_measurements),
            "app": expect.app_id is not None,
            "instance": expect.instance_id is not None,
            "compose": expect.allowed_compose_hashes is not None,
            "key_provider": True,
            "fresh": expect.report_data is not None,
        }
        self.states = {n: "pending" if configured[n] else "unchecked" for n in CHECK_NAMES}

    def passed(self, name: str) -> None:
        if self.states[name] == "pending":
            self.states[name] = "ok"

    def result(self, reason: str) -> tuple[tuple[str, str], ...]:
        failed = _CHECK_OF_REASON.get(reason)
        return tuple(
            (name, "failed" if name == failed else "not_reached" if state == "pending" else state)
            for name, state in self.states.items()
        )


def norm(value: str | None) -> str | None:
    return value.strip().lower().removeprefix("0x") if value else None


def check_os(expect: Expectation, measured: Sequence[str], checks: Checks) -> str | None:
    """The os_measurements entry MRTD and RTMR0-2 match; None when none is configured."""
    if not expect.os_measurements:
        return None
    entry = matching_entry(expect.os_measurements, measured)
    if entry is None:
        raise AttestationError(
            "os_measurement_mismatch",
            f"MRTD/RTMR0-2 (mrtd {measured[0][:16]}...) match no attestation.os_measurements "
            f"entry ({', '.join(m.name for m in expect.os_measurements)}); "
            "`phala-router attest --measurements` prints what this replica measures",
        )
    checks.passed("os")
    return entry.name


def check_bindings(
    expect: Expectation, claims: RuntimeClaims, app_compose: str | None, checks: Checks
) -> None:
    if expect.app_id is not None and norm(claims.app_id) != norm(expect.app_id):
        raise AttestationError(
            "wrong_app",
            f"the quote is for app {claims.app_id or '(none)'}, expected {expect.app_id}",
        )
    checks.passed("app")
    if expect.instance_id is not None and norm(claims.instance_id) != norm(expect.instance_id):
        raise AttestationError(
            "wrong_instance",
            f"the quote is for instance {claims.instance_id or '(none)'}, "
            f"expected {expect.instance_id}",
        )
    checks.passed("instance")
    compose_hash = claims.compose_hash
    if app_compose is not None:
        # Hash the exact string given: a re-serialised JSON would hash differently.
        given = hashlib.sha256(app_compose.encode()).hexdigest()
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
    checks.passed("compose")


def parse_key_provider(payload: str | None) -> tuple[str | None, str | None]:
    """(name, id) from the key-provider event's JSON payload."""
    if not payload:
        return None, None
    try:
        data = json.loads(payload)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    name, ident = data.get("name"), data.get("id")
    return (
        name if isinstance(name, str) else None,
        norm(ident) if isinstance(ident, str) else None,
    )


def check_key_provider(expect: Expectation, payload: str | None, checks: Checks) -> None:
    """Keys from a KMS (dstack's default), unless `allowed_key_providers` says otherwise."""
    name, ident = parse_key_provider(payload)
    if name not in expect.allowed_key_providers:
        raise AttestationError(
            "key_provider_not_allowed",
            f"the attested key provider is {name or '(no key-provider event)'}; allowed: "
            f"{', '.join(sorted(expect.allowed_key_providers))} "
            "(attestation.allowed_key_providers)",
        )
    if name == "kms" and expect.kms_ids and ident not in expect.kms_ids:
        raise AttestationError(
            "kms_not_allowed",
            f"the replica's KMS is {ident or '(no id)'}, not one of attestation.kms_ids",
        )
    checks.passed("key_provider")


def check_os_image_label(expect: Expectation, label: str | None) -> None:
    """A label check only: the os-image-hash event is written by guest code. A replica
    without the label is not refused for it (the real dstack log has no such event)."""
    allowed = expect.allowed_os_image_hashes
    if not allowed or label is None or label in allowed:
        return
    raise AttestationError(
        "os_image_not_allowed",
        f"OS image label {label} is not in attestation.allowed_os_image_hashes "
        "(a label, not evidence: pin attestation.os_measurements to check the OS)",
    )


def check_report_data(
    expect: Expectation, report_data: bytes, checks: Checks, claimed: bytes | None = None
) -> None:
    """Fresh: the exact bytes of our nonce. Guest agent: an app key, and the one the agent
    says (what it binds is a key the app holds, not a moment: replayable, hence not fresh)."""
    if expect.report_data is not None and report_data != expect.report_data:
        raise AttestationError(
            "stale_nonce", "report_data does not bind the nonce of this attempt (a replayed quote?)"
        )
    prefix = expect.report_data_prefix
    if prefix is not None and not report_data.startswith(prefix):
        raise AttestationError(
            "wrong_report_data",
            f"report_data does not start with {prefix.decode()!r}: the guest agent's quote "
            "binds no app key",
        )
    if claimed is not None and claimed.ljust(64, b"\0") != report_data:
        raise AttestationError(
            "wrong_report_data", "the answer's report_data is not the one in its quote"
        )
    checks.passed("fresh")
