"""The live RecordSet: follows the reconciler's snapshots and the replicas' addresses.

A snapshot rebuilds the records at once from the address cache (a replica going down
leaves the answers before the next request), then a background task resolves host names
it has not seen and re-resolves all of them every `refresh_interval`. Listeners (the
sinks, the server) hear only real changes; each change bumps the SOA serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import dns.asyncresolver

from router.dns.records import RecordSet, build_records, next_serial
from router.dns.records import replica_sets_from_snapshot as replica_sets
from router.dns.resolve import Pinned, make_resolver, merge, resolve_addresses
from router.dns.settings import DnsConfig
from router.snapshot import Snapshot

log = logging.getLogger(__name__)

RecordListener = Callable[[RecordSet], None]


class SnapshotSource(Protocol):
    """What the feed needs of the reconciler."""

    @property
    def current(self) -> Snapshot: ...

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None: ...


async def cancel_and_wait(task: asyncio.Task[None], deadline: float = 5.0) -> None:
    """Cancel `task` and wait for it to end, cancelling again until it does.

    On Python 3.11 `asyncio.wait_for` (which dnspython's queries use) swallows a cancellation
    that lands just as its inner read completes, so one cancel() could leave a DNS loop
    running and the caller waiting forever. Past `deadline` it gives up with an error."""
    ends = time.monotonic() + deadline
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.5, max(0.0, ends - time.monotonic())))
        if not task.done() and time.monotonic() >= ends:
            raise RuntimeError(f"task {task.get_name()} did not stop within {deadline}s")
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


class RecordFeed:
    def __init__(
        self,
        cfg: DnsConfig,
        source: SnapshotSource,
        *,
        app_id: str | None = None,
        pinned: Pinned | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if cfg.name is None:
            raise ValueError("dns.name is not set")
        self._cfg = cfg
        self._source = source
        self._app_id = app_id
        self._pinned = pinned
        self._resolver = resolver or make_resolver(cfg.nameservers, cfg.resolve_timeout)
        self._wall = wall
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._sets = replica_sets(source.current.statuses, app_id)
        self._listeners: list[RecordListener] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._serial = next_serial(0, wall())
        self.current: RecordSet = build_records(cfg, self._sets, {}, serial=self._serial)

    def subscribe(self, listener: RecordListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Subscribe, resolve the current hosts once (bounded by resolve_timeout), and keep
        following."""
        self._source.subscribe(self._on_snapshot)
        self._on_snapshot(self._source.current)
        await self._resolve()
        self._task = asyncio.create_task(self._run(), name="dns-feed")

    async def stop(self) -> None:
        self._stopped = True  # the reconciler has no unsubscribe: ignore later snapshots
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    # -- internals ------------------------------------------------------------------------

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        if self._stopped:
            return
        self._sets = replica_sets(snapshot.statuses, self._app_id)
        self._rebuild()
        if any(r.host not in self._addresses for r in self._sets.candidates):
            self._wake.set()

    def _rebuild(self) -> None:
        built = build_records(self._cfg, self._sets, self._addresses, serial=self._serial)
        if built == self.current:
            return
        self._serial = next_serial(self._serial, self._wall())
        self.current = build_records(self._cfg, self._sets, self._addresses, serial=self._serial)
        log.info(
            "DNS records for %s changed: %d records, serial %d",
            self.current.name,
            len(self.current.records),
            self._serial,
        )
        for note in self.current.notes:
            log.info("DNS %s: %s", self.current.name, note)
        for listener in self._listeners:
            listener(self.current)

    async def _resolve(self) -> None:
        hosts = [r.host for r in self._sets.candidates]
        try:
            fresh = await resolve_addresses(hosts, self._resolver, pinned=self._pinned)
        except Exception:
            log.exception("resolving replica host names failed; keeping the last addresses")
            return
        for host, why in fresh.errors.items():
            log.warning("cannot resolve %s (%s); keeping its last addresses", host, why)
        self._addresses = merge(self._addresses, fresh)
        self._rebuild()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.refresh_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self._resolve()
