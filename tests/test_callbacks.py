"""runner/receiver/callbacks.py on its own: statuses read out of both dialects' webhooks,
whatever else a callback holds, and Meta's signature checked."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import pytest

from runner.ledger import Inbound, Preference, Status
from runner.receiver.callbacks import Invalid, parse, sign, signature_ok


def statuses(payload: Any) -> list[Status]:
    found = parse(payload)
    assert all(isinstance(item, Status) for item in found)
    return [item for item in found if isinstance(item, Status)]


def cloud(*statuses: dict[str, Any], **value: Any) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        **({"statuses": list(statuses)} if statuses else {}),
        **value,
    }
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
    found = statuses(onprem) + statuses(cloud(failed))
    assert [(s.message_id, s.status, s.code, s.recipient) for s in found] == [
        ("gBGG1", "delivered", None, None),
        ("wamid.A", "failed", 131026, "15550100001"),
    ]
    assert found[0].at == "2023-11-14T22:13:20+00:00"
    assert (found[1].title, found[1].details) == ("Message undeliverable", "not on WhatsApp")


def test_what_flowrun_does_not_track_is_left_alone() -> None:
    assert parse({"entry": [{"changes": [{"value": {"errors": [{"code": 1}]}}]}]}) == []
    assert parse([1, 2]) == parse("x") == parse(None) == []
    assert parse({"statuses": [{"id": 3}, {"id": "x", "status": "weird"}, "s"]}) == []
    assert parse({"entry": ["x", {"changes": [1, {"value": []}]}]}) == []


def test_odd_fields_are_read_safely() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    [odd] = statuses(
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


def test_pricing_and_played_are_kept() -> None:
    [played] = statuses(
        cloud(
            {
                "id": "wamid.V",
                "status": "played",
                "timestamp": "1750030073",
                "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"},
            }
        )
    )
    assert (played.status, played.category, played.billable) == ("played", "marketing", True)


def message(kind: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "from": "16505551234",
        "id": f"wamid.IN{kind}",
        "timestamp": "1749416383",
        "type": kind,
        kind: body,
        **extra,
    }


def test_customers_messages_of_every_kind() -> None:
    found = parse(
        cloud(
            messages=[
                message("text", {"body": "Does it come in\nanother color?"}),
                message(
                    "button",
                    {"payload": "brochure", "text": "Send the brochure"},
                    context={"from": "15550783881", "id": "wamid.OURS"},
                ),
                message(
                    "interactive",
                    {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes"}},
                ),
                message("image", {"id": "media-1", "caption": "this one"}),
                message("sticker", {"id": "media-2"}),
            ]
        )
    )
    assert found == [
        Inbound(
            "wamid.INtext", "106540352242922", "16505551234", "2025-06-08T20:59:43+00:00",
            "text", "Does it come in another color?",
        ),
        Inbound(
            "wamid.INbutton", "106540352242922", "16505551234", "2025-06-08T20:59:43+00:00",
            "button", "Send the brochure", "brochure", "wamid.OURS",
        ),
        Inbound(
            "wamid.INinteractive", "106540352242922", "16505551234",
            "2025-06-08T20:59:43+00:00", "interactive", "Yes", "yes-1",
        ),
        Inbound(
            "wamid.INimage", "106540352242922", "16505551234", "2025-06-08T20:59:43+00:00",
            "image", "this one",
        ),
        Inbound(
            "wamid.INsticker", "106540352242922", "16505551234", "2025-06-08T20:59:43+00:00",
            "sticker",
        ),
    ]  # fmt: skip


def test_on_premises_messages_have_no_business_number() -> None:
    [said] = parse({"messages": [message("text", {"body": "STOP"})]})
    assert isinstance(said, Inbound)
    assert (said.business, said.customer, said.text) == ("", "16505551234", "STOP")


def test_marketing_preferences() -> None:
    change = {
        "wa_id": "16505551234",
        "detail": "User requested to stop marketing messages",
        "category": "marketing_messages",
        "value": "stop",
        "timestamp": 1731705721,
    }
    resume = {**change, "value": "resume", "timestamp": 1731705800}
    weird = {**change, "value": "maybe"}
    found = parse(cloud(user_preferences=[change, resume, weird]))
    assert found == [
        Preference("106540352242922", "16505551234", "2024-11-15T21:22:01+00:00", "stop"),
        Preference("106540352242922", "16505551234", "2024-11-15T21:23:20+00:00", "resume"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "wamid.X", "timestamp": "1", "type": "text"},  # no sender
        {"from": "1", "timestamp": "1", "type": "text"},  # no id
        {"from": "1", "id": "x" * 300, "timestamp": "1", "type": "text"},
        {"from": "1", "id": "wamid.X", "timestamp": str(2**40), "type": "text"},
        {"from": "1" * 300, "id": "wamid.X", "timestamp": "1", "type": "text"},
    ],
)
def test_a_message_that_cannot_be_right_refuses_its_callback(bad: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        parse(cloud(messages=[bad]))


def test_a_long_text_is_kept_to_whatsapps_limit_on_one_line() -> None:
    [said] = parse(cloud(messages=[message("text", {"body": "\x1b[2Jbuy " * 2000})]))
    assert isinstance(said, Inbound)
    assert said.text is not None
    assert len(said.text) == 4096
    assert "\x1b" not in said.text


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
