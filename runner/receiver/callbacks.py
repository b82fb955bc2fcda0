"""WhatsApp's webhook callbacks: what they say read out of either dialect's envelope (delivery
statuses, customers' messages, marketing preferences), and their signatures checked.

A 200 from `/messages` means the API accepted a message; whether it reached the customer comes
later, as a status callback: On-Premises `{"statuses": [...]}`, Cloud
`{"entry": [{"changes": [{"value": {"statuses": [...]}}]}]}`. They arrive out of order and
more than once (Meta retries for up to 7 days), so applying them is idempotent and monotonic:
a status only ever moves forward (sent → delivered → read → deleted; failed is final), each
kept with its first time.

A customer's message (`messages[]`) opens their 24-hour window, may answer one of ours (a
reply, a quick-reply tap) and may ask to stop; a `user_preferences` change stops or resumes
marketing. They are kept as said, with their own times: what they mean for a flow (its stop
words, its windows) is decided when it runs.

The ledger keeps statuses by the API's message id (runner/ledger/schema.py says why); shapes and
sources: docs/whatsapp-api.md#status-webhooks, #incoming-messages,
#webhook-verification-and-signatures.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any, TypeAlias

from runner import clock
from runner.ledger import RANK, Inbound, Preference, Status
from runner.untrusted import printable, printable_or_none

MAX_ID = 256  # characters of a message id (Cloud's wamid.… ids run to ~60)
MAX_TEXT = 4_096  # characters kept of a customer's text (WhatsApp's own limit for a text)
MAX_SHORT = 256  # characters of a phone id, a kind, a payload's id

Heard: TypeAlias = Status | Inbound | Preference  # what a callback can say
INT64 = range(-(2**63), 2**63)  # what SQLite's INTEGER holds: an error code must fit
LAST_TIME = 4_102_444_800  # 2100-01-01 in unix seconds: a later status time is not a time


class Invalid(ValueError):
    """A status whose values cannot be right: its callback is refused on its own (400) and
    never reaches the shared write, where it would fail everyone's commit."""


def parse(payload: Any) -> list[Heard]:
    """What a callback of either dialect says: statuses (of the kinds flowrun tracks),
    customers' messages and preferences; anything else in it is left alone. Values out of
    range raise Invalid (the callback is refused on its own)."""
    heard: list[Heard] = []
    if not isinstance(payload, dict):
        return heard
    # On-Premises: top-level arrays, one business (the API's own number)
    heard += _statuses(payload.get("statuses"))
    heard += _messages(payload.get("messages"), "")
    for entry in _list(payload.get("entry")):
        for change in _list(entry.get("changes") if isinstance(entry, dict) else None):
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            metadata = value.get("metadata")
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            business = _short(number) or ""
            heard += _statuses(value.get("statuses"))
            heard += _messages(value.get("messages"), business)
            heard += _preferences(value.get("user_preferences"), business)
    return heard


def _statuses(items: Any) -> list[Status]:
    return [status for item in _list(items) if (status := _status(item)) is not None]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _status(item: Any) -> Status | None:
    if not isinstance(item, dict) or item.get("status") not in RANK:
        return None
    errors = _list(item.get("errors"))
    error = errors[0] if errors and isinstance(errors[0], dict) else {}
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    pricing = item.get("pricing")
    pricing = pricing if isinstance(pricing, dict) else {}
    billable = pricing.get("billable")
    return Status(
        _message_id(item.get("id")),
        item["status"],
        _time(item.get("timestamp")),
        printable_or_none(item.get("recipient_id")),  # printable: at most 1,000 characters
        _code(error.get("code")),
        printable_or_none(error.get("title") or error.get("message")),
        printable_or_none(details or error.get("details")),
        _short(pricing.get("category")),
        billable if isinstance(billable, bool) else None,
    )


def _messages(items: Any, business: str) -> list[Inbound]:
    return [_inbound(item, business) for item in _list(items) if isinstance(item, dict)]


def _inbound(item: dict[str, Any], business: str) -> Inbound:
    """One customer message: who, when, what kind, what it says or taps, what it answers."""
    customer = _short(item.get("from"))
    if not customer:
        raise Invalid("a customer's message has no sender")
    kind = _short(item.get("type")) or "unknown"
    text, payload = _said(kind, item)
    context = item.get("context")
    return Inbound(
        _message_id(item.get("id")),
        business,
        customer,
        _time(item.get("timestamp")),
        kind,
        text,
        payload,
        _short(context.get("id")) if isinstance(context, dict) else None,
    )


def _said(kind: str, item: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text, payload) of a message: a text's body, a quick reply's text and payload, an
    interactive reply's title and id, a media caption, a reaction's emoji."""
    body = item.get(kind)
    body = body if isinstance(body, dict) else {}
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply")
        body = reply if isinstance(reply, dict) else {}
        return _text(body.get("title")), _short(body.get("id"))
    if kind == "button":
        return _text(body.get("text")), _short(body.get("payload"))
    found = body.get("body") or body.get("caption") or body.get("emoji")
    return _text(found), None


def _preferences(items: Any, business: str) -> list[Preference]:
    found = []
    for item in _list(items):
        if not isinstance(item, dict) or item.get("value") not in ("stop", "resume"):
            continue
        customer = _short(item.get("wa_id"))
        if not customer:
            raise Invalid("a preference has no customer")
        category = _short(item.get("category")) or "marketing_messages"
        at = _time(item.get("timestamp"))
        found.append(Preference(business, customer, at, item["value"], category))
    return found


def _short(value: Any) -> str | None:
    """An id, a kind, a phone: text (or a number) of at most MAX_SHORT characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    if len(value) > MAX_SHORT:
        raise Invalid(f"a value is longer than {MAX_SHORT} characters")
    return printable(value) or None


def _text(value: Any) -> str | None:
    return printable(value, MAX_TEXT) or None if isinstance(value, str) else None


def _message_id(value: Any) -> str:
    """Never cut short (a cut id would join no message, or the wrong one)."""
    if not isinstance(value, str) or len(value) > MAX_ID:
        raise Invalid(f"a message id must be text of at most {MAX_ID} characters")
    message_id = printable(value)  # as the dialects keep it, so that the two still join
    if not message_id:
        raise Invalid("a message id is empty")
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
        return clock.now().isoformat(timespec="seconds")
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
