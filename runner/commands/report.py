"""`flowrun report [FLOW]`: what the ledger knows, for people (a summary) and for tools (CSV,
JSONL).

The numbers come from the ledger's reader (runner/ledger/reading.py: read-only, so a report can
run while a campaign is sending); this module only lays them out.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import TextIO

import click

from runner.errors import EXIT_OK
from runner.ledger import LedgerReader
from runner.ledger.reading import Count
from runner.untrusted import printable, spreadsheet_cell

from .checking import ledger_for

STATES = ("sent", "failed", "skipped", "uncertain", "sending", "waiting")
DELIVERY_KINDS = ("sent", "delivered", "read", "failed", "waiting")


def report(
    flow_file: str | None, ledger_path: str | None, use_sandbox: bool, fmt: str | None
) -> int:
    path, name = ledger_for(flow_file, ledger_path, use_sandbox)
    if fmt is not None:
        write_rows(path, name, fmt, sys.stdout)
    else:
        for line in summary_lines(path, name):
            click.echo(line)
    return EXIT_OK


def write_rows(path: Path, flow: str | None, fmt: str, out: TextIO) -> None:
    """Every message row, one per line, as CSV (with a header) or JSON lines; the delivery
    columns are empty until a status webhook says more."""
    with LedgerReader(path) as ledger:
        columns = ledger.columns
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows([_cell(value) for value in row] for row in ledger.rows(flow))
            return
        for row in ledger.rows(flow):
            out.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) + "\n")


def _cell(value: object) -> object:
    """A CSV cell as a spreadsheet should show it: one line, never a formula (the ledger's
    texts were cleaned as they came in; a ledger written by an older flowrun may not be)."""
    return spreadsheet_cell(printable(value) if isinstance(value, str) else value)


def summary_lines(path: Path, flow: str | None) -> list[str]:
    """Counts per step and state, failures grouped by the API's error, uncertain recipients,
    and the delivery funnel."""
    with LedgerReader(path) as ledger:
        counts = ledger.state_counts(flow)
        lines = [f"ledger: {path}"]
        if not counts:
            return [*lines, "no messages recorded yet"]
        lines += _table(counts, STATES, 10, extra=12)
        lines += _failures(ledger, flow)
        lines += _uncertain(ledger, flow)
        lines += _funnel(ledger, flow)
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
    rows = ledger.uncertain(flow)
    if not rows:
        return []
    listed = ", ".join(f"{printable(recipient)} ({printable(step)})" for step, recipient in rows)
    return [
        "uncertain (the API may or may not have them; --retry-uncertain sends them again):",
        f"  {listed}",
    ]


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
