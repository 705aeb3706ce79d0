"""Verify any dstack RA-TLS endpoint from outside (`phala-router verify`): connect, take the
leaf the server proved it holds the key of, send nothing, close, and verify the attestation
in it with the gate's checks (`ratls.py`). Also what a client runs against a router that
itself runs in a CVM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from router.attestation import simsig
from router.attestation.claims import Expectation
from router.attestation.collateral import CollateralStore
from router.attestation.quote import parse_td_quote
from router.attestation.ratls import ra_tls_reason, verify_attestation
from router.attestation.ratls_cert import read_attestation
from router.attestation.report import verdict_to_dict
from router.attestation.verify import Verifier
from router.errors import AttestationError
from router.models import AttestationVerdict
from router.reach import peer_leaf, ra_tls_context

EXIT_VERIFIED = 0
EXIT_UNREACHABLE = 1  # no TLS session (DNS, connect, handshake)
EXIT_USAGE = 2  # bad arguments (click's own usage errors are 2 as well)
EXIT_REFUSED = 3  # a session, but its attestation does not verify


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`https://HOST[:PORT]` (a path is ignored); ValueError says what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url!r} is not an https://HOST[:PORT] URL")
        try:
            port = parts.port or 443
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        return cls(parts.hostname, port)


async def fetch_leaf(endpoint: Endpoint, timeout: float, connect_host: str | None = None) -> bytes:
    """The peer's DER leaf; SNI is the endpoint's host (the gateway passthrough needs it)."""
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(
            connect_host or endpoint.host,
            endpoint.port,
            ssl=ra_tls_context(),
            server_hostname=endpoint.host,
        )
    try:
        leaf = peer_leaf(writer.transport)
    finally:
        writer.close()
    if leaf is None:
        raise OSError("the server sent no certificate")
    return leaf


async def verify_endpoint(
    leaf: bytes,
    expect: Expectation,
    collateral: CollateralStore | None,
    *,
    verifier: Verifier = "dcap",
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    wall_clock: Callable[[], float] = time.time,
) -> AttestationVerdict:
    now = wall_clock()
    try:
        found = read_attestation(leaf)
        chosen = None
        if not simsig.is_simulated(parse_td_quote(found.quote).signature_data):
            if collateral is None:
                raise AttestationError("no_collateral", "give --collateral or --pccs-url")
            chosen = await collateral.get(found.quote)
    except AttestationError as exc:
        return AttestationVerdict(
            replica_id="endpoint", ok=False, reason=ra_tls_reason(exc.reason), at=now,
            detail=exc.detail, mode="ra-tls", wall_at=now,
        )  # fmt: skip
    return verify_attestation(
        found, expect, replica_id="endpoint", collateral=chosen, now_unix=int(now), at=now,
        verifier=verifier, trusted_simulator_keys=trusted_simulator_keys,
    )  # fmt: skip


def proven(verdict: AttestationVerdict, url: str) -> list[str]:
    """What a pass proves, line by line (or why it failed)."""
    if not verdict.ok:
        return [f"{url}  FAIL  {verdict.reason}: {verdict.detail}".rstrip(": ")]
    facts = verdict_to_dict(verdict)
    os_line = (
        f"OS (MRTD, RTMR0-2): matches {verdict.os_measurement}"
        if verdict.os_measurement
        else "OS (MRTD, RTMR0-2): NOT checked (give --measurements)"
    )
    return [
        f"{url}  PASS" + ("  (SIMULATED quote: proves nothing about hardware)" if verdict.detail else ""),
        f"  TCB: {verdict.tcb_status}" + (f" advisories {', '.join(verdict.advisory_ids)}" if verdict.advisory_ids else ""),
        f"  {os_line}",
        f"  app: {verdict.app_id}  ({facts['checks'].get('app')})",
        f"  instance: {verdict.instance_id}",
        f"  compose hash: {verdict.compose_hash}  ({facts['checks'].get('compose')})",
        f"  key provider: {verdict.key_provider}",
        "  TLS key: bound to this CVM's quote (report_data = sha512('ratls-cert:' + SPKI))",
    ]  # fmt: skip
