"""/status (JSON) and /status.html: the page operators open to see which replicas take
traffic and why the others don't; the browser tests drive it in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.models import AttestationVerdict
from tests.support import running_replica, running_router, static_config

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN = "status-page-T0KEN"
ENV = {"TEST_STATUS_TOKEN": TOKEN}
HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def config(replicas: list[tuple[str, str]], **sections: Any) -> dict[str, Any]:
    return static_config(replicas, health={"enabled": False}, **sections)


async def test_page_is_a_self_contained_shell_served_without_the_token(
    client: aiohttp.ClientSession,
) -> None:
    async with running_replica("a") as a:
        cfg = config(
            [("secret-id", f"http://127.0.0.1:{a.port}")], admin={"token_env": "TEST_STATUS_TOKEN"}
        )
        async with running_router(cfg, environ=ENV) as router:
            async with client.get(f"{router.admin_url}/status.html") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                page = await resp.text()
                policy = resp.headers["Content-Security-Policy"]
                assert resp.headers["Cache-Control"] == "no-store"
            async with client.get(f"{router.admin_url}/") as resp:
                assert resp.status == 200
                landing = str(resp.url)
    assert landing.endswith("/status.html")
    # The shell carries no data: replica ids and the token only come from /status.
    assert "secret-id" not in page
    assert TOKEN not in page
    # Self-contained: nothing is loaded from anywhere else.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "url(" not in page
    # Values are written as text, never parsed as HTML.
    assert "innerHTML" not in page
    assert "insertAdjacentHTML" not in page
    assert "document.write" not in page
    # The policy admits exactly the page's own inline script, by hash.
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy


async def test_status_json_matches_the_published_snapshot(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a, running_replica("b") as b, running_replica("c") as c:
        replicas = [(r.name, f"http://127.0.0.1:{r.port}") for r in (a, b, c)]
        async with running_router(config(replicas)) as router:
            admin = router.admin_url
            async with client.post(f"{admin}/admin/replicas/b/drain") as resp:
                assert resp.status == 200
            for _ in range(4):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
            async with client.get(f"{admin}/status") as resp:
                document = await resp.json()
            snapshot = router.app.reconciler.current
    assert document["snapshot_version"] == snapshot.version
    assert document["routable_count"] == len(snapshot.routable) == 2
    assert document["panic"] is snapshot.panic
    rows = {r["id"]: r for r in document["replicas"]}
    assert list(rows) == ["a", "b", "c"]
    for status in snapshot.statuses:
        row = rows[status.replica.id]
        assert (row["state"], row["routable"], row["reason"]) == (
            status.state,
            status.routable,
            status.reason,
        )
        assert row["url"] == status.replica.url
    assert rows["b"]["reason"] == "draining: drained by an operator"
    assert document["discovery_age_seconds"] is None  # static discovery: never refreshed
    assert abs(document["generated_at"] - time.time()) < 5


# -- in a real browser ----------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright python package is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield instance
        finally:
            await instance.close()


async def row_state(page: Any, replica_id: str) -> str | None:
    state: str | None = await page.evaluate(
        "id => { const row = [...document.querySelectorAll('#rows tr')]"
        ".find(r => r.dataset.replica === id); return row ? row.dataset.state : null; }",
        replica_id,
    )
    return state


@pytest.mark.browser
async def test_page_shows_replicas_and_a_drained_one_within_one_refresh(
    browser: Any, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        cfg = config(
            [("eu-1", f"http://127.0.0.1:{a.port}"), ("us-1", f"http://127.0.0.1:{b.port}")],
            admin={"token_env": "TEST_STATUS_TOKEN"},
        )
        cfg["discovery"]["static"][0]["region"] = "eu-west"
        cfg["discovery"]["static"][1]["region"] = HOSTILE
        async with running_router(cfg, environ=ENV) as router:
            for _ in range(10):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
            page = await browser.new_page(viewport={"width": 1400, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{router.admin_url}/status.html#token={TOKEN}")
            await page.wait_for_selector("#rows tr[data-replica='us-1']", timeout=5000)

            # The token leaves the address bar (and the history) once read.
            assert await page.evaluate("location.hash") == ""
            assert [await row_state(page, r) for r in ("eu-1", "us-1")] == ["healthy", "healthy"]
            table = await page.inner_text("#rows")
            assert f"http://127.0.0.1:{a.port}" in table
            assert "eu-west" in table
            assert "taking traffic" in table
            # A hostile value is shown as text: no script ran, no element was created.
            assert HOSTILE.lower() in table
            assert await page.evaluate("window.__xss") is None
            assert await page.locator("#rows img, #rows script").count() == 0
            assert "routable: 2 / 2" in await page.inner_text("#facts")

            # Attestation verdicts appear on the next refresh.
            reconciler = router.app.reconciler
            now = time.monotonic()
            reconciler.set_verdict(AttestationVerdict("us-1", True, "ok", at=now - 30))
            reconciler.set_verdict(
                AttestationVerdict("eu-1", False, "tcb_status:OutOfDate", at=now)
            )
            await page.wait_for_selector("#rows tr[data-replica='us-1'] .ok", timeout=3000)
            cells = await page.eval_on_selector_all(
                "#rows tr[data-replica='us-1'] td", "tds => tds.map(td => td.textContent)"
            )
            assert cells[7].startswith("verified · 3")  # about 30 s ago
            eu = await page.inner_text("#rows tr[data-replica='eu-1']")
            assert "tcb_status:OutOfDate" in eu

            # The replica goes down: the page shows it at the next refresh (every 2 s).
            async with client.post(
                f"{router.admin_url}/admin/replicas/eu-1/drain",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                assert resp.status == 200
            drained_at = time.monotonic()
            await page.wait_for_function(
                "() => document.querySelector(\"#rows tr[data-replica='eu-1']\")"
                "?.dataset.state === 'draining'",
                timeout=3000,
            )
            assert time.monotonic() - drained_at < 3.0
            row = await page.inner_text("#rows tr[data-replica='eu-1']")
            assert "drained by an operator" in row
            assert "routable: 1 / 2" in await page.inner_text("#facts")
            assert "drain eu-1" in await page.inner_text("#actions")
            assert errors == []

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

            # On a phone the rows become cards: nothing runs off the right edge.
            await page.set_viewport_size({"width": 390, "height": 844})
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0
            await page.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)


@pytest.mark.browser
async def test_page_asks_for_the_token_when_opened_without_it(browser: Any) -> None:
    async with running_replica("a") as a:
        cfg = config(
            [("only", f"http://127.0.0.1:{a.port}")], admin={"token_env": "TEST_STATUS_TOKEN"}
        )
        async with running_router(cfg, environ=ENV) as router:
            page = await browser.new_page()
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#token-form:not(.hidden)", timeout=5000)
            assert "needs an admin token" in await page.inner_text("#error")
            assert await page.locator("#rows tr").count() == 0

            await page.fill("#token-input", "wrong")
            await page.click("#token-form button")
            await page.wait_for_function(
                "() => document.querySelector('#error').textContent.includes('refused')",
                timeout=5000,
            )
            await page.fill("#token-input", TOKEN)
            await page.click("#token-form button")
            await page.wait_for_selector("#rows tr[data-replica='only']", timeout=5000)
            assert await page.is_hidden("#token-form")
            assert await page.is_hidden("#error")

            # The operator drains the replica from the page (after confirming), then undrains it.
            dialogs: list[str] = []

            async def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.accept()

            page.on("dialog", accept)
            await page.click("#rows tr[data-replica='only'] button")
            await page.wait_for_selector(
                "#rows tr[data-replica='only'][data-state='draining']", timeout=5000
            )
            assert dialogs == ["Drain only? It stops receiving new requests."]
            assert router.app.reconciler.overrides.drained == {"only"}
            await page.click("#rows tr[data-replica='only'] button:text('Undrain')")
            await page.wait_for_selector(
                "#rows tr[data-replica='only'][data-state='healthy']", timeout=5000
            )
            assert router.app.reconciler.overrides.drained == set()
            assert "undrain only" in await page.inner_text("#actions")


@pytest.mark.browser
async def test_page_shows_a_stopped_replica_failing_its_checks_within_one_refresh(
    browser: Any,
) -> None:
    fast_checks = {
        "enabled": True,
        "interval": 0.2,
        "unhealthy_interval": 0.2,
        "timeout": 0.5,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        async with running_router(static_config(replicas, health=fast_checks)) as router:
            page = await browser.new_page(viewport={"width": 1400, "height": 500})
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#rows tr[data-replica='b'][data-state='healthy']")
            await page.wait_for_selector("#rows tr[data-replica='a'][data-state='healthy']")
            cells = await page.eval_on_selector_all(
                "#rows tr[data-replica='b'] td", "tds => tds.map(td => td.textContent)"
            )
            assert cells[5].startswith("ok 200 · ")
            assert cells[6].endswith(" ms")

            assert b.runner is not None
            await b.runner.cleanup()  # the replica goes down
            stopped_at = time.monotonic()
            await page.wait_for_selector(
                "#rows tr[data-replica='b'][data-state='unhealthy']", timeout=3000
            )
            # One 2 s refresh plus one failed check (0.2 s interval).
            assert time.monotonic() - stopped_at < 3.0
            row = await page.inner_text("#rows tr[data-replica='b']")
            assert "unhealthy:" in row
            assert "fail" in row
            assert "routable: 1 / 2" in await page.inner_text("#facts")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "status-page-unhealthy.png"), full_page=True)


def two_apps_config(api_url: str, ui_url: str) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "health": {"enabled": False},
        "apps": [
            {
                "name": "api",
                "hosts": ["api.localhost"],
                "default": True,
                "discovery": {"static": [{"id": "api-1", "url": api_url}]},
            },
            {
                "name": "ui",
                "hosts": ["ui.localhost", "*.ui.localhost"],
                "discovery": {
                    "static": [{"id": "ui-1", "url": ui_url}, {"id": "ui-2", "url": ui_url}]
                },
            },
        ],
    }


async def group_of(page: Any, replica_id: str) -> str | None:
    """The app whose group row comes last before the replica's row."""
    app: str | None = await page.evaluate(
        "id => { let app = null; for (const row of document.querySelectorAll('#rows tr')) {"
        " if (row.classList.contains('app-head')) app = row.dataset.app;"
        " else if (row.dataset.replica === id) return app; } return null; }",
        replica_id,
    )
    return app


@pytest.mark.browser
async def test_page_groups_replicas_by_app_and_shows_one_app_on_its_own(browser: Any) -> None:
    async with running_replica("api") as api, running_replica("ui") as ui:
        cfg = two_apps_config(f"http://127.0.0.1:{api.port}", f"http://127.0.0.1:{ui.port}")
        async with running_router(cfg) as router:
            page = await browser.new_page(viewport={"width": 1400, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#rows tr[data-replica='ui-2']", timeout=5000)

            # One group per app, in config order, each opened by its summary.
            heads = await page.eval_on_selector_all(
                "#rows tr.app-head", "rows => rows.map(r => r.dataset.app)"
            )
            assert heads == ["api", "ui"]
            assert [await group_of(page, r) for r in ("api-1", "ui-1", "ui-2")] == [
                "api",
                "ui",
                "ui",
            ]
            ui_head = await page.inner_text("#rows tr.app-head[data-app='ui']")
            assert "ui.localhost, *.ui.localhost" in ui_head
            assert "routable: 2 / 2" in ui_head
            assert "(default)" in await page.inner_text("#rows tr.app-head[data-app='api']")
            assert "routable: 3 / 3 in 2 apps" in await page.inner_text("#facts")

            # Draining from a group acts on that app's replica.
            page.on("dialog", lambda dialog: dialog.accept())
            await page.click("#rows tr[data-replica='ui-1'] button")
            await page.wait_for_selector(
                "#rows tr[data-replica='ui-1'][data-state='draining']", timeout=5000
            )
            assert router.app.apps.plane("ui").reconciler.overrides.drained == {"ui-1"}
            assert router.app.reconciler.overrides.drained == set()
            await page.wait_for_function(
                "() => document.querySelector(\"#rows tr.app-head[data-app='ui']\")"
                "?.textContent.includes('routable: 1 / 2')",
                timeout=5000,
            )
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "status-page-apps.png"), full_page=True)

            # The group's name opens the app's own page, laid out like a single-app router.
            await page.click("#rows tr.app-head[data-app='ui'] a")
            await page.wait_for_url("**/status.html?app=ui")
            await page.wait_for_selector("#rows tr[data-replica='ui-2']", timeout=5000)
            assert await page.locator("#rows tr.app-head").count() == 0
            assert await page.locator("#rows tr[data-replica='api-1']").count() == 0
            assert "app ui" in await page.inner_text("h1")
            assert "routable: 1 / 2" in await page.inner_text("#facts")
            await page.click("#rows tr[data-replica='ui-1'] button:text('Undrain')")
            await page.wait_for_selector(
                "#rows tr[data-replica='ui-1'][data-state='healthy']", timeout=5000
            )
            assert router.app.apps.plane("ui").reconciler.overrides.drained == set()

            await page.goto(f"{router.admin_url}/status.html?app=nope")
            await page.wait_for_function(
                "() => document.querySelector('#error').textContent.includes('no app named nope')",
                timeout=5000,
            )
            assert errors == []
