"""The rules the gate applies around verification: what a verdict is tied to, which
failures are a source outage rather than bad evidence, what a guest agent's quote must bind,
and which checks are announced at start as not running. Pure, apart from the warning log.
"""

from __future__ import annotations

import logging

from router.attestation.settings import AttestationConfig
from router.models import Replica

log = logging.getLogger(__name__)

# What dstack's GetAttestationForAppKey binds into report_data (then the app's public key).
APP_KEY_PREFIX = b"dip1::secp256k1c-pk:"
# Reasons that say the source is down, not that the evidence is wrong (cloud, guest-agent).
OUTAGE_REASONS = frozenset({"cloud_api_unreachable", "pccs_unreachable"})

Endpoint = tuple[str | None, str, str | None]


def endpoint_of(replica: Replica) -> Endpoint:
    """What a verdict is tied to (compose hash, URL, node): a change re-attests the replica;
    a new URL or node also stops the old verdict at once."""
    return (replica.compose_hash, replica.url, replica.metadata.get("node"))


def warn_unchecked(cfg: AttestationConfig, app_id: str | None) -> None:
    """Say at start which checks will not run, and what that leaves open."""
    if not cfg.enabled:
        return
    if not cfg.os_measurements:
        log.warning(
            "attestation.os_measurements is empty: the OS and firmware (MRTD, RTMR0-2) are NOT "
            "checked (os: unchecked). A host booting a modified OS can write this app's "
            "identity events itself. Pin them: `phala-router attest --measurements`"
        )
    if not (app_id or cfg.app_id):
        log.warning(
            "attestation: no app_id (attestation.allow_unbound): any app's quote with an "
            "allowed compose hash passes (app: unchecked)"
        )
