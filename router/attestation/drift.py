"""Compose drift: replicas of one app running different compose hashes. Pure.

Updating one replica's compose on Phala does not update the others, so a fleet can quietly
run two versions. We group replicas by compose hash, preferring the hash a passing
attestation measured over the one the Cloud API reports, and say which is which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.models import AttestationVerdict, Replica


@dataclass(frozen=True, slots=True)
class ComposeGroup:
    compose_hash: str | None  # None: neither reported nor measured
    replica_ids: tuple[str, ...]
    # Every replica of the group has a passing verdict that measured this hash; otherwise
    # the hash is only "reported, not attested".
    attested: bool


@dataclass(frozen=True, slots=True)
class ComposeDrift:
    groups: tuple[ComposeGroup, ...]  # largest first
    # Replicas whose reported hash differs from the one their quote measured.
    mismatched: tuple[str, ...] = ()

    @property
    def drift(self) -> bool:
        return sum(1 for g in self.groups if g.compose_hash is not None) > 1

    def describe(self) -> str:
        """One line for logs and /status, e.g. `2 compose hashes: 1a2b3c4d5e6f (3, attested), ...`."""
        parts = [
            f"{(g.compose_hash or 'unknown')[:12]} ({len(g.replica_ids)}, "
            f"{'attested' if g.attested else 'reported, not attested'})"
            for g in self.groups
        ]
        known = sum(1 for g in self.groups if g.compose_hash is not None)
        text = f"{known} compose hash{'es' if known != 1 else ''}: " + ", ".join(parts)
        if self.mismatched:
            text += f"; reported hash differs from the measured one on {', '.join(self.mismatched)}"
        return text


def group_by_compose(
    replicas: Sequence[Replica], verdicts: Mapping[str, AttestationVerdict] | None = None
) -> ComposeDrift:
    verdicts = verdicts or {}
    members: dict[str | None, list[str]] = {}
    attested: dict[str | None, bool] = {}
    mismatched = []
    for replica in replicas:
        reported = replica.compose_hash.lower() if replica.compose_hash else None
        verdict = verdicts.get(replica.id)
        measured = verdict.compose_hash if verdict is not None and verdict.ok else None
        if measured and reported and measured != reported:
            mismatched.append(replica.id)
        key = measured or reported
        members.setdefault(key, []).append(replica.id)
        attested[key] = attested.get(key, True) and measured is not None
    groups = sorted(
        (ComposeGroup(h, tuple(ids), attested[h]) for h, ids in members.items()),
        key=lambda g: (-len(g.replica_ids), g.compose_hash or "~"),
    )
    return ComposeDrift(tuple(groups), tuple(mismatched))
