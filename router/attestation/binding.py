"""Static discovery with attestation on: every replica must be bound to an app and an
instance, or a genuine CVM of any app whose compose hash is allowed (the same public compose
deployed under another account) would pass.

Checked at config load (`RouterConfig`): `attestation.app_id`, and for each static replica an
`instance_id` (or an id that is one: 40 hex). `attestation.allow_unbound: true` opts out;
the unchecked bindings are then shown as `app: unchecked` / `instance: unchecked`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from router.attestation.settings import AttestationConfig

_INSTANCE_ID = re.compile(r"^[0-9a-fA-F]{40}$")


class StaticEntry(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def instance_id(self) -> str | None: ...


def expected_instance_id(entry: StaticEntry) -> str | None:
    if entry.instance_id:
        return entry.instance_id.lower()
    return entry.id.lower() if _INSTANCE_ID.match(entry.id) else None


def unbound_problem(static: Sequence[StaticEntry], cfg: AttestationConfig) -> str | None:
    """What is missing for static replicas to be bound, as one message; None when bound."""
    if not cfg.enabled or cfg.allow_unbound:
        return None
    missing = []
    if cfg.app_id is None:
        missing.append("attestation.app_id (the 40-hex app id every replica's quote must name)")
    unbound = [e.id for e in static if expected_instance_id(e) is None]
    if unbound:
        missing.append(
            f"discovery.static[].instance_id for {', '.join(unbound)} (40 hex, the CVM's instance id)"
        )
    if not missing:
        return None
    return (
        "with attestation on, static replicas must be bound to their app and instance: set "
        + "; ".join(missing)
        + " (or attestation.allow_unbound: true to accept any app/instance, shown as unchecked)"
    )
