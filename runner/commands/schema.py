"""`flowrun schema`: the JSON Schema of the flow format (schemas/flow.schema.json is its output)."""

from __future__ import annotations

import click

from runner.errors import EXIT_OK


def print_schema() -> int:
    from runner.schema import flow_schema

    click.echo(flow_schema())
    return EXIT_OK
