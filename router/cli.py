"""The `phala-router` command line. The only place that configures logging and exits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

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
    click.option(
        "--access-log-format",
        type=click.Choice(["text", "json", "combined"]),
        default=None,
        expose_value=False,
        callback=lambda ctx, param, value: logs.set_access_format(value),
        help="access log lines: like --log-format (default), JSON, or NCSA combined",
    ),
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

    from router.workers import WorkerLink, run_workers, worker_count

    def run_one(worker: WorkerLink) -> None:
        async def run() -> None:
            from router.app import RouterApp

            app = RouterApp(
                config, config_path=config_path, access_log_enabled=access_log, worker=worker
            )
            await app.start()
            try:
                await wait_for_signal(on_hangup=app.reload)
            finally:
                await app.stop()

        run_async(run)

    # proxy.workers > 1: one full router per process on SO_REUSEPORT (see router/workers.py).
    run_workers(worker_count(config), run_one)


@main.command("check-config")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of YAML")
def check_config(config_path: str, as_json: bool) -> None:
    """Validate a config and print the effective config (secrets redacted)."""
    config = load_or_exit(config_path)
    from router.app import policy_from_config

    try:
        policy_from_config(config)  # sticky keys and GeoIP files are checked here
    except ConfigError as exc:
        fail(f"invalid config {config_path}:\n{exc}", EXIT_CONFIG)
    data = redacted(config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False))
    click.echo(f"# {config_path}: OK", err=True)


@main.command()
@click.option(
    "--port", default=8080, show_default=True, help="router port (an ephemeral one if busy)"
)
@click.option("--admin-port", default=9090, show_default=True)
@click.option(
    "--policy", default="round_robin", type=click.Choice(["round_robin", "geo", "least_request"])
)
@click.option(
    "--attestation", default="off", type=click.Choice(["off", "cloud", "guest-agent", "fresh"])
)
@with_logging
def demo(
    port: int,
    admin_port: int,
    policy: str,
    attestation: str,
    log_level: str,
    log_format: str,
    access_log: bool,
) -> None:
    """The router in front of a simulated Phala Cloud (no account needed)."""
    logs.configure(log_level, log_format, access_log)
    from router.demo import run_demo

    run_async(
        lambda: run_demo(port=port, admin_port=admin_port, policy=policy, attestation=attestation)
    )


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@with_logging
def simulate(config_path: str, log_level: str, log_format: str, access_log: bool) -> None:
    """Run a local Phala Cloud (Cloud API, gateway, replicas) until Ctrl-C."""
    logs.configure(log_level, log_format, access_log)
    from router.simulator import load_simulator_config, run_simulator

    try:
        sim_config = load_simulator_config(config_path)
    except ConfigError as exc:
        fail(f"invalid simulator config {config_path}:\n{exc}", EXIT_CONFIG)

    async def run() -> None:
        simulator = asyncio.ensure_future(
            run_simulator(sim_config, ready=lambda sim: click.echo(sim.banner()))
        )
        signalled = asyncio.ensure_future(wait_for_signal())
        # Whichever ends first: a signal, or the simulator failing (e.g. a port in use).
        await asyncio.wait({simulator, signalled}, return_when=asyncio.FIRST_COMPLETED)
        for task in (simulator, signalled):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signalled
        try:
            await simulator
        except asyncio.CancelledError:
            pass
        except OSError as exc:
            raise RouterError(f"the simulator could not start: {exc}") from None

    run_async(run)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def replicas(config_path: str, as_json: bool) -> None:
    """One discovery pass, printed as a table (or JSON)."""
    logs.configure("warning")
    config = load_or_exit(config_path)
    from router.discovery.table import render_table, replica_rows
    from router.oneshot import discover_once

    found = run_async(lambda: discover_once(config, os.environ))
    if as_json:
        click.echo(json.dumps(replica_rows(found), indent=2))
    else:
        click.echo(render_table(found))


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--replica", "replica_ids", multiple=True, help="only this replica (repeatable)")
@click.option("--json", "as_json", is_flag=True)
def attest(config_path: str, replica_ids: tuple[str, ...], as_json: bool) -> None:
    """Attest the replicas now and print each verdict with its evidence."""
    logs.configure("warning")
    config = load_or_exit(config_path)
    if not config.attestation.enabled:
        fail("attestation.mode is off in this config: set cloud, guest-agent or fresh", EXIT_CONFIG)
    from router.attestation.report import format_verdict, verdict_to_dict
    from router.oneshot import control_plane_pass

    try:
        result = run_async(
            lambda: control_plane_pass(config, attest=True, replica_ids=list(replica_ids) or None)
        )
    except LookupError as exc:
        fail(str(exc.args[0]))
    if as_json:
        click.echo(json.dumps([verdict_to_dict(v) for v in result.verdicts], indent=2))
    else:
        for verdict in result.verdicts:
            click.echo(format_verdict(verdict))
    if not all(v.ok for v in result.verdicts):
        sys.exit(3)


@main.group()
def dns() -> None:
    """DNS records for the healthy (and attested) replica set."""


@dns.command("render")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="zone", type=click.Choice(["zone", "json", "octodns"]))
@click.option(
    "--from-admin", "admin_url", default=None, help="read a running router's admin API instead"
)
def dns_render(config_path: str, fmt: str, admin_url: str | None) -> None:
    """Print the records (one discovery + health pass, or a running router's state)."""
    logs.configure("warning")
    config = load_or_exit(config_path)
    from router.dns import render_from_admin, render_snapshot
    from router.dns.formats import FormatName
    from router.oneshot import control_plane_pass
    from router.upstream import ConnectTo

    pinned = ConnectTo(config.discovery.connect_to).lookup if config.discovery.connect_to else None
    app_id = config.discovery.phala.app_id if config.discovery.phala else None

    fmt_name = cast(FormatName, fmt)  # click.Choice already restricted it

    async def render() -> tuple[str, Sequence[str]]:
        if admin_url is not None:
            token_env = config.admin.token_env
            token = os.environ.get(token_env) if token_env else None
            return await render_from_admin(
                config.dns, admin_url, fmt_name, token=token, pinned=pinned
            )
        result = await control_plane_pass(config)
        return await render_snapshot(
            config.dns, result.snapshot, fmt_name, app_id=app_id, pinned=pinned
        )

    text, notes = run_async(render)
    if fmt != "zone":  # the zone text already carries them as comments
        for note in notes:
            click.echo(f"; {note}", err=True)
    click.echo(text, nl=not text.endswith("\n"))


@main.command("quote-server")
@click.option("--listen", default="0.0.0.0:8099", show_default=True)
@click.option("--path", default="/.well-known/phala-router/attest", show_default=True)
@click.option("--dstack-socket", default="/var/run/dstack.sock", show_default=True)
@with_logging
def quote_server(
    listen: str, path: str, dstack_socket: str, log_level: str, log_format: str, access_log: bool
) -> None:
    """Inside the CVM, next to the app: answer `fresh` attestation requests via dstack."""
    logs.configure(log_level, log_format, access_log)
    from router.quote_server import run

    run(listen, endpoint=dstack_socket, path=path)


def _add_bench_commands() -> None:
    """`phala-router bench ...` when the bench package is installed with the router."""
    try:
        from bench.cli import bench_group
    except ImportError:
        return
    main.add_command(bench_group)


_add_bench_commands()


if __name__ == "__main__":
    main()
