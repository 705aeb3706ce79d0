"""`phala-router verify` against a simulated RA-TLS endpoint: a pass prints what was proven,
a tampered quote fails with exit code 3, an unreachable endpoint exits 1, bad input 2."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation.simsig import public_key_bytes
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Behaviour, Identity, RaTlsServer

ME = Identity("ab" * 20, "11" * 20, "cd" * 32)
QUOTE_KEY = ec.generate_private_key(ec.SECP256R1())
CLI = str(Path(sys.executable).with_name("phala-router"))


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI, "verify", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def verify_server(behaviour: Behaviour, *extra: str) -> tuple[int, str, str]:
    server = RaTlsServer("router", ME, QUOTE_KEY, behaviour=behaviour, host="router.test")
    await server.start()
    try:
        key = public_key_bytes(QUOTE_KEY.public_key()).hex()
        return await run_cli(
            f"https://router.test:{server.port}", "--connect", "127.0.0.1",
            "--insecure-simulator-key", key, "--app-id", ME.app_id, *extra,
        )  # fmt: skip
    finally:
        assert server.requests == 0  # verify sends no request
        await server.stop()


async def test_verify_passes_and_prints_what_was_proven(tmp_path: Path) -> None:
    measurements = tmp_path / "m.yaml"
    measurements.write_text(yaml.safe_dump([simulated_os_measurement()]))
    code, out, _ = await verify_server(
        "ok", "--compose-hash", ME.compose_hash, "--measurements", str(measurements)
    )
    assert code == 0, out
    assert "PASS" in out
    assert "matches simulated-dstack" in out
    assert f"instance: {ME.instance_id}" in out
    assert "TLS key: bound" in out


async def test_verify_json_and_a_tampered_quote_exits_3() -> None:
    code, out, _ = await verify_server("tampered", "--json")
    assert code == 3
    assert json.loads(out)["reason"] == "ra_tls_bad_signature"
    code, out, _ = await verify_server("plain")
    assert code == 3
    assert "ra_tls_no_attestation" in out


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["http://x.test"], 2, "https://HOST[:PORT]"),
        (["https://127.0.0.1:1", "--timeout", "2"], 1, "no TLS session"),
        (["https://x.test", "--measurements", "/nonexistent.yaml"], 2, "cannot be read"),
    ],
)
async def test_verify_errors_name_the_problem(args: list[str], code: int, says: str) -> None:
    got, out, err = await run_cli(*args)
    assert got == code
    assert says in out + err
    assert "Traceback" not in err
