"""Collateral: disk cache per FMSPC with its validity window, refresh, offline file,
and failing closed when there is none."""

from __future__ import annotations

import json
from pathlib import Path

import dcap_qvl
import pytest
from aiohttp import web

from router.attestation.collateral import REFRESH_BEFORE, CollateralStore, load_collateral
from router.attestation.settings import CollateralConfig
from router.errors import AttestationError
from tests.attestation_support import (
    DSTACK,
    DSTACK_COLLATERAL,
    collateral_text,
    fixture_json,
    fixture_path,
    pccs_app,
    pinned_now,
    serve,
)


class FakePccs:
    """Stands in for `dcap_qvl.get_collateral`: counts calls, serves the fixture or fails."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[str] = []
        self.fail = False

    async def __call__(self, url: str, raw: bytes) -> dcap_qvl.QuoteCollateralV3:
        self.calls.append(url)
        if self.fail:
            raise ValueError("Failed to get collateral: connection refused")
        return dcap_qvl.QuoteCollateralV3.from_json(self.text)


@pytest.fixture
def quote() -> bytes:
    return bytes.fromhex(fixture_json(DSTACK)["quote"])


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(
    tmp_path: Path, pccs: FakePccs, clock: Clock, file: Path | None = None
) -> CollateralStore:
    config = CollateralConfig(pccs_url="https://pccs.test", cache_dir=tmp_path / "cache", file=file)
    return CollateralStore(config, wall_clock=clock, fetcher=pccs)


async def test_collateral_is_fetched_once_then_served_from_the_cache(
    tmp_path: Path, quote: bytes
) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    clock = Clock(pinned_now(DSTACK_COLLATERAL))
    first = store(tmp_path, pccs, clock)
    got = await first.get(quote)
    assert dcap_qvl.verify(quote, got, int(clock.now)).status == "UpToDate"
    await first.get(quote)
    assert pccs.calls == ["https://pccs.test"]
    assert (tmp_path / "cache" / "90C06F000000.json").is_file()
    # A restarted router reads the disk cache instead of fetching again.
    second = store(tmp_path, pccs, clock)
    await second.get(quote)
    assert len(pccs.calls) == 1


async def test_collateral_is_refreshed_before_its_next_update(tmp_path: Path, quote: bytes) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    window = load_collateral(collateral_text(DSTACK_COLLATERAL))
    clock = Clock(pinned_now(DSTACK_COLLATERAL))
    collateral = store(tmp_path, pccs, clock)
    await collateral.get(quote)
    clock.now = window.next_update - REFRESH_BEFORE - 60
    await collateral.get(quote)
    assert len(pccs.calls) == 1
    clock.now = window.next_update - REFRESH_BEFORE + 60
    await collateral.get(quote)
    assert len(pccs.calls) == 2


async def test_failed_refresh_keeps_the_cached_copy(tmp_path: Path, quote: bytes) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    window = load_collateral(collateral_text(DSTACK_COLLATERAL))
    clock = Clock(pinned_now(DSTACK_COLLATERAL))
    collateral = store(tmp_path, pccs, clock)
    await collateral.get(quote)
    pccs.fail = True
    clock.now = window.next_update - 60
    assert await collateral.get(quote) is not None
    assert len(pccs.calls) == 2


async def test_no_collateral_at_all_fails_closed(tmp_path: Path, quote: bytes) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    pccs.fail = True
    with pytest.raises(AttestationError) as info:
        await store(tmp_path, pccs, Clock(pinned_now(DSTACK_COLLATERAL))).get(quote)
    # The PCCS could not be reached: a source outage, named as such.
    assert info.value.reason == "pccs_unreachable"
    assert "90C06F000000" in info.value.detail


async def test_offline_file_serves_collateral_without_fetching(
    tmp_path: Path, quote: bytes
) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    pccs.fail = True
    bundle = tmp_path / "collateral.json"
    bundle.write_text(
        json.dumps(
            [
                json.loads(collateral_text("qvl-sgx_quote_collateral.json")),
                json.loads(collateral_text(DSTACK_COLLATERAL)),
            ]
        )
    )
    collateral = store(tmp_path, pccs, Clock(0), file=bundle)
    assert await collateral.get(quote) is not None
    assert pccs.calls == []


async def test_offline_file_of_another_platform_falls_back_to_the_pccs(
    tmp_path: Path, quote: bytes
) -> None:
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    pccs.fail = True
    collateral = CollateralStore(
        CollateralConfig(pccs_url=None, file=fixture_path("qvl-sgx_quote_collateral.json")),
        fetcher=pccs,
    )
    with pytest.raises(AttestationError) as info:
        await collateral.get(quote)
    assert info.value.reason == "no_collateral"
    assert "pccs_url or .file" in info.value.detail


async def test_corrupt_disk_cache_is_ignored(tmp_path: Path, quote: bytes) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "90C06F000000.json").write_text("{not json")
    pccs = FakePccs(collateral_text(DSTACK_COLLATERAL))
    await store(tmp_path, pccs, Clock(pinned_now(DSTACK_COLLATERAL))).get(quote)
    assert len(pccs.calls) == 1


async def test_real_dcap_qvl_client_against_an_unhelpful_pccs_fails_closed(
    tmp_path: Path, quote: bytes
) -> None:
    """dcap-qvl's own HTTP client, pointed at a local server that has nothing."""
    paths: list[str] = []

    async def nothing(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", nothing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        collateral = CollateralStore(
            CollateralConfig(pccs_url=f"http://127.0.0.1:{port}", cache_dir=tmp_path)
        )
        with pytest.raises(AttestationError) as info:
            await collateral.get(quote)
    finally:
        await runner.cleanup()
    assert info.value.reason == "pccs_unreachable"
    assert paths  # dcap-qvl did ask our PCCS


async def test_dcap_qvl_fetches_from_a_local_pccs_and_the_copy_is_cached(
    tmp_path: Path, quote: bytes
) -> None:
    app, asked = pccs_app(DSTACK_COLLATERAL)
    now = pinned_now(DSTACK_COLLATERAL)
    async with serve(app) as url:
        config = CollateralConfig(pccs_url=url, cache_dir=tmp_path)
        got = await CollateralStore(config, wall_clock=lambda: now).get(quote)
        assert "/tdx/certification/v4/tcb" in asked
        assert dcap_qvl.verify(quote, got, now).status == "UpToDate"
    # The PCCS is gone; a restarted router verifies from its disk cache.
    again = await CollateralStore(config, wall_clock=lambda: now).get(quote)
    assert dcap_qvl.verify(quote, again, now).status == "UpToDate"
