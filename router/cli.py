"""The `phala-router` command line. The only place that configures logging and exits."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import click
import yaml

from router import logs
from router.config import RouterConfig, load_config, redacted
from router.errors import ConfigError, RouterError

EXIT_CONFIG = 2


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"phala-router: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: str) -> RouterConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(f"invalid config {path}:\n{exc}", EXIT_CONFIG)


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
    except RouterError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return None


async def wait_for_signal(on_hangup: Callable[[], object] | None = None) -> None:
    """Until SIGTERM/SIGINT; SIGHUP calls `on_hangup` (reload) and keeps running."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await stop.wait()


log_options = [
    click.option(
        "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
    ),
    click.option("--log-format", default="text", type=click.Choice(["text", "json"])),
    click.option("--access-log/--no-access-log", default=False, help="one log line per request"),
]


def with_logging(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(log_options):
        func = option(func)
    return func


@click.group()
@click.version_option(package_name="phala-router")
def main() -> None:
    """A health- and attestation-aware router in front of Phala Cloud app replicas."""


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@with_logging
def serve(config_path: str, log_level: str, log_format: str, access_log: bool) -> None:
    """Run the router until SIGTERM/SIGINT, then drain gracefully."""
    logs.configure(log_level, log_format, access_log)
    config = load_or_exit(config_path)

    async def run() -> None:
        from router.app import RouterApp

        app = RouterApp(config, config_path=config_path, access_log_enabled=access_log)
        await app.start()
        try:
            await wait_for_signal(on_hangup=app.reload)
        finally:
            await app.stop()

    run_async(run)


@main.command("check-config")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of YAML")
def check_config(config_path: str, as_json: bool) -> None:
    """Validate a config and print the effective config (secrets redacted)."""
    config = load_or_exit(config_path)
    data = redacted(config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False))
    click.echo(f"# {config_path}: OK", err=True)


if __name__ == "__main__":
    main()
