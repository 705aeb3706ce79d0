"""Config of attestation-gated admission (`attestation:`)."""

from __future__ import annotations

from typing import Literal

from router.settings_types import Frozen


class AttestationConfig(Frozen):
    mode: Literal["off", "cloud", "guest-agent", "fresh"] = "off"
