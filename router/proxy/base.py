"""What every data-plane engine shares: the interface, the observation hooks, load counters.

Compiled with mypyc (router/native.py): `Observers` and `RequestRecord` run once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from router.errors import NoRoutableReplica
from router.models import Replica
from router.proxy.inflight import InFlightCounter as InFlightCounter
from router.proxy.settings import ProxySettings
from router.snapshot import Snapshot

if TYPE_CHECKING:  # proxy/apps.py imports this module for SnapshotSource
    from router.proxy.apps import AppDirectory

SnapshotSource = Callable[[], Snapshot]


def no_routable_error(snapshot: Snapshot) -> NoRoutableReplica:
    """The 503 that names the cause: how many replicas are known, in which states."""
    states: dict[str, int] = {}
    for status in snapshot.statuses:
        states[status.state] = states.get(status.state, 0) + 1
    return NoRoutableReplica(
        "no routable replica",
        replicas=len(snapshot.statuses),
        routable=0,
        states=dict(sorted(states.items())),
    )


# `init=False` and a written-out __init__: mypyc compiles this one, while a dataclass's
# generated __init__ stays interpreted (it cost ~5% of a small GET). Still a dataclass, so
# `dataclasses.replace` and the field list work; read-only by convention (not frozen: a
# frozen class cannot set its fields in its own __init__).
@dataclass(init=False, eq=False, slots=True)
class RequestRecord:
    """One client request, for metrics and the access log.

    `attempts`: attempts that were given up for another replica, (replica id, outcome),
    where the outcome is a status ("503") or a failure kind (connect, reset, timeout, ...).
    `retry_budget_exhausted`: a retry was refused because the retry budget was spent (the
    response went back as is). `host`, `query`, `protocol`, `request_id`, `headers`: for
    the access log, read only when it is on (headers stay lazily decoded otherwise).
    """

    method: str
    path: str
    status: int
    client: str
    replica: Replica | None
    retries: int
    upstream_seconds: float | None
    total_seconds: float
    bytes_in: int
    bytes_out: int
    error: str | None
    explanation: str
    attempts: tuple[tuple[str, str], ...]
    retry_budget_exhausted: bool
    host: str
    query: str
    protocol: str
    request_id: str
    headers: Mapping[str, str] | None

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        client: str,
        replica: Replica | None,
        retries: int,
        upstream_seconds: float | None,
        total_seconds: float,
        bytes_in: int,
        bytes_out: int,
        error: str | None = None,
        explanation: str = "",
        attempts: tuple[tuple[str, str], ...] = (),
        retry_budget_exhausted: bool = False,
        host: str = "",
        query: str = "",
        protocol: str = "",
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.client = client
        self.replica = replica
        self.retries = retries
        self.upstream_seconds = upstream_seconds
        self.total_seconds = total_seconds
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.error = error
        self.explanation = explanation
        self.attempts = attempts
        self.retry_budget_exhausted = retry_budget_exhausted
        self.host = host
        self.query = query
        self.protocol = protocol
        self.request_id = request_id
        self.headers = headers


class TrafficObserver(Protocol):
    """Hooks the engines call; implementations must be cheap (they run per request)."""

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        """One upstream attempt ended. `kind` is connect, tls, reset, timeout, 5xx or None."""

    def request_done(self, record: RequestRecord) -> None:
        """A client request ended (after the response was fully sent or failed)."""


class Observers:
    """Fans hooks out to several observers."""

    def __init__(self, observers: Sequence[TrafficObserver] = ()) -> None:
        self.observers = list(observers)

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        for observer in self.observers:
            observer.attempt_done(replica, ok, kind, status)

    def request_done(self, record: RequestRecord) -> None:
        for observer in self.observers:
            observer.request_done(record)


class Engine(Protocol):
    """A data plane: serves client requests from the current snapshot."""

    @property
    def addresses(self) -> list[tuple[str, int]]: ...

    async def start(self) -> None: ...

    def connection_counts(self) -> tuple[int, int]:
        """(open, accepted) client connections, for metrics."""

    def apply_config(self, config: ProxySettings) -> None:
        """Take a reloaded config (everything but the listen addresses)."""

    def set_apps(self, apps: AppDirectory) -> None:
        """Route the next requests with this host -> app directory (a reload of `apps:`)."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, close."""
