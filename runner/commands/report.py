"""`flowrun report [FLOW]`: what the ledger knows, for people (a summary) and for tools (CSV,
JSONL).

The numbers come from the ledger's reader (runner/ledger/reading.py: read-only, so a report can
run while a campaign is sending); this module lays them out, and reads what customers wrote
with the flow's stop words (runner/contacts.py), as a run does.

What customers did after each step (the "conversations" table, and `reply`/`button` per row):
- a customer's message counts for the latest step of the flow they had received at its time
  (sent, not refused by a `failed` status; 2 s of slack, as `at` has whole seconds): it follows
  that step, until their next step was sent (`LedgerReader.heard`);
- replied: recipients who sent anything (text, tap, media) that counts for the step;
- taps: recipients who tapped a quick reply on the step's own message (its `context`), per
  payload, whenever they tapped;
- opted out: recipients whose stop word (the whole text, `contacts.keyword`) or marketing stop
  (`preferences`) counts for the step; an imported opt-out list is the business's, not a reaction,
  and messages skipped as `opted out` were withheld, not answered;
- waiting: messages not sent yet, by reason: window (until the customer writes), answer (until
  they answer an earlier step).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import click

from runner.contacts import IMPORTED, Keywords, keyword
from runner.errors import EXIT_OK
from runner.ledger import LedgerReader
from runner.ledger.reading import Count, Heard
from runner.loader import load_flow
from runner.untrusted import printable, spreadsheet_cell

from .checking import ledger_for

STATES = ("sent", "failed", "skipped", "uncertain", "sending", "waiting")
DELIVERY_KINDS = ("sent", "delivered", "read", "failed", "waiting")
ANSWER_COLUMNS = ("reply", "button")  # appended to every row of --csv and --jsonl


def report(
    flow_file: str | None, ledger_path: str | None, use_sandbox: bool, fmt: str | None
) -> int:
    path, name = ledger_for(flow_file, ledger_path, use_sandbox)
    if fmt is not None:
        write_rows(path, name, fmt, sys.stdout)
    else:
        for line in summary_lines(path, name, _words(flow_file)):
            click.echo(line)
    return EXIT_OK


def _words(flow_file: str | None) -> Keywords:
    """The FLOW's stop words; without a FLOW (--ledger alone), the defaults."""
    if flow_file is None:
        return Keywords.from_settings(None, None)
    settings = load_flow(flow_file).flow.settings
    return Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)


def write_rows(path: Path, flow: str | None, fmt: str, out: TextIO) -> None:
    """Every message row, one per line, as CSV (with a header) or JSON lines; the delivery
    columns are empty until a status webhook says more. The last two say what the customer
    answered: `reply`, the text of the first message of theirs that counts for the step (see
    the module's docstring; "[image]" and the like for one without text), and `button`, the
    payload of the first quick reply they tapped on it."""
    with LedgerReader(path) as ledger:
        answers = _answers(ledger.heard(flow))
        columns = (*ledger.columns, *ANSWER_COLUMNS)
        rows = (
            (*row, *answers.get((str(row[0]), str(row[1]), str(row[2])), ("", "")))
            for row in ledger.rows(flow)
        )
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows([_cell(value) for value in row] for row in rows)
            return
        for row in rows:
            out.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) + "\n")


def _answers(heard: list[Heard]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(flow, step, recipient) → (reply, button); `heard` is oldest first, so the first kept
    is the first said."""
    replies: dict[tuple[str, str, str], str] = {}
    buttons: dict[tuple[str, str, str], str] = {}
    for message in heard:
        if message.step is not None:
            said = message.text if message.text else f"[{message.kind}]"
            replies.setdefault((message.flow, message.step, message.recipient), said)
        if message.tapped is not None and message.payload is not None:
            buttons.setdefault((message.flow, message.tapped, message.recipient), message.payload)
    return {key: (replies.get(key, ""), buttons.get(key, "")) for key in replies.keys() | buttons}


def _cell(value: object) -> object:
    """A CSV cell as a spreadsheet should show it: one line, never a formula (the ledger's
    texts were cleaned as they came in; a ledger written by an older flowrun may not be)."""
    return spreadsheet_cell(printable(value) if isinstance(value, str) else value)


def summary_lines(path: Path, flow: str | None, words: Keywords | None = None) -> list[str]:
    """Counts per step and state, failures grouped by the API's error, uncertain recipients,
    the delivery funnel, and what customers did after each step (stop words: `words`, else
    the defaults)."""
    with LedgerReader(path) as ledger:
        counts = ledger.state_counts(flow)
        lines = [f"ledger: {path}"]
        if not counts:
            return [*lines, "no messages recorded yet"]
        lines += _table(counts, STATES, 10, extra=12)
        lines += _failures(ledger, flow)
        lines += _uncertain(ledger, flow)
        lines += _funnel(ledger, flow)
        lines += _conversations(ledger, flow, counts, words or Keywords.from_settings(None, None))
    return lines


def _table(counts: list[Count], kinds: tuple[str, ...], column: int, extra: int = 0) -> list[str]:
    """A row per flow/step, a column per state (or status)."""
    by_step: dict[str, dict[str, int]] = defaultdict(dict)
    for count in counts:
        by_step[printable(f"{count.flow}/{count.step}")][count.state] = count.count
    if extra:  # the state table's label column is as wide as the step names, plus room
        width = max(len(c.step) for c in counts) + 2 + extra
    else:
        width = max(len(label) for label in by_step) + 2
    lines = [f"  {'flow/step':<{width}}" + "".join(f"{k:>{column}}" for k in kinds)]
    for label, by_kind in sorted(by_step.items()):
        cells = "".join(f"{by_kind.get(k, 0):>{column},}" for k in kinds)
        lines.append(f"  {label:<{width}}" + cells)
    return lines


def _failures(ledger: LedgerReader, flow: str | None) -> list[str]:
    groups = ledger.failures(flow)
    lines = ["failures:"] if groups else []
    for group in groups:
        if group.http_status:
            reason = f"HTTP {group.http_status}, error {group.code}, {printable(str(group.title))}"
        else:
            reason = printable(str(group.title))
        sample = ", ".join(map(printable, group.recipients)) + (", ..." if group.count > 5 else "")
        lines.append(f"  {group.count:,}x {reason}: {sample}")
    return lines


def _uncertain(ledger: LedgerReader, flow: str | None) -> list[str]:
    """Uncertain rows, and `sending` ones apart (as the table counts them: in flight)."""
    lines = []
    for state, heading in (
        ("uncertain", "the API may or may not have them; --retry-uncertain sends them again"),
        (
            "sending",
            "in flight: a run is sending them now; if none is, a run was stopped hard"
            " and the next run counts them uncertain",
        ),
    ):
        rows = ledger.uncertain(flow, state=state)
        if rows:
            listed = ", ".join(f"{printable(who)} ({printable(step)})" for step, who in rows)
            lines += [f"{state} ({heading}):", f"  {listed}"]
    return lines


def _funnel(ledger: LedgerReader, flow: str | None) -> list[str]:
    """What the status webhooks said of the sent messages, per step: delivered, read,
    failed (by reason), and still waiting to hear."""
    counts = ledger.delivery_counts(flow)
    if not any(count.state != "waiting" for count in counts):
        return []  # no webhooks heard: nothing to say beyond "sent"
    lines = ["delivery (from status webhooks; 'sent' = accepted, nothing more heard):"]
    lines += _table(counts, DELIVERY_KINDS, 11)
    for code, title, count in ledger.delivery_failures(flow):
        lines.append(f"  failed {count:,}x: error {code}, {printable(str(title))}")
    return lines


@dataclass
class _StepTally:
    """What customers did after one step: sets of recipients, so one who wrote twice counts
    once."""

    sent: int = 0
    replied: set[str] = field(default_factory=set)
    taps: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    opted_out: set[str] = field(default_factory=set)
    waiting: dict[str, int] = field(default_factory=dict)


def _conversations(
    ledger: LedgerReader, flow: str | None, counts: list[Count], words: Keywords
) -> list[str]:
    """Per step: replied, opted out, waiting (by reason) and taps (by payload); nothing when
    no customer was heard and nothing waits (no receiver ran: there is nothing to say)."""
    tallies: dict[tuple[str, str], _StepTally] = defaultdict(_StepTally)
    for count in counts:
        if count.state == "sent":
            tallies[count.flow, count.step].sent = count.count
    for count in ledger.waiting(flow):
        tallies[count.flow, count.step].waiting[count.state] = count.count
    heard = ledger.heard(flow)
    for message in heard:
        if message.step is not None:
            tally = tallies[message.flow, message.step]
            tally.replied.add(message.recipient)
            if message.kind == "text" and keyword(message.text or "") in words.stop:
                tally.opted_out.add(message.recipient)
        if message.tapped is not None and message.payload is not None:
            tallies[message.flow, message.tapped].taps[message.payload].add(message.recipient)
    for stop in ledger.stops(flow):
        if stop.category != IMPORTED:
            tallies[stop.flow, stop.step].opted_out.add(stop.recipient)
    if not heard and not any(tally.waiting for tally in tallies.values()):
        return []
    return _conversation_table(tallies)


def _conversation_table(tallies: dict[tuple[str, str], _StepTally]) -> list[str]:
    header = ("flow/step", "sent", "replied", "opted out", "waiting", "taps")
    rows = [
        (
            printable(f"{flow}/{step}"),
            f"{tally.sent:,}",
            _share(len(tally.replied), tally.sent),
            f"{len(tally.opted_out):,}",
            _listed(tally.waiting),
            _listed({printable(p): len(who) for p, who in tally.taps.items()}),
        )
        for (flow, step), tally in sorted(tallies.items())
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "conversations (what customers did after each step, until their next step was sent):",
        *("  " + _aligned(row, widths) for row in [header, *rows]),
    ]
    if any(tally.waiting for tally in tallies.values()):
        lines.append(
            "  waiting: window = until the customer writes; answer = until they answer an"
            " earlier step"
        )
    return lines


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.0%})" if whole else f"{part:,}"


def _listed(counts: dict[str, int]) -> str:
    """ "brochure 12, later 3": the largest first; "-" for none."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count:,}" for name, count in ordered) or "-"


def _aligned(row: tuple[str, ...], widths: list[int]) -> str:
    """The label and text columns to the left, the numbers to the right."""
    label, *numbers, waiting, taps = row
    cells = [f"{label:<{widths[0]}}"]
    cells += [f"{cell:>{width}}" for cell, width in zip(numbers, widths[1:4], strict=True)]
    cells += [f"{waiting:<{widths[4]}}", taps]
    return "  ".join(cells).rstrip()
