"""What the simulated Phala Cloud knows: its apps and each replica's live, mutable state.

The Cloud API, the gateway, the replicas' servers and the control API all read these
objects, so a knob turned at run time takes effect on the next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.simulator.settings import (
    FRESH_PATH,
    AttestationKnob,
    HealthKnob,
    ReplicaMode,
    SimReplicaConfig,
)

# (replica, report_data) -> (quote hex, event log); None answers `quote: null`.
QuoteProvider = Callable[["SimReplica", bytes], tuple[str, list[dict[str, Any]]]]


def default_compose(app_name: str) -> str:
    # The exact string is what gets hashed (see PHALA.md 3): keep it stable.
    return json.dumps(
        {
            "manifest_version": 2,
            "name": app_name,
            "runner": "docker-compose",
            "docker_compose_file": "services:\n  app:\n    image: sim/app:1\n",
            "public_tcbinfo": True,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(eq=False)
class SimReplica:
    """One simulated CVM. `up` says whether its servers are listening."""

    instance_id: str
    vm_uuid: str
    cvm_id: str
    region: str
    node: str
    node_id: int
    app_compose: str
    compose_hash: str
    status: str
    in_progress: bool
    mode: ReplicaMode
    health: HealthKnob
    latency: float
    error_rate: float
    capacity: int | None
    instance_type: str
    rng: random.Random
    attestation: AttestationKnob = "ok"
    app_id: str = ""  # the app this CVM belongs to (the simulator may host several)
    app_name: str = ""
    created_at: float = field(default_factory=time.time)
    app_port: int | None = None  # the local port of its app server while up
    agent_port: int | None = None  # the local port of its guest agent while up
    served: int = 0  # requests answered by the app (not /health)
    in_flight: int = 0
    _slots: asyncio.Semaphore | None = None
    _slots_for: int | None = None

    @classmethod
    def from_config(
        cls, cfg: SimReplicaConfig, app_id: str, app_name: str, seq: int, seed: int
    ) -> SimReplica:
        instance_id = (
            cfg.instance_id
            or hashlib.sha1(f"{app_id}:instance:{seq}".encode(), usedforsecurity=False).hexdigest()
        )
        compose = cfg.app_compose or default_compose(app_name)
        return cls(
            instance_id=instance_id,
            vm_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-cvm:{instance_id}")),
            cvm_id=hashlib.sha256(instance_id.encode()).hexdigest()[:20],
            region=cfg.region,
            node=cfg.node,
            node_id=zlib.crc32(cfg.node.encode()) % 1000,
            app_compose=compose,
            compose_hash=cfg.compose_hash or sha256_hex(compose),
            status=cfg.status,
            in_progress=cfg.in_progress,
            mode=cfg.mode,
            health=cfg.health,
            latency=cfg.latency,
            error_rate=cfg.error_rate,
            capacity=cfg.capacity,
            instance_type=cfg.instance_type,
            rng=random.Random(seed * 1_000_003 + seq),
            attestation=cfg.attestation,
            app_id=app_id,
            app_name=app_name,
        )

    @property
    def up(self) -> bool:
        return self.app_port is not None

    @property
    def slots(self) -> asyncio.Semaphore | None:
        """The queue that models `capacity`; rebuilt when the knob changes."""
        if self.capacity is None:
            return None
        if self._slots is None or self._slots_for != self.capacity:
            self._slots = asyncio.Semaphore(self.capacity)
            self._slots_for = self.capacity
        return self._slots

    def describe(self) -> dict[str, Any]:
        """The control API's view of this replica."""
        return {
            "instance_id": self.instance_id,
            "app_id": self.app_id,
            "vm_uuid": self.vm_uuid,
            "region": self.region,
            "node": self.node,
            "compose_hash": self.compose_hash,
            "status": self.status,
            "in_progress": self.in_progress,
            "up": self.up,
            "mode": self.mode,
            "health": self.health,
            "latency": self.latency,
            "error_rate": self.error_rate,
            "capacity": self.capacity,
            "served": self.served,
            "in_flight": self.in_flight,
            "attestation": self.attestation,
        }


class TokenBucket:
    """The backend all replicas share (a database): `rate` requests per second, a burst of
    a tenth of a second. Waiters reserve a slot and sleep until it comes, so they are
    served in arrival order without a polling loop."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._burst = max(1.0, rate / 10)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    async def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        if self._tokens < 0:
            # Simulated service time of the shared backend, not a wait for a condition.
            await asyncio.sleep(-self._tokens / self.rate)


@dataclass
class SimContext:
    """What every part of the simulator needs to know about the app."""

    app_id: str
    app_name: str
    api_key: str
    base_domain: str
    app_port: int
    guest_agent_port: int
    retry_after: int
    tls: bool
    replicas: dict[str, SimReplica] = field(default_factory=dict)
    shared_backend: TokenBucket | None = None
    quote_provider: QuoteProvider | None = None
    fresh_path: str = FRESH_PATH  # where replicas answer `attestation.mode: fresh`
    api_mode: str = "ok"  # set by break_api
    api_unblocked: asyncio.Event = field(default_factory=asyncio.Event)
    api_requests: int = 0
    # Every app this cloud hosts: app_id -> app name (the first is app_id/app_name).
    apps: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.api_unblocked.set()
        self.apps.setdefault(self.app_id, self.app_name)

    def replicas_of(self, app_id: str) -> list[SimReplica]:
        return [r for r in self.replicas.values() if (r.app_id or self.app_id) == app_id]

    def host_of(self, replica: SimReplica, port: int) -> str:
        return f"{replica.instance_id}-{port}.{self.base_domain}"

    def find(self, ident: str) -> SimReplica | None:
        """A replica by instance_id, vm_uuid, cvm id or a unique instance_id prefix."""
        ident = ident.lower()
        if ident in self.replicas:
            return self.replicas[ident]
        for replica in self.replicas.values():
            if ident in (replica.vm_uuid, replica.cvm_id):
                return replica
        matches = [r for r in self.replicas.values() if r.instance_id.startswith(ident)]
        return matches[0] if len(matches) == 1 and len(ident) >= 4 else None
