"""bench/isolation.py runs end to end on a tiny scale and writes what it measured (the
numbers are never asserted: tests/test_apps_serve.py holds the isolation behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.isolation import CASES, main


def test_isolation_bench_prints_a_table_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "isolation.json"
    args = ["--seconds", "0.6", "--clients", "2", "--rps", "40", "--repeat", "1"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B p99 after/before" in printed
    document = json.loads(out.read_text())
    assert [row["case"] for row in document["summary"]] == list(CASES)
    assert {run["case"] for run in document["runs"]} == set(CASES)
    assert all(run["b_requests"] > 0 for run in document["runs"])


def test_bad_arguments_are_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--rps", "0"])
    assert exited.value.code == 2
    assert "--rps must be positive" in capsys.readouterr().err
