"""Ring hash (Karger et al.; Envoy's `RING_HASH`): replicas own points on a 64-bit circle
and a key goes to the first point at or after its hash.

The ring holds at most `size` points. A replica's points are a fixed sequence derived from
a stable hash of its id, and how many it gets depends only on its weight (relative to the
heaviest) and on N rounded up to a power of two, so removing one of N replicas leaves every
other replica's points where they were and moves only the departed replica's keys (1/N) to
their ring successors. (Envoy's ring rescales every host's points to keep the ring's size,
which moves about another 1/N.) Only when N crosses a power of two do the counts change.
A lookup is a binary search, O(log points). Balance improves with points per replica
(spread ~ 1/sqrt(points)).

Each point is one unsigned 64-bit word: the top 44 bits of its position and a 20-bit
replica index, kept sorted in an array (8 bytes a point).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence

from router.balancing.keyhash import GOLDEN_GAMMA, MASK64, hash64, mix64

DEFAULT_RING_SIZE = 65_536
INDEX_BITS = 20
MAX_REPLICAS = 1 << INDEX_BITS
_INDEX_MASK = MAX_REPLICAS - 1
_POSITION_MASK = MASK64 ^ _INDEX_MASK


def point_counts(weights: Sequence[float], size: int) -> list[int]:
    """Points per replica, at least one each: a full-weight replica gets `size` divided by
    N rounded up to a power of two, so the counts survive most membership changes."""
    heaviest = max((max(w, 0.0) for w in weights), default=0.0) or 1.0
    per_replica = max(1, size // (1 << max(len(weights) - 1, 0).bit_length()))
    return [max(1, round(per_replica * max(w, 0.0) / heaviest)) for w in weights]


class RingTable:
    """A prebuilt hash ring over replicas `0..len(ids)-1`."""

    __slots__ = ("_count", "_points")

    def __init__(
        self, ids: Sequence[str], weights: Sequence[float], size: int = DEFAULT_RING_SIZE
    ) -> None:
        if not ids:
            raise ValueError("a hash ring needs at least one replica")
        if len(ids) > MAX_REPLICAS:
            raise ValueError(f"a hash ring holds at most {MAX_REPLICAS} replicas")
        points: list[int] = []
        append = points.append
        for index, (replica_id, count) in enumerate(
            zip(ids, point_counts(weights, size), strict=True)
        ):
            state = hash64(replica_id)
            for _ in range(count):
                state = (state + GOLDEN_GAMMA) & MASK64
                append((mix64(state) & _POSITION_MASK) | index)
        points.sort()
        self._points = array("Q", points)
        self._count = len(ids)

    @property
    def nbytes(self) -> int:
        return self._points.itemsize * len(self._points)

    def _start(self, key: int) -> int:
        start = bisect_right(self._points, key | _INDEX_MASK)
        return 0 if start == len(self._points) else start

    def pick(self, key: int) -> int:
        return self._points[self._start(key)] & _INDEX_MASK

    def shares(self) -> list[float]:
        """Each replica's exact share of the key space (the arcs ending at its points)."""
        points = self._points
        owned = [0] * self._count
        previous = (points[-1] & _POSITION_MASK) - (1 << 64)
        for point in points:
            position = point & _POSITION_MASK
            owned[point & _INDEX_MASK] += position - previous
            previous = position
        return [o / (1 << 64) for o in owned]

    def order(self, key: int) -> Iterator[int]:
        """The key's replica, then each next distinct replica clockwise (its successors)."""
        points, count = self._points, self._count
        start = self._start(key)
        first = points[start] & _INDEX_MASK
        yield first
        if count == 1:
            return
        seen = {first}
        total = len(points)
        for step in range(1, total):
            index = points[(start + step) % total] & _INDEX_MASK
            if index not in seen:
                seen.add(index)
                yield index
                if len(seen) == count:
                    return
