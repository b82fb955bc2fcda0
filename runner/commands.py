"""The bodies of the CLI's commands: plain functions with explicit arguments, returning
exit codes."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .errors import EXIT_INVALID, EXIT_OK, FlowInvalid, FlowrunError
from .loader import load_flow
from .plan import ApiTarget, Message, Plan, Skipped, Survey, compile_plan, survey


def check(
    flow_file: str, sample: int = 0, on_message: Any = None
) -> tuple[Plan, Survey, ApiTarget]:
    """Load, compile and render a flow for every recipient; the problems found are raised
    together (warnings are printed and let pass)."""
    plan = compile_plan(load_flow(flow_file))
    target = plan.api_target(for_run=False)
    result = survey(plan, sample, on_message)
    for line in plan.problems.lines("warning"):
        click.echo(line, err=True)
    if plan.problems.has_errors():
        raise FlowInvalid(plan.problems)
    return plan, result, target


def validate_flows(flow_files: tuple[str, ...]) -> int:
    code = EXIT_OK
    for flow_file in flow_files:
        try:
            plan, result, _ = check(flow_file)
        except FlowInvalid as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            code = EXIT_INVALID
            continue
        click.echo(
            f"{flow_file}: ok: {result.recipients:,} recipients, {len(plan.steps)} steps, "
            f"{result.messages:,} messages ({result.skipped:,} skipped by when), "
            f"{len(plan.uploads())} files to upload"
        )
    return code


def plan_flow(flow_file: str, sample: int, jsonl: bool) -> int:
    if jsonl:
        out = sys.stdout

        def write(message: Message) -> None:
            out.write(json.dumps(message.body(), ensure_ascii=False) + "\n")

        check(flow_file, on_message=write)
        return EXIT_OK
    plan, result, target = check(flow_file, sample)
    flow = plan.flow
    click.echo(f"Flow {plan.loaded.name} ({flow_file})")
    click.echo(f"  API          {target.base_url or flow.api.base_url} (On-Premises)")
    click.echo(
        f"  recipients   {result.recipients:,}\n  messages     {result.messages:,}"
        f" ({result.skipped:,} skipped by when)"
    )
    click.echo(
        f"  concurrency  {flow.settings.concurrency}, rate {flow.settings.rate or 'no limit'}"
        f", retries {flow.settings.retries}"
    )
    click.echo("  steps:")
    for step in plan.steps:
        when = f"  when {step.when_source}" if step.when_source else ""
        click.echo(
            f"    {step.key:<16} {step.kind:<9} {result.per_step[step.key]:>8,} messages{when}"
        )
    uploads = plan.uploads()
    click.echo(f"  uploads ({len(uploads)}, each once, POST /v1/media):")
    for media in uploads:
        shown = media.path.relative_to(plan.loaded.base_dir.resolve())
        click.echo(f"    {shown}  {media.mime}  {media.size:,} bytes  sha256:{media.sha256[:12]}")
    click.echo(f"\nFirst {sample} recipient(s): POST /v1/messages")
    for item in result.samples:
        if isinstance(item, Skipped):
            click.echo(f"# {item.recipient.phone} step {item.step.key}: skipped ({item.reason})")
            continue
        click.echo(f"# {item.recipient.phone} step {item.step.key}")
        click.echo(json.dumps(item.body(), ensure_ascii=False, indent=2))
    return EXIT_OK


def print_schema() -> int:
    from .schema import flow_schema

    click.echo(flow_schema())
    return EXIT_OK


def run_flow(flow_file: str) -> int:
    check(flow_file)
    raise FlowrunError(
        f"{flow_file}: valid, but this flowrun cannot send yet (the executor is not built); "
        f"see what a run would send with: flowrun plan {flow_file}"
    )
