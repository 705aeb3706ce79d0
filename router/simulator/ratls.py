"""Simulated RA-TLS replicas (INSECURE quotes): a CVM that ends TLS itself with a key whose
certificate carries a simulator-signed quote binding it, reached as through the gateway's
TLS passthrough (the router dials it directly via `connect_to`; no one in between holds a key).

`RaTlsServer` serves a tiny HTTP/1.1 app (any path: 200 `replica <name>`) and records every
byte it received after each handshake, so a test can prove a refused peer got nothing. Its
`behaviour` chooses the certificate (`ok`, `legacy` (.1/.2 extensions), `other_key` (the quote
binds another key), `other_instance` (another instance's genuine certificate), `plain` (a
CA-issued certificate without attestation: a man in the middle), `tampered` (one bit of the
quote flipped)); `rotate()` switches to a new
key and certificate for the next handshakes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.attestation.ratls_cert import attestation_extensions, binding_report_data, spki_der
from router.simulator.quotes import flip_bit, make_quote

Behaviour = Literal["ok", "legacy", "other_key", "other_instance", "plain", "tampered"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a simulated CVM is: the RTMR3 events its quotes carry."""

    app_id: str
    instance_id: str
    compose_hash: str


@dataclass
class SimCa:
    """A CA issuing leaves: the per-app CA of a KMS, or (for a MITM) one the router trusts."""

    name: str = "Dstack App CA (simulated)"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        if self.cert is None:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
            self.cert = (
                _builder(subject, subject, self.key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256())
            )

    def pem(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
    )


def ra_tls_certificate(
    identity: Identity,
    quote_key: ec.EllipticCurvePrivateKey,
    ca: SimCa,
    *,
    host: str = "localhost",
    behaviour: Behaviour = "ok",
    bind_to: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh leaf key and its certificate, issued by `ca`. The quote binds `bind_to`'s key
    when given (a certificate whose report_data binds another key), else the leaf's own."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    assert ca.cert is not None
    builder = _builder(subject, ca.cert.subject, key.public_key()).add_extension(
        x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False
    )
    if behaviour != "plain":
        bound = (bind_to or key).public_key()
        spki = bound.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        report_data = binding_report_data(spki)
        # The issuing CA plays the KMS root: the key-provider event names its SPKI.
        quote, events = make_quote(
            identity.app_id, identity.instance_id, identity.compose_hash, report_data,
            key=quote_key, kms_id=spki_der(ca.cert).hex(),
        )  # fmt: skip
        if behaviour == "tampered":
            quote = flip_bit(quote)  # one bit of report_data: the signature no longer holds
        for ext in attestation_extensions(quote, events, report_data, legacy=behaviour == "legacy"):
            builder = builder.add_extension(ext, critical=False)
    return key, builder.sign(ca.key, hashes.SHA256())


def load_chain(
    context: ssl.SSLContext, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]
) -> None:
    """Make `context` serve `key` and `chain` (leaf first) from its next handshake on."""
    with tempfile.TemporaryDirectory() as folder:
        key_path, cert_path = Path(folder) / "key.pem", Path(folder) / "chain.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        context.load_cert_chain(cert_path, key_path)


class _Http(asyncio.Protocol):
    """Records what arrives; answers each complete bodiless request head with 200."""

    def __init__(self, server: RaTlsServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass (the demo runs uvloop).
        self.transport = cast(asyncio.Transport, transport)
        self.server.handshakes += 1
        self.server.received.append(b"")

    def data_received(self, data: bytes) -> None:
        self.server.received[-1] += data
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            body = f"replica {self.server.name}".encode()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.server.requests += 1


class RaTlsServer:
    """One simulated RA-TLS endpoint on 127.0.0.1 (an ephemeral port)."""

    def __init__(
        self,
        name: str,
        identity: Identity,
        quote_key: ec.EllipticCurvePrivateKey,
        *,
        ca: SimCa | None = None,
        behaviour: Behaviour = "ok",
        impersonate: Identity | None = None,
        host: str = "localhost",
    ) -> None:
        self.name, self.identity, self.quote_key = name, identity, quote_key
        self.ca = ca or SimCa()
        self.host = host
        self.behaviour: Behaviour = behaviour
        # other_instance: a genuine certificate of this other CVM (its key leaked or relayed).
        self.impersonate = impersonate
        self.handshakes = 0
        self.requests = 0
        self.received: list[bytes] = []
        self.port = 0
        self.gateway_port = 0  # the passthrough that relays to it, when one does
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server: asyncio.Server | None = None
        self.rotate(behaviour)

    def rotate(self, behaviour: Behaviour | None = None) -> bytes:
        """A new key and certificate for the next handshakes; returns the new leaf's SPKI."""
        self.behaviour = behaviour or self.behaviour
        who = (
            self.impersonate
            if self.behaviour == "other_instance" and self.impersonate
            else self.identity
        )
        kind: Behaviour = "ok" if self.behaviour == "other_instance" else self.behaviour
        other = ec.generate_private_key(ec.SECP256R1()) if kind == "other_key" else None
        key, cert = ra_tls_certificate(
            who, self.quote_key, self.ca, host=self.host, behaviour=kind, bind_to=other
        )
        assert self.ca.cert is not None
        # Loaded into the listening context: each new handshake copies the current key.
        load_chain(self._context, key, [cert, self.ca.cert])
        self.leaf = cert
        return spki_der(cert)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Http(self), "127.0.0.1", 0, ssl=self._context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def bytes_after_handshake(self) -> int:
        return sum(len(chunk) for chunk in self.received)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
