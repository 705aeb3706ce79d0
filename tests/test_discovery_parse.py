"""Pure parsing of Cloud API answers (recorded shapes in tests/fixtures/phala) and the pure
helpers of discovery: config validation, membership diffs, backoff and Retry-After."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from router.config import parse_config
from router.discovery.phala import backoff_delay, parse_retry_after
from router.discovery.records import describe_changes, parse_cvms, parse_cvms_result
from router.discovery.settings import PhalaDiscoveryConfig
from router.discovery.table import render_table, replica_rows
from router.errors import ConfigError, DiscoveryError

FIXTURES = Path(__file__).parent / "fixtures" / "phala"
APP_ID = "e15f2c7d0b9a8e6f5c4d3b2a1908f7e6d5c4b3a2"
RUNNING = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
STOPPED = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"
BOOTING = "5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def config(**fields: Any) -> PhalaDiscoveryConfig:
    return PhalaDiscoveryConfig(**{"app_id": APP_ID, "port": 8080, **fields})


def test_current_shape_gives_addressable_replicas_with_their_placement() -> None:
    replicas = {r.id: r for r in parse_cvms(load("cvms_2026-01-21.json"), config())}

    running = replicas[RUNNING]
    assert running.url == f"https://{RUNNING}-8080.dstack-prod5.phala.network"
    assert running.host == f"{RUNNING}-8080.dstack-prod5.phala.network"
    assert running.port == 443
    assert running.scheme == "https"
    assert running.region == "us-east-1"  # normalised from US-EAST-1
    assert running.app_id == APP_ID
    assert running.compose_hash is not None
    assert running.compose_hash.startswith("9b4f3c1d")
    assert running.platform_status == "running"
    assert running.is_candidate
    assert running.metadata["vm_uuid"] == "3f2b1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d"
    assert running.metadata["node"] == "prod-node-7"
    assert running.metadata["instance_type"] == "tdx.small"
    assert running.metadata["base_domain"] == "dstack-prod5.phala.network"
    assert running.metadata["name"] == "my-app"
    assert running.metadata["os_image_hash"].startswith("c0ffee")


def test_stopped_and_in_progress_replicas_are_kept_but_not_candidates() -> None:
    replicas = {r.id: r for r in parse_cvms(load("cvms_2026-01-21.json"), config())}

    assert replicas[STOPPED].platform_status == "stopped"
    # Each replica keeps its own gateway cluster.
    assert replicas[STOPPED].host.endswith(".dstack-prod7.phala.network")
    assert replicas[BOOTING].platform_status == "starting (in_progress)"
    creating = replicas["99887766-5544-4332-a110-ffeeddccbbaa"]  # no instance_id yet: vm_uuid
    assert creating.platform_status == "creating (no instance_id)"
    assert not any(r.is_candidate for r in (replicas[STOPPED], replicas[BOOTING], creating))


def test_http_scheme_gives_port_80_urls() -> None:
    replicas = parse_cvms(load("cvms_2026-01-21.json"), config(scheme="http"))
    assert replicas[0].url == f"http://{RUNNING}-8080.dstack-prod5.phala.network"
    assert replicas[0].port == 80


def test_a_different_port_does_not_use_the_listed_endpoint() -> None:
    replica = parse_cvms(load("cvms_2026-01-21.json"), config(port=3000))[0]
    assert replica.host == f"{RUNNING}-3000.dstack-prod5.phala.network"


def test_grpc_uses_the_gateways_g_names_and_marks_replicas_as_grpc() -> None:
    replica = parse_cvms(load("cvms_2026-01-21.json"), config(grpc=True))[0]
    assert replica.host == f"{RUNNING}-8080g.dstack-prod5.phala.network"
    assert replica.metadata["protocol"] == "grpc"  # spoken to over HTTP/2 (engine: envoy)
    plain = parse_cvms(load("cvms_2026-01-21.json"), config())[0]
    assert "protocol" not in plain.metadata


def test_grpc_names_exclude_tls_passthrough_and_plain_http() -> None:
    for other in ({"tls_passthrough": True}, {"scheme": "http"}):
        with pytest.raises(ValidationError, match="grpc"):
            config(grpc=True, **other)


def test_listed_instance_endpoint_is_used_when_the_gateway_is_missing() -> None:
    record = load("cvms_2026-01-21.json")[0]
    del record["gateway"]
    record["endpoints"][0]["instance"] = f"https://{RUNNING}-8080.other-gw.example.com"
    [replica] = parse_cvms([record], config())
    assert replica.host == f"{RUNNING}-8080.other-gw.example.com"
    assert replica.metadata["base_domain"] == "other-gw.example.com"


def test_legacy_list_shape_parses_to_the_same_replicas() -> None:
    current = {r.id: r for r in parse_cvms(load("cvms_2026-01-21.json"), config())}
    legacy = {r.id: r for r in parse_cvms(load("cvms_2025-10-28.json"), config())}

    assert set(legacy) == {RUNNING, STOPPED}
    for rid in legacy:
        assert legacy[rid].url == current[rid].url
        assert legacy[rid].region == current[rid].region
        assert legacy[rid].platform_status == current[rid].platform_status
        assert legacy[rid].metadata["vm_uuid"] == current[rid].metadata["vm_uuid"]
        assert legacy[rid].app_id == APP_ID
    # The stopped one names no gateway_domain: its base domain comes from hosted.app_url.
    assert legacy[STOPPED].host == f"{STOPPED}-8080.dstack-prod7.phala.network"


def test_legacy_detail_record_and_app_document_are_accepted() -> None:
    detail = load("cvm_detail_2025-10-28.json")
    [replica] = parse_cvms([detail], config())
    assert replica.id == RUNNING
    assert replica.region == "us-east-1"
    assert replica.host == f"{RUNNING}-8080.dstack-prod5.phala.network"

    app = {"id": "x", "name": "my-app", "cvms": load("cvms_2026-01-21.json"), "cvm_count": 4}
    assert len(parse_cvms(app, config())) == 4


def test_records_with_missing_fields_are_skipped_each_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = load("cvms_missing_fields.json")
    result = parse_cvms_result(payload, config())

    ids = [r.id for r in result.replicas]
    assert ids == [
        "3333333333333333333333333333333333333333",
        "4444444444444444444444444444444444444444",
    ]
    no_status = result.replicas[0]
    assert no_status.platform_status == "unknown"  # no status: never a candidate
    assert not no_status.is_candidate
    mistyped = result.replicas[1]
    assert mistyped.platform_status == "running"  # in_progress "no" is not true
    assert mistyped.region is None

    problems = "\n".join(result.problems)
    assert "record [0]: neither 'instance_id' nor 'vm_uuid' is set" in problems
    assert "record [1]" in problems
    assert "gateway.base_domain" in problems
    assert "record [4]: expected an object, got str" in problems
    assert "record [5]: duplicate replica id 3333" in problems

    with caplog.at_level(logging.WARNING):
        parse_cvms(payload, config())
    assert len([r for r in caplog.records if "record skipped" in r.getMessage()]) == 4


def test_configured_base_domain_fills_in_for_records_without_one() -> None:
    payload = [{"instance_id": "2" * 40, "status": "running"}]
    [replica] = parse_cvms(payload, config(base_domain="Gw.Example.COM."))
    assert replica.host == f"{'2' * 40}-8080.gw.example.com"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("<html>", "expected a JSON array of CVM records, got str"),
        (None, "got NoneType"),
        ({"detail": "oops"}, "got an object (keys: detail)"),
        ({"items": "x"}, "without a 'cvms' or 'items' list"),
        (["a", 1], "no usable CVM record: record [0]: expected an object"),
    ],
)
def test_an_answer_that_is_not_a_list_of_records_is_an_error(payload: object, message: str) -> None:
    with pytest.raises(DiscoveryError) as error:
        parse_cvms(payload, config())
    assert message in str(error.value)


def test_an_empty_list_is_a_valid_answer() -> None:
    assert parse_cvms([], config()) == []


# -- config ----------------------------------------------------------------------------------


def test_app_id_accepts_the_app_prefix_and_upper_case() -> None:
    assert PhalaDiscoveryConfig(app_id="app_" + APP_ID.upper()).app_id == APP_ID


@pytest.mark.parametrize("bad", ["app_123", "x" * 40, APP_ID + "00", "", 42])
def test_a_bad_app_id_is_rejected_with_what_is_allowed(bad: object) -> None:
    with pytest.raises(ValidationError) as error:
        PhalaDiscoveryConfig.model_validate({"app_id": bad})
    assert "40 hex digits" in str(error.value)


def test_defaults_and_the_router_config_section() -> None:
    cfg = parse_config(
        {"discovery": {"phala": {"app_id": "app_" + APP_ID, "interval": "5s"}}}, environ={}
    )
    phala = cfg.discovery.phala
    assert phala is not None
    assert phala.app_id == APP_ID
    assert phala.api_url == "https://cloud-api.phala.com/api/v1"
    assert phala.api_key_env == "PHALA_CLOUD_API_KEY"
    assert phala.api_version == "2026-01-21"
    assert phala.interval == 5.0
    assert phala.empty_confirmations == 2
    assert phala.scheme == "https"


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(
            {
                "discovery": {
                    "phala": {"app_id": "nope", "api_url": "ftp://x", "api_key_env": "a b"}
                }
            },
            environ={},
        )
    text = str(error.value)
    assert "discovery.phala.app_id" in text
    assert "discovery.phala.api_url" in text
    assert "discovery.phala.api_key_env" in text

    with pytest.raises(ConfigError, match="put the key in an environment variable") as error:
        parse_config({"discovery": {"phala": {"app_id": APP_ID, "api_key": "s3cr3t"}}}, environ={})
    assert "s3cr3t" not in str(error.value)


# -- membership diffs, backoff, Retry-After ---------------------------------------------------


def test_membership_changes_are_one_line_each() -> None:
    before = parse_cvms(load("cvms_2026-01-21.json"), config())
    record = load("cvms_2026-01-21.json")
    record[0]["node_info"]["region"] = "eu-central-1"
    record[0]["compose_hash"] = "2" * 64
    record[1]["status"] = "running"
    del record[2]
    record.append({**record[0], "instance_id": "7" * 40, "vm_uuid": "new"})
    after = parse_cvms(record, config())

    lines = describe_changes(before, after)
    assert f"replica moved region: {RUNNING} us-east-1 -> eu-central-1" in lines
    assert f"replica compose hash changed: {RUNNING} 9b4f3c1d2e5a -> 222222222222" in lines
    assert f"replica status changed: {STOPPED} stopped -> running" in lines
    assert f"replica removed: {BOOTING}" in lines
    assert any(line.startswith(f"replica added: {'7' * 40} region=eu-central-1") for line in lines)
    assert len(lines) == 5
    assert describe_changes(after, after) == []


def test_backoff_grows_from_the_interval_is_capped_and_jittered() -> None:
    assert backoff_delay(1, 15, 300, lambda: 1.0) == 15
    assert backoff_delay(1, 15, 300, lambda: 0.0) == 7.5
    assert backoff_delay(3, 15, 300, lambda: 1.0) == 60
    assert backoff_delay(30, 15, 300, lambda: 1.0) == 300


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("7", now=0) == 7
    assert parse_retry_after("999999", now=0) == 3600
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30) == 30
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


# -- the replicas command's output ------------------------------------------------------------


def test_replica_table_and_json_rows() -> None:
    replicas = parse_cvms(load("cvms_2026-01-21.json"), config())
    text = render_table(replicas)
    header, first, *_ = text.splitlines()
    assert header.split() == ["INSTANCE", "REGION", "STATUS", "URL", "COMPOSE"]
    assert first.startswith(BOOTING)  # sorted by region (ap-southeast-1 first), then id
    assert f"{RUNNING}  us-east-1" in text
    assert "9b4f3c1d2e5a" in text
    assert text.endswith("4 replica(s), 1 running")
    rows = replica_rows(replicas)
    assert json.loads(json.dumps(rows)) == rows
    assert {row["id"]: row["candidate"] for row in rows}[RUNNING] is True
    assert render_table([]) == "no replicas"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "instance_id",
                    "vm_uuid",
                    "status",
                    "in_progress",
                    "node_info",
                    "gateway",
                    "base_domain",
                    "endpoints",
                    "instance",
                    "region",
                    "hosted",
                    "node",
                    "cvms",
                    "public_urls",
                    "gateway_domain",
                    "teepod",
                    "compose_hash",
                    "name",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_gives_replicas_or_a_discovery_error(payload: object) -> None:
    with contextlib.suppress(DiscoveryError):
        parse_cvms_result(payload, config(base_domain="gw.example.com"))
