"""What the customers' side means for a run that has not happened yet: `flowrun plan`'s timeline
(per step: due now, waiting and why, withheld and why) and `flowrun validate`'s warning about a
free-form step that nobody can get.

Read from what a run reads (runner/executor.py `_serve`): the flow's ledger (what customers
wrote, their stops: runner/contacts.py), the CSV's `last_inbound_at`, `settings.window`; and
decided by the run's own rules (`Contact.refusal`, `conversation.classify`). Read-only: a plan
never creates nor migrates a ledger, and a missing one means nobody wrote yet. Not read: the
ledger's record of steps already sent (a plan shows what a run would do with a step, not
whether an earlier run did it).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from runner.contacts import Contact, Keywords
from runner.conversation import (
    NOT_SENT,
    UNANSWERED,
    WAITS_ANSWER,
    WINDOW,
    Answer,
    Window,
    classify,
    latest,
    ledger_time,
)
from runner.dialect import Dialect
from runner.errors import Problem
from runner.ledger import LedgerReader
from runner.plan import Plan, StepPlan
from runner.recipients import LAST_INBOUND, Recipient
from runner.render import Item, Renderer, RenderFailure, Skipped, Waiting

# Why a step is withheld: the customer asked to stop (a stop word, or the business's imported
# list: nothing goes), or stopped marketing messages (templates do not go).
STOPPED = "stop"
MARKETING = "marketing"
NOBODY_SAID = Contact()


@dataclass(frozen=True, slots=True)
class Fate:
    """What a run now would do with one step for one customer."""

    state: Literal["due", "skipped", "withheld", "waits"]
    reason: str = ""  # waits: WAITS_WINDOW/WAITS_ANSWER; withheld: STOPPED/MARKETING
    detail: str = ""  # a sentence: the opt-out, the `when`
    on: str | None = None  # waits for an answer: to this step

    def said(self) -> str:
        """As the sample lines of `plan` say it."""
        if self.state == "waits":
            if self.reason == WAITS_ANSWER:
                return f"waits for the answer to step {self.on}"
            return "waits for the customer to write"
        if self.state == "withheld":
            return f"withheld ({self.detail})"
        if self.state == "skipped":
            return f"skipped ({self.detail})"
        return "due now"


@dataclass
class StepCounts:
    due: int = 0
    waits: Counter[str] = field(default_factory=Counter)  # reason → count
    withheld: Counter[str] = field(default_factory=Counter)


@dataclass
class Outlook:
    """A run now, counted: per step, and the window's sources."""

    ledger: Path
    ledger_found: bool
    trusted: bool  # settings.window: open
    recipients: int = 0
    open_now: int = 0  # recipients whose window is open now (trusted aside)
    from_csv: int = 0  # recipients whose CSV row says when they last wrote
    steps: dict[str, StepCounts] = field(default_factory=dict)
    samples: dict[tuple[str, str], Fate] = field(default_factory=dict)  # (phone, step) → fate

    @property
    def due(self) -> int:
        return sum(counts.due for counts in self.steps.values())

    def waits(self) -> Counter[str]:
        return sum((counts.waits for counts in self.steps.values()), Counter())

    def withheld(self) -> Counter[str]:
        return sum((counts.withheld for counts in self.steps.values()), Counter())


def outlook(plan: Plan, dialect: Dialect, ledger: Path, now: datetime, sample: int = 0) -> Outlook:
    """Every recipient's steps, each given its fate as a run now would decide it (the ledger
    is read once per recipient, and only if any customer of this number was heard)."""
    settings = plan.flow.settings
    words = Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)
    found = Outlook(ledger, ledger.is_file(), settings.window == "open")
    found.steps = {step.key: StepCounts() for step in plan.steps}
    renderer = Renderer(plan)
    with _reader(ledger) as reader:
        heard = reader is not None and reader.has_heard(dialect.business)
        for recipient in plan.recipients():
            contact = NOBODY_SAID
            if reader is not None and heard:
                contact = Contact.of(*reader.heard_from(dialect.business, recipient.phone), words)
            window = Window(latest(ledger_time(contact.wrote), recipient.wrote), found.trusted)
            found.recipients += 1
            found.open_now += window.wrote is not None and window.open_at(now)
            found.from_csv += recipient.wrote is not None
            try:
                fates = list(timeline(renderer, recipient, contact, window, now))
            except RenderFailure:
                continue  # `check` reported it already
            for step, fate in fates:
                _count(found.steps[step.key], fate)
                if found.recipients <= sample:
                    found.samples[(recipient.phone, step.key)] = fate
    return found


def timeline(
    renderer: Renderer, recipient: Recipient, contact: Contact, window: Window, now: datetime
) -> Iterator[tuple[StepPlan, Fate]]:
    """One recipient's steps in order, each with its fate, as runner/executor.py `_serve`
    decides on a first run: withheld if the customer refused it, skipped by `when`, else due
    or waiting (`classify`); a step that waits holds every later one (a run goes no further
    for this customer until it is due), except those withheld or skipped whatever comes."""
    sent: set[str] = set()  # due now: a `when` reading it sees it sent, not answered yet

    def answers(key: str) -> Answer:
        return UNANSWERED if key in sent else NOT_SENT

    holding: Fate | None = None
    for item in renderer.messages(recipient, answers):
        fate = _fate(item, contact, window, now, holding)
        if fate.state == "due":
            sent.add(item.step.key)
        elif fate.state == "waits" and holding is None:
            holding = fate
        yield item.step, fate


def _fate(
    item: Item, contact: Contact, window: Window, now: datetime, holding: Fate | None
) -> Fate:
    refused = contact.refusal(item.step.kind == "template")
    if refused is not None:
        why = STOPPED if contact.opted_out is not None else MARKETING
        return Fate("withheld", why, refused)
    if isinstance(item, Skipped) and (holding is None or not item.step.reads):
        return Fate("skipped", "when", item.reason)  # (not one reading a held step's answer)
    if holding is not None:
        return holding
    on = item.on if isinstance(item, Waiting) else None
    waits = classify(item.step.free_form, window, now, answer_pending=on is not None)
    return Fate("due") if waits is None else Fate("waits", waits, on=on)


def _count(counts: StepCounts, fate: Fate) -> None:
    if fate.state == "due":
        counts.due += 1
    elif fate.state == "waits":
        counts.waits[fate.reason] += 1
    elif fate.state == "withheld":
        counts.withheld[fate.reason] += 1


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[LedgerReader | None]:
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
    with _reader(ledger) as reader:
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
