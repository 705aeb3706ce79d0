"""The aiohttp engine's upstream client sessions: one shared by every app, plus one per app
with `attestation.connection: ra-tls`, whose connections its own gate checks.

A session is a connection pool, so an app's RA-TLS session is never lent to another app: a
connection checked for one app, or opened unchecked for another, is never reused across
apps. Replaced sessions close once their in-flight requests had their drain time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import aiohttp

from router.proxy.aiohttp_support import close_later
from router.proxy.apps import AppEntry
from router.reach import AttestedReach

# Makes a session: the shared one (None) or an RA-TLS app's.
SessionFactory = Callable[[AttestedReach | None], aiohttp.ClientSession]


class UpstreamSessions:
    def __init__(self, make: SessionFactory, drain_timeout: float) -> None:
        self._make = make
        self.drain_timeout = drain_timeout
        self._shared: aiohttp.ClientSession | None = None
        self._attested: dict[AttestedReach, aiohttp.ClientSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._shared = self._make(None)

    def for_app(self, app: AppEntry) -> aiohttp.ClientSession:
        """The shared session, or the app's own under RA-TLS (made on first use)."""
        if self._shared is None:
            raise RuntimeError("engine not started")
        attested = app.attested
        if attested is None:
            return self._shared
        session = self._attested.get(attested)
        if session is None:
            session = self._attested[attested] = self._make(attested)
        return session

    def keep_only(self, live: Iterable[AttestedReach | None]) -> None:
        """Retire the sessions of RA-TLS apps that are gone (a reload removed or changed them)."""
        keep = set(live)
        for attested in [a for a in self._attested if a not in keep]:
            self._close_later(self._attested.pop(attested))

    def renew(self) -> None:
        """How replicas are reached changed: new sessions from now on, the old ones drain."""
        if self._shared is None:
            return
        old, self._shared = self._shared, self._make(None)
        self._close_later(old)
        for attested in list(self._attested):  # made again on first use
            self._close_later(self._attested.pop(attested))

    def _close_later(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        self._closing.add(loop.create_task(close_later(session, self.drain_timeout)))

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()
        for session in self._attested.values():
            await session.close()
        for task in self._closing:
            task.cancel()
