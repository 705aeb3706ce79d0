"""Weighted rendezvous (highest random weight) hashing: each replica scores
`weight / -ln(u)` with u a stable hash of (key, replica); the top score wins.

A replica wins with probability weight/total and removing one moves exactly the keys it
won (1/N), with no table to build; but a new key costs O(replicas). Winners are remembered
in a bounded memo (cleared when full) so returning keys cost O(1); it is the fallback for
small groups where exact 1/N remapping matters more than per-key cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from router.balancing.keyhash import MASK64, hash64

MEMO_LIMIT = 16_384


class RendezvousTable:
    """Rendezvous placement over replicas `0..len(ids)-1`."""

    __slots__ = ("_memo", "_seeds", "_uniform", "_weights")

    def __init__(self, ids: Sequence[str], weights: Sequence[float]) -> None:
        if not ids:
            raise ValueError("rendezvous hashing needs at least one replica")
        self._weights = tuple(max(w, 1e-9) for w in weights)
        self._seeds = tuple(hash64(replica_id) for replica_id in ids)
        self._uniform = len(set(self._weights)) <= 1
        self._memo: dict[int, int] = {}

    @property
    def nbytes(self) -> int:
        return 0

    def shares(self) -> list[float]:
        """Each replica's share of keys: exactly its weight's (each key draws afresh)."""
        total = sum(self._weights)
        return [w / total for w in self._weights]

    def pick(self, key: int) -> int:
        found = self._memo.get(key)
        if found is not None:
            return found
        best = self._uniform_winner(key) if self._uniform else self._weighted_winner(key)
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = best
        return best

    def order(self, key: int) -> Iterator[int]:
        """The winner, then the others in index order from it."""
        first = self.pick(key)
        count = len(self._seeds)
        for offset in range(count):
            yield (first + offset) % count

    def _uniform_winner(self, key: int) -> int:
        # Equal weights: the largest hash wins (no logarithms needed). splitmix64's
        # finaliser is inlined: this loop is the O(n) part.
        best, best_hash, mask = 0, -1, MASK64
        for index, seed in enumerate(self._seeds):
            v = key ^ seed
            v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & mask
            v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & mask
            v ^= v >> 31
            if v > best_hash:
                best, best_hash = index, v
        return best

    def _weighted_winner(self, key: int) -> int:
        best, best_score, mask = 0, -1.0, MASK64
        weights, log = self._weights, math.log
        for index, seed in enumerate(self._seeds):
            v = key ^ seed
            v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & mask
            v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & mask
            v ^= v >> 31
            score = weights[index] / -log(((v >> 11) + 0.5) / 9007199254740992.0)
            if score > best_score:
                best, best_score = index, score
        return best
