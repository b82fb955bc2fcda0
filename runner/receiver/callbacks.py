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

MAX_ID = 256  # characters of a message id (Cloud's wamid.… ids run to ~60)
INT64 = range(-(2**63), 2**63)  # what SQLite's INTEGER holds: an error code must fit
LAST_TIME = 4_102_444_800  # 2100-01-01 in unix seconds: a later status time is not a time


class Invalid(ValueError):
    """A status whose values cannot be right: its callback is refused on its own (400) and
    never reaches the shared write, where it would fail everyone's commit."""


def parse(payload: Any) -> list[Status]:
    """The statuses in a callback of either dialect; anything else in it (incoming messages,
    other fields, statuses flowrun does not track) is not for flowrun and is left alone.
    A tracked status with values out of range raises Invalid."""
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
    if not isinstance(item, dict) or item.get("status") not in RANK:
        return None
    errors = _list(item.get("errors"))
    error = errors[0] if errors and isinstance(errors[0], dict) else {}
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    return Status(
        _message_id(item.get("id")),
        item["status"],
        _time(item.get("timestamp")),
        printable_or_none(item.get("recipient_id")),  # printable: at most 1,000 characters
        _code(error.get("code")),
        printable_or_none(error.get("title") or error.get("message")),
        printable_or_none(details or error.get("details")),
    )


def _message_id(value: Any) -> str:
    """Never cut short (a cut id would join no message, or the wrong one)."""
    if not isinstance(value, str) or len(value) > MAX_ID:
        raise Invalid(f"a status's id must be text of at most {MAX_ID} characters")
    message_id = printable(value)  # as the dialects keep it, so that the two still join
    if not message_id:
        raise Invalid("a status has an empty id")
    return message_id


def _code(value: Any) -> int | None:
    """An error code: an integer that fits in 64 bits. Anything but an integer is no code
    (a bool is not one either); an integer too large to store refuses the callback."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if value not in INT64:
        raise Invalid("a status's error code does not fit in 64 bits")
    return value


def _time(stamp: Any) -> str:
    """Unix seconds (Meta sends them as a string). Unreadable: the time it was received; a
    number outside 1970–2100 is no status's time and refuses the callback."""
    try:
        seconds = int(stamp)
    except (TypeError, ValueError):
        return datetime.now(UTC).isoformat(timespec="seconds")
    if not 0 <= seconds <= LAST_TIME:
        raise Invalid("a status's timestamp is not between 1970 and 2100")
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def looks_signed(header: str | None) -> bool:
    """Whether a request carries a signature worth checking: without one it is refused before
    its body is read."""
    return header is not None and header.startswith("sha256=")


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
