"""The customer's side of a flow: whether their customer service window is open, and what they
answered to the steps they got.

- The window (docs/whatsapp-api.md#customer-service-window): a free-form message (anything but
  a template) reaches a customer only within 24 hours of *their* last message; a template does
  not open it. Known from what the receiver recorded (the message's own time), a CSV column
  `last_inbound_at`, or the flow's statement `settings.window: open`; and closed, whatever
  those say, when the API refused a message for it later than the customer last wrote.
- Answers: `when:` may read `steps.NAME.button`, `.reply` and `.answered` (plan.py checks the
  names). A quick-reply tap names our message in `context.id`; a typed reply usually does not,
  so a reply is the customer's first message after the step was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .ledger import Inbound, StepRecord

WINDOW = timedelta(hours=24)
# What `steps.NAME` offers a `when:`; each makes the step wait until the customer answered.
ANSWER_FIELDS = ("button", "reply", "answered")
# ... and what happened to it, which a `when` reads as it is when the step is due
HISTORY_FIELDS = (*ANSWER_FIELDS, "status", "sent_at")
WAITS_TIME = "time"  # for the time its `after:` names
WAITS_EVENT = "event"  # for the event its `after:` names (a read, a reply) to happen
WAITS_QUIET = "quiet hours"  # for the recipient's morning (settings.send_between)
# What `when:` sees as `contact` before anything is known of the customer
NO_CONTACT: Mapping[str, Any] = {"window_open": False, "last_inbound_at": None}
# A customer message's time has whole seconds and comes from Meta's clock: one written in the
# same second as our send (or a little before, by the clocks) still answers it.
SLACK = timedelta(seconds=2)


def parse_time(text: str) -> datetime:
    """A time as people and CRMs export it: ISO 8601 with its offset (`2026-11-30T14:05:00Z`,
    `...+02:00`) or unix seconds. ValueError says how to write it."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: write ISO 8601 with the time zone, e.g."
            " 2026-11-30T14:05:00Z, or unix seconds"
        ) from None
    if found.tzinfo is None:
        raise ValueError(
            f"'{text}' has no time zone, and the 24-hour window needs one: add Z for UTC"
            " (2026-11-30T14:05:00Z) or the offset (+02:00)"
        )
    return found.astimezone(UTC)


def ledger_time(text: str | None) -> datetime | None:
    """A time the ledger or a webhook wrote (ISO 8601 UTC); None if absent or unreadable."""
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """What is known of one customer's window, from every source."""

    wrote: datetime | None = None  # their latest message (ledger or CSV)
    trusted: bool = False  # settings.window: open
    closed: datetime | None = None  # the API's latest refusal for a closed window
    code: int | None = None  # that refusal's error code (kept on the step that waits for it)

    def open_at(self, now: datetime) -> bool:
        if self.closed is not None and (self.wrote is None or self.closed > self.wrote + SLACK):
            return False  # the API's word is later than anything else we know (a message
            # stamped in the same seconds may have come after it: tried once more)
        if self.wrote is not None and now < self.wrote + WINDOW:
            return True
        return self.trusted

    def until(self) -> datetime | None:
        """When it closes, if a customer message opened it."""
        return self.wrote + WINDOW if self.wrote is not None else None


# What a step that may go (not withheld, not skipped by `when`) waits for (`classify`); the
# same words as a waiting row's error_title in the ledger.
WAITS_WINDOW = "window"  # for the customer to write: the step needs their window open
WAITS_ANSWER = "answer"  # for their answer to an earlier step, which its `when` reads


def classify(
    free_form: bool, window: Window, now: datetime, *, answer_pending: bool = False
) -> str | None:
    """What one step for one customer waits for, as a run decides it (runner/executor.py
    `_serve`): the answer its `when` reads (`answer_pending`: render's `Waiting`), else the
    window, for anything but a template while it is not open; None: due now. `plan` counts
    with it, so what it says a run would do is what a run does."""
    if answer_pending:
        return WAITS_ANSWER
    if free_form and not window.open_at(now):
        return WAITS_WINDOW
    return None


def latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def closed_at(
    history: Iterable[StepRecord], closed_code: Callable[[int | None], bool]
) -> tuple[datetime | None, int | None]:
    """When the API last said this customer's window was closed, and its error code: a
    refusal recorded on a waiting step, or a `failed` delivery status (131047 mostly arrives
    that way, after a 200). `closed_code` is the dialect's `window_closed`."""
    found: tuple[datetime | None, int | None] = (None, None)
    for record in history:
        when, code = None, None
        if record.state == "waiting" and closed_code(record.error_code):
            when, code = ledger_time(record.at), record.error_code
        elif record.delivery == "failed" and closed_code(record.delivery_code):
            when, code = ledger_time(record.failed_at or record.at), record.delivery_code
        if when is not None and (found[0] is None or when > found[0]):
            found = (when, code)
    return found


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of one step for one customer: its message's status, and what the
    customer did after it was sent to them."""

    sent: bool = False
    answered: bool = False
    reply: str | None = None  # the text of their first message after it ("" if it had none)
    button: str | None = None  # the payload of the quick reply they tapped on it
    status: str | None = None  # sent, delivered, read, failed, skipped, waiting; None: not yet
    sent_at: str | None = None  # ISO 8601 UTC
    replied_at: datetime | None = None

    @property
    def pending(self) -> bool:
        """Sent, and not answered yet: a `when:` reading it must wait."""
        return self.sent and not self.answered

    def fields(self) -> Mapping[str, Any]:
        """What `steps.NAME` shows a `when:` (HISTORY_FIELDS)."""
        return {
            "button": self.button,
            "reply": self.reply,
            "answered": self.answered,
            "status": self.status,
            "sent_at": self.sent_at,
        }


NOT_SENT = Answer()
UNANSWERED = Answer(sent=True, status="sent")


def answer_to(record: StepRecord | None, inbound: Iterable[Inbound]) -> Answer:
    """The customer's answer to one step, from the ledger's rows (`inbound` oldest first)."""
    if record is None:
        return NOT_SENT
    if record.state != "sent":
        return Answer(status=record.state)
    sent_at = ledger_time(record.at)
    status = record.delivery or "sent"
    if sent_at is None:
        return Answer(sent=True, status=status, sent_at=record.at)
    reply: str | None = None
    button: str | None = None
    replied_at: datetime | None = None
    for message in inbound:
        ours = record.message_id is not None and message.context == record.message_id
        after = (ledger_time(message.at) or sent_at - 2 * SLACK) >= sent_at - SLACK
        if not (ours or after):
            continue
        if reply is None:
            reply = message.text or ""
            replied_at = ledger_time(message.at)
        if button is None and message.payload is not None and (ours or message.context is None):
            button = message.payload
    if reply is None:
        return Answer(sent=True, status=status, sent_at=record.at)
    return Answer(True, True, reply, button, status, record.at, replied_at)


def event_time(record: StepRecord | None, event: str, answer: Answer) -> datetime | None:
    """When `event` (sent, delivered, read, replied) happened to a step's message; None: not
    (yet). A read message was delivered, whatever order the webhooks came in."""
    if record is None or record.state != "sent":
        return None
    if event == "sent":
        return ledger_time(record.at)
    if event == "replied":
        return answer.replied_at
    if event == "read":
        return ledger_time(record.read_at)
    return ledger_time(record.delivered_at) or ledger_time(record.read_at)
