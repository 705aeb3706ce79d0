"""Config of the local Phala Cloud simulator (`phala-router simulate -c sim.yaml`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.discovery.settings import normalise_app_id
from router.settings_types import Duration, Frozen

HealthKnob = int | Literal["hang", "reset"]
# Whole-replica behaviour at the gateway: "up" serves, "reset" accepts then closes at once,
# "hang" accepts and never answers.
ReplicaMode = Literal["up", "reset", "hang"]
# How a replica answers attestation requests (all three sources): "ok" a good quote;
# "tampered_quote" one bit flipped after signing; "wrong_instance" another instance's quote;
# "stale_nonce" a quote made for an earlier nonce (refused only in fresh mode); "hang" the
# fresh path and guest agent never answer; "missing" they answer 404. With either of the
# last two the Cloud API lists the instance without a quote. The attacks of issue 16:
# "other_app", "evil_os", "debug_td", "signer_seam", "local_key_provider", "garbage", "sgx"
# (see router.simulator.quotes.Tamper).
AttestationKnob = Literal[
    "ok", "tampered_quote", "wrong_instance", "stale_nonce", "hang", "missing",
    "other_app", "evil_os", "debug_td", "signer_seam", "local_key_provider", "garbage", "sgx",
]  # fmt: skip
FRESH_PATH = "/.well-known/phala-router/attest"  # router default `attestation.fresh.path`
DEFAULT_APP_ID = "5a1a0000000000000000000000000000000c10d5"


def check_instance_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", text):
        raise ValueError(f"{value!r} is not an instance_id: expected 40 hex digits")
    return text


def check_health(value: HealthKnob) -> HealthKnob:
    if isinstance(value, int) and not 100 <= value <= 599:
        raise ValueError(f"health {value} is not an HTTP status (100-599), 'hang' or 'reset'")
    return value


class SimReplicaConfig(Frozen):
    instance_id: str | None = None  # 40 hex; derived from the app_id and position when unset
    region: str = "us-east"
    node: str = "node-1"
    # Set either the compose file text (its sha256 becomes the hash) or the hash itself.
    app_compose: str | None = None
    compose_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    status: str = "running"  # "stopped" starts with its listener closed
    in_progress: bool = False
    mode: ReplicaMode = "up"
    health: HealthKnob = 200
    latency: Duration = 0.0  # added to every request but /health
    error_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of requests answered 500
    capacity: int | None = Field(None, ge=1)  # max concurrent requests; the rest queue
    instance_type: str = "tdx.small"
    attestation: AttestationKnob = "ok"

    _instance_id = field_validator("instance_id")(check_instance_id)
    _health_knob = field_validator("health")(check_health)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return value.strip()


class SimAppConfig(Frozen):
    """Another app of the same simulated cloud: its own app_id and replicas, served by the
    same Cloud API (and API key), gateway and quote signer."""

    app_id: str
    app_name: str = "sim-app"
    replicas: tuple[SimReplicaConfig, ...] = (SimReplicaConfig(),)

    @field_validator("app_id", mode="before")
    @classmethod
    def _app_id(cls, value: object) -> str:
        return normalise_app_id(value)


class SimulatorConfig(Frozen):
    app_id: str = DEFAULT_APP_ID
    app_name: str = "sim-app"
    # The simulator's own fake key; the router reads its copy from an env variable.
    api_key: str = "sim-api-key"
    base_domain: str = "sim.phala.local"
    tls: bool = False
    host: str = "127.0.0.1"
    # 0 = an ephemeral port; fixed ports make a long-running `simulate` easy to point at.
    api_port: int = Field(0, ge=0, le=65535)
    gateway_port: int = Field(0, ge=0, le=65535)
    control_port: int = Field(0, ge=0, le=65535)
    app_port: int = Field(8080, ge=1, le=65535)  # the port in `<instance_id>-<port>.<domain>`
    guest_agent_port: int = Field(8090, ge=1, le=65535)
    replicas: tuple[SimReplicaConfig, ...] = (SimReplicaConfig(),)
    # Requests per second the backend shared by all replicas (a database) can take.
    shared_backend_rps: float | None = Field(None, gt=0)
    retry_after: int = Field(1, ge=0)  # the Retry-After of an injected 429
    seed: int = 0  # error_rate draws are reproducible
    # Simulated TDX quotes (signed by the simulator's own key: INSECURE, for demos and
    # tests) from the Cloud API, each guest agent and each replica's `fresh_path`.
    attestation: bool = False
    fresh_path: str = Field(FRESH_PATH, pattern=r"^/[^?# ]*$")
    # A PEM EC P-256 key to sign quotes with, created when missing, so the public key to
    # trust stays the same across runs; unset = a new key every run.
    quote_key_file: Path | None = None
    # More apps in the same cloud, e.g. [{app_id: app_5e5e..., app_name: ui, replicas: [...]}]:
    # the Cloud API answers for each app_id with its own replicas. `app_id` and `replicas`
    # above are the first app.
    apps: tuple[SimAppConfig, ...] = ()

    @classmethod
    def demo(cls, **fields: object) -> SimulatorConfig:
        """The demo's cloud: 4 replicas in 3 regions, one of them stopped."""
        replicas = (
            SimReplicaConfig(region="us-east", node="node-us-1"),
            SimReplicaConfig(region="us-east", node="node-us-2"),
            SimReplicaConfig(region="eu-west", node="node-eu-1"),
            SimReplicaConfig(region="ap-southeast", node="node-ap-1", status="stopped"),
        )
        return cls.model_validate({"replicas": replicas, **fields})

    @field_validator("app_id", mode="before")
    @classmethod
    def _app_id(cls, value: object) -> str:
        return normalise_app_id(value)

    @model_validator(mode="after")
    def _apps_distinct(self) -> SimulatorConfig:
        ids = [self.app_id, *(app.app_id for app in self.apps)]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"apps: each app_id must be unique; repeated: {', '.join(repeated)}")
        return self

    @field_validator("quote_key_file")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            from router.simulator.quotes import read_key  # cryptography only when asked

            read_key(value)
        return value

    @field_validator("base_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        name = value.strip().strip(".").lower()
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", name):
            raise ValueError(f"{value!r} is not a domain name, e.g. sim.phala.local")
        return name


class ReplicaPatch(Frozen):
    """Knobs the control API may change on a live replica; unset fields stay as they are."""

    region: str | None = None
    compose_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    status: str | None = None
    in_progress: bool | None = None
    mode: ReplicaMode | None = None
    health: HealthKnob | None = None
    latency: Duration | None = None
    error_rate: float | None = Field(None, ge=0.0, le=1.0)
    capacity: int | None = Field(None, ge=0)  # 0 lifts the limit
    attestation: AttestationKnob | None = None

    _health = field_validator("health")(check_health)
