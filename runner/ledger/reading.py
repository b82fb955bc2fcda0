"""Reading a ledger for people and tools: `flowrun report`, `plan`, `preview`.

Opened read-only (`mode=ro`), so a report can run while a campaign is sending and the
receiver is recording; it never migrates or creates anything in the file. Every query that
joins a message to what the webhooks said of it is here, once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .queries import HEARD, HISTORY, INBOUND_OF, PREFERENCES_OF
from .records import Inbound, LedgerError, Preference, StepRecord
from .schema import CUSTOMERS, DELIVERY_COLUMNS, MESSAGE_COLUMNS, STATUSES
from .sqlite import damaged, is_damage

_JOIN = "FROM messages m LEFT JOIN statuses s ON s.message_id = m.message_id"
# Clock slack for attributing a customer's message to a step: its `at` has whole seconds (the
# webhook's unix timestamp), a message's last_attempt has milliseconds and the machine's clock.
SLACK_SECONDS = 2.0
# The step a customer's event (customer `{who}`, at `{at}`, in the flow `f.flow`) follows: the
# latest of their messages of the flow that was sent and not refused by a `failed` status (a
# 131047 arrives that way: the customer never had it). One range of the primary key
# (flow, recipient, step), a few rows per recipient.
_LATEST_STEP = """(SELECT m.step FROM messages m
    LEFT JOIN statuses s ON s.message_id = m.message_id
    WHERE m.flow = f.flow AND m.recipient = {who} AND m.state = 'sent'
      AND coalesce(s.status, '') != 'failed'
      AND julianday(m.last_attempt) <= julianday({at}) + ?
    ORDER BY julianday(m.last_attempt) DESC, m.step DESC LIMIT 1)"""
_DELIVERY = (  # in DELIVERY_COLUMNS' order
    "s.status",
    "s.delivered_at",
    "s.read_at",
    "s.error_code",
    "coalesce(s.error_title, '') || coalesce(': ' || s.error_details, '')",
    "s.pricing_category",
)


@dataclass(frozen=True, slots=True)
class Count:
    flow: str
    step: str
    state: str  # a message state, or a delivery status ('waiting': nothing heard yet)
    count: int


@dataclass(frozen=True, slots=True)
class Heard:
    """A customer's message, as `report` attributes it within one flow (`LedgerReader.heard`)."""

    flow: str
    step: str | None  # the latest step received before it: the one it counts for as a reply
    recipient: str
    at: str  # the message's own time
    kind: str  # text, button, interactive, image, ...
    text: str | None
    payload: str | None  # a quick reply's payload, when it is a tap on `tapped`
    tapped: str | None  # the step whose message the tap answers (its `context`)


@dataclass(frozen=True, slots=True)
class Stopped:
    """A `preferences` stop (`LedgerReader.stops`), attributed like a reply."""

    flow: str
    step: str
    recipient: str
    category: str  # marketing_messages (the customer's), imported (the business's list)


@dataclass(frozen=True, slots=True)
class FailureGroup:
    http_status: int | None
    code: int | None
    title: str | None
    count: int
    recipients: tuple[str, ...]  # the first few


class LedgerReader:
    """A ledger file, read-only. `flow` None: every flow in it."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise LedgerError(
                f"{path}: no ledger here; run the flow first, or name one with --ledger"
            )
        self.path = path
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._db.execute("SELECT 1 FROM messages LIMIT 1")
            self._stand_in_for_missing()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(path, exc) from None
            raise LedgerError(f"{path}: not a flowrun ledger ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _query(self, query: str, args: tuple[object, ...]) -> list[Any]:
        try:
            return self._db.execute(query, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise damaged(self.path, exc) from None

    def _stand_in_for_missing(self) -> None:
        """A ledger no run or receiver has opened since a newer schema (read-only: it is not
        migrated here): what it lacks reads as empty."""
        if not self._has("statuses"):
            self._db.executescript(
                STATUSES.replace("CREATE TABLE", "CREATE TEMP TABLE")
                + "ALTER TABLE temp.statuses ADD COLUMN pricing_category TEXT;"
                " ALTER TABLE temp.statuses ADD COLUMN billable INTEGER;"
            )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(statuses)")}
        if "pricing_category" not in columns:
            self._db.execute(
                "CREATE TEMP VIEW statuses AS SELECT *, NULL AS pricing_category,"
                " NULL AS billable FROM main.statuses"
            )
        if not self._has("inbound"):  # schema 3 added customers' messages and preferences
            tables = CUSTOMERS[CUSTOMERS.index("CREATE TABLE IF NOT EXISTS inbound") :]
            self._db.executescript(tables.replace("CREATE TABLE", "CREATE TEMP TABLE"))

    def _has(self, table: str) -> bool:
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,))
        return found.fetchone() is not None

    @staticmethod
    def _where(flow: str | None, *more: str) -> tuple[str, tuple[str, ...]]:
        clauses = (["m.flow = ?"] if flow is not None else []) + list(more)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return where, ((flow,) if flow is not None else ())

    def rows(self, flow: str | None) -> Iterator[tuple[object, ...]]:
        """Every message with its delivery columns (MESSAGE_COLUMNS + DELIVERY_COLUMNS)."""
        where, args = self._where(flow)
        selected = ", ".join([f"m.{name}" for name in MESSAGE_COLUMNS] + list(_DELIVERY))
        query = f"SELECT {selected} {_JOIN} {where} ORDER BY m.flow, m.recipient, m.step"
        try:  # streamed: a million rows are never in memory at once
            yield from self._db.execute(query, args)
        except sqlite3.DatabaseError as exc:
            raise damaged(self.path, exc) from None

    columns = (*MESSAGE_COLUMNS, *DELIVERY_COLUMNS)

    def state_counts(self, flow: str | None) -> list[Count]:
        where, args = self._where(flow)
        query = f"SELECT m.flow, m.step, m.state, count(*) FROM messages m {where} GROUP BY 1, 2, 3"
        return [Count(*row) for row in self._query(query, args)]

    def failures(self, flow: str | None, sample: int = 5) -> list[FailureGroup]:
        """Failed messages grouped by the API's answer, largest group first."""
        where, args = self._where(flow, "m.state = 'failed'")
        query = (
            "SELECT m.http_status, m.error_code, m.error_title, count(*),"
            f" group_concat(m.recipient, char(31)) FROM messages m {where}"
            " GROUP BY 1, 2, 3 ORDER BY 4 DESC"
        )
        return [
            FailureGroup(status, code, title, count, tuple(who.split("\x1f")[:sample]))
            for status, code, title, count, who in self._query(query, args)
        ]

    def uncertain(
        self, flow: str | None, limit: int = 20, state: str = "uncertain"
    ) -> list[tuple[str, str]]:
        """(step, recipient) of messages that may or may not have reached the API (`state`
        "sending": those in flight, or left so by a run stopped hard)."""
        where, args = self._where(flow, "m.state = ?")
        query = f"SELECT m.step, m.recipient FROM messages m {where} ORDER BY 2 LIMIT {limit:d}"
        return [(step, who) for step, who in self._query(query, (*args, state))]

    def delivery_counts(self, flow: str | None) -> list[Count]:
        """What the webhooks said of the sent messages, per step ('waiting': nothing yet)."""
        where, args = self._where(flow, "m.state = 'sent'")
        query = (
            f"SELECT m.flow, m.step, coalesce(s.status, 'waiting'), count(*) {_JOIN} {where}"
            " GROUP BY 1, 2, 3"
        )
        return [Count(*row) for row in self._query(query, args)]

    def delivery_failures(self, flow: str | None) -> list[tuple[int | None, str | None, int]]:
        """(error code, title, count) of sent messages the webhooks said failed."""
        where, args = self._where(flow, "m.state = 'sent'", "s.status = 'failed'")
        query = f"SELECT s.error_code, s.error_title, count(*) {_JOIN} {where} GROUP BY 1, 2"
        rows = [(code, title, count) for code, title, count in self._query(query, args)]
        return sorted(rows, key=lambda row: -row[2])

    def waiting(self, flow: str | None) -> list[Count]:
        """Messages that wait, per step and reason (`state` here is the reason, error_title:
        "window" = until the customer writes, "answer" = until they answer an earlier step)."""
        where, args = self._where(flow, "m.state = 'waiting'")
        query = (
            "SELECT m.flow, m.step, coalesce(m.error_title, 'unknown'), count(*)"
            f" FROM messages m {where} GROUP BY 1, 2, 3"
        )
        return [Count(*row) for row in self._query(query, args)]

    def heard(self, flow: str | None) -> list[Heard]:
        """Every customer message that follows a step of the flow, or taps a button on one of
        its messages, oldest first per recipient.

        Customers are matched by WhatsApp id (`inbound.customer` = `messages.recipient`), on
        any business number. A message counts as a reply for the latest step the customer had
        received at its time (sent, not refused by a `failed` status, last_attempt at most
        SLACK_SECONDS after `at`): so it answers that step, until their next step was sent.
        A tap counts for the step whose message its `context` names, whenever it came.
        Set-based: one pass over `inbound` (per flow in the ledger), each message looked up by
        the messages' primary key, never a query per recipient."""
        flows, args = self._where(flow)
        latest = _LATEST_STEP.format(who="i.customer", at="i.at")
        query = f"""
            WITH f AS (SELECT DISTINCT m.flow FROM messages m {flows})
            SELECT * FROM (
                SELECT f.flow, {latest} AS step, i.customer, i.at, i.kind, i.text,
                    i.payload, CASE WHEN i.payload IS NOT NULL THEN (
                        SELECT m.step FROM messages m WHERE m.flow = f.flow
                        AND m.recipient = i.customer AND m.message_id = i.context) END AS tapped
                FROM f CROSS JOIN inbound i
            ) WHERE step IS NOT NULL OR tapped IS NOT NULL
            ORDER BY flow, customer, at"""
        rows = self._query(query, (*args, *self._slack()))
        return [Heard(*row) for row in rows]

    def stops(self, flow: str | None) -> list[Stopped]:
        """`preferences` stops, each attributed to the step it followed, as `heard` does."""
        flows, args = self._where(flow)
        latest = _LATEST_STEP.format(who="p.customer", at="p.at")
        query = f"""
            WITH f AS (SELECT DISTINCT m.flow FROM messages m {flows})
            SELECT * FROM (
                SELECT f.flow, {latest} AS step, p.customer, p.category
                FROM f CROSS JOIN preferences p WHERE p.value = 'stop'
            ) WHERE step IS NOT NULL"""
        return [Stopped(*row) for row in self._query(query, (*args, *self._slack()))]

    # What customers said, read as a run reads it (SqliteLedger.has_heard, .heard_from), for a
    # `plan` or `validate` that must not migrate nor create anything in the file.

    def has_heard(self, business: str) -> bool:
        """Whether any customer of this business number wrote or set a preference."""
        return bool(self._query(HEARD, (business, business)))

    def heard_from(self, business: str, customer: str) -> tuple[list[Inbound], list[Preference]]:
        """What one customer sent this business number (oldest first), and their preferences."""
        who = (business, customer)
        inbound = self._query(INBOUND_OF, who)
        preferences = self._query(PREFERENCES_OF, who)
        return [Inbound(*row) for row in inbound], [Preference(*row) for row in preferences]

    def has_rows(self, flow: str) -> bool:
        """Whether any run recorded a message of this flow (else no recipient has a history)."""
        return bool(self._query("SELECT 1 FROM messages WHERE flow = ? LIMIT 1", (flow,)))

    def history(self, flow: str, recipient: str) -> dict[str, StepRecord]:
        """step → what happened to one recipient's step, as a run reads it
        (SqliteLedger.history): what `plan` needs to say when a step `after:` one is due."""
        rows = self._query(HISTORY, (flow, recipient))
        return {row[0]: StepRecord(*row[1:]) for row in rows}

    def wrote_since(self, business: str, since: str) -> set[str]:
        """The customers of this business number whose latest message is at or after `since`
        (ISO 8601): whose window may be open. One pass, not a query per recipient."""
        query = (
            "SELECT DISTINCT customer FROM inbound"
            " WHERE business = ? AND julianday(at) >= julianday(?)"
        )
        return {customer for (customer,) in self._query(query, (business, since))}

    @staticmethod
    def _slack() -> tuple[float]:
        return (SLACK_SECONDS / 86400,)  # julianday counts days
