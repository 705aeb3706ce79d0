"""The data plane's side of several apps: from a request's Host (and, on a TLS listener,
the connection's SNI) to the snapshot source of the app it belongs to.

Engines ask once per request, before admission, so a request for no app costs no slot and
reaches no replica: it gets `421 Misdirected Request` (RFC 9110 15.5.20, what a server
answers for a host it does not serve on this connection). A TLS connection whose SNI names
one app is never used to reach another by changing Host: the app the Host names must be one
the SNI name can reach (`HostTable.reachable`), else 421 too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from router.apps import IMPLICIT_APP
from router.apps.hosts import HostRoute, HostTable, normalise_host
from router.errors import ClientRequestError, Overloaded
from router.proxy.base import SnapshotSource
from router.reach import AttestedReach


class AppEntry:
    """One app as the engines see it: its name, its current snapshot, and its own cap on
    requests proxied at once (`apps[].max_connections`), so one app cannot take every
    admission slot of the shared listener. Past the cap a request gets 503 at once. With
    RA-TLS (`attested`) its upstream connections are its own."""

    __slots__ = ("active", "attested", "limit", "name", "snapshots")

    def __init__(
        self,
        name: str,
        snapshots: SnapshotSource,
        limit: int | None = None,
        attested: AttestedReach | None = None,
    ) -> None:
        self.name = name
        self.snapshots = snapshots
        self.limit = limit
        self.active = 0
        # attestation.connection: ra-tls for this app: its replicas are dialled and checked
        # this way, on connections no other app shares. None: the engine's shared pools.
        self.attested = attested

    def claim(self) -> bool:
        """Take one of this app's slots; False when all are in use."""
        if self.limit is not None and self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1

    def overloaded(self) -> Overloaded:
        return Overloaded(
            f"app {self.name} has {self.limit} requests in flight", app=self.name, limit=self.limit
        )

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """For coroutine engines: hold one of this app's slots, or raise its 503."""
        if not self.claim():
            raise self.overloaded()
        try:
            yield
        finally:
            self.release()


def misdirected(why: str) -> ClientRequestError:
    return ClientRequestError(421, "misdirected_request", why)


class AppDirectory:
    """Host -> app for one listener; immutable, replaced as a whole on reload."""

    def __init__(
        self, routes: Iterable[tuple[HostRoute, AppEntry]], default: AppEntry | None = None
    ) -> None:
        self._table = HostTable(routes, default)
        self.entries = tuple(
            sorted({e.name: e for _, e in self._table.items()}.values(), key=lambda e: e.name)
        )
        # One app and no hosts: every request is its, whatever the Host (the single-app case).
        self._only = default if not self.entries or self.entries == (default,) else None

    def routes(self) -> list[tuple[HostRoute, AppEntry]]:
        """Every host route and its app (the default app is `default`)."""
        return [(route, entry) for route, entry in self._table.items() if route.host]

    @property
    def default(self) -> AppEntry | None:
        return self._table.default

    @classmethod
    def single(cls, snapshots: SnapshotSource, name: str = IMPLICIT_APP) -> AppDirectory:
        return cls((), AppEntry(name, snapshots))

    def resolve(self, host: str | None, target: str, sni: str | None = None) -> AppEntry:
        """The app of a request (`target` in origin form); raises the 421 otherwise."""
        if self._only is not None:
            return self._only
        name = normalise_host(host or "")
        entry = self._table.lookup(name, target)
        if entry is None:
            raise misdirected(f"no app on this router serves host {name!r}")
        if sni is not None and entry not in self._table.reachable(normalise_host(sni)):
            raise misdirected(f"this TLS connection is for {sni!r}, not for host {name!r}")
        return entry
