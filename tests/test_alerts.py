"""config/alerts.yaml: every rule parses as PromQL and names only series the router exports,
so an alert can never silently watch a metric that does not exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.metrics import Metrics
from router.models import AttestationVerdict
from tests.test_metrics import record, replica, scrape, snapshot

ALERTS = Path(__file__).resolve().parent.parent / "config/alerts.yaml"
# Metric names in an expression: the router's own and the standard process ones.
SERIES = re.compile(r"\b(?:router|process|python)_[a-z0-9_]+\b")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def exported_series() -> set[str]:
    """Every series name a router with traffic, checks, verdicts, reloads and TLS exports."""
    a = replica("a", compose_hash="h")
    metrics = Metrics({})
    metrics.on_snapshot(snapshot([a]))
    metrics.request_done(record(a))
    metrics.attestation_verdict(AttestationVerdict("a", True, "ok", at=0.0))
    metrics.reload_done(None)
    metrics.watch_connections(lambda: (1, 1))
    metrics.watch_certificates(lambda: {"tls": 2e9})
    return {name for name, _ in scrape(metrics)}


def test_the_rules_cover_what_operators_page_on() -> None:
    names = {str(rule["alert"]) for rule in rules()}
    expected = {
        "RouterNoRoutableReplica",
        "RouterPanicMode",
        "RouterComposeDrift",
        "RouterAttestationFailing",
        "RouterAttestationStale",
        "RouterCertificateExpiringSoon",
        "RouterHighErrorRatio",
    }
    assert expected <= names
    for rule in rules():
        assert rule.get("annotations"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}


def test_every_expression_names_only_exported_series() -> None:
    exported = exported_series()
    for rule in rules():
        used = set(SERIES.findall(str(rule["expr"])))
        assert used, f"{rule['alert']}: no router series in {rule['expr']!r}"
        unknown = used - exported
        assert not unknown, f"{rule['alert']}: unknown series {sorted(unknown)}"


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: apt-get install prometheus (Debian) to check PromQL")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
