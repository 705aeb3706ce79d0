"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as in Envoy.

A lookup table of a prime size M (65,537 by default) maps `key % M` to a replica, so a
lookup is one modulo and one index whatever the number of replicas. Each replica walks its
own permutation of the slots (`offset + j * skip mod M`, both from a stable hash of its
id) and, taking turns in proportion to its weight, claims the next slot of that
permutation still free. Removing one of N replicas moves its keys plus a few more (the
paper measures a small excess over 1/N when M is much larger than N); each replica's share
of the keys is its weight quantised to 1/M.

The table is built with the snapshot, off the request path, and stored as a compact array.
Failover for a key walks the next table entries from the key's slot, skipping replicas
already tried, so every router agrees on a key's second and third choice too.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterator, Sequence

from router.balancing.keyhash import hash128

DEFAULT_TABLE_SIZE = 65_537


def _turns(weights: Sequence[float], size: int) -> Iterator[int]:
    """Which replica claims each of the `size` slots, in order: a plain rotation for equal
    weights, earliest-deadline-first (each turn pushes a replica's deadline by 1/weight)
    otherwise, so replica i takes about size * w_i / sum(w) turns. Ties go by index."""
    count = len(weights)
    if min(weights) == max(weights):
        yield from itertools.islice(itertools.cycle(range(count)), size)
        return
    steps = [1.0 / max(w, 1e-9) for w in weights]
    heap = [(step, index) for index, step in enumerate(steps)]
    heapq.heapify(heap)
    replace = heapq.heapreplace
    for _ in range(size):
        deadline, index = heap[0]
        yield index
        replace(heap, (deadline + steps[index], index))


def populate(ids: Sequence[str], weights: Sequence[float], size: int) -> array[int]:
    """The Maglev lookup table: slot -> index into `ids`. `size` must be prime."""
    offsets: list[int] = []
    skips: list[int] = []
    for replica_id in ids:
        first, second = hash128(replica_id)
        offsets.append(first % size)
        skips.append(second % (size - 1) + 1)
    entries = [-1] * size
    # Where each replica's permutation continues: stepping by `skip` mod a prime size
    # visits every slot, so the walk always ends on a free one.
    cursor = offsets
    for index in _turns(weights, size):
        slot = cursor[index]
        skip = skips[index]
        while entries[slot] >= 0:
            slot += skip
            if slot >= size:
                slot -= size
        entries[slot] = index
        slot += skip
        cursor[index] = slot - size if slot >= size else slot
    return array("I", entries)


class MaglevTable:
    """A prebuilt Maglev table over replicas `0..len(ids)-1`."""

    __slots__ = ("_count", "_entries", "_size")

    def __init__(
        self, ids: Sequence[str], weights: Sequence[float], size: int = DEFAULT_TABLE_SIZE
    ) -> None:
        if not ids:
            raise ValueError("a Maglev table needs at least one replica")
        self._size = size
        self._count = len(ids)
        self._entries = populate(ids, weights, size)

    @property
    def nbytes(self) -> int:
        return self._entries.itemsize * len(self._entries)

    def pick(self, key: int) -> int:
        return self._entries[key % self._size]

    def shares(self) -> list[float]:
        """Each replica's exact share of the key space (its slots / M)."""
        counts = [0] * self._count
        for index in self._entries:
            counts[index] += 1
        return [c / self._size for c in counts]

    def order(self, key: int) -> Iterator[int]:
        """The key's replica, then each next distinct replica in table order; replicas
        holding no slot (weights too small for 1/M) come last, by index."""
        entries, size, count = self._entries, self._size, self._count
        slot = key % size
        first = entries[slot]
        yield first
        if count == 1:
            return
        seen = {first}
        for step in range(1, size):
            index = entries[(slot + step) % size]
            if index not in seen:
                seen.add(index)
                yield index
                if len(seen) == count:
                    return
        for index in range(count):
            if index not in seen:
                yield index
