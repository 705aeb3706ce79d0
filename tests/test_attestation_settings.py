"""The `attestation:` config section: defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import parse_config
from router.errors import ConfigError

STATIC = {"discovery": {"static": [{"id": "r1", "url": "http://127.0.0.1:9001"}]}}


def config(attestation: dict[str, Any]) -> Any:
    return parse_config({**STATIC, "attestation": attestation}, environ={}).attestation


def test_defaults_are_off_dcap_ten_minutes_and_uptodate_only() -> None:
    cfg = config({})
    assert (cfg.mode, cfg.verifier, cfg.interval) == ("off", "dcap", 600.0)
    assert cfg.effective_max_age == 1200.0
    assert cfg.allowed_tcb_statuses == ("UpToDate",)
    assert cfg.collateral.pccs_url == "https://pccs.phala.network"
    assert cfg.fresh.path == "/.well-known/phala-router/attest"
    assert not cfg.enabled


def test_every_key_is_accepted() -> None:
    cfg = config(
        {
            "mode": "fresh",
            "verifier": "insecure-simulator",
            "interval": "5m",
            "max_age": "15m",
            "timeout": "3s",
            "allowed_compose_hashes": ["0x" + "AB" * 32],
            "allowed_tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
            "allowed_os_image_hashes": ["cd" * 32],
            "collateral": {"pccs_url": "http://127.0.0.1:8081/", "cache_dir": "/tmp/collateral"},
            "fresh": {"path": "/attest", "port": 8099},
        }
    )
    assert cfg.effective_max_age == 900.0
    assert cfg.allowed_compose_hashes == ("ab" * 32,)
    assert cfg.collateral.pccs_url == "http://127.0.0.1:8081"
    assert cfg.fresh.port == 8099


def test_collateral_file_must_hold_collateral(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hello": 1}')
    with pytest.raises(ConfigError) as info:
        config({"collateral": {"file": str(wrong)}})
    assert "attestation.collateral.file" in str(info.value)
    assert "not dcap-qvl collateral" in str(info.value)


@pytest.mark.parametrize(
    ("attestation", "message"),
    [
        ({"mode": "always"}, "attestation.mode"),
        ({"verifier": "simulator"}, "attestation.verifier"),
        ({"allowed_compose_hashes": ["abc"]}, "not a compose hash (64 hex characters"),
        ({"allowed_tcb_statuses": ["Fine"]}, "attestation.allowed_tcb_statuses"),
        ({"allowed_tcb_statuses": []}, "no quote could pass"),
        ({"interval": "10m", "max_age": "5m"}, "shorter than attestation.interval"),
        ({"fresh": {"path": "attest"}}, "attestation.fresh.path"),
        ({"collateral": {"file": "/nonexistent/collateral.json"}}, "not a readable collateral"),
        ({"collateral": {"pccs_url": "pccs.phala.network"}}, "not an http(s) URL"),
        ({"typo": 1}, "attestation.typo: unknown key"),
    ],
)
def test_bad_values_are_refused_naming_the_field(attestation: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(attestation)
    assert message in str(info.value)
