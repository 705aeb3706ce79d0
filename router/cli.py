"""The `phala-router` command line. The only place that configures logging and exits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import yaml

from router import logs
from router.cli_support import (
    APP_OPTION_HELP,
    EXIT_CONFIG,
    fail,
    load_app_or_exit,
    load_or_exit,
    run_async,
)
from router.config import redacted
from router.errors import ConfigError
from router.signals import catch_signals, wait_for_signal

if TYPE_CHECKING:
    from router.models import AttestationVerdict, Replica

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


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib import metadata

    from router.native import build_description

    click.echo(f"phala-router, version {metadata.version('phala-router')}, {build_description()}")
    ctx.exit()


@click.group()
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and which build (compiled or pure Python) runs, and exit.",
)
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
            stop = catch_signals(on_hangup=app.reload)
            await app.start()
            try:
                await stop.wait()
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
    from router.config_check import build_as_serve_would, missing_secrets

    missing = missing_secrets(config, os.environ)
    if missing:
        fail(
            f"config {config_path} is valid but cannot start here:\n" + "\n".join(missing),
            EXIT_CONFIG,
        )
    try:
        # What serve builds before it opens a socket, built the same way (compose.py).
        asyncio.run(build_as_serve_would(config, os.environ))
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
    "--attestation", default="off",
    type=click.Choice(["off", "cloud", "guest-agent", "fresh", "ra-tls"]),
    help="attest the replicas; ra-tls: simulated RA-TLS CVMs behind a TLS passthrough",
)  # fmt: skip
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
        lambda: run_demo(
            port=port,
            admin_port=admin_port,
            policy=policy,
            attestation=attestation,
            access_log=access_log,
        )
    )


def simulator_banner(sim: Any) -> str:
    """The simulator's banner, then the router config sections that point at it."""
    overlay = yaml.safe_dump(sim.router_overlay(), sort_keys=False).rstrip()
    return (
        f"{sim.banner()}\nrouter config for it (with {sim.config.api_key!r} in "
        f"PHALA_CLOUD_API_KEY; config/sim-router.yaml for config/sim.yaml):\n{overlay}"
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
            run_simulator(sim_config, ready=lambda sim: click.echo(simulator_banner(sim)))
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
            from router.listen_errors import listen_error

            c = sim_config
            ports = [("api_port", c.api_port), ("gateway_port", c.gateway_port)]
            ports.append(("control_port", c.control_port))
            raise listen_error(exc, [(k, f"{c.host}:{p}") for k, p in ports]) from None

    run_async(run)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.option("--app", "app_name", default=None, help=APP_OPTION_HELP)
def replicas(config_path: str, as_json: bool, app_name: str | None) -> None:
    """One discovery pass, printed as a table (or JSON). With `attestation.connection:
    ra-tls`, each replica's RA-TLS certificate is checked too and shown with its verdict."""
    logs.configure("warning")
    config = load_app_or_exit(config_path, app_name)
    from router.attestation.report import format_verdict, verdict_to_dict
    from router.discovery.table import render_table, replica_rows
    from router.oneshot import discover_once, ra_tls_pass

    async def run() -> tuple[list[Replica], list[AttestationVerdict]]:
        found = await discover_once(config, os.environ)
        return found, await ra_tls_pass(config, found)

    found, checked = run_async(run)
    if as_json:
        rows = replica_rows(found)
        by_id = {v.replica_id: verdict_to_dict(v) for v in checked}
        for row in rows:
            if row["id"] in by_id:
                row["ra_tls"] = by_id[row["id"]]
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(render_table(found))
        if checked:
            click.echo("\nRA-TLS (attestation.connection: ra-tls):")
            click.echo("\n".join(format_verdict(v) for v in checked))


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--replica", "replica_ids", multiple=True, help="only this replica (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--measurements",
    is_flag=True,
    help="print each replica's MRTD/RTMR0-2 as attestation.os_measurements entries",
)
@click.option("--app", "app_name", default=None, help=APP_OPTION_HELP)
def attest(
    config_path: str,
    replica_ids: tuple[str, ...],
    as_json: bool,
    measurements: bool,
    app_name: str | None,
) -> None:
    """Attest the replicas now and print each verdict with its evidence.

    Exit codes: 0 every replica passed, 1 error, 2 bad config or attestation off,
    3 a replica failed (with --measurements: 0 whenever measurements were printed)."""
    logs.configure("warning")
    config = load_app_or_exit(config_path, app_name)
    if not config.attestation.enabled and not config.attestation.ra_tls:
        fail(
            "attestation.mode is off and attestation.connection is not ra-tls in this config: "
            "set mode (cloud, guest-agent or fresh), connection: ra-tls, or both",
            EXIT_CONFIG,
        )
    from router.attestation import report
    from router.oneshot import control_plane_pass

    try:
        result = run_async(
            lambda: control_plane_pass(config, attest=True, replica_ids=list(replica_ids) or None)
        )
    except LookupError as exc:
        fail(str(exc.args[0]))
    if measurements:
        click.echo(report.format_measurements(result.verdicts))
        sys.exit(report.EXIT_ALL_PASSED)
    if as_json:
        click.echo(json.dumps([report.verdict_to_dict(v) for v in result.verdicts], indent=2))
    else:
        for verdict in result.verdicts:
            if verdict.mode == "ra-tls":  # the certificate's verdict, next to the mode's
                verdict = dataclasses.replace(verdict, replica_id=f"{verdict.replica_id} [ra-tls]")
            click.echo(report.format_verdict(verdict))
    if not all(v.ok for v in result.verdicts):
        sys.exit(report.EXIT_SOME_FAILED)


@main.command("quote-server")
@click.option("--listen", default="0.0.0.0:8099", show_default=True)
@click.option("--path", default="/.well-known/phala-router/attest", show_default=True)
@click.option("--dstack-socket", default="/var/run/dstack.sock", show_default=True)
@click.option("--token-env", default=None, help="env var holding the router's bearer token")
@with_logging
def quote_server(
    listen: str,
    path: str,
    dstack_socket: str,
    token_env: str | None,
    log_level: str,
    log_format: str,
    access_log: bool,
) -> None:
    """Inside the CVM, next to the app: answer `fresh` attestation requests via dstack."""
    logs.configure(log_level, log_format, access_log)
    from router.listen_errors import listen_error
    from router.quote_server import run

    token = os.environ.get(token_env, "") if token_env else None
    if token_env and not token:
        fail(f"--token-env {token_env}: that environment variable is empty or unset", EXIT_CONFIG)
    try:
        run(listen, endpoint=dstack_socket, path=path, router_token=token)
    except ValueError as exc:  # --listen is not HOST:PORT
        fail(f"--listen: {exc}", EXIT_CONFIG)
    except OSError as exc:
        fail(str(listen_error(exc, [("--listen", listen)])), EXIT_CONFIG)


def _add_subcommands() -> None:
    """Command groups that live in their own modules (router/cli_*.py)."""
    from router.cli_config import config_schema
    from router.cli_dns import dns
    from router.cli_verify import attested_tls, verify

    main.add_command(dns)
    main.add_command(verify)
    main.add_command(attested_tls)
    main.add_command(config_schema)


_add_subcommands()


def _add_bench_commands() -> None:
    """`phala-router bench ...` when `bench` is importable: it is not installed with the
    router (see pyproject.toml), so only when run with a source checkout on the path."""
    try:
        from bench.cli import bench_group
    except ImportError:
        return
    main.add_command(bench_group)


_add_bench_commands()


if __name__ == "__main__":
    main()
