"""Records as table rows, in the columns' order: the one mapping both stores write with
(sqlite.py, postgres.py), so a field never lands in another column in one of them."""

from __future__ import annotations

from .records import Inbound, Outcome, Preference, Status

# The first time of each status, one column each (statuses table)
TIMES = ("sent_at", "delivered_at", "read_at", "failed_at")


def outcome_row(flow: str, o: Outcome, stamp: str) -> tuple[object, ...]:
    return (
        flow,
        o.step,
        o.recipient,
        o.state,
        o.message_id,
        o.http_status,
        o.error_code,
        o.error_title,
        o.error_details,
        o.attempts,
        stamp,
        stamp,
    )


def status_row(s: Status, received: str) -> tuple[object, ...]:
    times = tuple(s.at if column == f"{s.status}_at" else None for column in TIMES)
    return (
        s.message_id,
        s.status,
        s.rank,
        s.recipient,
        s.code,
        s.title,
        s.details,
        s.category,
        s.billable,
        *times,
        received,
    )


def preference_row(p: Preference, received: str) -> tuple[object, ...]:
    return (p.business, p.customer, p.category, p.at, p.value, received)


def inbound_row(m: Inbound, received: str) -> tuple[object, ...]:
    row = (m.message_id, m.business, m.customer, m.at, m.kind, m.text, m.payload, m.context)
    return (*row, received)
