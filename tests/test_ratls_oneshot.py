"""The one-shot commands with `attestation.connection: ra-tls`: `phala-router replicas` and
`phala-router attest` dial each replica as traffic would and check its RA-TLS certificate; a
replica whose certificate fails is shown with its reason (and `attest` exits 3)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import yaml

from tests.test_ratls_e2e import replicas, router_config

CLI = str(Path(sys.executable).with_name("phala-router"))


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_replicas_and_attest_show_each_replicas_ra_tls_verdict(tmp_path: Path) -> None:
    async with replicas(("good", "ok"), ("liar", "other_instance"), ("plain", "plain")) as servers:
        good, liar, plain = (s.identity.instance_id for s in servers)
        config_file = tmp_path / "router.yaml"
        config_file.write_text(yaml.safe_dump(router_config("fast", servers)))

        code, out, err = await run_cli("replicas", "-c", str(config_file), "--json")
        assert code == 0, out + err
        rows = {row["id"]: row for row in json.loads(out)}
        assert rows[good]["ra_tls"]["ok"] is True
        assert rows[liar]["ra_tls"]["reason"] == "ra_tls_wrong_instance"
        assert rows[plain]["ra_tls"]["reason"] == "ra_tls_no_attestation"

        code, out, err = await run_cli("attest", "-c", str(config_file))
        assert code == 3, out + err  # a replica failed
        lines = {line.split("  ")[0]: line for line in out.splitlines()}
        assert "PASS" in lines[f"{good} [ra-tls]"]
        assert "FAIL  ra_tls_wrong_instance" in lines[f"{liar} [ra-tls]"]
        assert "FAIL  ra_tls_no_attestation" in lines[f"{plain} [ra-tls]"]
        # The refused ones got nothing after the handshake (the good one a health probe).
        assert [s.bytes_after_handshake() for s in servers[1:]] == [0, 0]


async def test_an_unreachable_replica_is_shown_as_such(tmp_path: Path) -> None:
    async with replicas(("gone", "ok")) as servers:
        config = router_config("fast", servers)
    # The servers and the passthrough are stopped now: nothing answers.
    config_file = tmp_path / "router.yaml"
    config_file.write_text(yaml.safe_dump(config))
    code, out, err = await run_cli("replicas", "-c", str(config_file))
    assert code == 0, out + err
    assert "FAIL  ra_tls_unreachable" in out
