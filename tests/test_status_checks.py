"""Per-replica attestation checks in /status and on the status page: which checks ran
(os, app, instance, compose, key provider, fresh) and which are unchecked."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from router.models import AttestationVerdict
from tests.support import running_replica, running_router
from tests.test_status_page import browser, config

__all__ = ["browser"]  # the fixture, imported for this module's tests

CHECKS = (
    ("os", "unchecked"),
    ("app", "ok"),
    ("instance", "ok"),
    ("compose", "ok"),
    ("key_provider", "ok"),
    ("fresh", "unchecked"),
)


def verdict(replica_id: str) -> AttestationVerdict:
    return AttestationVerdict(
        replica_id, True, "ok", at=time.monotonic(), mode="cloud", checks=CHECKS
    )


async def test_status_json_lists_each_check_and_the_unchecked_ones(
    client: aiohttp.ClientSession,
) -> None:
    async with running_replica("a") as a:
        async with running_router(config([("a", f"http://127.0.0.1:{a.port}")])) as router:
            router.app.reconciler.set_verdict(verdict("a"))
            async with client.get(f"{router.admin_url}/status") as resp:
                (replica,) = (await resp.json())["replicas"]
    assert replica["attestation"]["checks"] == dict(CHECKS)


@pytest.mark.browser
async def test_page_shows_which_checks_ran_and_which_are_unchecked(browser: Any) -> None:
    async with running_replica("a") as a:
        async with running_router(config([("a", f"http://127.0.0.1:{a.port}")])) as router:
            router.app.reconciler.set_verdict(verdict("a"))
            page = await browser.new_page(viewport={"width": 1400, "height": 500})
            await page.goto(f"{router.admin_url}/status.html")
            await page.wait_for_selector("#rows tr[data-replica='a'] .checks", timeout=5000)
            text = await page.inner_text("#rows tr[data-replica='a'] .checks")
            unchecked = await page.eval_on_selector_all(
                "#rows tr[data-replica='a'] .check.unchecked", "els => els.map(e => e.textContent)"
            )
    assert "key provider: ok" in text
    assert "compose: ok" in text
    assert unchecked == ["os: unchecked", "fresh: unchecked"]
