"""What the fast engine answers itself, before any app or replica is chosen: an ACME
challenge (plain listener), the router's own attestation, the redirect to https.

Each check costs the common request one attribute test (or one compiled `startswith`)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from router import acme
from router.proxy.fast import wire
from router.proxy.fast.core import EngineCore
from router.proxy.fast.strict import RequestHead
from router.proxy.well_known import ATTESTATION_PATH, LocalAnswer, is_attestation_target

# A response ready to write (status, bytes), or one still being made (the attestation).
RouterAnswer = tuple[int, bytes] | Coroutine[Any, Any, LocalAnswer]


def router_answer(
    core: EngineCore, head: RequestHead, scheme: str, client_ip: str
) -> RouterAnswer | None:
    """The router's own answer to this request, or None: route it."""
    if core.acme_webroot is not None and scheme == "http":
        challenge = acme.answer(core.acme_webroot, head.method, head.target)
        if challenge is not None:  # ACME HTTP-01: answered here, never routed
            return challenge.status, challenge.wire()
    target = head.target
    if (
        core.attestation is not None
        and target.startswith(ATTESTATION_PATH)
        and is_attestation_target(target)
    ):
        return core.attestation.answer(head.method, target, client_ip)
    if (https_port := core.redirect_https_port) is not None and scheme == "http":
        return 308, wire.redirect_to_https(head.host, target, https_port)
    return None
