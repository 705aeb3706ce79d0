"""Wiring for the CLI: the live DNS pieces for `serve`, and one-shot renders for `dns render`."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

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
from router.errors import ConfigError, DnsRenderError
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


# The last note when no A/AAAA record came out; `dns render` then exits non-zero.
NO_ADDRESS_NOTE = "no address record: nothing to publish (see the notes above)"


def _chosen_notes(chosen: RecordSet) -> tuple[str, ...]:
    if any(r.type in ("A", "AAAA") for r in chosen.records):
        return chosen.notes
    return (*chosen.notes, NO_ADDRESS_NOTE)


def _require_name(cfg: DnsConfig) -> None:
    if cfg.name is None:
        raise ConfigError("dns.name: required to render records, e.g. name: api.example.com")


async def render_snapshot(
    cfg: DnsConfig,
    snapshot: Snapshot,
    fmt: FormatName,
    *,
    app_id: str | None = None,
    pinned: Pinned | None = None,
    rng: random.Random | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(text, notes) for `phala-router dns render` after one discovery + health pass.
    The CLI prints the text to stdout and the notes to stderr (JSON has no comments)."""
    _require_name(cfg)
    sets = replica_sets_from_snapshot(snapshot.statuses, app_id)
    records = await records_for(cfg, sets, pinned=pinned)
    chosen = select(records, cfg.max_records, rng or random.Random())
    return render(chosen, fmt), _chosen_notes(chosen)


async def render_admin_status(
    cfg: DnsConfig,
    status: Any,
    fmt: FormatName,
    *,
    pinned: Pinned | None = None,
    rng: random.Random | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(text, notes) from a running router's parsed `/status` JSON; DnsRenderError when
    the JSON lacks what is needed."""
    _require_name(cfg)
    try:
        sets = records_from_admin_status(status)
    except ValueError as exc:
        raise DnsRenderError(str(exc)) from None
    records = await records_for(cfg, sets, pinned=pinned)
    chosen = select(records, cfg.max_records, rng or random.Random())
    return render(chosen, fmt), _chosen_notes(chosen)


async def fetch_admin_status(url: str, *, token: str | None = None, timeout: float = 10.0) -> Any:
    """GET the admin `/status` JSON (`url` may be the admin base URL or the /status URL)."""
    target = url.rstrip("/")
    if not target.endswith("/status"):
        target += "/status"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(target, headers=headers)
    except httpx.HTTPError as exc:
        raise DnsRenderError(f"cannot reach the admin API at {target}: {exc}") from None
    if response.status_code == 401:
        raise DnsRenderError(f"{target} answered 401: set the admin token (admin.token_env)")
    if response.status_code != 200:
        raise DnsRenderError(f"{target} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise DnsRenderError(f"{target} did not answer JSON") from None


async def render_from_admin(
    cfg: DnsConfig,
    url: str,
    fmt: FormatName,
    *,
    token: str | None = None,
    pinned: Pinned | None = None,
) -> tuple[str, tuple[str, ...]]:
    """`phala-router dns render --from-admin URL`: (text, notes)."""
    _require_name(cfg)
    status = await fetch_admin_status(url, token=token)
    return await render_admin_status(cfg, status, fmt, pinned=pinned)
