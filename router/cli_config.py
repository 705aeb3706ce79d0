"""`phala-router config-schema`: the JSON Schema of the router config, for editor completion
(the committed copy is config/schema.json; config/reference.yaml is generated alongside)."""

from __future__ import annotations

import json

import click


@click.command("config-schema")
@click.option("--reference", is_flag=True, help="print the commented reference YAML instead")
def config_schema(reference: bool) -> None:
    """Print the config's JSON Schema (or, with --reference, every key with its default)."""
    from router.config_reference import json_schema, reference_yaml

    if reference:
        click.echo(reference_yaml(), nl=False)
    else:
        click.echo(json.dumps(json_schema(), indent=2))
