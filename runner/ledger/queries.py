"""The reads a run and the read-only reader (reports, `plan`, `preview`) share, written once so
that what `plan` says of a recipient is what a run reads of them."""

from __future__ import annotations

from .records import SETTLED_RANK

# step → its row and its message's delivery status (StepRecord's fields, in order)
HISTORY = (
    "SELECT m.step, m.state, m.body_hash, m.message_id, m.last_attempt,"
    " m.first_attempt, m.error_code, m.error_title, s.status, s.error_code, s.failed_at,"
    " s.delivered_at, s.read_at"
    " FROM messages AS m LEFT JOIN statuses AS s ON s.message_id = m.message_id"
    " WHERE m.flow = ? AND m.recipient = ?"
)
# One customer's messages to a business number, oldest first (Inbound's fields, in order)
INBOUND_OF = (
    "SELECT message_id, business, customer, at, kind, text, payload, context"
    " FROM inbound WHERE business = ? AND customer = ? ORDER BY at"
)
# ... and their marketing preferences (Preference's fields, in order)
PREFERENCES_OF = (
    "SELECT business, customer, at, value, category FROM preferences"
    " WHERE business = ? AND customer = ? ORDER BY at"
)
# Whether any customer of a business number wrote or set a preference
HEARD = (
    "SELECT 1 FROM inbound WHERE business = ?"
    " UNION ALL SELECT 1 FROM preferences WHERE business = ? LIMIT 1"
)
# How many of a flow's messages sent since a time have no final status yet (read, played,
# deleted or failed: SETTLED_RANK), for a run with --listen that waits for them
# (runner/receiver/process.py, await_statuses)
UNSETTLED = (
    "SELECT count(*) FROM messages AS m LEFT JOIN statuses AS s ON s.message_id = m.message_id"
    " WHERE m.flow = ? AND m.state = 'sent' AND m.last_attempt >= ?"
    f" AND coalesce(s.rank, 0) < {SETTLED_RANK:d}"
)
