"""The signature of simulated quotes: INSECURE, for local demos and tests only.

Real quotes are signed by Intel's quoting enclave; nobody can make those here. The
simulator signs its quotes the same way in shape (an ECDSA P-256 signature over the
header and TD report, followed by the raw public attestation key and a certification data
block), but the key is its own and the certification data is a marker instead of Intel's
certificate chain. The router trusts that only with `attestation.verifier:
insecure-simulator`, so a real deployment can never be fooled by it.

Signature data layout (after the u32 length): signature r||s (64) | public key x||y (64) |
u16 certification type | u32 size | marker.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from router.errors import AttestationError

# Not an Intel certification data type (those are 1-7): a verifier can tell at a glance.
SIMULATOR_CERT_TYPE = 0x5052
SIMULATOR_MARKER = b"phala-router insecure simulator quote; not Intel-signed"


def is_simulated(signature_data: bytes) -> bool:
    if len(signature_data) < 134:
        return False
    cert_type: int = struct.unpack_from("<H", signature_data, 128)[0]
    return cert_type == SIMULATOR_CERT_TYPE


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


def sign(signed: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The signature data block for a quote whose header+body is `signed`."""
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
    certification = struct.pack("<HI", SIMULATOR_CERT_TYPE, len(SIMULATOR_MARKER))
    return (
        r.to_bytes(32, "big")
        + s.to_bytes(32, "big")
        + public_key_bytes(key.public_key())
        + certification
        + SIMULATOR_MARKER
    )


def check(
    signed: bytes, signature_data: bytes, trusted_keys: frozenset[bytes] = frozenset()
) -> None:
    """Raise AttestationError('bad_signature') unless the simulator signature holds.

    `trusted_keys` (raw 64-byte public keys) pins the simulator; with none, nothing is
    trusted (the key embedded in a quote proves integrity only, not origin)."""
    if not is_simulated(signature_data):
        raise AttestationError("bad_signature", "not a simulator-signed quote")
    raw_key = signature_data[64:128]
    if raw_key not in trusted_keys:
        raise AttestationError("bad_signature", "signed by a simulator key that is not trusted")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_key)
        signature = encode_dss_signature(
            int.from_bytes(signature_data[:32], "big"), int.from_bytes(signature_data[32:64], "big")
        )
        public.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise AttestationError("bad_signature", "the simulator signature does not verify") from None
