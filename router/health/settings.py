"""Config of active and passive health checking (`health:`)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from router.settings_types import Duration, Frozen, PositiveDuration


class PassiveConfig(Frozen):
    """Outlier detection from live traffic, with Envoy's semantics."""

    enabled: bool = True
    # Failed upstream attempts in a row (connect error, reset, timeout, a gateway error or
    # retried status per proxy.retry_on; any other 5xx if count_5xx) that eject a replica.
    consecutive_failures: int = Field(5, ge=1)
    count_5xx: bool = True
    # An ejection lasts base_ejection x the replica's ejection count, at most max_ejection.
    base_ejection: PositiveDuration = 30.0
    max_ejection: PositiveDuration = 300.0
    # Never eject more than this share of replicas; one may always be ejected.
    max_ejected_percent: int = Field(50, ge=0, le=100)
    # An ejection count decays by one after the replica stays healthy this long.
    decay: PositiveDuration = 300.0


class HealthConfig(Frozen):
    """Active checks (`GET path` on every running replica) and the routing rules fed by them.
    With `enabled: false` replicas count as healthy and only passive checks apply."""

    enabled: bool = True
    # Appended to the replica's URL path prefix; sent with the replica's Host and TLS SNI.
    path: str = "/health"
    interval: PositiveDuration = 5.0
    # Used instead of `interval` while a replica is on its way to flipping state.
    unhealthy_interval: PositiveDuration = 1.0
    # Each delay is spread by +/- this percent so checks don't align.
    interval_jitter_percent: int = Field(10, ge=0, le=100)
    timeout: PositiveDuration = 2.0
    # A new replica is routable after its first pass; afterwards flips need these runs.
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(3, ge=1)
    # Status codes and ranges that pass, e.g. 200-299,304. Redirects are not followed.
    expected_status: str = "200-299"
    # A substring the body must contain (first 64 KiB).
    expected_body: str | None = None
    # Checks on the wire at once.
    max_concurrency: int = Field(64, ge=1)
    # Percent of healthy replicas below which routing ignores health (0 = off).
    panic_threshold: int = Field(0, ge=0, le=100)
    # Ramp a replica's weight from 10% to 100% over this long after it turns healthy.
    slow_start: Duration = 0.0
    passive: PassiveConfig = PassiveConfig()

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/', e.g. /health")
        return value

    @field_validator("expected_status")
    @classmethod
    def _status(cls, value: str) -> str:
        status_ranges(value)
        return value


def status_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """`200-299,304` -> ((200, 299), (304, 304)); raises ValueError naming the rule."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d{3})(?:\s*-\s*(\d{3}))?\s*", part)
        if not m:
            raise ValueError(f"{spec!r} is not a list of status codes or ranges, e.g. 200-299,304")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 100 <= low <= high <= 599:
            raise ValueError(f"{part.strip()!r}: status codes run 100-599, low before high")
        ranges.append((low, high))
    return tuple(ranges)
