"""Simulated TDX quotes: structurally real, signed by the simulator's own key (INSECURE).

A simulated quote has the layout of an Intel TDX v4 quote (48-byte header, 584-byte TD
report with mr_td, rtmr0-3 and report_data at their real offsets, then the signature
data) and comes with a dstack-style event log that replays to its RTMRs, so the router's
event-log, binding and nonce checks run unchanged. Only the signature is fake: an ECDSA
P-256 signature by a key the simulator made up (see `router.attestation.simsig`), which
the router accepts only with `attestation.verifier: insecure-simulator`.

`SimulatedQuotes.provider` fits `Simulator.quote_provider`. How a replica misbehaves is its
`attestation` knob (`Simulator.set_attestation`, or the control API): a corrupted quote,
another instance's or app's quote, a stale nonce, an evil OS (other MRTD/RTMR0-2 with the
victim's RTMR3 events), a debug TD, a non-Intel TDX module, a `local` key provider,
garbage bytes, an SGX quote; "hang" and "missing" are handled by the servers,
which never ask for a quote then. `set_tamper` overrides the knob per instance, and is the
only way to serve a fixed quote (e.g. a real one from the fixtures).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation import simsig
from router.attestation.eventlog import parse_event_log, replay_rtmrs, runtime_event
from router.attestation.quote import fresh_report_data, parse_nonce

HEADER_VERSION = 4
ATTESTATION_KEY_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
SIMULATED_OS_IMAGE_HASH = hashlib.sha256(b"phala-router simulated dstack OS image").hexdigest()
EVIL_OS_IMAGE_HASH = hashlib.sha256(b"a host's modified OS image").hexdigest()
SIMULATED_KMS_ID = hashlib.sha256(b"phala-router simulated KMS root CA").hexdigest()


# Knobs under which a replica gives no quote at all (the servers answer for them).
SILENT_KNOBS = frozenset({"hang", "missing"})


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The EC P-256 key in a PEM file; None when the file does not exist yet (its folder
    must). ValueError says what is wrong with any other file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise ValueError(f"{str(path)!r}: folder {str(path.parent)!r} does not exist") from None
        return None
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{str(path)!r} is not an unencrypted PEM private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise ValueError(f"{str(path)!r} does not hold an EC P-256 key")
    return loaded


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The simulator's signing key from a PEM file, made (mode 0600) when it is missing, so
    the public key a router trusts survives restarts of `phala-router simulate`."""
    existing = read_key(path)
    if existing is not None:
        return existing
    key = new_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be written: {exc.strerror}") from None
    return key


def _boot_events(os_image_hash: str) -> list[dict[str, Any]]:
    """Stand-ins for firmware/kernel measurements (IMR 0-2), derived from the OS image so
    replicas on one image share RTMR0-2, as on real hardware."""
    events = []
    for imr, count in ((0, 3), (1, 2), (2, 2)):
        for index in range(count):
            digest = hashlib.sha384(f"{os_image_hash}/imr{imr}/{index}".encode()).hexdigest()
            events.append(
                {
                    "imr": imr,
                    "event_type": 0x80000001 + index,
                    "digest": digest,
                    "event": "",
                    "event_payload": "",
                }
            )
    return events


def _mr_td(boot_image: str) -> bytes:
    return hashlib.sha384(f"mr_td/{boot_image}".encode()).digest()


def simulated_os_measurement(
    name: str = "simulated-dstack", boot_image: str = SIMULATED_OS_IMAGE_HASH
) -> dict[str, str]:
    """The `attestation.os_measurements` entry simulated replicas on `boot_image` match."""
    rtmrs = replay_rtmrs(parse_event_log(_boot_events(boot_image)))
    return {
        "name": name,
        "mrtd": _mr_td(boot_image).hex(),
        **{f"rtmr{i}": rtmrs[i].hex() for i in range(3)},
    }


def event_log_for(
    app_id: str,
    instance_id: str,
    compose_hash: str,
    *,
    os_image_hash: str = SIMULATED_OS_IMAGE_HASH,
    boot_image: str | None = None,
    key_provider_name: str = "kms",
    app_events: tuple[tuple[str, bytes], ...] = (),
    kms_id: str = SIMULATED_KMS_ID,
) -> list[dict[str, Any]]:
    """The event log a dstack replica would return, in dstack's order. `boot_image` (by
    default `os_image_hash`) is what RTMR0-2 measure; RTMR3's os-image-hash event is only
    what guest code writes, so an evil OS can claim the victim's."""
    provider_id = kms_id if key_provider_name == "kms" else ""
    key_provider = json.dumps({"name": key_provider_name, "id": provider_id}, separators=(",", ":"))
    runtime = [
        ("system-preparing", b""),
        ("app-id", bytes.fromhex(app_id)),
        ("compose-hash", bytes.fromhex(compose_hash)),
        ("instance-id", bytes.fromhex(instance_id)),
        ("boot-mr-done", b""),
        ("os-image-hash", bytes.fromhex(os_image_hash)),
        ("key-provider", key_provider.encode()),
        ("system-ready", b""),
        *app_events,
    ]
    boot = _boot_events(boot_image or os_image_hash)
    return boot + [runtime_event(name, payload) for name, payload in runtime]


@dataclass(frozen=True, slots=True)
class Platform:
    """What the TDX module reports about the TD itself (dstack refuses anything but zeros)."""

    td_attributes: bytes = bytes(8)
    mr_signer_seam: bytes = bytes(48)


def _td_report(
    mr_td: bytes,
    rtmrs: tuple[bytes, bytes, bytes, bytes],
    report_data: bytes,
    platform: Platform,
) -> bytes:
    body = (
        bytes(16)  # tee_tcb_svn
        + hashlib.sha384(b"simulated TDX module").digest()  # mr_seam
        + platform.mr_signer_seam
        + bytes(8)  # seam_attributes
        + platform.td_attributes
        + struct.pack("<Q", 0x61E7)  # xfam
        + mr_td
        + bytes(48 * 3)  # mr_config_id, mr_owner, mr_owner_config
        + b"".join(rtmrs)
        + report_data
    )
    assert len(body) == 584
    return body


def make_quote(
    app_id: str,
    instance_id: str,
    compose_hash: str,
    report_data: bytes,
    *,
    key: ec.EllipticCurvePrivateKey,
    os_image_hash: str = SIMULATED_OS_IMAGE_HASH,
    boot_image: str | None = None,
    key_provider_name: str = "kms",
    platform: Platform = Platform(),
    kms_id: str = SIMULATED_KMS_ID,
) -> tuple[bytes, list[dict[str, Any]]]:
    """A simulator-signed TDX v4 quote and its event log (ids and hashes as hex strings).

    `report_data` is at most 64 bytes, zero-padded like dstack's GetQuote."""
    if len(report_data) > 64:
        raise ValueError("report_data is at most 64 bytes")
    events = event_log_for(
        app_id,
        instance_id,
        compose_hash,
        os_image_hash=os_image_hash,
        boot_image=boot_image,
        key_provider_name=key_provider_name,
        kms_id=kms_id,
    )
    rtmrs = replay_rtmrs(parse_event_log(events))
    mr_td = _mr_td(boot_image or os_image_hash)
    header = (
        struct.pack("<HHIHH", HEADER_VERSION, ATTESTATION_KEY_ECDSA_P256, TEE_TYPE_TDX, 0, 0)
        + INTEL_QE_VENDOR_ID
        + bytes(20)
    )
    signed = header + _td_report(mr_td, rtmrs, report_data.ljust(64, b"\0"), platform)
    signature = simsig.sign(signed, key)
    return signed + struct.pack("<I", len(signature)) + signature, events


def flip_bit(quote: bytes, offset: int = 568) -> bytes:
    """The quote with one bit of its signed body changed (default: in report_data)."""
    changed = bytearray(quote)
    changed[offset] ^= 0x01
    return bytes(changed)


class Tamper(StrEnum):
    """How a simulated replica misbehaves when asked for a quote."""

    NONE = "none"
    TAMPERED_QUOTE = "tampered_quote"  # one bit flipped after signing
    WRONG_INSTANCE = "wrong_instance"  # a genuine quote, but of another instance
    STALE_NONCE = "stale_nonce"  # replays a quote made for an earlier nonce
    OTHER_APP = "other_app"  # a genuine quote of the same compose under another app id
    EVIL_OS = "evil_os"  # other MRTD/RTMR0-2, the victim's RTMR3 events (os-image-hash too)
    DEBUG_TD = "debug_td"  # TD attributes with the DEBUG bit
    SIGNER_SEAM = "signer_seam"  # a TDX module not signed by Intel (mr_signer_seam != 0)
    LOCAL_KEY_PROVIDER = "local_key_provider"  # keys from `local`, not a KMS
    GARBAGE = "garbage"  # ten zero bytes instead of a quote
    SGX = "sgx"  # an SGX quote header (tee_type 0)
    FIXTURE = "fixture"  # serves a fixed quote (e.g. a real one from the fixtures)


OTHER_APP_ID = "0e" * 20
GARBAGE_QUOTE = b"\0" * 10
# Header of an SGX (tee_type 0) v3 quote followed by zeros: not a TD report at all.
SGX_QUOTE = struct.pack("<HHI", 3, ATTESTATION_KEY_ECDSA_P256, 0) + bytes(1100)


def tamper_of(replica: object) -> Tamper:
    """The Tamper named by a replica's `attestation` knob ("ok" and the rest: none)."""
    knob = getattr(replica, "attestation", "ok")
    try:
        return Tamper(knob)
    except ValueError:
        return Tamper.NONE


class QuoteSubject(Protocol):
    """What the provider reads from a simulated replica (an `app_id` attribute, when the
    replica has one, overrides the simulator-wide one; an `attestation` attribute names
    its Tamper unless `set_tamper` said otherwise)."""

    @property
    def instance_id(self) -> str: ...
    @property
    def compose_hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FixedQuote:
    quote_hex: str
    event_log: list[dict[str, Any]]


class SimulatedQuotes:
    """Signs quotes for simulated replicas; one key per simulator."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey | None = None, *, app_id: str | None = None
    ) -> None:
        self.key = key or new_key()
        self.app_id = app_id
        self._tamper: dict[str, Tamper] = {}
        self._fixed: dict[str, FixedQuote] = {}

    @property
    def public_key(self) -> bytes:
        """Raw 64-byte public key, for pinning in a verifier."""
        return simsig.public_key_bytes(self.key.public_key())

    def set_tamper(
        self, instance_id: str, tamper: Tamper, *, fixed: FixedQuote | None = None
    ) -> None:
        """Overrides the replica's own `attestation` knob; Tamper.NONE included."""
        self._tamper[instance_id] = tamper
        if tamper is Tamper.FIXTURE:
            if fixed is None:
                raise ValueError("Tamper.FIXTURE needs the fixed quote to serve")
            self._fixed[instance_id] = fixed

    def provider(
        self, replica: QuoteSubject, report_data: bytes
    ) -> tuple[str, list[dict[str, Any]]]:
        """`Simulator.quote_provider`: (quote as hex, event log) for `report_data`."""
        tamper = self._tamper.get(replica.instance_id) or tamper_of(replica)
        if tamper is Tamper.FIXTURE:
            fixed = self._fixed[replica.instance_id]
            return fixed.quote_hex, fixed.event_log
        instance_id = replica.instance_id
        if tamper is Tamper.WRONG_INSTANCE:
            instance_id = hashlib.sha1(instance_id.encode()).hexdigest()  # noqa: S324 - an id, not security
        if tamper is Tamper.STALE_NONCE:
            # A quote made for someone else's (earlier) nonce, replayed.
            report_data = fresh_report_data(b"\0" * 32)
        if tamper in (Tamper.GARBAGE, Tamper.SGX):
            junk = GARBAGE_QUOTE if tamper is Tamper.GARBAGE else SGX_QUOTE
            return junk.hex(), []
        app_id = getattr(replica, "app_id", None) or self.app_id
        if not app_id:
            raise ValueError("SimulatedQuotes needs app_id= when replicas carry none")
        quote, events = make_quote(
            OTHER_APP_ID if tamper is Tamper.OTHER_APP else app_id,
            instance_id,
            replica.compose_hash,
            report_data,
            key=self.key,
            boot_image=EVIL_OS_IMAGE_HASH if tamper is Tamper.EVIL_OS else None,
            key_provider_name="local" if tamper is Tamper.LOCAL_KEY_PROVIDER else "kms",
            platform=_PLATFORMS.get(tamper, Platform()),
        )
        if tamper is Tamper.TAMPERED_QUOTE:
            quote = flip_bit(quote)
        return quote.hex(), events


_PLATFORMS = {
    Tamper.DEBUG_TD: Platform(td_attributes=b"\x01" + bytes(7)),
    Tamper.SIGNER_SEAM: Platform(mr_signer_seam=hashlib.sha384(b"not Intel").digest()),
}
QuoteProvider = Callable[[Any, bytes], tuple[str, list[dict[str, Any]]]]
VM_CONFIG = json.dumps({"os_image_hash": SIMULATED_OS_IMAGE_HASH})


def app_key_report_data(instance_id: str) -> bytes:
    """What dstack's GetAttestationForAppKey binds: `dip1::secp256k1c-pk:` and the app's
    compressed public key (here a stand-in derived from the instance)."""
    stand_in = b"\x02" + hashlib.sha256(f"sim-app-key:{instance_id}".encode()).digest()
    return b"dip1::secp256k1c-pk:" + stand_in


def answer_guest_agent(provider: QuoteProvider, replica: Any) -> dict[str, Any]:
    """The guest agent's `POST /prpc/GetAttestationForAppKey` answer (body
    `{"algorithm": "secp256k1"}`): a quote bound to the app key, not to any nonce."""
    report_data = app_key_report_data(replica.instance_id)
    quote, events = provider(replica, report_data)
    return {
        "quote": quote,
        "event_log": json.dumps(events),
        "report_data": report_data.hex(),
        "vm_config": VM_CONFIG,
    }


def answer_fresh(
    provider: QuoteProvider, replica: Any, nonce_hex: str
) -> tuple[int, dict[str, Any]]:
    """What a simulated replica answers to `GET <attestation.fresh.path>?nonce=<hex>`, as
    (HTTP status, JSON body): the quote-server's contract, without a dstack socket."""
    try:
        nonce = parse_nonce(nonce_hex)
    except ValueError as exc:
        return 400, {"error": "bad_nonce", "detail": f"{exc}; send ?nonce=<64 hex characters>"}
    report_data = fresh_report_data(nonce)
    quote, events = provider(replica, report_data)
    return 200, {
        "quote": quote,
        "event_log": json.dumps(events),
        "report_data": report_data.hex(),
        "vm_config": VM_CONFIG,
    }
