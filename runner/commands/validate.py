"""`flowrun validate FLOW...`: every flow checked completely, nothing sent (CI, pre-commit)."""

from __future__ import annotations

import click

from runner import clock
from runner import dialect as dialects
from runner.errors import EXIT_INVALID, EXIT_OK, FlowInvalid
from runner.ledger import default_path

from .checking import Checked, check
from .outlook import unreachable


def validate(flow_files: tuple[str, ...], *, offline: bool = False, strict: bool = False) -> int:
    """`strict`: a flow with warnings fails too (exit 2), for CI that keeps flows clean."""
    code = EXIT_OK
    for flow_file in flow_files:
        try:
            checked = check(flow_file, offline=offline)
        except FlowInvalid as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            code = EXIT_INVALID
            continue
        warned = len(checked.plan.problems.lines("warning")) + _warn_unreachable(checked)
        if strict and warned:
            click.echo(
                f"{flow_file}: {warned} warning(s), which --strict counts as errors", err=True
            )
            code = EXIT_INVALID
            continue
        result = checked.survey
        click.echo(
            f"{flow_file}: ok: {result.recipients:,} recipients, {len(checked.plan.steps)} steps,"
            f" {result.messages:,} messages ({result.skipped:,} skipped by when"
            + (f", {result.waiting:,} wait for an answer" if result.waiting else "")
            + "),"
            f" {len(checked.plan.uploads())} files to upload"
        )
    return code


def _warn_unreachable(checked: Checked) -> int:
    """Free-form steps nobody's window can be open for (a warning: the flow is valid, and a
    run keeps them waiting; the customers may still write before it runs); how many."""
    plan = checked.plan
    ledger = default_path(plan.loaded.path, sandbox=False)
    dialect = dialects.build(checked.target)
    problems = unreachable(plan, dialect, ledger, clock.now())
    for problem in problems:
        click.echo(problem.format(), err=True)
    return len(problems)
