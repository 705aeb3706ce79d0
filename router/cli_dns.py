"""`phala-router dns render`: DNS records for the healthy (and attested) replica set, from
one discovery + health pass (`-c`) or from a running router (`--from-admin`).

Render needs a record name (`--name` or `dns.name`) and a source of replicas (`-c` or
`--from-admin`); it says which one is missing. An empty answer is never silent: when no
address record comes out the reason goes to stderr and the exit status is 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import click

from router import logs
from router.cli_support import EXIT_CONFIG, fail, load_or_exit, run_async
from router.config import RouterConfig
from router.dns.settings import DnsConfig

EXIT_EMPTY = 1


@click.group()
def dns() -> None:
    """DNS records for the healthy (and attested) replica set."""


def _dns_config(config: RouterConfig | None, name: str | None) -> DnsConfig:
    """`dns:` from the config, with `--name` taking precedence; exits naming what is missing."""
    base = config.dns if config is not None else DnsConfig()
    if name is not None:
        try:
            return DnsConfig.model_validate({**base.model_dump(), "name": name})
        except ValueError as exc:
            fail(f"--name {name!r}: {exc}", EXIT_CONFIG)
    if base.name is None:
        where = "set dns.name in the config or pass" if config is not None else "pass"
        fail(
            f"dns render needs the record name: {where} --name, e.g. --name api.example.com",
            EXIT_CONFIG,
        )
    return base


@dns.command("render")
@click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="router config: discovers and health-checks the replicas once (not needed with --from-admin)",
)
@click.option("--format", "fmt", default="zone", type=click.Choice(["zone", "json", "octodns"]))
@click.option("--name", default=None, help="the round-robin record name (default: dns.name)")
@click.option(
    "--from-admin", "admin_url", default=None, help="read a running router's admin API instead"
)
@click.option(
    "--admin-token-env",
    default=None,
    help="with --from-admin: the variable holding the admin token (default: admin.token_env)",
)
def dns_render(
    config_path: str | None,
    fmt: str,
    name: str | None,
    admin_url: str | None,
    admin_token_env: str | None,
) -> None:
    """Print the records (one discovery + health pass, or a running router's state).

    Exit status: 0 with at least one address record, 1 when none came out (the reason is
    on stderr), 2 when the name or the source of replicas is missing."""
    logs.configure("warning")
    if config_path is None and admin_url is None:
        fail(
            "dns render needs replicas: pass -c CONFIG (one discovery + health pass) or "
            "--from-admin http://127.0.0.1:9090 (a running router)",
            EXIT_CONFIG,
        )
    config = load_or_exit(config_path) if config_path is not None else None
    dns_config = _dns_config(config, name)
    from router.dns.formats import FormatName
    from router.dns.service import NO_ADDRESS_NOTE, render_from_admin, render_snapshot
    from router.reach import ConnectTo

    connect_to = config.discovery.connect_to if config is not None else {}
    pinned = ConnectTo(connect_to).lookup if connect_to else None
    fmt_name = cast(FormatName, fmt)  # click.Choice already restricted it
    token_env = admin_token_env or (config.admin.token_env if config is not None else None)

    async def render() -> tuple[str, Sequence[str]]:
        if admin_url is not None:
            token = os.environ.get(token_env) if token_env else None
            return await render_from_admin(
                dns_config, admin_url, fmt_name, token=token, pinned=pinned
            )
        assert config is not None
        from router.oneshot import control_plane_pass

        result = await control_plane_pass(config)
        app_id = config.discovery.phala.app_id if config.discovery.phala else None
        return await render_snapshot(
            dns_config, result.snapshot, fmt_name, app_id=app_id, pinned=pinned
        )

    text, notes = run_async(render)
    if fmt != "zone":  # the zone text already carries them as comments
        for note in notes:
            click.echo(f"; {note}", err=True)
    click.echo(text, nl=not text.endswith("\n"))
    if NO_ADDRESS_NOTE in notes:
        why = "the notes above say why" if len(notes) > 1 else "no replica was found"
        fail(f"no address record for {dns_config.name}: nothing to publish ({why})", EXIT_EMPTY)
