"""How a verdict is shown: a JSON-able dict (for /status and `attest --json`), one line of
text (for `phala-router attest` and logs), the per-check summary, and ready-to-paste
`os_measurements` entries (`attest --measurements`). Pure.

`phala-router attest` exit codes: 0 every replica passed; 1 an error before any verdict
(e.g. discovery failed, an unknown --replica); 2 the config is invalid or attestation is
off; 3 at least one replica failed attestation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from router.attestation.measurements import MEASURED_FIELDS, entry_for_quote, render_entries
from router.models import AttestationVerdict

EXIT_ALL_PASSED = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_SOME_FAILED = 3


def rfc3339(unix: float | None) -> str | None:
    """Wall-clock Unix seconds as RFC 3339 UTC (`2026-12-02T06:14:35.120Z`)."""
    if unix is None:
        return None
    moment = dt.datetime.fromtimestamp(unix, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def checks_dict(verdict: AttestationVerdict) -> dict[str, str]:
    """{check: ok | failed | unchecked | not_reached}, with the os entry's name on ok."""
    shown = {}
    for name, state in verdict.checks:
        if name == "os" and state == "ok" and verdict.os_measurement:
            state = f"ok ({verdict.os_measurement})"
        shown[name] = state
    return shown


def verdict_to_dict(verdict: AttestationVerdict) -> dict[str, Any]:
    return {
        "replica": verdict.replica_id,
        "ok": verdict.ok,
        "reason": verdict.reason,
        "detail": verdict.detail,
        "mode": verdict.mode,
        "checks": checks_dict(verdict),
        "tcb_status": verdict.tcb_status,
        "advisory_ids": list(verdict.advisory_ids),
        "app_id": verdict.app_id,
        "instance_id": verdict.instance_id,
        "compose_hash": verdict.compose_hash,
        "os_measurement": verdict.os_measurement,
        "measurements": dict(zip(MEASURED_FIELDS, verdict.measurements, strict=False)),
        # A label the replica (or the platform) gives, never evidence.
        "os_image_hash_label": verdict.os_image_hash,
        "key_provider": verdict.key_provider,
        "quote_digest": verdict.quote_digest,
        "at": rfc3339(verdict.wall_at),
    }


def format_checks(verdict: AttestationVerdict) -> str:
    return " ".join(f"{name}={state}" for name, state in checks_dict(verdict).items())


def format_verdict(verdict: AttestationVerdict) -> str:
    """`r1  PASS  tcb=UpToDate compose=1a2b3c4d5e6f instance=c3714eb6... [os=ok (img) ...]` or
    `r2  FAIL  wrong_instance: the quote is for instance ..., expected ...  [...]`."""
    checks = f"  [{format_checks(verdict)}]" if verdict.checks else ""
    if not verdict.ok:
        text = f"{verdict.replica_id}  FAIL  {verdict.reason}"
        return (f"{text}: {verdict.detail}" if verdict.detail else text) + checks
    facts = [f"tcb={verdict.tcb_status}"]
    if verdict.advisory_ids:
        facts.append(f"advisories={','.join(verdict.advisory_ids)}")
    if verdict.compose_hash:
        facts.append(f"compose={verdict.compose_hash[:12]}")
    if verdict.instance_id:
        facts.append(f"instance={verdict.instance_id}")
    if verdict.os_image_hash:
        facts.append(f"os_image_label={verdict.os_image_hash[:12]}")
    if verdict.detail:
        facts.append(f"({verdict.detail})")
    return f"{verdict.replica_id}  PASS  " + " ".join(facts) + checks


def format_measurements(verdicts: Sequence[AttestationVerdict]) -> str:
    """Each replica's MRTD/RTMR0-2 as a ready-to-paste `os_measurements` entry.

    Trust on first use: these are what the replicas run now, not known-good values. Compare
    them with `dstack-mr` or Phala's trust-center for the image before pinning them."""
    lines = [
        "# What each replica measures now (trust on first use: review before pinning;",
        "# compare with dstack-mr / Phala's trust-center for the OS image and VM shape).",
    ]
    entries = []
    seen: set[tuple[str, ...]] = set()
    for verdict in verdicts:
        if len(verdict.measurements) != 4:
            lines.append(f"# {verdict.replica_id}: no quote read ({verdict.reason})")
            continue
        label = f", os_image_hash label {verdict.os_image_hash}" if verdict.os_image_hash else ""
        lines.append(f"# {verdict.replica_id}: {verdict.reason}{label}")
        if verdict.measurements not in seen:
            seen.add(verdict.measurements)
            entries.append(entry_for_quote(f"measured-{verdict.replica_id}", verdict.measurements))
    if entries:
        lines.append(render_entries(entries))
    return "\n".join(lines)
