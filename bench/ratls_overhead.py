"""What `attestation.connection: ra-tls` costs per new upstream connection.

One simulated RA-TLS replica (`router.simulator.ratls`) on 127.0.0.1; new connections one
after another, each: TCP connect + TLS handshake (+ the RA-TLS check). Four rows, measured
in the same run so only their ratios mean anything:

    tls only         handshake, no check (what `connection: any` with verification off costs)
    ra-tls, cached   handshake + the gate's check, verdict cached for this key (the usual case)
    ra-tls, no cache handshake + a full verification every time (simulated quote: ECDSA)
    dcap verify      the real fixture quote in a certificate through dcap-qvl, no handshake
                     (what a cache miss adds for a real quote; skipped without the fixtures)

    python -m bench.ratls_overhead [--connections 300]

Prints a table and writes bench/results/ratls_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation.claims import Expectation
from router.attestation.ratls import verify_certificate
from router.attestation.ratls_cert import attestation_extensions
from router.attestation.ratls_gate import RaTlsGate
from router.attestation.settings import AttestationConfig
from router.attestation.simsig import public_key_bytes
from router.models import Replica
from router.reach import peer_leaf, ra_tls_context
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Identity, RaTlsServer, SimCa, ra_tls_certificate

RESULTS = Path(__file__).parent / "results"
ME = Identity("ab" * 20, "11" * 20, "cd" * 32)
HOST = "bench-8443s.dstack.test"


@dataclass
class Row:
    case: str
    connections: int
    per_second: float
    p50_ms: float
    p99_ms: float


def summarize(case: str, samples: list[float]) -> Row:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Row(
        case, len(samples), len(samples) / sum(samples),
        statistics.median(ordered) * 1000, p99 * 1000,
    )  # fmt: skip


def gate(interval: float, quote_key: ec.EllipticCurvePrivateKey) -> RaTlsGate:
    cfg = AttestationConfig(
        connection="ra-tls",
        verifier="insecure-simulator",
        interval=interval,
        app_id=ME.app_id,
        allowed_compose_hashes=(ME.compose_hash,),
        os_measurements=(simulated_os_measurement(),),
    )
    ratls = RaTlsGate(
        cfg, None, lambda _: None,
        trusted_simulator_keys=frozenset({public_key_bytes(quote_key.public_key())}),
    )  # fmt: skip
    url = f"https://{HOST}:8443"
    ratls.update_replicas([Replica(ME.instance_id, url, "https", HOST, 8443)])
    return ratls


async def measure(
    port: int, count: int, check: Callable[[bytes | None], Awaitable[str | None]] | None
) -> list[float]:
    context = ra_tls_context()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=HOST
        )
        if check is not None and await check(peer_leaf(writer.transport)) is not None:
            raise SystemExit("the simulated replica was refused: the benchmark is broken")
        samples.append(time.perf_counter() - start)
        writer.close()
    return samples


def _fixtures() -> Path | None:
    candidates = [Path(os.environ.get("ROUTER_FIXTURES_DIR", "/nonexistent"))]
    candidates += [Path(__file__).parents[2] / "shared/fixtures/attestation"]
    candidates += [Path("/work/shared/fixtures/attestation")]
    return next((c for c in candidates if (c / "dstack-quote-report.json").is_file()), None)


def dcap_row(count: int) -> Row | None:
    """A full dcap-qvl verification of the real dstack quote inside a certificate, at a
    clock pinned inside its collateral's window (it stops at the key binding, as it must)."""
    base = _fixtures()
    if base is None:
        print("dcap row skipped: no real attestation fixtures (ROUTER_FIXTURES_DIR)")
        return None
    report = json.loads((base / "dstack-quote-report.json").read_text())
    text = (base / "qvl-tdx_quote_outdated_collateral.json").read_text()
    collateral = dcap_qvl.QuoteCollateralV3.from_json(text)
    issued = json.loads(json.loads(text)["tcb_info"])["issueDate"]
    now = int(dt.datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()) + 3600
    events = [e for e in json.loads(report["event_log"]) if e["imr"] == 3]
    _, cert = ra_tls_certificate(ME, ec.generate_private_key(ec.SECP256R1()), SimCa())
    builder = x509.CertificateBuilder(
        cert.issuer, cert.subject, cert.public_key(), cert.serial_number,
        cert.not_valid_before_utc, cert.not_valid_after_utc,
    )  # fmt: skip
    for ext in attestation_extensions(bytes.fromhex(report["quote"]), events, bytes(64)):
        builder = builder.add_extension(ext, critical=False)
    der = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(
        serialization.Encoding.DER
    )
    expect = Expectation(None, None, None, allowed_key_providers=frozenset({"local-sgx"}))
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        verdict = verify_certificate(
            der, expect, replica_id="r", collateral=collateral, now_unix=now, at=0.0
        )
        samples.append(time.perf_counter() - start)
    if verdict.reason != "ra_tls_key_binding_mismatch":
        raise SystemExit(f"the real quote did not verify up to the key binding: {verdict.reason}")
    return summarize("dcap verify (real quote, no handshake)", samples)


async def run(count: int) -> list[Row]:
    quote_key = ec.generate_private_key(ec.SECP256R1())
    server = RaTlsServer("bench", ME, quote_key, host=HOST)
    await server.start()
    cached, uncached = gate(3600, quote_key), gate(1e-9, quote_key)
    try:
        await measure(server.port, 20, None)  # warm up
        rows = [summarize("tls only", await measure(server.port, count, None))]
        await cached.check(HOST, 8443, server.leaf.public_bytes(serialization.Encoding.DER))
        rows.append(
            summarize(
                "ra-tls, cached verdict",
                await measure(server.port, count, lambda leaf: cached.check(HOST, 8443, leaf)),
            )
        )
        rows.append(
            summarize(
                "ra-tls, full verification",
                await measure(server.port, count, lambda leaf: uncached.check(HOST, 8443, leaf)),
            )
        )
    finally:
        await server.stop()
    dcap = dcap_row(count)
    return rows + ([dcap] if dcap else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the simulated-quote warning on every verification
    rows = asyncio.run(run(args.connections))
    print(f"{'case':42} {'conn/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(f"{row.case:42} {row.per_second:9.0f} {row.p50_ms:8.2f} {row.p99_ms:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ratls_overhead.json"
    out.write_text(
        json.dumps({"machine": platform.platform(), "rows": [asdict(r) for r in rows]}, indent=2)
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
