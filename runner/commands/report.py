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

import contextlib
import csv
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, TextIO

import click

from runner import models
from runner.contacts import IMPORTED, Keywords, keyword
from runner.errors import EXIT_OK, FlowrunError
from runner.ledger import LedgerReader, default_path, is_postgres
from runner.ledger.reading import Count, Heard
from runner.loader import LoadedFlow, load_flow
from runner.recipients import CsvError, parse_phone, read_csv, with_phone
from runner.untrusted import printable, spreadsheet_cell

from .ledger_choice import chosen, readable

STATES = ("sent", "failed", "skipped", "uncertain", "sending", "waiting")
DELIVERY_KINDS = ("sent", "delivered", "read", "failed", "waiting")
ANSWER_COLUMNS = ("reply", "button")  # appended to every row of --csv and --jsonl


def report(
    flow_file: str | None,
    ledger_path: str | None,
    use_sandbox: bool,
    fmt: str | None,
    *,
    output: str | None = None,
    excel: bool = False,
) -> int:
    loaded = load_flow(flow_file) if flow_file is not None else None
    name = loaded.name if loaded is not None else None
    order = step_order(loaded.flow) if loaded is not None else None
    fmt = "csv" if excel and fmt is None else fmt
    with (
        _readable(loaded, ledger_path, use_sandbox) as (path, label),
        _opened(output, excel) as out,
    ):
        if fmt is not None:
            people = recipient_columns(loaded) if loaded is not None else None
            write_rows(path, name, fmt, out, order=order, people=people, excel=excel)
        else:
            words = _words(loaded.flow if loaded is not None else None)
            for line in summary_lines(path, name, words, order, label=label):
                out.write(line + "\n")
    return EXIT_OK


@contextlib.contextmanager
def _readable(
    loaded: LoadedFlow | None, ledger_path: str | None, use_sandbox: bool
) -> Iterator[tuple[Path, str]]:
    """The ledger file to read and how to name it (a PostgreSQL ledger from a temporary
    snapshot, named without its password: ledger_choice.py)."""
    with readable(_ledger(loaded, ledger_path, use_sandbox)) as (path, name):
        if not path.is_file():  # (a PostgreSQL database nobody wrote a ledger into yet)
            raise FlowrunError(f"{name}: no ledger here yet; run the flow first")
        yield path, name


def _ledger(loaded: LoadedFlow | None, ledger_path: str | None, use_sandbox: bool) -> str | Path:
    """The ledger to read: --ledger, else FLOWRUN_LEDGER, else the FLOW's (its sandbox one
    with --sandbox). A FLOW only tried on the sandbox (`flowrun FLOW --sandbox`, as the
    README's first steps do) has only a sandbox ledger: that one is read, and said so, rather
    than "no ledger here"."""
    location = chosen(ledger_path, elsewhere=use_sandbox)
    if location is not None:
        return location if is_postgres(location) else Path(location)
    if loaded is None:
        raise FlowrunError("name a FLOW or a --ledger PATH")
    real, sandbox = default_path(loaded.path, False), default_path(loaded.path, True)
    if use_sandbox:
        if not sandbox.is_file():
            raise FlowrunError(
                f"{sandbox}: no sandbox ledger here; try the flow first with"
                f" flowrun {loaded.display} --sandbox"
            )
        return sandbox
    if real.is_file():
        return real
    if sandbox.is_file():
        click.echo(f"report: reading the sandbox ledger {sandbox} (no real run yet)", err=True)
        return sandbox
    raise FlowrunError(
        f"{real}: no ledger here; run the flow first (flowrun {loaded.display}, or flowrun"
        f" {loaded.display} --sandbox to try it), or name one with --ledger"
    )


@contextlib.contextmanager
def _opened(output: str | None, excel: bool) -> Iterator[TextIO]:
    """Where the report goes: -o FILE (with a byte order mark for Excel, which reads a CSV
    without one in the machine's ANSI code page and garbles every accent), else stdout."""
    if output is None:
        if excel:
            sys.stdout.write("\ufeff")
        yield sys.stdout
        return
    try:
        with open(output, "w", encoding="utf-8-sig" if excel else "utf-8", newline="") as handle:
            yield handle
    except OSError as exc:  # opening it, or a full disk
        raise FlowrunError(f"{output}: cannot write the report: {exc.strerror}") from None


def _words(flow: models.Flow | None) -> Keywords:
    """The FLOW's stop words; without a FLOW (--ledger alone), the defaults."""
    if flow is None:
        return Keywords.from_settings(None, None)
    settings = flow.settings
    return Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)


def step_order(flow: models.Flow) -> dict[str, int]:
    """Each step's place in the flow, by its ledger name (its `name`, else `#` and its
    position, as runner/plan.py keys it), so a report lists steps as the flow has them."""
    return {step.name or f"#{index + 1}": index for index, step in enumerate(flow.messages)}


def _step_key(order: Mapping[str, int] | None, flow: str, step: str) -> tuple[str, int, str]:
    """Sort key of a flow's step: the flow's order; steps it no longer has (renamed or
    removed since they were sent) after its own, by name."""
    place = order.get(step, len(order)) if order is not None else 0
    return flow, place, step


@dataclass(frozen=True)
class RecipientColumns:
    """The recipients' own columns from the flow's CSV (or its inline list), by WhatsApp id:
    `line` (where the recipient is, as flowrun's own messages name it) and the columns as
    written, `phone` included, so that a report's row says who it is.

    Memory: one string per recipient (the row's cells joined) in a dict keyed by the phone as
    an int, about 150 bytes plus the row's text: 100,000 recipients of a 40-character row
    take about 20 MB. The CSV itself is streamed."""

    columns: tuple[str, ...]
    rows: dict[int, str]

    SEPARATOR = "\x1f"

    def cells(self, recipient: object) -> tuple[str, ...]:
        text = str(recipient)
        found = self.rows.get(int(text)) if text.isdigit() and len(text) < 19 else None
        if found is None:
            return ("",) * len(self.columns)
        return tuple(found.split(self.SEPARATOR))


def recipient_columns(loaded: LoadedFlow) -> RecipientColumns | None:
    """The flow's recipients' columns (None when its CSV cannot be read: the report goes on
    without them, and says why on stderr). The first row of a phone wins, as in a run."""
    source = loaded.flow.recipients
    country = loaded.flow.settings.default_country
    if isinstance(source, models.CsvRecipients):
        display = os.path.join(os.path.dirname(loaded.display), source.csv)
        rows = read_csv(loaded.base_dir / source.csv, display, source.delimiter)
        label = "csv_line"
    else:
        rows = _inline_rows(loaded, source)
        label = "flow_line"
    header: list[str] = []
    kept: dict[int, str] = {}
    try:
        for line, row in rows:
            if not header:
                header = list(row)
            phone = with_phone(dict(row)).get("phone")
            try:
                digits = int(parse_phone(phone, country).digits)
            except ValueError:
                continue
            cells = [str(line), *(_text(row.get(name)) for name in header)]
            kept.setdefault(digits, RecipientColumns.SEPARATOR.join(cells))
    except CsvError as exc:
        click.echo(f"report: {exc.location}: {exc}; rows without the recipients' columns", err=True)
        return None
    return RecipientColumns((label, *header), kept)


def _inline_rows(
    loaded: LoadedFlow, people: list[models.InlineRecipient]
) -> Iterator[tuple[int, dict[str, Any]]]:
    names = dict.fromkeys(["phone"])
    for person in people:
        names.update(dict.fromkeys(person.model_extra or {}))
    for index, person in enumerate(people):
        fields = {"phone": person.phone, **(person.model_extra or {})}
        line = loaded.locate(("recipients", index, "phone")).line
        yield line, {name: fields.get(name) for name in names}


def _text(value: object) -> str:
    """A cell as text, one line (the joined row's separator never inside)."""
    text = "" if value is None else str(value)
    return printable(text.replace(RecipientColumns.SEPARATOR, " "))


def write_rows(
    path: Path,
    flow: str | None,
    fmt: str,
    out: TextIO,
    *,
    order: Mapping[str, int] | None = None,
    people: RecipientColumns | None = None,
    excel: bool = False,
) -> None:
    """Every message row, one per line, as CSV (with a header) or JSON lines; the delivery
    columns are empty until a status webhook says more. Then what the customer answered:
    `reply`, the text of the first message of theirs that counts for the step (see the
    module's docstring; "[image]" and the like for one without text), and `button`, the
    payload of the first quick reply they tapped on it. Then, when the flow is known, the
    recipient's own columns (`RecipientColumns`), a clashing name prefixed `csv_`.

    A recipient's rows are in the flow's step order (`order`). `excel`: WhatsApp ids as
    text (`_excel_id`)."""
    with LedgerReader(path) as ledger:
        answers = _answers(ledger.heard(flow))
        columns: tuple[str, ...] = (*ledger.columns, *ANSWER_COLUMNS)
        if people is not None:
            columns += tuple(_unclashed(name, columns) for name in people.columns)
        rows = _ordered(
            (
                (*row, *answers.get((str(row[0]), str(row[1]), str(row[2])), ("", "")))
                for row in ledger.rows(flow)
            ),
            order,
        )
        if people is not None:
            rows = ((*row, *people.cells(row[2])) for row in rows)
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(columns)
            phones = _phone_columns(columns) if excel else frozenset()
            writer.writerows(
                [_excel_id(v) if i in phones else _cell(v) for i, v in enumerate(row)]
                for row in rows
            )
            return
        for row in rows:
            out.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) + "\n")


def _unclashed(name: str, taken: tuple[str, ...]) -> str:
    return f"csv_{name}" if name in taken else name


def _ordered(
    rows: Iterable[tuple[object, ...]], order: Mapping[str, int] | None
) -> Iterator[tuple[object, ...]]:
    """The ledger's rows (grouped by flow and recipient) with each recipient's steps in the
    flow's order: a few rows held at a time."""
    if order is None:
        yield from rows
        return
    for _, group in groupby(rows, key=lambda row: (row[0], row[2])):
        yield from sorted(group, key=lambda row: _step_key(order, str(row[0]), str(row[1])))


def _phone_columns(columns: tuple[str, ...]) -> frozenset[int]:
    """The columns holding WhatsApp ids or phones: the ledger's `recipient` and the
    recipient's own `phone` (as written, it may be digits alone)."""
    return frozenset(i for i, name in enumerate(columns) if name in ("recipient", "phone"))


def _excel_id(value: object) -> object:
    """A WhatsApp id Excel keeps as text: `="447700900101"`. Excel reads a cell of digits
    alone as a number and shows 4.47701E+11 (12 digits and more; precision is lost after 15).
    The way Microsoft documents for a CSV to keep such a value as text is `="..."`
    (knowledge base Q66033, "Hexadecimal Values Changed When Imported from .CSV File"); an
    apostrophe is the cell editor's convention, not the CSV reader's (Excel shows it). It is
    a formula, so only digits, checked here, are ever put in one: nothing that came from
    outside can be; every other cell is neutralised as in a plain CSV."""
    text = str(value)
    if text.isascii() and text.isdigit():
        return f'="{text}"'
    return _cell(value)


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


def summary_lines(
    path: Path,
    flow: str | None,
    words: Keywords | None = None,
    order: Mapping[str, int] | None = None,
    *,
    label: str | None = None,
) -> list[str]:
    """Counts per step and state, failures grouped by the API's error, uncertain recipients,
    the delivery funnel, and what customers did after each step (stop words: `words`, else
    the defaults). Steps in the flow's order (`order`, `step_order`) when the flow is known,
    else by name."""
    with LedgerReader(path) as ledger:
        counts = ledger.state_counts(flow)
        lines = [f"ledger: {label or path}"]
        if not counts:
            return [*lines, "no messages recorded yet"]
        lines += _table(counts, STATES, 10, extra=12, order=order)
        lines += _failures(ledger, flow)
        lines += _uncertain(ledger, flow)
        lines += _funnel(ledger, flow, order)
        words = words or Keywords.from_settings(None, None)
        lines += _conversations(ledger, flow, counts, words, order)
    return lines


def _table(
    counts: list[Count],
    kinds: tuple[str, ...],
    column: int,
    extra: int = 0,
    order: Mapping[str, int] | None = None,
) -> list[str]:
    """A row per flow/step, a column per state (or status)."""
    by_step: dict[str, dict[str, int]] = defaultdict(dict)
    for count in sorted(counts, key=lambda c: _step_key(order, c.flow, c.step)):
        by_step[printable(f"{count.flow}/{count.step}")][count.state] = count.count
    if extra:  # the state table's label column is as wide as the step names, plus room
        width = max(len(c.step) for c in counts) + 2 + extra
    else:
        width = max(len(label) for label in by_step) + 2
    lines = [f"  {'flow/step':<{width}}" + "".join(f"{k:>{column}}" for k in kinds)]
    for label, by_kind in by_step.items():
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


def _funnel(
    ledger: LedgerReader, flow: str | None, order: Mapping[str, int] | None = None
) -> list[str]:
    """What the status webhooks said of the sent messages, per step: delivered, read,
    failed (by reason), and still waiting to hear."""
    counts = ledger.delivery_counts(flow)
    if not any(count.state != "waiting" for count in counts):
        return []  # no webhooks heard: nothing to say beyond "sent"
    lines = ["delivery (from status webhooks; 'sent' = accepted, nothing more heard):"]
    lines += _table(counts, DELIVERY_KINDS, 11, order=order)
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
    ledger: LedgerReader,
    flow: str | None,
    counts: list[Count],
    words: Keywords,
    order: Mapping[str, int] | None = None,
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
    return _conversation_table(tallies, order)


def _conversation_table(
    tallies: dict[tuple[str, str], _StepTally], order: Mapping[str, int] | None
) -> list[str]:
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
        for (flow, step), tally in sorted(tallies.items(), key=lambda i: _step_key(order, *i[0]))
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
