"""Smooth weighted round-robin.

Equal weights: a rotating cursor, O(1) per pick. Unequal weights: earliest-deadline-first
scheduling as in Envoy (each member's next deadline advances by 1/weight), which spreads
picks smoothly like nginx's smooth WRR but costs O(log n) per pick instead of O(n).
The failover order after the pick is the ring of members starting after it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

from router.balancing.base import InFlight, Member, RequestContext
from router.models import Replica


class RoundRobin:
    __slots__ = ("_cursor", "_heap", "_index", "_replicas", "_steps")

    def __init__(self, members: Sequence[Member], in_flight: InFlight | None = None) -> None:
        self._replicas: tuple[Replica, ...] = tuple(m.replica for m in members)
        self._index = {r.id: i for i, r in enumerate(self._replicas)}
        self._cursor = 0
        weights = [m.weight for m in members]
        if weights and min(weights) != max(weights):
            self._steps = [1.0 / max(w, 1e-9) for w in weights]
            # (deadline, index): ties resolve by index, so the order is deterministic.
            self._heap: list[tuple[float, int]] | None = [(s, i) for i, s in enumerate(self._steps)]
            heapq.heapify(self._heap)
        else:
            self._steps = []
            self._heap = None

    def next_index(self) -> int:
        if self._heap is None:
            index = self._cursor % len(self._replicas)
            self._cursor = index + 1
            return index
        deadline, index = self._heap[0]
        heapq.heapreplace(self._heap, (deadline + self._steps[index], index))
        return index

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        replicas = self._replicas
        if not replicas:
            return
        first = self.next_index()
        yield replicas[first]
        count = len(replicas)
        for offset in range(1, count):
            yield replicas[(first + offset) % count]
