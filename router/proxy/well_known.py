"""Answers the router gives itself on its public listeners, never routed to a replica.

`GET /.well-known/phala-router/attestation` is the router's own attestation (quote, event
log, app and compose, a nonce-bound quote on `?nonce=`): a client checks the router before
trusting what it forwards. The data plane only recognises the path and writes the answer;
what the answer says comes from an `AttestationEndpoint` handed in by the composition root
(`router.self_attestation`), so the engines import nothing from the attestation code.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Protocol

ATTESTATION_PATH: Final = "/.well-known/phala-router/attestation"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A complete response the router makes itself (small JSON bodies)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    def wire(self, *, head_only: bool, close: bool, request_id: str = "") -> bytes:
        """The HTTP/1.1 bytes (the fast engine writes them as they are)."""
        phrase = HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        if request_id:
            lines.append(f"X-Request-Id: {request_id}")
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


# What a client gets when making the answer raised (a bug; the endpoint catches its own errors).
FAILED_LOCALLY = LocalAnswer(500, b'{"error": "internal_error"}')


class AttestationEndpoint(Protocol):
    """What answers the attestation path (implemented by `router.self_attestation`)."""

    async def answer(self, method: str, target: str, client: str) -> LocalAnswer: ...


def is_attestation_target(target: str) -> bool:
    """True when a request target (path and query) names the attestation path."""
    if not target.startswith(ATTESTATION_PATH):
        return False
    rest = target[len(ATTESTATION_PATH) :]
    return not rest or rest[0] == "?"
