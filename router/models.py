"""Frozen value types shared by the control plane, the data plane and the pure core.

Nothing here imports an I/O library: these are the nouns every other module speaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Replica:
    """One backend the router may send traffic to.

    `id` is stable across discovery passes (the Phala `instance_id`, else `vm_uuid`, or a
    static id). `host` is the name used for the Host header and TLS SNI; `port` is the TCP
    port of the URL (the dial address may differ: see `discovery.connect_to`).
    """

    id: str
    url: str
    scheme: str
    host: str
    port: int
    path_prefix: str = ""
    region: str | None = None
    weight: int = 100
    # Platform view: only "running" replicas are candidates for traffic.
    platform_status: str = "running"
    app_id: str | None = None
    compose_hash: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def authority(self) -> str:
        """The Host header value: the port is omitted when it is the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    @property
    def is_candidate(self) -> bool:
        return self.platform_status == "running"


class ReplicaState(StrEnum):
    """Why a replica does (or does not) take traffic; `platform:<status>` is built from
    the Cloud API status and is not a member."""

    PENDING = "pending"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"
    UNATTESTED = "unattested"
    INACTIVE = "inactive"  # routable but left out by the admin active-limit


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one active health check."""

    at: float
    ok: bool
    status: int | None = None
    error: str | None = None
    latency: float | None = None


@dataclass(frozen=True, slots=True)
class AttestationVerdict:
    """The outcome of one attestation attempt for one replica.

    `reason` is a short machine code (`ok`, `bad_signature`, `tcb_status:OutOfDate`,
    `rtmr_mismatch:3`, `wrong_instance`, `compose_not_allowed`, `stale_nonce`,
    `fetch_failed`, `no_collateral`, ...); `detail` is the human sentence.
    """

    replica_id: str
    ok: bool
    reason: str
    at: float
    detail: str = ""
    mode: str = ""
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    app_id: str | None = None
    instance_id: str | None = None
    compose_hash: str | None = None
    os_image_hash: str | None = None
    quote_digest: str | None = None
    # What the quote measures: MRTD, RTMR0, RTMR1, RTMR2 (hex), and the os_measurements
    # entry they matched (None: not checked or no match).
    measurements: tuple[str, ...] = ()
    os_measurement: str | None = None
    key_provider: str | None = None
    # (check, state) for os, app, instance, compose, key_provider, fresh; state is ok,
    # failed, unchecked (not configured / not possible in this mode) or not_reached.
    checks: tuple[tuple[str, str], ...] = ()
    # Wall-clock (Unix) time of the attempt, for display; `at` is the monotonic clock.
    wall_at: float | None = None


class Clock(Protocol):
    """Monotonic seconds; injected so time-dependent logic is testable."""

    def __call__(self) -> float: ...


@dataclass(frozen=True, slots=True)
class HealthView:
    """What health checking says about one replica right now (built by `router.health`)."""

    state: ReplicaState = ReplicaState.PENDING  # PENDING, HEALTHY or UNHEALTHY
    last_check: CheckResult | None = None
    ejected_until: float | None = None
    ejections: int = 0
    healthy_since: float | None = None
