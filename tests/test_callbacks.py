"""runner/receiver/callbacks.py on its own: statuses read out of both dialects' webhooks,
whatever else a callback holds, and Meta's signature checked."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from runner.receiver.callbacks import parse, sign, signature_ok


def cloud(*statuses: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "statuses": list(statuses)}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


def test_both_dialects_parse() -> None:
    onprem = {"statuses": [{"id": "gBGG1", "status": "delivered", "timestamp": "1700000000"}]}
    failed = {
        "id": "wamid.A",
        "status": "failed",
        "timestamp": "1700000001",
        "recipient_id": "15550100001",
        "errors": [
            {
                "code": 131026,
                "title": "Message undeliverable",
                "error_data": {"details": "not on WhatsApp"},
            }
        ],
    }
    found = parse(onprem) + parse(cloud(failed))
    assert [(s.message_id, s.status, s.code, s.recipient) for s in found] == [
        ("gBGG1", "delivered", None, None),
        ("wamid.A", "failed", 131026, "15550100001"),
    ]
    assert found[0].at == "2023-11-14T22:13:20+00:00"
    assert (found[1].title, found[1].details) == ("Message undeliverable", "not on WhatsApp")


def test_what_is_not_a_status_is_left_alone() -> None:
    incoming = {"entry": [{"changes": [{"value": {"messages": [{"text": {"body": "hi"}}]}}]}]}
    assert parse(incoming) == []
    assert parse([1, 2]) == parse("x") == parse(None) == []
    assert parse({"statuses": [{"id": 3}, {"id": "x", "status": "weird"}, "s"]}) == []
    assert parse({"entry": ["x", {"changes": [1, {"value": []}]}]}) == []


def test_odd_fields_are_read_safely() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    [odd] = parse(
        {
            "statuses": [
                {
                    "id": "m",
                    "status": "failed",
                    "timestamp": "soon",  # unreadable: the time it was received
                    "errors": [{"code": True, "message": "On-Premises says message"}],
                }
            ]
        }
    )
    assert odd.code is None  # a bool is not an error code
    assert odd.title == "On-Premises says message"
    assert datetime.fromisoformat(odd.at) >= before


def test_signatures() -> None:
    body = b'{"entry": []}'
    header = "sha256=" + hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert sign("secret", body) == header
    assert signature_ok("secret", body, header)
    assert not signature_ok("secret", body + b" ", header)
    assert not signature_ok("other", body, header)
    assert not signature_ok("secret", body, None)
    assert not signature_ok("secret", body, header.removeprefix("sha256="))
    assert not signature_ok("secret", body, "sha256=" + "é" * 64)  # no exception either
