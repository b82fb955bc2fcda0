"""`flowrun plan FLOW` (also `flowrun FLOW --dry-run`): what a run would do, nothing sent."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runner import dialect as dialects
from runner.errors import EXIT_OK
from runner.pacing import run_pace
from runner.render import Skipped, Waiting

from .checking import Checked, check


def plan(flow_file: str, sample: int, jsonl: bool) -> int:
    if jsonl:
        out = sys.stdout

        def write(body: dict[str, Any]) -> None:
            out.write(json.dumps(body, ensure_ascii=False) + "\n")

        check(flow_file, on_body=write)
        return EXIT_OK
    _show(flow_file, check(flow_file, sample), sample)
    return EXIT_OK


def _show(flow_file: str, checked: Checked, sample: int) -> None:
    plan, result, target = checked.plan, checked.survey, checked.target
    flow = plan.flow
    dialect = dialects.build(target)
    click.echo(f"Flow {plan.loaded.name} ({flow_file})")
    click.echo(f"  API          {target.base_url or flow.api.base_url} ({dialect.label})")
    click.echo(
        f"  recipients   {result.recipients:,}\n  messages     {result.messages:,}"
        f" ({result.skipped:,} skipped by when)"
    )
    settings = flow.settings
    rate, interval = run_pace(settings, dialect, sandbox=False)
    click.echo(
        f"  concurrency  {settings.concurrency}, rate {rate or 0:g}/s, {interval:g} s between"
        f" messages to one recipient, retries {settings.retries}"
    )
    click.echo("  steps:")
    for step in plan.steps:
        when = f"  when {step.when_source}" if step.when_source else ""
        click.echo(
            f"    {step.key:<16} {step.kind:<9} {result.per_step[step.key]:>8,} messages{when}"
        )
    uploads = plan.uploads()
    click.echo(f"  uploads ({len(uploads)}, each once, POST {dialect.media_path}):")
    for media in uploads:
        shown = media.path.relative_to(plan.base_dir.resolve())
        click.echo(f"    {shown}  {media.mime}  {media.size:,} bytes  sha256:{media.sha256[:12]}")
    click.echo(f"\nFirst {sample} recipient(s): POST {dialect.messages_path}")
    for item in result.samples:
        if isinstance(item, Skipped):
            click.echo(f"# {item.recipient.phone} step {item.step.key}: skipped ({item.reason})")
            continue
        if isinstance(item, Waiting):
            click.echo(
                f"# {item.recipient.phone} step {item.step.key}: waits for the answer to step"
                f" {item.on}"
            )
            continue
        click.echo(f"# {item.recipient.phone} step {item.step.key}")
        click.echo(json.dumps(item.body(dialect), ensure_ascii=False, indent=2))
