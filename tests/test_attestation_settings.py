"""The `attestation:` config section: defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import parse_config
from router.errors import ConfigError

STATIC = {
    "discovery": {
        "static": [{"id": "r1", "url": "http://127.0.0.1:9001", "instance_id": "c3" * 20}]
    }
}
APP_ID = "a1" * 20


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
            "fresh": {"path": "/attest", "port": 8099, "retries": 3, "retry_backoff": "2s"},
            "app_id": "0x" + "A1" * 20,
            "denied_advisories": ["INTEL-SA-00837"],
            "allowed_key_providers": ["kms", "local-sgx"],
            "kms_ids": ["0xABCD"],
            "os_measurements": [
                {"name": "img", "mrtd": "aa" * 48, "rtmr0": "bb" * 48, "rtmr1": "cc" * 48,
                 "rtmr2": "0x" + "DD" * 48},
            ],
        }
    )  # fmt: skip
    assert cfg.app_id == APP_ID
    assert cfg.kms_ids == ("abcd",)
    assert cfg.os_measurements[0].rtmr2 == "dd" * 48
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
        ({"app_id": "xyz"}, "not an app id (40 hex"),
        ({"allowed_key_providers": ["tpm"]}, "allowed key providers: kms, local"),
        ({"kms_ids": ["not hex"]}, "is not a KMS id"),
        (
            {
                "os_measurements": [
                    {"name": "a", "mrtd": "ab", "rtmr0": "", "rtmr1": "", "rtmr2": ""}
                ]
            },
            "attestation.os_measurements[0].mrtd",
        ),
        ({"os_measurements_file": "/nonexistent/os.yaml"}, "cannot be read"),
    ],
)
def test_bad_values_are_refused_naming_the_field(attestation: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(attestation)
    assert message in str(info.value)


ENTRY = {"name": "dstack-0.5.x-4cpu", "mrtd": "aa" * 48, "rtmr0": "bb" * 48,
         "rtmr1": "cc" * 48, "rtmr2": "dd" * 48}  # fmt: skip


def test_os_measurements_load_from_a_file_and_add_to_the_inline_ones(tmp_path: Path) -> None:
    path = tmp_path / "os.yaml"
    path.write_text(
        "os_measurements:\n" + "".join(
            f"  {'- ' if i == 0 else '  '}{k}: {v}\n"
            for i, (k, v) in enumerate({**ENTRY, "name": "from-file"}.items())
        )
    )  # fmt: skip
    cfg = config({"os_measurements": [ENTRY], "os_measurements_file": str(path)})
    assert [m.name for m in cfg.os_measurements] == ["dstack-0.5.x-4cpu", "from-file"]


def test_duplicate_measurement_names_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config({"os_measurements": [ENTRY, ENTRY]})
    assert "entry names must be unique" in str(info.value)


def test_static_replicas_must_be_bound_to_app_and_instance_with_attestation_on() -> None:
    unbound = {"discovery": {"static": [{"id": "r1", "url": "http://127.0.0.1:9001"}]}}
    with pytest.raises(ConfigError) as info:
        parse_config({**unbound, "attestation": {"mode": "fresh"}}, environ={})
    message = str(info.value)
    assert "attestation.app_id" in message
    assert "discovery.static[].instance_id for r1" in message
    assert "allow_unbound" in message
    # Bound by app_id and instance_id, or opted out explicitly: accepted.
    bound = parse_config({**STATIC, "attestation": {"mode": "fresh", "app_id": APP_ID}}, environ={})
    assert bound.attestation.app_id == APP_ID
    opted_out = parse_config(
        {**unbound, "attestation": {"mode": "fresh", "allow_unbound": True}}, environ={}
    )
    assert opted_out.attestation.allow_unbound
