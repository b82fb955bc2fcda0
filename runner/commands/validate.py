"""`flowrun validate FLOW...`: every flow checked completely, nothing sent (CI, pre-commit)."""

from __future__ import annotations

import click

from runner.errors import EXIT_INVALID, EXIT_OK, FlowInvalid

from .checking import check


def validate(flow_files: tuple[str, ...]) -> int:
    code = EXIT_OK
    for flow_file in flow_files:
        try:
            checked = check(flow_file)
        except FlowInvalid as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            code = EXIT_INVALID
            continue
        result = checked.survey
        click.echo(
            f"{flow_file}: ok: {result.recipients:,} recipients, {len(checked.plan.steps)} steps,"
            f" {result.messages:,} messages ({result.skipped:,} skipped by when),"
            f" {len(checked.plan.uploads())} files to upload"
        )
    return code
