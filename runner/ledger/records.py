"""What the ledger holds, as typed records: the only shapes that cross its boundary.

The executor, the receiver and the reports speak these; every store (SQLite today) turns them
into rows, and the writer process receives them by field name (wire.py), so adding a field
never shifts another one silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from runner import clock
from runner.errors import FlowrunError

State = Literal["sending", "sent", "failed", "skipped", "uncertain", "waiting"]
STATES: tuple[State, ...] = ("sending", "sent", "failed", "skipped", "uncertain", "waiting")
DONE_STATES: tuple[State, ...] = ("sent", "skipped")  # never sent again

# How far along a delivered message is; a status never replaces a further one
# (docs/whatsapp-api.md#webhook-delivery: callbacks come out of order and more than once).
# `played` (Cloud: a voice message first played) and `deleted` (On-Premises) never meet, so they
# share a rank; the ranks are stored, so an existing one never changes.
RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "deleted": 4, "failed": 5}
SETTLED_RANK = RANK["read"]  # read, deleted, failed: nothing more will be heard


class LedgerError(FlowrunError):
    """The ledger cannot be used: busy, unwritable, or not a flowrun ledger."""


@dataclass(frozen=True, slots=True)
class Mark:
    """A message about to be sent: durable before its request leaves."""

    step: str
    recipient: str
    body_hash: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at one message ended in."""

    step: str
    recipient: str
    state: State
    message_id: str | None = None
    http_status: int | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_details: str | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What the ledger holds of one recipient's step: its row, and what the delivery webhooks
    said of the message it sent (a `sent` message may still have failed: 131047 arrives as a
    `failed` status after the API took the request)."""

    state: State
    body_hash: str | None = None
    message_id: str | None = None
    at: str | None = None  # when the row was last written (a sent message: when it went)
    since: str | None = None  # when the row was first written (a waiting step: since when)
    error_code: int | None = None
    error_title: str | None = None  # a skipped or waiting step: why (`expired`, `window`, ...)
    delivery: str | None = None  # the furthest status heard: delivered, read, failed, ...
    delivery_code: int | None = None  # the error code of a failed status
    failed_at: str | None = None  # when the status said it failed
    delivered_at: str | None = None
    read_at: str | None = None


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A local file's media id at one API (`api` is the dialect's upload key)."""

    api: str
    sha256: str
    media_id: str


@dataclass(frozen=True, slots=True)
class Status:
    """A delivery status from a webhook, for the message the API knows by `message_id`."""

    message_id: str
    status: str
    at: str  # ISO 8601 UTC, from the callback's timestamp
    recipient: str | None = None
    code: int | None = None
    title: str | None = None
    details: str | None = None
    category: str | None = None  # pricing: marketing, utility, authentication, service, ...
    billable: bool | None = None

    @property
    def rank(self) -> int:
        return RANK[self.status]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from a customer: it opens (or refreshes) their 24-hour window, may answer one
    of ours, and may ask to stop (docs/whatsapp-api.md#incoming-messages)."""

    message_id: str
    business: str  # the business number it reached: Cloud phone_number_id, "" if not said
    customer: str  # the customer's WhatsApp id
    at: str  # the message's own time (ISO 8601 UTC): the window runs from it
    kind: str  # text, button, interactive, image, ... as WhatsApp names it
    text: str | None = None  # text.body, a button's or reply's title, a media caption
    payload: str | None = None  # a quick reply's payload, a reply button's or list row's id
    context: str | None = None  # the id of our message it answers


@dataclass(frozen=True, slots=True)
class Preference:
    """A customer's choice about marketing messages from a business (Cloud `user_preferences`
    webhook): `stop` or `resume`, at the time they made it."""

    business: str
    customer: str
    at: str
    value: str  # "stop" or "resume"
    category: str = "marketing_messages"


@dataclass(slots=True)
class Batch:
    """Writes committed together in one durable transaction (a group commit)."""

    marks: list[Mark] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    uploads: list[Uploaded] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)  # learnt from the API's answers

    def __bool__(self) -> bool:
        return bool(self.marks or self.outcomes or self.uploads or self.preferences)


def now() -> str:
    """The ledger's time stamps: UTC ISO 8601 to the millisecond (they sort as text)."""
    return clock.now().isoformat(timespec="milliseconds")


def refuse_filled(location: str, held: dict[str, int]) -> None:
    """A copy goes into an empty ledger only (copy.py says why)."""
    if held:
        rows = ", ".join(f"{table} {n}" for table, n in held.items())
        raise LedgerError(
            f"{location}: already holds rows ({rows}); ledger copy only fills an empty ledger,"
            " so nothing was copied: name a new file, database or schema"
        )
