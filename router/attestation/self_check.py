"""The router checks its own attestation the way a client would, for `/status`.

When the router runs in a CVM (`router.self_attestation`), its start quote is verified with
the configured verifier and collateral: a quote that does not verify (a broken platform, an
out-of-date TCB, a guest agent that lies) shows as `router_attestation.verified.ok: false`
on `/status` and the status page, with the reason, instead of going unnoticed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from router.attestation.claims import Expectation
from router.attestation.collateral import CollateralStore
from router.attestation.quote import decode_quote, router_report_data
from router.attestation.settings import AttestationConfig
from router.attestation.verify import Evidence, is_simulated_quote, verify_evidence
from router.errors import AttestationError

SelfCheck = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


def build_self_check(
    cfg: AttestationConfig,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> SelfCheck:
    """Verify the router's own start quote as a client would (signature with the configured
    verifier and collateral, TCB, event-log replay, the guest agent's app/instance/compose,
    the empty-nonce binding): what `/status` shows as `router_attestation.verified`."""
    store = CollateralStore(cfg.collateral, wall_clock=wall_clock, timeout=cfg.timeout)
    keys = trusted_simulator_keys | {bytes.fromhex(k) for k in cfg.simulator_public_keys}

    async def check(doc: Mapping[str, Any]) -> Mapping[str, Any]:
        compose = doc.get("compose_hash")
        expect = Expectation(
            app_id=doc.get("app_id"),
            instance_id=doc.get("instance_id"),
            allowed_compose_hashes=frozenset({compose}) if compose else None,
            allowed_tcb_statuses=frozenset(cfg.allowed_tcb_statuses),
            report_data=router_report_data(b""),
            allowed_key_providers=frozenset({"kms", "local", "local-sgx"}),  # shown, not judged
        )
        try:
            quote = decode_quote(doc.get("quote"))
            collateral = None if is_simulated_quote(quote) else await store.get(quote)
        except AttestationError as exc:
            return {"ok": False, "reason": exc.reason, "detail": exc.detail}
        verdict = verify_evidence(
            Evidence(quote, doc.get("event_log") or [], doc.get("vm_config")),
            expect, replica_id="router", collateral=collateral, now_unix=int(wall_clock()),
            at=clock(), verifier=cfg.verifier, trusted_simulator_keys=frozenset(keys),
        )  # fmt: skip
        return {
            "ok": verdict.ok,
            "reason": verdict.reason,
            "detail": verdict.detail,
            "tcb_status": verdict.tcb_status,
            "verifier": cfg.verifier,
        }

    return check
