"""bench/abuse.py runs end to end on a tiny scale and writes what it measured (the numbers
themselves are never asserted: tests/test_exhaustion.py holds the budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.abuse import main


def test_abuse_bench_prints_a_table_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "--engines", "aiohttp",
            "--header-mib", "1",
            "--chunks-kib", "4",
            "--gets", "50",
            "--flood-seconds", "0.3",
            "--idle", "10",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "| aiohttp | endless header |" in printed
    [result] = tmp_path.glob("abuse-*.json")
    document = json.loads(result.read_text())
    names = [o["name"] for o in document["results"]["aiohttp"]]
    assert names[:2] == ["upload", "endless header"]
    assert set(document["derived"]["aiohttp"]) >= {"us_per_1_byte_chunk", "us_per_small_get"}
    assert result.with_suffix(".md").exists()
