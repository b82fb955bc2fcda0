"""What the customers' side and the clock mean for a run that has not happened yet: `flowrun
plan`'s timeline (per step: sent before, due now, waiting and why and until when, skipped,
withheld and why) and `flowrun validate`'s warning about a free-form step that nobody can get.

Read from what a run reads (runner/executor.py `_serve`): the flow's ledger (the recipient's
steps and the webhooks' statuses of them, what customers wrote, their stops:
runner/contacts.py), the CSV's `last_inbound_at`, `settings.window`; and decided by the run's
own rules: the same `Timeline` and its `gate` (runner/timeline.py: `after:`, a `when` decided
when its step is due, waits that expire), `Contact.refusal`, `conversation.classify`. So what
`plan` says a run does now is what a run does now; `FLOWRUN_NOW=+2d flowrun plan FLOW` asks the
same of a run in two days (runner/clock.py). Read-only: a plan never creates nor migrates a
ledger, and a missing one means nothing was sent and nobody wrote yet.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from runner.contacts import Contact, Keywords
from runner.conversation import (
    WAITS_ANSWER,
    WAITS_EVENT,
    WAITS_QUIET,
    WAITS_TIME,
    WINDOW,
    Window,
    classify,
    closed_at,
    latest,
    ledger_time,
)
from runner.dialect import Dialect
from runner.durations import said as duration_said
from runner.errors import Problem
from runner.ledger import Inbound, LedgerReader, StepRecord
from runner.plan import Plan, StepPlan
from runner.quiet_hours import opening
from runner.recipients import LAST_INBOUND, Recipient
from runner.render import Item, Message, Renderer, RenderFailure, Skipped, Waiting
from runner.timeline import DECIDED, EXPIRED, FINAL_TITLES, Timeline

# Why a step is withheld: the customer asked to stop (a stop word, or the business's imported
# list: nothing goes), or stopped marketing messages (templates do not go).
STOPPED = "stop"
MARKETING = "marketing"
# Why a step waits besides the conversation's WAITS_*: an earlier run left it failed or
# uncertain (or is sending it now), and a run goes no further for this customer until it is
# settled (`flowrun report`; --retry-failed, --retry-uncertain).
HELD = "held"
NOBODY_SAID = Contact()
# The waits that end at a known time (they never expire: runner/timeline.py)
TIMED = (WAITS_TIME, WAITS_QUIET)

# When a recipient's quiet hours end: None if `at` is inside their `settings.send_between`
# window (or the flow has none), else the time it opens (aware UTC).
QuietHours = Callable[[Recipient, datetime], "datetime | None"]


def quiet_hours(plan: Plan) -> QuietHours:
    """The flow's quiet hours for `plan` (runner/quiet_hours.py `opening`, the rule the
    executor waits by): a step due now waits with reason `quiet hours` until they open, and
    the earliest time a waiting step is shown is inside them."""
    settings = plan.flow.settings
    opens_at = opening(settings.send_between, settings.timezone)

    def opens(recipient: Recipient, at: datetime) -> datetime | None:
        if opens_at is None:
            return None
        return opens_at(recipient.phone, recipient.zone, at)

    return opens


@dataclass(frozen=True, slots=True)
class Fate:
    """What a run now would do with one step for one customer."""

    state: Literal["due", "sent", "skipped", "withheld", "waits"]
    # waits: a WAITS_* or HELD; withheld: STOPPED/MARKETING; skipped: when, DECIDED, EXPIRED
    reason: str = ""
    detail: str = ""  # a sentence: the opt-out, the `when`, what its after: waits for
    on: str | None = None  # waits for an answer: to this step
    until: datetime | None = None  # waits for a time: the earliest it becomes due
    message: Message | None = field(default=None, compare=False)  # due: what would go

    def said(self, now: datetime) -> str:
        """As the sample lines of `plan` say it."""
        if self.state == "waits":
            return f"waits {self._waits_for(now)}"
        if self.state in ("withheld", "skipped"):
            return f"{self.state} ({self.detail})"
        if self.state == "sent":
            return f"sent already ({self.detail})"
        return "due now"

    def _waits_for(self, now: datetime) -> str:
        if self.reason == WAITS_ANSWER:
            return f"for the answer to step {self.on}"
        if self.reason == HELD:
            return f"behind {self.detail} (flowrun report says why)"
        if self.until is not None:
            what = "its time (after:)" if self.reason == WAITS_TIME else "quiet hours to end"
            return f"for {what}: {due_in(self.until, now)}"
        if self.reason == WAITS_EVENT:
            return f"for {self.detail}"
        return "for the customer to write"


@dataclass
class StepCounts:
    due: int = 0
    sent: int = 0  # by an earlier run
    skipped: int = 0  # by `when` (now or for good), or expired
    waits: Counter[str] = field(default_factory=Counter)  # reason → count
    withheld: Counter[str] = field(default_factory=Counter)
    earliest: datetime | None = None  # the earliest time one that waits for a time is due


@dataclass
class Outlook:
    """A run now, counted: per step, and the window's sources."""

    ledger: str  # its name for people (a PostgreSQL ledger's URL without the password)
    ledger_found: bool
    trusted: bool  # settings.window: open
    at: datetime  # now, as the clock says (FLOWRUN_NOW moves it)
    recipients: int = 0
    open_now: int = 0  # recipients whose window is open now (trusted aside)
    from_csv: int = 0  # recipients whose CSV row says when they last wrote
    # recipients a run now sends a template while their window is closed: business-initiated,
    # what the portfolio's messaging limit counts (runner/commands/limits.py)
    business_initiated: int = 0
    steps: dict[str, StepCounts] = field(default_factory=dict)
    samples: dict[tuple[str, str], Fate] = field(default_factory=dict)  # (phone, step) → fate

    @property
    def due(self) -> int:
        return sum(counts.due for counts in self.steps.values())

    def waits(self) -> Counter[str]:
        return sum((counts.waits for counts in self.steps.values()), Counter())

    def withheld(self) -> Counter[str]:
        return sum((counts.withheld for counts in self.steps.values()), Counter())

    def next_due(self) -> tuple[datetime, str] | None:
        """The earliest time a step that waits for a time becomes due, and that step: when
        the next run has something to send (what waits for customers aside)."""
        timed = [(c.earliest, key) for key, c in self.steps.items() if c.earliest is not None]
        return min(timed, key=lambda found: found[0]) if timed else None  # (ties: step order)


@dataclass
class Known:
    """What the ledger knows of each recipient, read as a run reads it (runner/executor.py
    `_serve`): their messages and preferences, their steps' rows, and from those their
    window. Queries per recipient only when the ledger holds anything of this flow or any
    customer of the number was heard."""

    reader: LedgerReader | None
    plan: Plan
    dialect: Dialect
    words: Keywords
    heard: bool
    sent: bool

    @classmethod
    def read(cls, reader: LedgerReader | None, plan: Plan, dialect: Dialect) -> Known:
        settings = plan.flow.settings
        words = Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)
        heard = reader is not None and reader.has_heard(dialect.business)
        sent = reader is not None and reader.has_rows(plan.loaded.name)
        return cls(reader, plan, dialect, words, heard, sent)

    def of(
        self, recipient: Recipient
    ) -> tuple[Contact, list[Inbound], dict[str, StepRecord], Window]:
        contact, inbound = NOBODY_SAID, list[Inbound]()
        if self.reader is not None and self.heard:
            inbound, preferences = self.reader.heard_from(self.dialect.business, recipient.phone)
            contact = Contact.of(inbound, preferences, self.words)
        history: dict[str, StepRecord] = {}
        if self.reader is not None and self.sent:
            history = self.reader.history(self.plan.loaded.name, recipient.phone)
        window = Window(
            latest(ledger_time(contact.wrote), recipient.wrote),
            self.plan.flow.settings.window == "open",
            *closed_at(history.values(), self.dialect.window_closed),
        )
        return contact, inbound, history, window


def outlook(
    plan: Plan,
    dialect: Dialect,
    ledger: Path,
    now: datetime,
    sample: int = 0,
    *,
    quiet: QuietHours | None = None,
    shown_as: str | None = None,
) -> Outlook:
    """Every recipient's steps, each given its fate as a run now would decide it (the ledger
    is read per recipient only if it holds anything of this flow, or any customer of this
    number was heard: a first run's plan reads nothing per recipient)."""
    settings = plan.flow.settings
    name = shown_as or str(ledger)
    found = Outlook(name, ledger.is_file(), settings.window == "open", now)
    found.steps = {step.key: StepCounts() for step in plan.steps}
    renderer = Renderer(plan)
    opens = quiet or quiet_hours(plan)
    with ledger_reader(ledger) as reader:
        known = Known.read(reader, plan, dialect)
        for recipient in plan.recipients():
            contact, inbound, history, window = known.of(recipient)
            found.recipients += 1
            found.open_now += window.wrote is not None and window.open_at(now)
            found.from_csv += recipient.wrote is not None
            line = Timeline(recipient, plan.steps, history, inbound, window, now)
            try:
                fates = list(timeline(renderer, line, contact, dialect, opens))
            except RenderFailure:
                continue  # `check` reported it already
            found.business_initiated += not window.open_at(now) and any(
                step.kind == "template" and fate.state == "due" for step, fate in fates
            )
            for step, fate in fates:
                _count(found.steps[step.key], fate)
                if found.recipients <= sample:
                    found.samples[(recipient.phone, step.key)] = fate
    return found


def timeline(
    renderer: Renderer, line: Timeline, contact: Contact, dialect: Dialect, quiet: QuietHours
) -> Iterator[tuple[StepPlan, Fate]]:
    """One recipient's steps in order, each with its fate, as runner/executor.py `_serve`
    decides it: sent already, withheld if the customer refused it, skipped by `when`, else
    due or waiting (its `after:`, an answer, the window, quiet hours). A step due now counts
    as sent now for the steps after it (their `after:` and `when`), as a run sends it. A step
    that waits holds every later one (a run goes no further for this customer until it is
    due), except those withheld or skipped whatever comes, and those whose own `after:` waits
    longer (the earliest they are due is then theirs)."""
    holding: Fate | None = None
    recipient = line.recipient
    for item in renderer.messages(recipient, line.answer, gate=line.gate, contact=line.contact()):
        fate = _fate(item, line, contact, dialect, holding, quiet=quiet)
        if fate.state == "due":
            line.sent(item.step.key, line.now.isoformat(timespec="milliseconds"))
        elif fate.state == "waits" and holding is None:
            holding = fate
        yield item.step, fate


def _fate(
    item: Item,
    line: Timeline,
    contact: Contact,
    dialect: Dialect,
    holding: Fate | None,
    *,
    quiet: QuietHours,
) -> Fate:
    """The executor's order (`_settled`, then `_held`, then `_wait`)."""
    record = line.history.get(item.step.key)
    settled = _settled(record, dialect)
    if settled is not None:
        return settled
    refused = contact.refusal(item.step.kind == "template")
    if refused is not None and (record is None or record.state != "uncertain"):
        why = STOPPED if contact.opted_out is not None else MARKETING
        return Fate("withheld", why, refused)
    if record is not None and record.state in ("failed", "uncertain"):
        return Fate("waits", HELD, f"its {record.state} message")
    if isinstance(item, Skipped) and (holding is None or not item.step.reads):
        return _skipped(item)  # (not one reading a held step's answer)
    gated = isinstance(item, Waiting) and item.reason in (WAITS_TIME, WAITS_EVENT)
    if holding is not None and not gated:
        return holding
    return _waits(item, line, quiet, holding)


def _skipped(item: Skipped) -> Fate:
    if item.final:  # its `when` read the history: false when due is final
        return Fate("skipped", DECIDED, f"{item.reason}: false when due, for good")
    return Fate("skipped", "when", item.reason)


def _settled(record: StepRecord | None, dialect: Dialect) -> Fate | None:
    """What an earlier run settled: sent (and not refused afterwards for a closed window),
    skipped for good, or in flight now."""
    if record is None:
        return None
    if record.state == "sent" and not (
        record.delivery == "failed" and dialect.window_closed(record.delivery_code)
    ):
        sent_at = ledger_time(record.at)
        return Fate("sent", detail=stamp(sent_at) if sent_at else "")
    if record.state == "skipped" and record.error_title in FINAL_TITLES:
        why = "waited in vain" if record.error_title == EXPIRED else "its when was false when due"
        return Fate("skipped", str(record.error_title), why)
    if record.state == "sending":
        return Fate("waits", HELD, "a run sending it now")
    return None


def _waits(item: Item, line: Timeline, quiet: QuietHours, holding: Fate | None) -> Fate:
    """A step reached (or held behind another whose wait is shorter than its own `after:`):
    due now, or what it waits for and until when; a wait for the customer that lasted
    `expires` skips it (the flow goes on)."""
    step, recipient = item.step, item.recipient
    reason: str | None
    if isinstance(item, Waiting):
        reason, until = item.reason, item.until
    else:
        reason, until = classify(step.free_form, line.window, line.now), None
    if reason is None:
        opens = quiet(recipient, line.now)
        if opens is None:
            return Fate("due", message=item if isinstance(item, Message) else None)
        return Fate("waits", WAITS_QUIET, until=opens)
    on = item.on if isinstance(item, Waiting) else None
    if until is None:
        if holding is None and line.now >= line.deadline(step):
            return Fate("skipped", EXPIRED, f"waited {duration_said(step.expires)} in vain")
        return Fate("waits", reason, _event(step, on), on=on)
    if holding is not None and holding.until is not None:
        until = max(until, holding.until)
    return Fate("waits", reason, on=on, until=quiet(recipient, until) or until)


def _event(step: StepPlan, on: str | None) -> str:
    """What a step's `after:` waits for, in words (runner/executor.py `_awaited`)."""
    event = step.after.event if step.after is not None else "sent"
    return f"a reply to step {on}" if event == "replied" else f"step {on} to be {event}"


def _count(counts: StepCounts, fate: Fate) -> None:
    if fate.state == "due":
        counts.due += 1
    elif fate.state == "sent":
        counts.sent += 1
    elif fate.state == "skipped":
        counts.skipped += 1
    elif fate.state == "waits":
        counts.waits[fate.reason] += 1
        if fate.until is not None and fate.reason in TIMED:
            counts.earliest = min(filter(None, (counts.earliest, fate.until)))
    else:
        counts.withheld[fate.reason] += 1


def stamp(moment: datetime) -> str:
    """A time as plan and a run's summary print it: `2026-12-03 09:00 UTC`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def due_in(until: datetime, now: datetime) -> str:
    """`in 2 days, from 2026-12-03 09:00 UTC`: how long from now, then the time itself."""
    return f"{_span(until - now)}, from {stamp(until)}"


def _span(left: timedelta) -> str:
    """`in 2 days`, `in 1 day 6 hours`, `in 45 minutes`: the two largest units, rounded to the
    minute (the exact time follows it)."""
    minutes = round(left.total_seconds() / 60)
    if minutes <= 0:
        return "now"
    parts = []
    for unit, size in (("day", 1440), ("hour", 60), ("minute", 1)):
        count, minutes = divmod(minutes, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return "in " + " ".join(parts[:2])


@contextlib.contextmanager
def ledger_reader(path: Path) -> Iterator[LedgerReader | None]:
    """The ledger, read-only; None if there is none yet (nobody wrote: not an error)."""
    if not path.is_file():
        yield None
        return
    with LedgerReader(path) as reader:
        yield reader


def unreachable(plan: Plan, dialect: Dialect, ledger: Path, now: datetime) -> list[Problem]:
    """A warning at each free-form step no recipient can have an open window for: the flow
    does not say `settings.window: open`, no template comes before it (a template's answer
    would open the window), no recipient's `last_inbound_at` is less than 24 hours old, and
    the ledger holds no message that recent from any of them. A run would keep such a step
    waiting for everyone (docs/whatsapp-api.md#customer-service-window)."""
    if plan.flow.settings.window == "open":
        return []
    first: list[StepPlan] = []
    for step in plan.steps:
        if not step.free_form:
            break
        first.append(step)
    if not first:
        return []
    since = now - WINDOW
    if any(r.wrote is not None and r.wrote > since for r in plan.recipients()):
        return []
    with ledger_reader(ledger) as reader:
        wrote = reader.wrote_since(dialect.business, since.isoformat()) if reader else set()
    if wrote and any(r.phone in wrote for r in plan.recipients()):
        return []
    return [_unreachable(plan, step) for step in first]


def _unreachable(plan: Plan, step: StepPlan) -> Problem:
    article = "an" if step.kind[0] in "aeiou" else "a"
    return Problem(
        plan.loaded.locate((*step.path, step.kind), key=True),
        f"step '{step.key}' is {article} {step.kind} message, and no recipient has written in"
        " the last 24 hours: WhatsApp refuses it (only templates reach them), so a run keeps"
        " it waiting until they write",
        "put a template step before it, or set settings.window: open if they wrote to you"
        f" elsewhere (or give the CSV a {LAST_INBOUND} column with when each last wrote)",
        severity="warning",
    )
