"""A group of members that one request picks from, and the pick rules shared by policies.

Every policy reduces to: choose a group (all members, or one region), pick one member of
it (weighted round-robin, least-request, or a sticky key's place in the group's hash
table), then fail over through the rest of the group. Groups are built once per snapshot.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

from router.balancing.base import InFlight, Member, RequestContext
from router.balancing.least_request import LeastRequestSelector
from router.balancing.rendezvous import RendezvousTable
from router.balancing.round_robin import RoundRobin
from router.balancing.tables import KeyTable, KeyTables
from router.models import Replica

Within = Literal["round_robin", "least_request"]


class Selector(Protocol):
    def next_index(self) -> int: ...


def make_selector(
    within: Within, members: Sequence[Member], in_flight: InFlight, rng: random.Random
) -> Selector:
    if within == "least_request":
        return LeastRequestSelector(members, in_flight, rng)
    return RoundRobin(members)


def _replica_id(member: Member) -> str:
    return member.replica.id


class Group:
    """Members picked together. `first()` applies the group's rule; `keyed_order(key)`
    places a sticky key with the group's prebuilt table and gives its failover order;
    `ring(i)` is the failover order from i for picks that are not keyed."""

    __slots__ = ("_by_id", "_selector", "_table", "_weights", "name", "replicas", "weight")

    def __init__(
        self,
        name: str,
        members: Sequence[Member],
        within: Within,
        in_flight: InFlight,
        rng: random.Random,
        tables: KeyTables | None = None,
    ) -> None:
        self.name = name
        self.replicas: tuple[Replica, ...] = tuple(m.replica for m in members)
        self.weight = sum(m.weight for m in members)
        self._selector = make_selector(within, members, in_flight, rng) if members else None
        # Sticky tables index the members in id order, so a table (Maglev's fill order in
        # particular) never depends on the order members arrive in: every router agrees.
        by_id = sorted(members, key=_replica_id)
        self._by_id: tuple[Replica, ...] = tuple(m.replica for m in by_id)
        self._weights = tuple(m.weight for m in by_id)
        # Built here, with the snapshot: a request only looks the key up.
        self._table: KeyTable | None = tables.get(by_id) if tables and members else None

    def _key_table(self) -> KeyTable:
        if self._table is None:
            # Built without tables (no keyed sticky mode configured, e.g. a test placing
            # keys directly): rendezvous needs no build, so make it on first use.
            self._table = RendezvousTable([r.id for r in self._by_id], self._weights)
        return self._table

    def first(self) -> int:
        assert self._selector is not None
        return self._selector.next_index()

    def keyed_order(self, key: int) -> Iterator[Replica]:
        """The key's member, then its failover order (the table's next distinct entries)."""
        table = self._table or self._key_table()
        return map(self._by_id.__getitem__, table.order(key))

    def ring(self, first: int) -> Iterator[Replica]:
        replicas = self.replicas
        count = len(replicas)
        for offset in range(count):
            yield replicas[(first + offset) % count]


class KeyedPicker(Protocol):
    """A picker that can also place a sticky key (a 64-bit hash) consistently."""

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]: ...

    def keyed_candidates(self, ctx: RequestContext, key: int) -> Iterator[Replica]:
        """The key's replica and its failover order; sets `ctx.explanation` on the call."""
        ...


class FlatPicker:
    """round_robin and least_request: one group holding every routable member."""

    __slots__ = ("_explanation", "_group", "_keyed_explanation")

    def __init__(
        self,
        members: Sequence[Member],
        within: Within,
        in_flight: InFlight,
        rng: random.Random,
        tables: KeyTables | None = None,
        hash_name: str = "rendezvous",
    ) -> None:
        self._group = Group("all", members, within, in_flight, rng, tables)
        self._explanation = "least_request: p2c" if within == "least_request" else "round_robin"
        self._keyed_explanation = hash_name

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        if not self._group.replicas:
            return
        ctx.explanation = self._explanation
        yield from self._group.ring(self._group.first())

    def keyed_candidates(self, ctx: RequestContext, key: int) -> Iterator[Replica]:
        ctx.explanation = self._keyed_explanation
        return self._group.keyed_order(key) if self._group.replicas else iter(())
