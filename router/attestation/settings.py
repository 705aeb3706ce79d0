"""Config of attestation-gated admission (`attestation:`).

`mode` picks where a replica's quote comes from (`off` admits without attestation);
`verifier` picks who is trusted to sign it: `dcap` (Intel's chain through dcap-qvl) or
`insecure-simulator` (the local simulator's own key: for demos only, never production).
What a pass requires beyond Intel's signature: `os_measurements` (the OS, see
`measurements.py`), `app_id` (static discovery), `allowed_key_providers` / `kms_ids`,
`denied_advisories`; each check left unset is shown as `unchecked`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from router.attestation.measurements import OsMeasurement, read_measurements_file
from router.settings_types import Frozen, PositiveDuration

# The one list of Intel TCB statuses; the tuple is read from the type so they cannot drift
# (a Literal type cannot be built from a runtime tuple, so it is the other way round).
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
]
TCB_STATUSES: tuple[TcbStatus, ...] = get_args(TcbStatus)

DEFAULT_PCCS_URL = "https://pccs.phala.network"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
KEY_PROVIDERS = ("kms", "local", "local-sgx")


def _sha256_hexes(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    cleaned = []
    for value in values:
        v = value.strip().lower().removeprefix("0x")
        if not _HEX64.match(v):
            raise ValueError(f"{value!r} is not a {what} (64 hex characters, a sha256)")
        cleaned.append(v)
    return tuple(cleaned)


class CollateralConfig(Frozen):
    """Where Intel collateral (TCB info, QE identity, CRLs) comes from.

    `file` (a collateral JSON, or a JSON list of them) serves offline sites; otherwise it is
    fetched from `pccs_url` and cached per FMSPC in `cache_dir` until shortly before its
    `nextUpdate`."""

    pccs_url: str | None = DEFAULT_PCCS_URL
    cache_dir: Path | None = None
    file: Path | None = None

    @field_validator("pccs_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://pccs.phala.network")
        return value.rstrip("/") if value else value

    @field_validator("file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        try:
            data = json.loads(value.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(f"{str(value)!r} is not a readable collateral JSON file") from None
        entries = data if isinstance(data, list) else [data]
        if not entries or not all(isinstance(e, dict) and "tcb_info" in e for e in entries):
            raise ValueError(
                f"{str(value)!r} is not dcap-qvl collateral: expected an object with tcb_info, "
                "qe_identity, CRLs and issuer chains (or a list of them)"
            )
        return value


class FreshConfig(Frozen):
    """Where a replica answers `GET <path>?nonce=<64 hex>` (the quote-server sidecar).

    `port` None means the replica's own URL port (the sidecar is routed like the app)."""

    path: str = "/.well-known/phala-router/attest"
    port: int | None = Field(None, ge=1, le=65535)
    # A failed fetch is retried this many times (backoff doubling from retry_backoff, all
    # within the interval) before a replica that was passing is removed.
    retries: int = Field(2, ge=0, le=10)
    retry_backoff: PositiveDuration = 1.0
    # Env var holding a bearer token the quote server knows (`--token-env`): the router's
    # requests then skip its public per-client budget.
    token_env: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# "):
            raise ValueError(
                f"{value!r} must be a URL path starting with '/', without ?, # or spaces"
            )
        return value


class AttestationConfig(Frozen):
    mode: Literal["off", "cloud", "guest-agent", "fresh"] = "off"
    verifier: Literal["dcap", "insecure-simulator"] = "dcap"
    interval: PositiveDuration = 600.0
    # None = 2 x interval (a verdict survives one failed re-attestation round).
    max_age: PositiveDuration | None = None
    timeout: PositiveDuration = 10.0
    concurrency: int = Field(8, ge=1, le=256)
    # Empty = the compose hashes the Cloud API reports for this app.
    allowed_compose_hashes: tuple[str, ...] = ()
    allowed_tcb_statuses: tuple[TcbStatus, ...] = ("UpToDate",)
    # Intel advisories (e.g. INTEL-SA-00837) refused even at an allowed TCB status.
    denied_advisories: tuple[str, ...] = ()
    # Known-good {name, mrtd, rtmr0, rtmr1, rtmr2}; empty = the OS is not checked.
    os_measurements: tuple[OsMeasurement, ...] = ()
    # Read at load time and added to os_measurements (a YAML/JSON list of entries).
    os_measurements_file: Path | None = None
    # A LABEL check only: the os-image-hash event is written by guest code, not evidence.
    allowed_os_image_hashes: tuple[str, ...] = ()
    # The app every replica's quote must name (static discovery; phala discovery's app_id
    # is used when unset).
    app_id: str | None = None
    # Static discovery without app_id / per-replica instance_id: opt out, shown unchecked.
    allow_unbound: bool = False
    # The attested key-provider event must name one of these (dstack: kms, local, local-sgx).
    allowed_key_providers: tuple[str, ...] = ("kms",)
    # Pin the KMS: the key-provider id (hex of the KMS root CA's SPKI) must be one of these.
    kms_ids: tuple[str, ...] = ()
    collateral: CollateralConfig = CollateralConfig()
    fresh: FreshConfig = FreshConfig()
    # With verifier insecure-simulator: the simulator public keys (hex, as printed by
    # `phala-router simulate`) whose signatures are accepted instead of Intel's.
    simulator_public_keys: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _measurements_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        path, inline = data.get("os_measurements_file"), data.get("os_measurements") or []
        if not isinstance(path, str | Path) or not path or not isinstance(inline, list | tuple):
            return data  # absent, or a wrong type that field validation names
        entries = read_measurements_file(Path(path))
        return {**data, "os_measurements": [*inline, *entries]}

    @field_validator("app_id")
    @classmethod
    def _app_id(cls, value: str | None) -> str | None:
        if value is None:
            return value
        cleaned = value.strip().lower().removeprefix("0x")
        if not _HEX40.match(cleaned):
            raise ValueError(f"{value!r} is not an app id (40 hex characters)")
        return cleaned

    @field_validator("allowed_key_providers")
    @classmethod
    def _providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in KEY_PROVIDERS]
        if unknown or not value:
            raise ValueError(
                f"{unknown or 'empty'} not allowed; allowed key providers: {', '.join(KEY_PROVIDERS)}"
            )
        return value

    @field_validator("kms_ids")
    @classmethod
    def _kms_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(v.strip().lower().removeprefix("0x") for v in value)
        for original, v in zip(value, cleaned, strict=True):
            if not v or not all(c in "0123456789abcdef" for c in v):
                raise ValueError(
                    f"{original!r} is not a KMS id (hex, as in the key-provider event)"
                )
        return cleaned

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` as false.
        return "off" if value is False else value

    @field_validator("simulator_public_keys")
    @classmethod
    def _hex_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            try:
                bytes.fromhex(key)
            except ValueError:
                raise ValueError(f"{key[:16]!r}... is not a hex-encoded public key") from None
        return value

    @field_validator("allowed_compose_hashes")
    @classmethod
    def _compose(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _sha256_hexes(value, "compose hash")

    @field_validator("allowed_os_image_hashes")
    @classmethod
    def _os(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _sha256_hexes(value, "OS image hash")

    @model_validator(mode="after")
    def _consistent(self) -> AttestationConfig:
        if not self.allowed_tcb_statuses:
            raise ValueError(
                "attestation.allowed_tcb_statuses is empty: no quote could pass; allowed "
                f"values: {', '.join(TCB_STATUSES)}"
            )
        names = [m.name for m in self.os_measurements]
        if len(set(names)) != len(names):
            raise ValueError("attestation.os_measurements: entry names must be unique")
        if self.max_age is not None and self.max_age < self.interval:
            raise ValueError(
                f"attestation.max_age ({self.max_age:g}s) is shorter than attestation.interval "
                f"({self.interval:g}s): every verdict would expire before it is renewed"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def effective_max_age(self) -> float:
        return self.max_age if self.max_age is not None else 2 * self.interval
