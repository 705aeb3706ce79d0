"""How verdicts are shown: `attest --json` (RFC 3339 wall-clock times, checks, measurements
as evidence, os_image_hash as a label), the text line, and the startup warning when the OS
is not checked."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest

from router.attestation.manager import Attestor
from router.attestation.report import format_measurements, format_verdict, verdict_to_dict
from router.attestation.settings import AttestationConfig
from router.models import AttestationVerdict
from router.simulator.quotes import simulated_os_measurement

CHECKS = (
    ("os", "ok"),
    ("app", "ok"),
    ("instance", "ok"),
    ("compose", "ok"),
    ("key_provider", "ok"),
    ("fresh", "unchecked"),
)
MEASURED = tuple(simulated_os_measurement()[k] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2"))


BASE = AttestationVerdict(
    replica_id="r1",
    ok=True,
    reason="ok",
    at=12.5,  # monotonic: never shown as a time
    wall_at=1796192292.25,
    tcb_status="UpToDate",
    checks=CHECKS,
    os_measurement="dstack-0.5.3",
    measurements=MEASURED,
    os_image_hash="ab" * 32,
)


def verdict(**changes: Any) -> AttestationVerdict:
    return replace(BASE, **changes)


def test_json_has_rfc3339_wall_clock_time_and_every_check() -> None:
    shown = verdict_to_dict(verdict())
    assert shown["at"] == "2026-12-02T06:18:12.250Z"
    assert shown["checks"] == {
        "os": "ok (dstack-0.5.3)",
        "app": "ok",
        "instance": "ok",
        "compose": "ok",
        "key_provider": "ok",
        "fresh": "unchecked",
    }
    assert shown["measurements"]["mrtd"] == MEASURED[0]
    assert shown["os_image_hash_label"] == "ab" * 32


def test_text_line_shows_the_checks() -> None:
    line = format_verdict(verdict(ok=False, reason="wrong_app", detail="another app"))
    assert line.startswith("r1  FAIL  wrong_app: another app")
    assert "os=ok (dstack-0.5.3)" in line
    assert "fresh=unchecked" in line


def test_measurements_are_printed_once_per_distinct_set_with_a_tofu_warning() -> None:
    text = format_measurements(
        [verdict(), verdict(replica_id="r2"), verdict(replica_id="r3", measurements=())]
    )
    assert "trust on first use" in text
    assert text.count("mrtd:") == 1
    assert "# r3: no quote read" in text
    assert "os_image_hash label " + "ab" * 32 in text


async def test_an_unchecked_os_is_warned_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    pinned = AttestationConfig.model_validate(
        {"mode": "cloud", "os_measurements": [simulated_os_measurement()]}
    )
    async with httpx.AsyncClient() as cloud:
        Attestor(AttestationConfig(mode="cloud"), "a1" * 20, lambda v: None, cloud=cloud)
        assert "os: unchecked" in caplog.text
        caplog.clear()
        Attestor(pinned, "a1" * 20, lambda v: None, cloud=cloud)
        assert "os: unchecked" not in caplog.text
