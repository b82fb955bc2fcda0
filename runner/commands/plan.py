"""`flowrun plan FLOW` (also `flowrun FLOW --dry-run`): what a run would do, nothing sent."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from runner import clock
from runner.conversation import WAITS_ANSWER, WAITS_EVENT, WAITS_QUIET, WAITS_TIME, WAITS_WINDOW
from runner.dialect import Dialect
from runner.errors import EXIT_OK, FlowrunError
from runner.marketing import PlusOne, dialect_for
from runner.pacing import run_pace
from runner.recipients import normalize_phone
from runner.render import Item, Skipped, Waiting
from runner.template_lock import body_texts, lock_path, words

from .checking import Checked, check
from .ledger_choice import location_of, readable
from .limits import over_limit
from .outlook import HELD, MARKETING, STOPPED, Fate, Outlook, due_in, outlook
from .preview import conversations, pick

# What a step waits for, in the order a person reads them: the clock first, then the customers
WAITS_SAID = {
    WAITS_TIME: "for their time (after:)",
    WAITS_QUIET: "for quiet hours to end",
    WAITS_EVENT: "for what their after: names (a read, a reply)",
    WAITS_WINDOW: "for the customer to write",
    WAITS_ANSWER: "for an answer",
    HELD: "behind a failed or uncertain message",
}
_DECIDED = f"{'decided when due':>17}"
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
    """`only`: the phones whose steps are shown (an unknown one is an error, exit 2), instead
    of the first `sample` recipients'."""
    if jsonl:
        return _jsonl(flow_file, only)
    plus_one = PlusOne.beside(Path(flow_file))  # +1 numbers a marketing template goes to
    checked = check(flow_file, sample, on_message=plus_one.collect)
    loaded = checked.plan.loaded
    location = location_of(loaded.path, ledger_path, sandbox=use_sandbox)
    with readable(location) as (ledger, name):
        return _plan(
            checked,
            flow_file,
            ledger=ledger,
            name=name,
            sample=sample,
            only=only,
            plus_one=plus_one,
        )


def _plan(
    checked: Checked,
    flow_file: str,
    *,
    ledger: Path,
    name: str,
    sample: int,
    only: Sequence[str],
    plus_one: PlusOne,
) -> int:
    loaded = checked.plan.loaded
    dialect = dialect_for(checked.plan, checked.target)
    moment = clock.now()
    chosen = pick(checked.plan, flow_file, only, sample) if only else []
    now = outlook(checked.plan, dialect, ledger, moment, sample, shown_as=name)
    for problem in plus_one.problems(checked.plan):
        click.echo(problem.format(), err=True)
    limit = over_limit(checked.plan, now.business_initiated)
    if limit is not None:
        click.echo(limit, err=True)
    texts = body_texts(lock_path(loaded.path))
    _show(flow_file, checked, sample, now, texts=texts, chosen=bool(only))
    if only:
        found = conversations(checked.plan, dialect, ledger, chosen, moment)
        click.echo(
            f"\nRecipient(s) {', '.join('+' + r.phone for r in chosen)}:"
            f" POST {dialect.messages_path}"
        )
        for talk in found:
            for step in talk.steps:
                _show_sample(step.item, step.fate, dialect, now, texts)
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


def _show(
    flow_file: str,
    checked: Checked,
    sample: int,
    now: Outlook,
    *,
    texts: Texts,
    chosen: bool = False,
) -> None:
    plan, result, target = checked.plan, checked.survey, checked.target
    flow = plan.flow
    dialect = dialect_for(plan, target)
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
        # a `when` reading what the customer did is decided when the step is due, not now
        count = f"{result.per_step[step.key]:>8,} messages"
        click.echo(f"    {step.key:<16} {step.kind:<9} {_DECIDED if step.history else count}{when}")
    _show_timeline(now)
    uploads = plan.uploads()
    click.echo(f"  uploads ({len(uploads)}, each once, POST {dialect.media_path}):")
    for media in uploads:
        shown = media.path.relative_to(plan.base_dir.resolve())
        click.echo(f"    {shown}  {media.mime}  {media.size:,} bytes  sha256:{media.sha256[:12]}")
    if chosen:  # --only: the caller shows those
        return
    click.echo(f"\nFirst {sample} recipient(s): POST {dialect.messages_path}")
    for item in result.samples:
        fate = now.samples.get((item.recipient.phone, item.step.key))
        _show_sample(item, fate, dialect, now, texts)


# (template name, language) → its approved body text (the lock file's)
Texts = Mapping[tuple[str, str], str]


def _show_sample(
    item: Item, fate: Fate | None, dialect: Dialect, now: Outlook, texts: Texts
) -> None:
    """One step of a sample recipient: its body if a run now sends it (as rendered with their
    history; a template's words too, when the lock file knows its text), else what becomes
    of it."""
    head = f"# {item.recipient.phone} step {item.step.key}"
    if fate is not None and fate.state == "due" and fate.message is not None:
        item = fate.message
    elif fate is not None and fate.state != "due":
        click.echo(f"{head}: {fate.said(now.at)}")
        return
    if isinstance(item, Skipped):
        click.echo(f"{head}: skipped ({item.reason})")
    elif isinstance(item, Waiting):
        click.echo(f"{head}: waits for the answer to step {item.on}")
    else:
        click.echo(head)
        said = words(item.content, texts) if item.step.kind == "template" else None
        if said is not None:
            click.echo(f"# reads: {said}")
        path = dialect.path_for(item.step.kind, item.content)
        if path != dialect.messages_path:  # api.marketing_messages: a MARKETING template
            click.echo(f"# POST {path} (Marketing Messages API)")
        click.echo(json.dumps(item.body(dialect), ensure_ascii=False, indent=2))


def _show_now(now: Outlook) -> None:
    """What a run now would do, in three lines a person reads first, and where the customers'
    windows are known from."""
    click.echo(f"  due now      {now.due:,}")
    click.echo(f"  waiting      {_said(now.waits(), WAITS_SAID)}")
    following = now.next_due()
    if following is not None:
        until, key = following
        click.echo(f"  next due     {due_in(until, now.at)} (step {key})")
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
    """Per step: sent by an earlier run, due now, waiting (why), skipped, withheld (why): every
    recipient once per step; then when the steps that wait for a time become due."""
    rows = [
        (
            key,
            f"{counts.sent:,}",
            f"{counts.due:,}",
            _said(counts.waits, WAITS_SAID, "-"),
            f"{counts.skipped:,}",
            _said(counts.withheld, WITHHELD_SAID, "-"),
        )
        for key, counts in now.steps.items()
    ]
    if not rows:
        return
    width = max(len("waiting"), *(len(row[3]) for row in rows))
    click.echo("  a run now, per step:")
    click.echo(
        f"    {'step':<16} {'sent':>7} {'due now':>9}  {'waiting':<{width}}  {'skipped':>7}"
        "  withheld"
    )
    for key, sent, due, waits, skipped, withheld in rows:
        click.echo(f"    {key:<16} {sent:>7} {due:>9}  {waits:<{width}}  {skipped:>7}  {withheld}")
    later = [(key, c.earliest) for key, c in now.steps.items() if c.earliest is not None]
    if later:
        click.echo(
            "  due later, the earliest per step (FLOWRUN_NOW=+2d flowrun plan shows a run in"
            " two days):"
        )
        for key, until in later:
            click.echo(f"    {key:<16} {due_in(until, now.at)}")


def _said(counts: Mapping[str, int], words: Mapping[str, str], none: str = "0") -> str:
    """`120 for the customer to write, 300 for an answer` (the reasons in `words`' order)."""
    parts = [f"{counts[reason]:,} {said}" for reason, said in words.items() if counts.get(reason)]
    return ", ".join(parts) or none
