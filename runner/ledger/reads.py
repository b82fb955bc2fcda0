"""The reads a run makes of its ledger, written once for both stores (sqlite.py, postgres.py):
the same SQL with `?` placeholders (the PostgreSQL store's `_read` turns them into psycopg's),
so what a run learns of a recipient never depends on where the ledger lives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from .queries import HEARD, HISTORY, INBOUND_OF, PREFERENCES_OF, UNSETTLED
from .records import Inbound, Preference, State, StepRecord


class Reads:
    """A store's reads; the store gives `flow` and `_read(query, args)` (every row)."""

    flow: str

    def _read(self, query: str, args: tuple[str, ...]) -> list[Any]:
        raise NotImplementedError

    def recipient_states(self, recipient: str) -> dict[str, tuple[State, str | None]]:
        """step → (state, body hash) of one recipient's messages."""
        return {step: (r.state, r.body_hash) for step, r in self.history(recipient).items()}

    def history(self, recipient: str) -> dict[str, StepRecord]:
        """step → what happened to one recipient's step, with its delivery status (one indexed
        range, and a primary-key lookup per sent message)."""
        rows = self._read(HISTORY, (self.flow, recipient))
        return {row[0]: StepRecord(*row[1:]) for row in rows}

    def statuses_since(self, received: str) -> list[tuple[str, str, str]]:
        """(recipient, message id, received_at) of the statuses recorded or moved at or after
        `received`, oldest first: what `--follow` wakes a step waiting for a read with."""
        rows = self._read(
            "SELECT recipient, message_id, received_at FROM statuses"
            " WHERE received_at >= ? AND recipient IS NOT NULL ORDER BY received_at",
            (received,),
        )
        return [(recipient, message_id, at) for recipient, message_id, at in rows]

    def inbound_since(self, business: str, received: str) -> list[tuple[str, str, str]]:
        """(customer, message id, received_at) of the customer messages recorded at or after
        `received` (a receiver's time stamp), oldest first: what `--follow` reacts to."""
        rows = self._read(
            "SELECT customer, message_id, received_at FROM inbound"
            " WHERE received_at >= ? AND business = ? ORDER BY received_at",
            (received, business),
        )
        return [(customer, message_id, at) for customer, message_id, at in rows]

    def unsettled(self, since: str) -> int:
        """How many of this flow's messages sent at or after `since` have no final status yet:
        what a run with --listen waits for (runner/receiver/process.py, await_statuses), on the
        run's own connection, which sees what its receiver commits."""
        return int(self._read(UNSETTLED, (self.flow, since))[0][0])

    def states(self) -> dict[tuple[str, str], State]:
        """(step, recipient) → state of every message of this flow."""
        rows = self._read(
            "SELECT step, recipient, state FROM messages WHERE flow = ?", (self.flow,)
        )
        return {(step, recipient): state for step, recipient, state in rows}

    def other_flows(self) -> list[str]:
        """Flow names this ledger holds besides this one's (to notice a renamed flow)."""
        rows = self._read(
            "SELECT DISTINCT flow FROM messages WHERE flow != ? ORDER BY flow", (self.flow,)
        )
        return [name for (name,) in rows]

    def has_rows(self) -> bool:
        return bool(self._read("SELECT 1 FROM messages WHERE flow = ? LIMIT 1", (self.flow,)))

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT state, count(*) FROM messages WHERE flow = ? GROUP BY state", (self.flow,)
        )
        return {state: int(n) for state, n in rows}

    def failure_of(self, step: str, recipient: str) -> tuple[int | None, str | None]:
        """The error code and time of a failed message's last attempt."""
        rows = self._read(
            "SELECT error_code, last_attempt FROM messages"
            " WHERE flow = ? AND recipient = ? AND step = ?",
            (self.flow, recipient, step),
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def has_heard(self, business: str) -> bool:
        """Whether any customer of this business number wrote or set a preference (if none
        did, a run asks nothing per recipient)."""
        return bool(self._read(HEARD, (business, business)))

    def customers_heard(self, business: str) -> list[str]:
        """Every customer of this business number who wrote or set a preference."""
        rows = self._read(
            "SELECT customer FROM inbound WHERE business = ?"
            " UNION SELECT customer FROM preferences WHERE business = ? ORDER BY 1",
            (business, business),
        )
        return [customer for (customer,) in rows]

    def heard_from(self, business: str, customer: str) -> tuple[list[Inbound], list[Preference]]:
        """What one customer sent this business number, and their preferences (each one
        indexed range)."""
        who = (business, customer)
        inbound = self._read(INBOUND_OF, who)
        preferences = self._read(PREFERENCES_OF, who)
        return [Inbound(*row) for row in inbound], [Preference(*row) for row in preferences]

    def media_id(
        self, api: str, sha256: str, max_age: timedelta | None = None, at: datetime | None = None
    ) -> str | None:
        """The media id this file was uploaded as, unless older than `max_age` at `at` (the
        Cloud API forgets media after 30 days: an older id would fail every message)."""
        rows = self._read(
            "SELECT media_id, uploaded_at FROM uploads WHERE api = ? AND sha256 = ?", (api, sha256)
        )
        if not rows:
            return None
        media_id, uploaded_at = rows[0]
        if max_age is not None:
            try:
                uploaded = datetime.fromisoformat(uploaded_at)
            except ValueError:
                return None  # unreadable: upload again rather than trust it
            if (at or datetime.now(UTC)) - uploaded >= max_age:
                return None
        return str(media_id)
