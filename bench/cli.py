"""`phala-router bench ...`: the benchmarks behind the router's own CLI.

Hook it into router/cli.py with `main.add_command(bench_group)`; the options are the
benchmark modules' own (`phala-router bench scaling --help`).
"""

from __future__ import annotations

import sys

import click

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.group("bench")
def bench_group() -> None:
    """Load-test replica counts and the proxy itself (needs the `bench` extra)."""


@bench_group.command("scaling", context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def scaling(args: tuple[str, ...]) -> None:
    """How throughput scales with the replica count (python -m bench.scaling --help)."""
    from bench.scaling import main

    sys.exit(main(list(args), prog="phala-router bench scaling"))


if __name__ == "__main__":
    bench_group()
