"""Sticky-key tables (`routing.sticky.hash`), built with the snapshot and reused.

`KeyTables` makes the table of the configured kind for a group of members and keeps it
while the group's members and weights are unchanged: snapshots are rebuilt on every health
change anywhere, and most of them leave a given group (all replicas, or one region) as it
was. It holds the tables of the current and the previous build only, so a group that is
gone is dropped one build later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from router.balancing.base import Member
from router.balancing.maglev import MaglevTable
from router.balancing.rendezvous import RendezvousTable
from router.balancing.ring import RingTable
from router.balancing.settings import StickyConfig

Signature = tuple[tuple[str, float], ...]


class KeyTable(Protocol):
    """Places a 64-bit key on one of a group's members (by index)."""

    @property
    def nbytes(self) -> int: ...

    def pick(self, key: int) -> int: ...

    def shares(self) -> list[float]:
        """Each member's share of the key space (what its weight got after quantisation)."""
        ...

    def order(self, key: int) -> Iterator[int]:
        """The key's member, then its deterministic failover order (distinct members)."""
        ...


def make_table(cfg: StickyConfig, ids: Sequence[str], weights: Sequence[float]) -> KeyTable:
    if cfg.hash == "maglev":
        return MaglevTable(ids, weights, cfg.maglev_table_size)
    if cfg.hash == "ring":
        return RingTable(ids, weights, cfg.ring_size)
    return RendezvousTable(ids, weights)


class KeyTables:
    """Tables by group signature (member ids and weights, in order)."""

    __slots__ = ("_cfg", "_current", "_previous", "builds")

    def __init__(self, cfg: StickyConfig) -> None:
        self._cfg = cfg
        self._current: dict[Signature, KeyTable] = {}
        self._previous: dict[Signature, KeyTable] = {}
        self.builds = 0  # tables built so far (reuses do not count)

    def next_generation(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, members: Sequence[Member]) -> KeyTable:
        signature = tuple((m.replica.id, m.weight) for m in members)
        table = self._current.get(signature)
        if table is None:
            table = self._previous.get(signature)
            if table is None:
                self.builds += 1
                table = make_table(self._cfg, [s[0] for s in signature], [s[1] for s in signature])
            self._current[signature] = table
        return table
