"""Known-good OS measurements (`attestation.os_measurements`): what proves the OS image.

MRTD and RTMR0-2 are written by the TDX module, the firmware and the boot chain before any
guest code runs; RTMR3 is written by guest code and so only tells the truth when MRTD and
RTMR0-2 are those of a known dstack image. Replaying RTMR0-2 from the event log only shows
that the log matches the quote, so a replica passes the `os` check only when its MRTD and
RTMR0-2 equal one named entry here (values as `dstack-mr` and Phala's trust-center print
them). RTMR0/1 depend on the VM shape (CPUs, memory), so one image may need several entries.

Entries come inline or from a YAML/JSON file (`os_measurements_file`, a list of entries);
`entry_for_quote` prints what a running replica measures as a ready-to-paste entry (trust
on first use: review it before pinning it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from router.settings_types import Frozen

_HEX96 = re.compile(r"^[0-9a-f]{96}$")
MEASURED_FIELDS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")


class OsMeasurement(Frozen):
    """One known-good boot: a dstack OS image on one VM shape."""

    name: str = Field(min_length=1, max_length=200)
    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str

    @field_validator("mrtd", "rtmr0", "rtmr1", "rtmr2")
    @classmethod
    def _sha384(cls, value: str) -> str:
        cleaned = value.strip().lower().removeprefix("0x")
        if not _HEX96.match(cleaned):
            raise ValueError(
                f"{value[:24]!r}... is not a measurement (96 hex characters, 48 bytes)"
            )
        return cleaned

    def matches(self, measured: Sequence[str]) -> bool:
        return (self.mrtd, self.rtmr0, self.rtmr1, self.rtmr2) == tuple(measured)


def read_measurements_file(path: Path) -> list[Any]:
    """The list of entries in a YAML or JSON file; ValueError names what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"{str(path)!r} is not YAML or JSON") from None
    if isinstance(data, dict) and "os_measurements" in data:
        data = data["os_measurements"]
    if not isinstance(data, list):
        raise ValueError(
            f"{str(path)!r} must hold a list of {{name, mrtd, rtmr0, rtmr1, rtmr2}} entries"
        )
    return data


def matching_entry(
    entries: Sequence[OsMeasurement], measured: Sequence[str]
) -> OsMeasurement | None:
    return next((entry for entry in entries if entry.matches(measured)), None)


def entry_for_quote(name: str, measured: Sequence[str]) -> dict[str, str]:
    """A ready-to-paste `os_measurements` entry for what a replica measures."""
    return {"name": name, **dict(zip(MEASURED_FIELDS, measured, strict=True))}


def render_entries(entries: Sequence[dict[str, str]]) -> str:
    """YAML for `attestation.os_measurements:` (JSON-compatible strings, one key a line)."""
    lines = ["os_measurements:"]
    for entry in entries:
        first = True
        for key, value in entry.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {json.dumps(value)}")
            first = False
    return "\n".join(lines)
