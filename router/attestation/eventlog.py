"""TDX event logs: parse, recompute runtime digests, replay RTMR0-3, read dstack events.

Pure: no I/O. Both fixture formats are accepted: dstack's (`{imr, event_type, digest,
event, event_payload}`, digests of runtime events sometimes left empty) and the legacy
tappd one (same keys, every digest filled in, an extra `rootfs-hash` event).

A runtime event (type 0x08000001) has a digest we can recompute from its name and
payload; a filled-in digest that disagrees means someone edited the event after the fact.
Boot events (firmware, kernel) carry only their digest, which replay then checks as a whole.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.errors import AttestationError

DSTACK_RUNTIME_EVENT = 0x08000001
ZERO_MR = bytes(48)


@dataclass(frozen=True, slots=True)
class Event:
    imr: int
    event_type: int
    digest: bytes
    event: str
    payload: bytes


def runtime_event_digest(event_type: int, name: str, payload: bytes) -> bytes:
    """sha384(le_u32(type) || ":" || name || ":" || payload), as dstack extends RTMR3."""
    return hashlib.sha384(
        struct.pack("<I", event_type) + b":" + name.encode() + b":" + payload
    ).digest()


def _hex(value: Any, what: str, index: int) -> bytes:
    if value in (None, ""):
        return b""
    if not isinstance(value, str):
        raise AttestationError("malformed_event_log", f"event {index}: {what} is not a hex string")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise AttestationError("malformed_event_log", f"event {index}: {what} is not hex") from None


def parse_event_log(value: str | Sequence[Any]) -> tuple[Event, ...]:
    """A JSON string or list of events -> Events, runtime digests recomputed and checked."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise AttestationError("malformed_event_log", "the event log is not JSON") from None
    if not isinstance(value, list):
        raise AttestationError("malformed_event_log", "the event log is not a JSON array")
    events = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise AttestationError("malformed_event_log", f"event {index} is not an object")
        imr, event_type = item.get("imr"), item.get("event_type")
        if not isinstance(imr, int) or not 0 <= imr <= 3 or not isinstance(event_type, int):
            raise AttestationError(
                "malformed_event_log", f"event {index}: imr must be 0-3 and event_type an integer"
            )
        name = item.get("event") or ""
        if not isinstance(name, str):
            raise AttestationError("malformed_event_log", f"event {index}: event is not a string")
        payload = _hex(item.get("event_payload"), "event_payload", index)
        digest = _hex(item.get("digest"), "digest", index)
        if event_type == DSTACK_RUNTIME_EVENT:
            computed = runtime_event_digest(event_type, name, payload)
            if digest and digest != computed:
                raise AttestationError(
                    "event_digest_mismatch",
                    f"event {index} ({name!r}): its digest does not match its payload",
                )
            digest = computed
        elif len(digest) != 48:
            raise AttestationError(
                "malformed_event_log", f"event {index}: a boot event needs a 48-byte digest"
            )
        events.append(Event(imr, event_type, digest, name, payload))
    return tuple(events)


def replay_rtmrs(events: Sequence[Event]) -> tuple[bytes, bytes, bytes, bytes]:
    """mr = sha384(mr || digest) over every event of each IMR, in order, from 48 zeros."""
    mrs = [ZERO_MR] * 4
    for event in events:
        mrs[event.imr] = hashlib.sha384(mrs[event.imr] + event.digest).digest()
    return mrs[0], mrs[1], mrs[2], mrs[3]


def first_mismatch(
    events: Sequence[Event], rtmrs: Sequence[bytes], imrs: Sequence[int] = (0, 1, 2, 3)
) -> int | None:
    """The first RTMR index whose replay differs from the quote's value, else None."""
    replayed = replay_rtmrs(events)
    for i in imrs:
        if replayed[i] != rtmrs[i]:
            return i
    return None


@dataclass(frozen=True, slots=True)
class RuntimeClaims:
    """What dstack measured into RTMR3 at boot (hex strings, lower case)."""

    app_id: str | None = None
    compose_hash: str | None = None
    instance_id: str | None = None
    os_image_hash: str | None = None
    key_provider: str | None = None
    system_ready: bool = False


def runtime_claims(events: Sequence[Event]) -> RuntimeClaims:
    """Read the dstack boot events of RTMR3. Only the first of each name counts, and only
    before `system-ready`: the app may append events later, but it cannot re-declare these."""
    found: dict[str, str] = {}
    ready = False
    for event in events:
        if event.imr != 3 or event.event_type != DSTACK_RUNTIME_EVENT:
            continue
        if event.event == "system-ready":
            ready = True
            break
        if event.event in found:
            continue
        if event.event == "key-provider":
            found[event.event] = event.payload.decode("utf-8", "replace")
        else:
            found[event.event] = event.payload.hex()
    return RuntimeClaims(
        app_id=found.get("app-id"),
        compose_hash=found.get("compose-hash"),
        instance_id=found.get("instance-id"),
        os_image_hash=found.get("os-image-hash"),
        key_provider=found.get("key-provider"),
        system_ready=ready,
    )


def runtime_event(name: str, payload: bytes) -> dict[str, Any]:
    """One dstack RTMR3 event in the JSON form a replica returns (for the simulator)."""
    digest = runtime_event_digest(DSTACK_RUNTIME_EVENT, name, payload)
    return {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT,
        "digest": digest.hex(),
        "event": name,
        "event_payload": payload.hex(),
    }
