"""`phala-router verify URL --nonce`: besides the RA-TLS certificate, ask the router's
attestation endpoint for a quote made now for a nonce of ours, on the very TLS session whose
certificate was verified, and verify that quote too.

The certificate proves the session's key was made in a CVM with these measurements; the
nonce quote proves that CVM (the same instance, app and compose) is alive and answering now,
so an old certificate replayed by someone who kept its key would fail here. The nonce
binding is the router's: `report_data = sha512(b"phala-router/router-attestation/v1:" +
nonce)` (`quote.router_report_data`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httptools

from router.attestation import simsig
from router.attestation.claims import Expectation
from router.attestation.collateral import CollateralStore
from router.attestation.quote import decode_quote, parse_td_quote, router_report_data
from router.attestation.remote import Endpoint
from router.attestation.verify import Evidence, Verifier, verify_evidence
from router.errors import AttestationError
from router.models import AttestationVerdict
from router.reach import peer_leaf, ra_tls_context

MAX_ANSWER = 4 * 1024 * 1024  # a quote and an event log are tens of kilobytes


@dataclass(frozen=True, slots=True)
class NonceAnswer:
    leaf: bytes  # the certificate of the session the answer came on
    nonce: bytes
    status: int
    body: bytes


def new_nonce() -> bytes:
    return secrets.token_bytes(32)


class _Response:
    """httptools callbacks: the status and body of one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.done = True


async def ask_with_nonce(
    endpoint: Endpoint,
    path: str,
    nonce: bytes,
    timeout: float,
    connect_host: str | None = None,
) -> NonceAnswer:
    """GET `path?nonce=` over one RA-TLS session; OSError/TimeoutError when there is none."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            connect_host or endpoint.host, endpoint.port, ssl=ra_tls_context(),
            server_hostname=endpoint.host, limit=MAX_ANSWER,
        )  # fmt: skip
        try:
            leaf = peer_leaf(writer.transport)
            if leaf is None:
                raise OSError("the server sent no certificate")
            host = endpoint.host if endpoint.port == 443 else f"{endpoint.host}:{endpoint.port}"
            writer.write(
                f"GET {path}?nonce={nonce.hex()} HTTP/1.1\r\nHost: {host}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            response = _Response()
            parser = httptools.HttpResponseParser(response)
            while not response.done and (data := await reader.read(65536)):
                parser.feed_data(data)
                if len(response.body) > MAX_ANSWER:
                    raise OSError(f"the answer is larger than {MAX_ANSWER} bytes")
            if not response.done:
                raise OSError("the connection closed before the answer was complete")
        except httptools.HttpParserError as exc:
            raise OSError(f"not an HTTP answer: {exc}") from None
        finally:
            writer.close()
    return NonceAnswer(leaf, nonce, parser.get_status_code(), bytes(response.body))


def _refused(reason: str, detail: str, now: float) -> AttestationVerdict:
    return AttestationVerdict(
        replica_id="endpoint", ok=False, reason=reason, at=now, detail=detail,
        mode="nonce", wall_at=now,
    )  # fmt: skip


def _document(answer: NonceAnswer) -> dict[str, Any]:
    """The endpoint's JSON; AttestationError when there is none to verify."""
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    if answer.status != 200 or not isinstance(doc, dict):
        said = doc.get("detail") or doc.get("error") if isinstance(doc, dict) else None
        raise AttestationError(
            "no_attestation_endpoint",
            f"the attestation endpoint answered {answer.status}" + (f": {said}" if said else ""),
        )
    return doc


def pinned_to(expect: Expectation, certificate: AttestationVerdict, nonce: bytes) -> Expectation:
    """The user's expectation, bound to the CVM the certificate proved (its instance, app and
    compose when the user gave none), plus our nonce."""
    compose = expect.allowed_compose_hashes
    if compose is None and certificate.compose_hash:
        compose = frozenset({certificate.compose_hash})
    return replace(
        expect,
        app_id=expect.app_id or certificate.app_id,
        instance_id=expect.instance_id or certificate.instance_id,
        allowed_compose_hashes=compose,
        report_data=router_report_data(nonce),
    )


async def verify_nonce_answer(
    answer: NonceAnswer,
    expect: Expectation,
    certificate: AttestationVerdict,
    collateral: CollateralStore | None,
    *,
    verifier: Verifier = "dcap",
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    wall_clock: Callable[[], float] = time.time,
) -> AttestationVerdict:
    """The nonce quote's verdict: every check of the gate, the nonce binding, and the same
    instance as the certificate (`wrong_instance` otherwise)."""
    now = wall_clock()
    try:
        doc = _document(answer)
        quote = decode_quote(doc.get("quote"))
        chosen = None
        if not simsig.is_simulated(parse_td_quote(quote).signature_data):
            if collateral is None:
                raise AttestationError("no_collateral", "give --collateral or --pccs-url")
            chosen = await collateral.get(quote)
    except AttestationError as exc:
        return _refused(exc.reason, exc.detail, now)
    verdict = verify_evidence(
        Evidence(quote, doc.get("event_log") or [], doc.get("vm_config")),
        pinned_to(expect, certificate, answer.nonce), replica_id="endpoint",
        collateral=chosen, now_unix=int(now), at=now, verifier=verifier,
        trusted_simulator_keys=trusted_simulator_keys,
    )  # fmt: skip
    return replace(verdict, mode="nonce")


def proven_fresh(verdict: AttestationVerdict) -> list[str]:
    """What the nonce quote proves, as lines under the certificate's."""
    if not verdict.ok:
        return [f"  fresh quote: FAIL  {verdict.reason}: {verdict.detail}".rstrip(": ")]
    return [
        "  fresh quote: PASS  made now for our nonce "
        "(report_data = sha512('phala-router/router-attestation/v1:' + nonce)), on the "
        f"verified TLS session, same instance {verdict.instance_id}, TCB {verdict.tcb_status}",
    ]
