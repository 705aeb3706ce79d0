"""The interface every routing policy implements, and the request facts it may read.

A policy is built once per snapshot (off the hot path) from the routable members and
returns, per request, an *ordered* iterator of candidates: the first is the pick, the rest
are the failover order. Iterators are lazy so a request that succeeds first time costs O(1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.models import Replica


@dataclass(frozen=True, slots=True)
class Member:
    """A routable replica with its effective weight (config weight x slow-start ramp).

    `region_total` counts the replicas of this member's region that would be routable if
    healthy (routable, pending, unhealthy or ejected; not drained, stopped or refused by
    attestation); the geo policy's spill-over compares it with the routable count. 0 means
    unknown: the region is then taken as fully healthy while it has any routable member.
    """

    replica: Replica
    weight: float
    region_total: int = 0


# A dataclass with a written-out __init__ (see `router.proxy.base.RequestRecord`): one is
# made per request, and mypyc compiles this __init__ but not a generated one.
@dataclass(init=False, eq=False, slots=True)
class RequestContext:
    """What a policy may know about a request. `headers` is case-insensitive in practice
    (the engines pass a CIMultiDict); `peer_trusted` says whether the peer is one of
    `proxy.trusted_proxies`, so policies honour client-sent hints only then.

    Filled by policies: `response_headers`, extra response headers (sticky cookie, debug),
    and `explanation`, a one-line explanation of the choice for the access log."""

    client_ip: str
    method: str
    path: str
    headers: Mapping[str, str]
    peer_trusted: bool
    response_headers: list[tuple[str, str]]
    explanation: str

    def __init__(
        self,
        client_ip: str,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        peer_trusted: bool = False,
    ) -> None:
        self.client_ip = client_ip
        self.method = method
        self.path = path
        self.headers = {} if headers is None else headers
        self.peer_trusted = peer_trusted
        self.response_headers = []
        self.explanation = ""


class Picker(Protocol):
    def candidates(self, ctx: RequestContext) -> Iterator[Replica]: ...


# In-flight request counts per replica id, kept by the data plane.
InFlight = Mapping[str, int]


class PickerFactory(Protocol):
    def __call__(self, members: Sequence[Member], in_flight: InFlight) -> Picker: ...
