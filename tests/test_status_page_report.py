"""The status page tells an operator at a glance what is wrong: an alarm when nothing is
routable or panic is on, a warning for the simulator verifier, problem replicas first,
short ids, no Drain for stopped replicas, time in state, rates with sparklines, and who is
answering (version, uptime, listeners, reload, certificate). Real headless Chromium."""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from tests import test_status_page
from tests.support import running_replica, running_router, static_config
from tests.test_status_page import ARTIFACTS

browser = test_status_page.browser  # the headless Chromium fixture

LONG_ID = "f3a9c1d27e8b4a6f9c0d1e2f3a4b5c6d7e8f9a0b"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs/img"


async def cells(page: Any, replica_id: str) -> list[str]:
    texts: list[str] = await page.eval_on_selector_all(
        f"#rows tr[data-replica='{replica_id}'] td", "tds => tds.map(td => td.textContent)"
    )
    return texts


@pytest.mark.browser
async def test_problem_first_short_ids_time_in_state_sparklines_and_router_facts(
    browser: Any, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_replica("a") as a, running_replica("b") as b, running_replica("c") as c:
        replicas = [
            (LONG_ID, f"http://127.0.0.1:{a.port}"),
            ("b-stopped", f"http://127.0.0.1:{b.port}"),
            ("c-drained", f"http://127.0.0.1:{c.port}"),
        ]
        cfg = static_config(replicas, health={"enabled": False})
        async with running_router(cfg) as router:
            app = router.app
            # A few sampling intervals with varying traffic, for the sparklines.
            for round_ in range(8):
                for _ in range(3 + 4 * (round_ % 3)):
                    async with client.get(f"{router.url}/x") as resp:
                        assert resp.status == 200
                app.history.sample()
            # The platform stops b; an operator drains c.
            stopped = [
                dataclasses.replace(r, platform_status="stopped") if r.id == "b-stopped" else r
                for r in app.reconciler.replicas
            ]
            app.set_replicas(stopped)
            app.reconciler.rebuild()
            app.drain("c-drained", True)

            context = await browser.new_context(
                viewport={"width": 1600, "height": 560},
                permissions=["clipboard-read", "clipboard-write"],
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector(f"#rows tr[data-replica='{LONG_ID}']", timeout=5000)

            order = await page.eval_on_selector_all(
                "#rows tr", "rows => rows.map(r => r.dataset.replica)"
            )
            assert order[-1] == LONG_ID  # the healthy one last, problems on top
            assert set(order[:2]) == {"b-stopped", "c-drained"}
            assert await page.locator("#rows tr.problem").count() == 2

            # Short id, full id on hover and in the copy target.
            rid = page.locator(f"#rows tr[data-replica='{LONG_ID}'] .rid")
            assert await rid.inner_text() == LONG_ID[:8] + "…" + LONG_ID[-4:]
            assert (await rid.get_attribute("title") or "").startswith(LONG_ID)
            assert await rid.get_attribute("data-full") == LONG_ID
            await rid.click()
            await page.wait_for_function(
                "id => navigator.clipboard.readText().then(t => t === id)", arg=LONG_ID
            )

            # No Drain button for a replica the platform stopped; Undrain for the drained one.
            stopped_row = page.locator("#rows tr[data-replica='b-stopped']")
            assert await stopped_row.locator("button").count() == 0
            assert "stopped by the platform" in await stopped_row.inner_text()
            assert await page.locator("#rows tr[data-replica='c-drained'] button").inner_text() == (
                "Undrain"
            )

            healthy = await cells(page, LONG_ID)
            assert "for " in healthy[3]  # time in the current state
            assert float(healthy[10].split()[0]) > 0  # req/s
            sparks = page.locator(f"#rows tr[data-replica='{LONG_ID}'] svg.spark polyline")
            assert await sparks.count() == 2  # requests and errors

            facts = await page.inner_text("#facts")
            assert "version: " in facts
            assert "up: " in facts
            assert f"listening: {router.url}" in facts
            assert await page.is_hidden("#alarm")
            assert await page.is_hidden("#verifier-warning")

            # A reload shows up in the facts.
            config_file = tmp_path / "router.yaml"
            config_file.write_text(yaml.safe_dump(cfg))
            app.config_path = str(config_file)
            assert app.reload().error is None
            await page.wait_for_function(
                "() => document.querySelector('#facts').textContent.includes('last reload')",
                timeout=5000,
            )
            assert errors == []
            await screenshots(page, "status-page")


@pytest.mark.browser
async def test_alarm_when_nothing_is_routable_and_simulator_verifier_warning(
    browser: Any, tmp_path: Path
) -> None:
    # A listener certificate that expires in 5 days: the page flags it.
    ca = trustme.CA()
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5, hours=1)
    cert = ca.issue_cert("router.test", not_after=expires)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    async with running_replica("a") as a:
        cfg = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            attestation={
                "mode": "fresh",
                "verifier": "insecure-simulator",
                "timeout": "1s",
                "allow_unbound": True,
            },
            listen_tls={
                "listen": "127.0.0.1:0",
                "cert_file": str(cert_file),
                "key_file": str(key_file),
            },
        )
        # A key nobody signs with: the replica (not a simulator) never gets attested.
        async with running_router(cfg, trusted_simulator_keys=frozenset({b"\x01" * 32})) as router:
            page = await browser.new_page(viewport={"width": 1400, "height": 500})
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#alarm:not(.hidden)", timeout=5000)
            assert "No replica is routable" in await page.inner_text("#alarm")
            warning = await page.inner_text("#verifier-warning")
            assert "insecure-simulator" in warning
            assert await page.is_visible("#verifier-warning")
            facts = await page.inner_text("#facts")
            assert "certificate expires in 5 days" in facts
            assert await page.locator("#facts .badge.panic", has_text="certificate").count() == 1
            assert "listening: https://127.0.0.1:" in facts
            await screenshots(page, "status-page-alarm", phone=False)


@pytest.mark.browser
async def test_alarm_in_panic_mode(browser: Any) -> None:
    checks = {
        "enabled": True,
        "interval": 0.2,
        "unhealthy_interval": 0.2,
        "timeout": 0.5,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
        "panic_threshold": 60,
    }
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        async with running_router(static_config(replicas, health=checks)) as router:
            page = await browser.new_page(viewport={"width": 1400, "height": 500})
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#rows tr[data-replica='b'][data-state='healthy']")
            assert await page.is_hidden("#alarm")
            assert b.runner is not None
            await b.runner.cleanup()
            started = time.monotonic()
            await page.wait_for_selector("#alarm:not(.hidden)", timeout=5000)
            assert time.monotonic() - started < 5
            assert "Panic mode" in await page.inner_text("#alarm")
            order = await page.eval_on_selector_all(
                "#rows tr", "rows => rows.map(r => r.dataset.replica)"
            )
            assert order == ["b", "a"]


async def screenshots(page: Any, name: str, phone: bool = True) -> None:
    """Desktop and phone screenshots, for docs/img (copied there when asked to)."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True)
    if phone:
        await page.set_viewport_size({"width": 390, "height": 844})
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        await page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
