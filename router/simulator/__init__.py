"""A local Phala Cloud: Cloud API, dstack-like gateway, replicas and a control API.

Used in-process by tests, the demo and benchmarks, or alone as `phala-router simulate`.
Nothing in `router/` imports this package except the CLI's `demo` and `simulate` commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from router.config_source import format_validation_error, load_yaml
from router.errors import ConfigError
from router.simulator.cloud_api import API_MODES
from router.simulator.core import Simulator
from router.simulator.settings import (
    AttestationKnob,
    ReplicaPatch,
    SimAppConfig,
    SimReplicaConfig,
    SimulatorConfig,
)
from router.simulator.state import QuoteProvider, SimReplica

__all__ = [
    "API_MODES",
    "AttestationKnob",
    "QuoteProvider",
    "ReplicaPatch",
    "SimAppConfig",
    "SimReplica",
    "SimReplicaConfig",
    "Simulator",
    "SimulatorConfig",
    "load_simulator_config",
    "run_simulator",
]


async def run_simulator(
    config: SimulatorConfig, ready: Callable[[Simulator], None] | None = None
) -> None:
    """Run a simulator until cancelled; `ready` is called once everything listens."""
    sim = Simulator(config)
    try:
        await sim.start()
        if ready is not None:
            ready(sim)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await sim.stop()


def load_simulator_config(path: str | Path) -> SimulatorConfig:
    """A simulator YAML file -> SimulatorConfig; ConfigError names each bad field."""
    file = Path(path)
    try:
        data = load_yaml(file.read_text(encoding="utf-8"), str(file))
    except OSError as exc:
        raise ConfigError(f"cannot read simulator config {str(file)!r}: {exc.strerror}") from None
    try:
        return SimulatorConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
