"""One recipient's flow in time: from what the ledger holds of them (their steps' rows, the
statuses of our messages, their own messages), when each step is due, what it waits for, and
when a wait gives up.

The executor asks a `Timeline` as it walks a recipient's steps; nothing here reads or writes
the ledger or the network, so every rule is a plain function of the rows and the clock
(tests/test_timeline.py), and `plan` can ask the same questions.

The rules (README, "Flows across time"):
- `after: 2d`: due 2 days after the recipient's latest message sent before this step (or, when
  none was, after the step first waited: its first run).
- `after: {step: welcome, event: read, wait: 1h}`: due an hour after the welcome was read
  (sent, delivered, read from the status webhooks; replied from the customer's messages). Until
  the event happens the step waits for it, and gives up `expires` after the latest message sent.
- A wait for the customer (the window, an answer, an event) gives up `expires` after the later
  of the latest message sent before the step and the time the step became due; a wait for a
  time (`after:`, quiet hours) always ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .conversation import (
    WAITS_EVENT,
    WAITS_TIME,
    Answer,
    Window,
    answer_to,
    event_time,
    latest,
    ledger_time,
)
from .ledger import Inbound, StepRecord
from .plan import StepPlan
from .recipients import Recipient
from .render import Waiting

# Skipped for good (the error_title of its row): never held, never looked at again
EXPIRED = "expired"  # waited `expires` in vain; sent later, it would follow the steps after it
DECIDED = "decided"  # its `when` read the history and was false when the step was due
FINAL_TITLES = (EXPIRED, DECIDED)


@dataclass
class Timeline:
    recipient: Recipient
    steps: tuple[StepPlan, ...]
    history: dict[str, StepRecord]
    inbound: list[Inbound]
    window: Window
    now: datetime
    _answers: dict[str, Answer] = field(default_factory=dict)

    def answer(self, key: str) -> Answer:
        """What became of step `key` for this customer (read once per pass)."""
        found = self._answers.get(key)
        if found is None:
            found = self._answers[key] = answer_to(self.history.get(key), self.inbound)
        return found

    def sent(self, key: str, at: str) -> None:
        """This pass sent step `key`: later steps see it sent, unanswered."""
        self.history[key] = StepRecord("sent", at=at)
        self._answers.pop(key, None)

    def contact(self) -> Mapping[str, Any]:
        """What `when:` sees as `contact`."""
        wrote = self.window.wrote
        return {
            "window_open": self.window.open_at(self.now),
            "last_inbound_at": wrote.isoformat() if wrote is not None else None,
        }

    def gate(self, step: StepPlan) -> Waiting | None:
        """Hold a step whose `after:` is not due yet (before its `when` is looked at: a `when`
        is decided when its step is due)."""
        if step.after is None or self._settled(step):
            return None
        due = self.due_at(step)
        on = step.after.step or self._previous(step)
        if due is None:
            return Waiting(self.recipient, step, on, WAITS_EVENT)
        if due > self.now:
            return Waiting(self.recipient, step, on, WAITS_TIME, until=due)
        return None

    def due_at(self, step: StepPlan) -> datetime | None:
        """When the step is due by its `after:` (None: its event has not happened yet)."""
        after = step.after
        if after is None:
            return self.now
        base: datetime | None
        if after.step is None:
            base = self._last_sent(step) or self._began(step) or self.now
        else:
            base = event_time(self.history.get(after.step), after.event, self.answer(after.step))
        return base + after.wait if base is not None else None

    def deadline(self, step: StepPlan) -> datetime:
        """When a wait of this step for the customer gives up: `expires` after the later of
        the latest message sent before it and the time it became due."""
        due = self.due_at(step) if step.after is not None else None
        since = latest(self._last_sent(step), due) or self._began(step) or self.now
        return since + step.expires

    def _settled(self, step: StepPlan) -> bool:
        record = self.history.get(step.key)
        if record is None:
            return False
        if record.state == "skipped":
            return record.error_title in FINAL_TITLES
        return record.state not in ("waiting",)

    def _last_sent(self, step: StepPlan) -> datetime | None:
        earlier = {s.key for s in self.steps[: step.position - 1]}
        sent = [
            ledger_time(r.at)
            for key, r in self.history.items()
            if key in earlier and r.state == "sent"
        ]
        return latest(*sent)

    def _began(self, step: StepPlan) -> datetime | None:
        """When this step first waited (its row's first write), if it is waiting."""
        record = self.history.get(step.key)
        if record is not None and record.state == "waiting":
            return ledger_time(record.since)
        return None

    def _previous(self, step: StepPlan) -> str | None:
        earlier = self.steps[: step.position - 1]
        return earlier[-1].key if earlier else None
