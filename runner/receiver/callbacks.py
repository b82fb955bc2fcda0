"""WhatsApp's webhook callbacks: their statuses read out of either dialect's envelope, and
their signatures checked.

A 200 from `/messages` means the API accepted a message; whether it reached the customer comes
later, as a status callback: On-Premises `{"statuses": [...]}`, Cloud
`{"entry": [{"changes": [{"value": {"statuses": [...]}}]}]}`. They arrive out of order and
more than once (Meta retries for up to 7 days), so applying them is idempotent and monotonic:
a status only ever moves forward (sent → delivered → read → deleted; failed is final), each
kept with its first time.

The ledger keeps them by the API's message id (runner/ledger/schema.py says why); shapes and
sources: docs/whatsapp-api.md#status-webhooks and #webhook-verification-and-signatures.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from runner.ledger import RANK, Status
from runner.untrusted import printable, printable_or_none


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
    message_id = printable(message_id)  # as the dialects keep it, so that the two still join
    errors = _list(item.get("errors"))
    error = errors[0] if errors and isinstance(errors[0], dict) else {}
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    code = error.get("code")
    return Status(
        message_id,
        status,
        _time(item.get("timestamp")),
        printable_or_none(item.get("recipient_id")),
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        printable_or_none(error.get("title") or error.get("message")),
        printable_or_none(details or error.get("details")),
    )


def _time(stamp: Any) -> str:
    try:
        moment = datetime.fromtimestamp(int(stamp), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="seconds")


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
