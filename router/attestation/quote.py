"""The fields of a TDX quote the router checks, read at their documented offsets.

Pure: no I/O. Cryptographic verification is dcap-qvl's job (`verify.py`); this module only
locates the measured values, so it also reads the simulator's structurally real quotes.

Layout (Intel TDX DCAP quote v4): a 48-byte header, then the 584-byte TD report body, then
a little-endian u32 length and the signature data. v5 inserts a u16 body type and a u32
body size before the body. Inside the body: mr_td at +136, rtmr[i] at +328+48*i,
report_data at +520 (so 184, 376+48*i and 568 in a v4 quote); mr_signer_seam at +64 and
td_attributes at +120 (bit 0: a debug TD, whose memory the host can read).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from router.errors import AttestationError

HEADER_LEN = 48
TD10_BODY_LEN = 584
TD15_BODY_LEN = 648
TEE_TYPE_TDX = 0x81
TEE_TYPE_SGX = 0x00

_MR_SIGNER_SEAM = 64
_TD_ATTRIBUTES = 120
_MR_TD = 136
TD_ATTRIBUTE_DEBUG = 0x01
_RTMR0 = 328
_REPORT_DATA = 520


@dataclass(frozen=True, slots=True)
class TdQuote:
    """What a TDX quote measures; `signed` is the header+body the signature covers."""

    version: int
    tee_type: int
    mr_td: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    signed: bytes
    signature_data: bytes
    mr_signer_seam: bytes = bytes(48)
    td_attributes: bytes = bytes(8)

    @property
    def is_debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTRIBUTE_DEBUG)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.signed + self.signature_data).hexdigest()


def quote_digest(raw: bytes) -> str:
    """sha256 of the raw quote: the key of the verdict cache."""
    return hashlib.sha256(raw).hexdigest()


def parse_td_quote(raw: bytes) -> TdQuote:
    """Parse a TDX v4/v5 quote; raises AttestationError `not_tdx` or `malformed_quote`."""
    if len(raw) < HEADER_LEN + 4:
        raise AttestationError("malformed_quote", f"{len(raw)} bytes is too short for a quote")
    version, _key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    if tee_type != TEE_TYPE_TDX:
        kind = "an SGX" if tee_type == TEE_TYPE_SGX else f"a tee_type {tee_type:#x}"
        raise AttestationError("not_tdx", f"{kind} quote (version {version}); only TDX is admitted")
    if version == 4:
        body_at, body_len = HEADER_LEN, TD10_BODY_LEN
    elif version == 5:
        if len(raw) < HEADER_LEN + 6:
            raise AttestationError("malformed_quote", "truncated v5 body descriptor")
        body_type, body_len = struct.unpack_from("<HI", raw, HEADER_LEN)
        if body_type not in (2, 3) or body_len not in (TD10_BODY_LEN, TD15_BODY_LEN):
            raise AttestationError(
                "malformed_quote",
                f"v5 body type {body_type} of {body_len} bytes is not a TD report",
            )
        body_at = HEADER_LEN + 6
    else:
        raise AttestationError("malformed_quote", f"quote version {version}; expected 4 or 5")
    end = body_at + body_len
    if len(raw) < end + 4:
        raise AttestationError("malformed_quote", f"{len(raw)} bytes is shorter than the TD report")
    (sig_len,) = struct.unpack_from("<I", raw, end)
    if len(raw) < end + 4 + sig_len:
        raise AttestationError("malformed_quote", "signature data runs past the end of the quote")
    body = raw[body_at:end]
    rtmrs = tuple(body[_RTMR0 + 48 * i : _RTMR0 + 48 * (i + 1)] for i in range(4))
    return TdQuote(
        version=version,
        tee_type=tee_type,
        mr_td=body[_MR_TD : _MR_TD + 48],
        rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
        report_data=body[_REPORT_DATA : _REPORT_DATA + 64],
        signed=raw[:end],
        signature_data=raw[end + 4 : end + 4 + sig_len],
        mr_signer_seam=body[_MR_SIGNER_SEAM : _MR_SIGNER_SEAM + 48],
        td_attributes=body[_TD_ATTRIBUTES : _TD_ATTRIBUTES + 8],
    )


def decode_quote(value: object) -> bytes:
    """A quote as sources deliver it (hex string, optionally 0x-prefixed, or bytes)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip().removeprefix("0x")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise AttestationError("malformed_quote", "the quote is not hex") from None
    raise AttestationError("malformed_quote", f"expected a hex quote, got {type(value).__name__}")


FRESH_PREFIX = b"phala-router/attest/v1:"
NONCE_LEN = 32


def fresh_report_data(nonce: bytes) -> bytes:
    """The 64-byte report_data a replica must put in a quote answering `nonce` (fresh mode)."""
    return hashlib.sha512(FRESH_PREFIX + nonce).digest()


def parse_nonce(text: str) -> bytes:
    """A nonce as sent on the wire: exactly 64 hex characters (32 bytes)."""
    if len(text) != 2 * NONCE_LEN:
        raise ValueError(f"nonce must be {2 * NONCE_LEN} hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("nonce must be hex (0-9, a-f)") from None


# The router's own attestation endpoint (`GET /.well-known/phala-router/attestation?nonce=`):
# a prefix of its own, so a quote asked of a router can never pass as a replica's fresh quote.
ROUTER_NONCE_PREFIX = b"phala-router/router-attestation/v1:"
ROUTER_NONCE_MIN, ROUTER_NONCE_MAX = 16, 64  # bytes
_HEX = re.compile(r"[0-9a-fA-F]*")


def router_report_data(nonce: bytes) -> bytes:
    """The report_data of the router's quote for a client's `nonce` (b"": the cached quote)."""
    return hashlib.sha512(ROUTER_NONCE_PREFIX + nonce).digest()


def parse_router_nonce(text: str) -> bytes:
    """A client's nonce: 32 to 128 hex characters (16 to 64 bytes); ValueError says so."""
    low, high = 2 * ROUTER_NONCE_MIN, 2 * ROUTER_NONCE_MAX
    if not low <= len(text) <= high or len(text) % 2:
        raise ValueError(
            f"nonce must be an even number of {low} to {high} hex characters, got {len(text)}"
        )
    if not _HEX.fullmatch(text):  # bytes.fromhex would also take spaces
        raise ValueError("nonce must be hex (0-9, a-f)")
    return bytes.fromhex(text)
