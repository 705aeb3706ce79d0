"""Shared by the CLI modules: exit statuses, one-line failures, and running a coroutine.

Exit status: 2 for anything the operator must fix before the router can start (config,
credentials, a port in use), 1 for other failures, 3 for `attest` verdicts that fail.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import click

from router.config import RouterConfig, load_config
from router.errors import ConfigError, DiscoveryAuthError, RouterError, StartupError

# Exit status: 2 for anything the operator must fix before the router can start (config,
# credentials, a port in use), 1 for other failures, 3 for `attest` verdicts that fail.
EXIT_CONFIG = 2


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"phala-router: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: str) -> RouterConfig:
    from router.config_source import legacy_overrides

    for name in legacy_overrides(os.environ):
        click.echo(
            f"phala-router: warning: {name} is not read (overrides are PHALA_ROUTER_*); "
            f"rename it to PHALA_{name}",
            err=True,
        )
    try:
        return load_config(path)
    except ConfigError as exc:
        from router.config_check import simulator_hint

        hint = simulator_hint(path)
        fail(hint or f"invalid config {path}:\n{exc}", EXIT_CONFIG)


def run_async(main: Callable[[], Awaitable[Any]]) -> Any:
    """asyncio.run on uvloop when installed; RouterErrors become one clean line."""
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(main())
    except ConfigError as exc:
        fail(f"invalid config:\n{exc}", EXIT_CONFIG)
    except (StartupError, DiscoveryAuthError) as exc:
        fail(str(exc), EXIT_CONFIG)
    except RouterError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return None
