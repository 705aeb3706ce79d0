"""The attestation a dstack RA-TLS certificate carries, read from (and, for the simulator
and tests, written into) its X.509 extensions. Pure: no I/O, no clock.

dstack puts the attestation of the CVM that holds the certificate's key into the leaf,
under the OID prefix 1.3.6.1.4.1.62397.1.:

    .8  versioned attestation (dstack >= 0.5.9, the only one written then). First byte 0x00:
        "V0", SCALE: 00 | quote type u8 (0 = TDX) | quote Vec<u8> | event log Vec<{imr u32,
        event_type u32, digest Vec<u8>, event String, payload Vec<u8>}> | runtime events
        Vec<{event String, payload Vec<u8>}> | report_data [u8; 64] | config String.
        A msgpack map first byte is "V1" (named fields): not written by any release we know
        of, refused as `unsupported_format` (fail closed) until its layout is confirmed.
    .1  raw TDX quote, .2 event log JSON (dstack <= 0.5.8). Readers prefer .8.

Each payload is a DER OCTET STRING inside the extension value. Only RTMR3 can be replayed
from a certificate (boot events are left out); MRTD and RTMR0-2 are compared with the pinned
`os_measurements`. The key binding: report_data == sha512(b"ratls-cert:" + SPKI DER).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from router.attestation.eventlog import DSTACK_RUNTIME_EVENT
from router.errors import AttestationError

OID_PREFIX = "1.3.6.1.4.1.62397.1."
OID_QUOTE = x509.ObjectIdentifier(OID_PREFIX + "1")
OID_EVENT_LOG = x509.ObjectIdentifier(OID_PREFIX + "2")
OID_ATTESTATION = x509.ObjectIdentifier(OID_PREFIX + "8")
BINDING_PREFIX = b"ratls-cert:"
QUOTE_TYPE_TDX = 0
_MSGPACK_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


@dataclass(frozen=True, slots=True)
class CertAttestation:
    """What the leaf says about the CVM holding its key. `event_log` holds IMR-3 events only."""

    format: str  # "v0" (extension .8) or "legacy" (.1 + .2)
    quote: bytes
    event_log: tuple[dict[str, Any], ...]
    report_data: bytes | None
    vm_config: str | None
    spki_der: bytes


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def binding_report_data(spki: bytes) -> bytes:
    """The 64 bytes of report_data that bind a quote to this SubjectPublicKeyInfo DER."""
    return hashlib.sha512(BINDING_PREFIX + spki).digest()


def spki_digest(spki: bytes) -> str:
    return hashlib.sha256(spki).hexdigest()


# -- DER and SCALE --------------------------------------------------------------------------


def _unwrap_octet_string(value: bytes) -> bytes:
    """The contents of one DER OCTET STRING (tag 0x04) spanning all of `value`."""
    if len(value) < 2 or value[0] != 0x04:
        raise AttestationError("malformed_attestation", "an extension is not a DER OCTET STRING")
    length, at = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            raise AttestationError("malformed_attestation", "bad DER length in an extension")
        length, at = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    if at + length != len(value):
        raise AttestationError("malformed_attestation", "a DER OCTET STRING has the wrong length")
    return value[at:]


def _octet_string(payload: bytes) -> bytes:
    size = len(payload)
    if size < 0x80:
        return b"\x04" + bytes([size]) + payload
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(raw)]) + raw + payload


class _Scale:
    """A cursor over SCALE-encoded bytes (parity-scale-codec)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise AttestationError("malformed_attestation", "the V0 attestation is truncated")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def compact(self) -> int:
        first = self.take(1)[0]
        mode = first & 3
        if mode == 0:
            return first >> 2
        if mode == 1:
            return int(struct.unpack("<H", bytes([first]) + self.take(1))[0]) >> 2
        if mode == 2:
            return int(struct.unpack("<I", bytes([first]) + self.take(3))[0]) >> 2
        return int.from_bytes(self.take((first >> 2) + 4), "little")

    def blob(self) -> bytes:
        return self.take(self.compact())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError:
            raise AttestationError("malformed_attestation", "a V0 string is not UTF-8") from None

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])


def _compact(value: int) -> bytes:
    if value < 1 << 6:
        return bytes([value << 2])
    if value < 1 << 14:
        return struct.pack("<H", (value << 2) | 1)
    if value < 1 << 30:
        return struct.pack("<I", (value << 2) | 2)
    raw = value.to_bytes((value.bit_length() + 7) // 8, "little")
    return bytes([((len(raw) - 4) << 2) | 3]) + raw


def _blob(data: bytes) -> bytes:
    return _compact(len(data)) + data


# -- reading ------------------------------------------------------------------------------


def _runtime_event(name: str, payload: bytes) -> dict[str, Any]:
    return {"imr": 3, "event_type": DSTACK_RUNTIME_EVENT, "digest": "", "event": name,
            "event_payload": payload.hex()}  # fmt: skip


def decode_v0(data: bytes) -> tuple[bytes, tuple[dict[str, Any], ...], bytes, str]:
    """(quote, IMR-3 events, report_data, vm_config) from a V0 payload (first byte 0x00)."""
    cursor = _Scale(data)
    cursor.take(1)
    if (kind := cursor.take(1)[0]) != QUOTE_TYPE_TDX:
        raise AttestationError("not_tdx", f"the certificate's attestation is of type {kind}")
    quote = cursor.blob()
    logged = []
    for _ in range(cursor.compact()):
        imr, event_type = cursor.u32(), cursor.u32()
        cursor.blob()  # digest: emptied in certificates, recomputed from the payload
        name, payload = cursor.text(), cursor.blob()
        if imr == 3:
            logged.append({"imr": 3, "event_type": event_type, "digest": "", "event": name,
                           "event_payload": payload.hex()})  # fmt: skip
    runtime = [_runtime_event(cursor.text(), cursor.blob()) for _ in range(cursor.compact())]
    report_data = cursor.take(64)
    config = cursor.text()
    if cursor.at != len(data):
        raise AttestationError("malformed_attestation", "bytes left after the V0 attestation")
    # RTMR3 replays from the runtime events; the logged copy is the fallback.
    return quote, tuple(runtime or logged), report_data, config


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError("malformed_attestation", f"extension {oid.dotted_string} is known")
    return _unwrap_octet_string(value.value)


def _legacy_events(text: bytes) -> tuple[dict[str, Any], ...]:
    try:
        events = json.loads(text)
    except ValueError:
        raise AttestationError("malformed_event_log", "extension .1.2 is not JSON") from None
    if not isinstance(events, list):
        raise AttestationError("malformed_event_log", "extension .1.2 is not a JSON array")
    return tuple(e for e in events if isinstance(e, dict) and e.get("imr") == 3)


def read_attestation(leaf_der: bytes) -> CertAttestation:
    """The attestation of a DER leaf; AttestationError (`no_attestation`,
    `unsupported_format`, `malformed_attestation`, ...) when there is none to verify."""
    try:
        cert = x509.load_der_x509_certificate(leaf_der)
        spki = spki_der(cert)
        cert.extensions  # noqa: B018  parsed here: duplicate or malformed extensions raise
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError(
            "malformed_certificate", f"the peer certificate cannot be read: {exc}"
        ) from None
    versioned = _extension(cert, OID_ATTESTATION)
    if versioned is not None:
        if not versioned:
            raise AttestationError("malformed_attestation", "extension .1.8 is empty")
        if versioned[0] in _MSGPACK_MAP_FIRST:
            raise AttestationError(
                "unsupported_format", "a V1 (msgpack) attestation; only V0 (SCALE) is read"
            )
        if versioned[0] != 0:
            raise AttestationError("unsupported_format", f"attestation version {versioned[0]}")
        quote, events, report_data, config = decode_v0(versioned)
        return CertAttestation("v0", quote, events, report_data, config, spki)
    raw_quote = _extension(cert, OID_QUOTE)
    if raw_quote is None:
        raise AttestationError(
            "no_attestation", "the peer certificate carries no dstack attestation extension"
        )
    log = _extension(cert, OID_EVENT_LOG)
    events = _legacy_events(log) if log is not None else ()
    return CertAttestation("legacy", raw_quote, events, None, None, spki)


# -- writing (simulator, tests) -------------------------------------------------------------


def encode_v0(
    quote: bytes, events: list[dict[str, Any]], report_data: bytes, config: str = "{}"
) -> bytes:
    """A V0 payload as dstack writes it: IMR-3 events as runtime events, an empty log."""
    runtime = [e for e in events if e.get("imr") == 3]
    out = [b"\x00", bytes([QUOTE_TYPE_TDX]), _blob(quote), _compact(0), _compact(len(runtime))]
    for event in runtime:
        out.append(_blob(str(event["event"]).encode()))
        out.append(_blob(bytes.fromhex(event.get("event_payload") or "")))
    out.append(report_data.ljust(64, b"\0")[:64])
    out.append(_blob(config.encode()))
    return b"".join(out)


def attestation_extensions(
    quote: bytes, events: list[dict[str, Any]], report_data: bytes, *, legacy: bool = False
) -> list[x509.UnrecognizedExtension]:
    """The extensions to add to a leaf (non-critical, like dstack's)."""
    if legacy:
        runtime = [e for e in events if e.get("imr") == 3]
        return [
            x509.UnrecognizedExtension(OID_QUOTE, _octet_string(quote)),
            x509.UnrecognizedExtension(OID_EVENT_LOG, _octet_string(json.dumps(runtime).encode())),
        ]
    payload = encode_v0(quote, events, report_data)
    return [x509.UnrecognizedExtension(OID_ATTESTATION, _octet_string(payload))]
