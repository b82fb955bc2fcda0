"""Delivery statuses from WhatsApp's webhooks: read, verified, and kept in the ledger.

A 200 from `/messages` means the API accepted a message; whether it reached the customer comes
later, as a status callback: On-Premises `{"statuses": [...]}`, Cloud
`{"entry": [{"changes": [{"value": {"statuses": [...]}}]}]}`. They arrive out of order and more
than once (Meta retries for a day), so applying them is idempotent and monotonic: a status only
ever moves forward (sent → delivered → read → deleted; failed is final), each kept with its
first time.

They are kept in their own table, keyed by the API's message id, not written into `messages`:
a status whose message the ledger does not know yet (the webhook was faster than the group
commit, or the message belongs to another run) is kept, and matched when the message shows up,
because reports join the two tables by message id.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# How far along a message is; a status never replaces a further one.
RANK = {"sent": 1, "delivered": 2, "read": 3, "deleted": 4, "failed": 5}

SCHEMA = """
CREATE TABLE IF NOT EXISTS statuses (
    message_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    recipient TEXT,
    error_code INTEGER,
    error_title TEXT,
    error_details TEXT,
    sent_at TEXT,
    delivered_at TEXT,
    read_at TEXT,
    failed_at TEXT,
    received_at TEXT NOT NULL
) WITHOUT ROWID;
"""

_TIMES = ("sent_at", "delivered_at", "read_at", "failed_at")
_FIRST_TIME = ",\n".join(  # the earliest time seen of each status: repeats change nothing
    f"{c} = min(coalesce(statuses.{c}, excluded.{c}), coalesce(excluded.{c}, statuses.{c}))"
    for c in _TIMES
)
_APPLY = f"""
INSERT INTO statuses (message_id, status, rank, recipient, error_code, error_title,
    error_details, sent_at, delivered_at, read_at, failed_at, received_at)
VALUES (:id, :status, :rank, :recipient, :code, :title, :details,
    :sent_at, :delivered_at, :read_at, :failed_at, :received_at)
ON CONFLICT (message_id) DO UPDATE SET
    status = CASE WHEN excluded.rank > statuses.rank THEN excluded.status ELSE statuses.status END,
    rank = max(statuses.rank, excluded.rank),
    recipient = coalesce(statuses.recipient, excluded.recipient),
    error_code = coalesce(statuses.error_code, excluded.error_code),
    error_title = coalesce(statuses.error_title, excluded.error_title),
    error_details = coalesce(statuses.error_details, excluded.error_details),
    {_FIRST_TIME},
    received_at = excluded.received_at
"""


@dataclass(frozen=True, slots=True)
class Status:
    message_id: str
    status: str
    at: str  # ISO 8601 UTC, from the callback's timestamp
    recipient: str | None = None
    code: int | None = None
    title: str | None = None
    details: str | None = None


def parse(payload: Any) -> list[Status]:
    """The statuses in a callback of either dialect; anything else in it (incoming messages,
    other fields) is not for flowrun and is left alone."""
    found: list[Any] = []
    if isinstance(payload, dict):
        found.extend(_list(payload.get("statuses")))
        for entry in _list(payload.get("entry")):
            for change in _list(entry.get("changes") if isinstance(entry, dict) else None):
                value = change.get("value") if isinstance(change, dict) else None
                if isinstance(value, dict):
                    found.extend(_list(value.get("statuses")))
    return [status for item in found if (status := _status(item)) is not None]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _status(item: Any) -> Status | None:
    if not isinstance(item, dict):
        return None
    message_id, status = item.get("id"), item.get("status")
    if not isinstance(message_id, str) or status not in RANK:
        return None
    errors = _list(item.get("errors"))
    error = errors[0] if errors and isinstance(errors[0], dict) else {}
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    code = error.get("code")
    return Status(
        message_id,
        status,
        _time(item.get("timestamp")),
        str(item["recipient_id"]) if "recipient_id" in item else None,
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        str(error.get("title") or error.get("message") or "") or None,
        str(details or error.get("details") or "") or None,
    )


def _time(stamp: Any) -> str:
    try:
        moment = datetime.fromtimestamp(int(stamp), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="seconds")


def apply(db: sqlite3.Connection, statuses: list[Status]) -> None:
    """Record statuses in one transaction (the caller commits); any order, any repetition."""
    received = datetime.now(UTC).isoformat(timespec="milliseconds")
    db.executemany(
        _APPLY,
        [
            {
                "id": s.message_id,
                "status": s.status,
                "rank": RANK[s.status],
                "recipient": s.recipient,
                "code": s.code,
                "title": s.title,
                "details": s.details,
                "sent_at": s.at if s.status == "sent" else None,
                "delivered_at": s.at if s.status == "delivered" else None,
                "read_at": s.at if s.status == "read" else None,
                "failed_at": s.at if s.status == "failed" else None,
                "received_at": received,
            }
            for s in statuses
        ],
    )


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Meta's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, compared in
    constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    given = header.removeprefix("sha256=").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected, given)  # bytes: any header, even a non-ASCII one


def sign(secret: str, body: bytes) -> str:
    """The header value Meta would send (the sandbox signs its callbacks with it)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
