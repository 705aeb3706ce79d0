"""Wiring for the CLI: the live DNS pieces for `serve`, and one-shot renders for `dns render`."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from router.dns.feed import RecordFeed, SnapshotSource
from router.dns.formats import FormatName, render
from router.dns.records import (
    RecordSet,
    ReplicaSets,
    build_records,
    records_from_admin_status,
    replica_sets_from_snapshot,
    select,
)
from router.dns.resolve import Pinned, make_resolver, merge, resolve_addresses
from router.dns.server import DnsServer
from router.dns.settings import DnsConfig
from router.dns.sinks import DnsPublisher, make_sinks
from router.snapshot import Snapshot


class DnsService:
    """Everything `dns:` asks for while `serve` runs: the feed, the sinks, the server.

    Construct after the reconciler (a missing TSIG secret raises ConfigError here), then
    `await start()` after the first discovery pass and `await stop()` on shutdown."""

    def __init__(
        self,
        cfg: DnsConfig,
        source: SnapshotSource,
        *,
        app_id: str | None = None,
        pinned: Pinned | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.feed = RecordFeed(cfg, source, app_id=app_id, pinned=pinned)
        sinks = make_sinks(cfg, environ)
        self.publisher = DnsPublisher(cfg, self.feed, sinks) if sinks else None
        self.server = DnsServer(cfg, self.feed) if cfg.server is not None else None

    @staticmethod
    def wanted(cfg: DnsConfig) -> bool:
        return cfg.name is not None and (bool(cfg.sinks) or cfg.server is not None)

    async def start(self) -> None:
        await self.feed.start()
        if self.publisher is not None:
            await self.publisher.start()
        if self.server is not None:
            await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        await self.feed.stop()


async def records_for(
    cfg: DnsConfig, sets: ReplicaSets, *, pinned: Pinned | None = None
) -> RecordSet:
    """Resolve the replicas' host names once and build their records (serial: now)."""
    resolver = make_resolver(cfg.nameservers, cfg.resolve_timeout)
    hosts = [r.host for r in sets.candidates + sets.routable]
    resolution = await resolve_addresses(hosts, resolver, pinned=pinned)
    addresses = merge({}, resolution)
    records = build_records(cfg, sets, addresses, serial=int(time.time()))
    notes = tuple(f"cannot resolve {host}: {why}" for host, why in resolution.errors.items())
    if notes:
        records = replace(records, notes=records.notes + notes)
    return records


async def render_snapshot(
    cfg: DnsConfig,
    snapshot: Snapshot,
    fmt: FormatName,
    *,
    app_id: str | None = None,
    pinned: Pinned | None = None,
    rng: random.Random | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(text, notes) for `phala-router dns render` after one discovery + health pass."""
    sets = replica_sets_from_snapshot(snapshot.statuses, app_id)
    records = select(
        await records_for(cfg, sets, pinned=pinned), cfg.max_records, rng or random.Random()
    )
    return render(records, fmt), records.notes


async def render_admin_status(
    cfg: DnsConfig,
    status: Any,
    fmt: FormatName,
    *,
    rng: random.Random | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(text, notes) for `dns render --from-admin URL`, given the parsed `/status` JSON.
    Raises ValueError when the JSON lacks what is needed."""
    sets = records_from_admin_status(status)
    records = select(await records_for(cfg, sets), cfg.max_records, rng or random.Random())
    return render(records, fmt), records.notes
