"""How a verdict is shown: a JSON-able dict (for /status and `attest --json`) and one line
of text (for `phala-router attest` and logs). Pure."""

from __future__ import annotations

from typing import Any

from router.models import AttestationVerdict


def verdict_to_dict(verdict: AttestationVerdict) -> dict[str, Any]:
    return {
        "replica": verdict.replica_id,
        "ok": verdict.ok,
        "reason": verdict.reason,
        "detail": verdict.detail,
        "mode": verdict.mode,
        "tcb_status": verdict.tcb_status,
        "advisory_ids": list(verdict.advisory_ids),
        "app_id": verdict.app_id,
        "instance_id": verdict.instance_id,
        "compose_hash": verdict.compose_hash,
        "os_image_hash": verdict.os_image_hash,
        "quote_digest": verdict.quote_digest,
        "at": verdict.at,
    }


def format_verdict(verdict: AttestationVerdict) -> str:
    """`r1  PASS  tcb=UpToDate compose=1a2b3c4d5e6f instance=c3714eb6...` or
    `r2  FAIL  wrong_instance: the quote is for instance ..., expected ...`."""
    if not verdict.ok:
        text = f"{verdict.replica_id}  FAIL  {verdict.reason}"
        return f"{text}: {verdict.detail}" if verdict.detail else text
    facts = [f"tcb={verdict.tcb_status}"]
    if verdict.advisory_ids:
        facts.append(f"advisories={','.join(verdict.advisory_ids)}")
    if verdict.compose_hash:
        facts.append(f"compose={verdict.compose_hash[:12]}")
    if verdict.instance_id:
        facts.append(f"instance={verdict.instance_id}")
    if verdict.os_image_hash:
        facts.append(f"os_image={verdict.os_image_hash[:12]}")
    if verdict.detail:
        facts.append(f"({verdict.detail})")
    return f"{verdict.replica_id}  PASS  " + " ".join(facts)
