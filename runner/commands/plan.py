"""`flowrun plan FLOW` (also `flowrun FLOW --dry-run`): what a run would do, nothing sent."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from runner import clock
from runner import dialect as dialects
from runner.conversation import WAITS_ANSWER, WAITS_EVENT, WAITS_TIME, WAITS_WINDOW
from runner.dialect import Dialect
from runner.errors import EXIT_OK, FlowrunError
from runner.ledger import default_path
from runner.pacing import run_pace
from runner.recipients import normalize_phone
from runner.render import Item, Skipped, Waiting

from .checking import Checked, check
from .outlook import MARKETING, STOPPED, Fate, Outlook, outlook
from .preview import conversations, pick

WAITS_SAID = {WAITS_WINDOW: "for the customer to write", WAITS_ANSWER: "for an answer"}
WITHHELD_SAID = {STOPPED: "asked to stop", MARKETING: "stopped marketing (templates)"}


def plan(
    flow_file: str,
    sample: int,
    jsonl: bool,
    ledger_path: str | None = None,
    use_sandbox: bool = False,
    *,
    only: Sequence[str] = (),
) -> int:
    """`only`: the phones whose bodies are shown (an unknown one is an error), instead of the
    first `sample` recipients'."""
    if jsonl:
        return _jsonl(flow_file, only)
    checked = check(flow_file, sample)
    loaded = checked.plan.loaded
    ledger = Path(ledger_path) if ledger_path else default_path(loaded.path, use_sandbox)
    dialect = dialects.build(checked.target)
    moment = clock.now()
    chosen = pick(checked.plan, flow_file, only, sample) if only else []
    now = outlook(checked.plan, dialect, ledger, moment, sample)
    samples: list[tuple[Item, Fate | None]]
    if only:
        found = conversations(checked.plan, dialect, ledger, chosen, moment)
        samples = [(step.item, step.fate) for talk in found for step in talk.steps]
        heading = f"Recipient(s) {', '.join('+' + r.phone for r in chosen)}"
    else:
        samples = [
            (item, now.samples.get((item.recipient.phone, item.step.key)))
            for item in checked.survey.samples
        ]
        heading = f"First {sample} recipient(s)"
    _show(flow_file, checked, now)
    _show_samples(heading, samples, dialect)
    return EXIT_OK


def _jsonl(flow_file: str, only: Sequence[str]) -> int:
    """Every body, one JSON per line (with `only`: those recipients' bodies)."""
    out = sys.stdout
    phones = set()
    for raw in only:
        try:
            phones.add(normalize_phone(raw))
        except ValueError as exc:
            raise FlowrunError(f"--only: {exc}") from None

    def write(body: dict[str, Any]) -> None:
        if not phones or body.get("to") in phones:
            out.write(json.dumps(body, ensure_ascii=False) + "\n")

    checked = check(flow_file, on_body=write)
    if only:
        pick(checked.plan, flow_file, only, 0)  # an unknown phone: the error line, exit 2
    return EXIT_OK


def _show(flow_file: str, checked: Checked, now: Outlook) -> None:
    plan, result, target = checked.plan, checked.survey, checked.target
    flow = plan.flow
    dialect = dialects.build(target)
    click.echo(f"Flow {plan.loaded.name} ({flow_file})")
    click.echo(f"  API          {target.base_url or flow.api.base_url} ({dialect.label})")
    click.echo(
        f"  recipients   {result.recipients:,}\n  messages     {result.messages:,}"
        f" ({result.skipped:,} skipped by when)"
    )
    _show_now(now)
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
    _show_timeline(now)
    uploads = plan.uploads()
    click.echo(f"  uploads ({len(uploads)}, each once, POST {dialect.media_path}):")
    for media in uploads:
        shown = media.path.relative_to(plan.base_dir.resolve())
        click.echo(f"    {shown}  {media.mime}  {media.size:,} bytes  sha256:{media.sha256[:12]}")


def _show_samples(
    heading: str, samples: Sequence[tuple[Item, Fate | None]], dialect: Dialect
) -> None:
    """Each step of the chosen recipients: its body, or why a run now would not send it."""
    click.echo(f"\n{heading}: POST {dialect.messages_path}")
    for item, fate in samples:
        if isinstance(item, Skipped):
            click.echo(f"# {item.recipient.phone} step {item.step.key}: skipped ({item.reason})")
            continue
        if fate is not None and fate.state in ("waits", "withheld"):
            said = fate.said()
            if fate.reason in (WAITS_TIME, WAITS_EVENT):  # (fates from preview.conversations)
                said = f"waits until {fate.detail} (after:)"
            click.echo(f"# {item.recipient.phone} step {item.step.key}: {said}")
            continue
        if isinstance(item, Waiting):
            click.echo(
                f"# {item.recipient.phone} step {item.step.key}: waits for the answer to step"
                f" {item.on}"
            )
            continue
        click.echo(f"# {item.recipient.phone} step {item.step.key}")
        click.echo(json.dumps(item.body(dialect), ensure_ascii=False, indent=2))


def _show_now(now: Outlook) -> None:
    """What a run now would do, in three lines a person reads first, and where the customers'
    windows are known from."""
    click.echo(f"  due now      {now.due:,}")
    click.echo(f"  waiting      {_said(now.waits(), WAITS_SAID)}")
    click.echo(f"  withheld     {_said(now.withheld(), WITHHELD_SAID)}")
    if now.trusted:
        click.echo(
            "  window       trusted: settings.window: open says every recipient wrote in the last"
            " 24 hours, so text and media go to all"
        )
        return
    sources = [f"ledger {now.ledger}" if now.ledger_found else "no ledger yet: nobody wrote"]
    if now.from_csv:
        sources.append(f"CSV last_inbound_at for {now.from_csv:,}")
    click.echo(
        f"  window       open now for {now.open_now:,} of {now.recipients:,} (24 h from their"
        f" last message; {', '.join(sources)})"
    )


def _show_timeline(now: Outlook) -> None:
    """Per step: due now, waiting (why), withheld (why): a run's timeline at a glance."""
    rows = [
        (
            key,
            f"{counts.due:,}",
            _said(counts.waits, WAITS_SAID, "-"),
            _said(counts.withheld, WITHHELD_SAID, "-"),
        )
        for key, counts in now.steps.items()
    ]
    if not rows:
        return
    width = max(len("waiting"), *(len(row[2]) for row in rows))
    click.echo("  a run now, per step:")
    click.echo(f"    {'step':<16} {'due now':>9}  {'waiting':<{width}}  withheld")
    for key, due, waits, withheld in rows:
        click.echo(f"    {key:<16} {due:>9}  {waits:<{width}}  {withheld}")


def _said(counts: Mapping[str, int], words: Mapping[str, str], none: str = "0") -> str:
    """`120 for the customer to write, 300 for an answer` (the reasons in `words`' order)."""
    parts = [f"{counts[reason]:,} {said}" for reason, said in words.items() if counts.get(reason)]
    return ", ".join(parts) or none
