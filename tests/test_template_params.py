"""The parameters real templates use (issue 15, item 3): named parameters, currency and
date_time, a location header, copy code buttons and limited-time offers. For each: the exact
body flowrun sends to the sandbox over loopback, the sandbox's refusal of a wrong one (with the
Cloud API's code), and `validate`'s located error against the template lock.
Shapes: docs/whatsapp-api.md#template-parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.errors import EXIT_INVALID, EXIT_OK
from runner.sandbox import SandboxState
from runner.sandbox.catalog import CATALOG
from runner.sandbox.checks import ApiError, check_message
from runner.template_lock import lock_text, words
from tests.conftest import HEADER, Result, RunFlow
from tests.sandbox_helpers import api_section, flowrun

LOCK = lock_text(CATALOG)
PERSON = (
    "  - {phone: '+1 555 010 0001', name: Ann, coupon: SUMMER25, lat: '52.52',"
    " ends: '1767225600000'}\n"
)

# case → (the step as written, the template object the sandbox must receive)
SENT: dict[str, tuple[str, dict[str, Any]]] = {
    "named body": (
        "  - template:\n      name: appointment_reminder\n      language: en_US\n"
        "      body: {first_name: '{{ recipient.name }}', date: 3 March}\n",
        {
            "name": "appointment_reminder",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "parameter_name": "first_name", "text": "Ann"},
                        {"type": "text", "parameter_name": "date", "text": "3 March"},
                    ],
                }
            ],
        },
    ),
    "named header and copy code": (
        "  - template:\n      name: sale_announcement\n      language: en_US\n"
        "      header: {text: {sale_name: Summer sale}}\n"
        "      body: {discount_code: '{{ recipient.coupon }}', end_date: 31 August}\n"
        "      buttons: [{copy_code: '{{ recipient.coupon }}'}]\n",
        {
            "name": "sale_announcement",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "header",
                    "parameters": [
                        {"type": "text", "parameter_name": "sale_name", "text": "Summer sale"}
                    ],
                },
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "parameter_name": "discount_code", "text": "SUMMER25"},
                        {"type": "text", "parameter_name": "end_date", "text": "31 August"},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "copy_code",
                    "index": "0",
                    "parameters": [{"type": "coupon_code", "coupon_code": "SUMMER25"}],
                },
            ],
        },
    ),
    "currency and date_time": (
        "  - template:\n      name: order_total\n      language: en_US\n      body:\n"
        "        - '{{ recipient.name }}'\n"
        "        - currency: {fallback_value: '$12.50', code: USD, amount_1000: 12500}\n"
        "        - date_time: {fallback_value: 3 March 2027}\n",
        {
            "name": "order_total",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Ann"},
                        {
                            "type": "currency",
                            "currency": {
                                "fallback_value": "$12.50",
                                "code": "USD",
                                "amount_1000": 12500,
                            },
                        },
                        {"type": "date_time", "date_time": {"fallback_value": "3 March 2027"}},
                    ],
                }
            ],
        },
    ),
    "location header": (
        "  - template:\n      name: pickup_point\n      language: en_US\n"
        "      header:\n        location:\n          latitude: '{{ recipient.lat }}'\n"
        "          longitude: 13.405\n          name: Parcel shop\n"
        "          address: 1 Main Street, Berlin\n      body: [PKG-1001]\n",
        {
            "name": "pickup_point",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "header",
                    "parameters": [
                        {
                            "type": "location",
                            "location": {
                                "latitude": 52.52,
                                "longitude": 13.405,
                                "name": "Parcel shop",
                                "address": "1 Main Street, Berlin",
                            },
                        }
                    ],
                },
                {"type": "body", "parameters": [{"type": "text", "text": "PKG-1001"}]},
            ],
        },
    ),
    "limited-time offer": (
        "  - template:\n      name: summer_offer\n      language: en_US\n"
        "      limited_time_offer: {expiration_time_ms: '{{ recipient.ends }}'}\n"
        "      body: ['{{ recipient.name }}', '{{ recipient.coupon }}']\n"
        "      buttons: [{copy_code: '{{ recipient.coupon }}'}, {url: '{{ recipient.coupon }}'}]\n",
        {
            "name": "summer_offer",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Ann"},
                        {"type": "text", "text": "SUMMER25"},
                    ],
                },
                {
                    "type": "limited_time_offer",
                    "parameters": [
                        {
                            "type": "limited_time_offer",
                            "limited_time_offer": {"expiration_time_ms": 1767225600000},
                        }
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "copy_code",
                    "index": "0",
                    "parameters": [{"type": "coupon_code", "coupon_code": "SUMMER25"}],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "1",
                    "parameters": [{"type": "text", "text": "SUMMER25"}],
                },
            ],
        },
    ),
}


def send(folder: Path, base: str, steps: str) -> None:
    """Run a one-recipient Cloud flow with `steps` against the sandbox at `base`, the lock of
    the sandbox's account beside it (so the lock's checks pass first)."""
    settings = "settings: {rate: 100000/s, per_recipient_interval: 0, window: open}\n"
    text = (
        f"version: 1\nname: t\n{api_section(base, 'cloud')}{settings}"
        f"recipients:\n{PERSON}messages:\n{steps}"
    )
    (folder / "flow.yaml").write_text(text, "utf-8")
    (folder / "flow.templates.json").write_text(LOCK, "utf-8")
    code, out, err = flowrun("flow.yaml")
    assert code == EXIT_OK, err
    assert "sent 1, failed 0" in out


@pytest.mark.parametrize("case", sorted(SENT))
def test_the_sandbox_receives_the_documented_body(
    api: tuple[str, SandboxState], folder: Path, case: str
) -> None:
    base, state = api
    steps, expected = SENT[case]
    send(folder, base, steps)
    assert len(state.inbox) == 1
    assert state.inbox[0]["type"] == "template"
    assert state.inbox[0]["template"] == expected


def body_of(case: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550100001",
        "type": "template",
        "template": copy.deepcopy(SENT[case][1]),
    }


def component(body: dict[str, Any], kind: str, nth: int = 0) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in body["template"]["components"] if c["type"] == kind]
    return found[nth]


def _unnamed(b: dict[str, Any]) -> None:
    del component(b, "body")["parameters"][0]["parameter_name"]


def _renamed(b: dict[str, Any]) -> None:
    component(b, "body")["parameters"][0]["parameter_name"] = "name"


def _header_unnamed(b: dict[str, Any]) -> None:
    del component(b, "header")["parameters"][0]["parameter_name"]


def _named_positional(b: dict[str, Any]) -> None:
    component(b, "body")["parameters"][0]["parameter_name"] = "name"


def _amount_text(b: dict[str, Any]) -> None:
    component(b, "body")["parameters"][1]["currency"]["amount_1000"] = "12500"


def _code_lower(b: dict[str, Any]) -> None:
    component(b, "body")["parameters"][1]["currency"]["code"] = "usd"


def _no_fallback(b: dict[str, Any]) -> None:
    component(b, "body")["parameters"][2]["date_time"] = {}


def _no_place_name(b: dict[str, Any]) -> None:
    del component(b, "header")["parameters"][0]["location"]["name"]


def _latitude_out(b: dict[str, Any]) -> None:
    component(b, "header")["parameters"][0]["location"]["latitude"] = 100


def _no_offer(b: dict[str, Any]) -> None:
    b["template"]["components"] = [
        c for c in b["template"]["components"] if c["type"] != "limited_time_offer"
    ]


def _long_code(b: dict[str, Any]) -> None:
    component(b, "button")["parameters"][0]["coupon_code"] = "X" * 16


def _offer_elsewhere(b: dict[str, Any]) -> None:
    b["template"]["components"].append(
        {
            "type": "limited_time_offer",
            "parameters": [
                {"type": "limited_time_offer", "limited_time_offer": {"expiration_time_ms": 1}}
            ],
        }
    )


# (case, what is wrong, the change, the Cloud code the sandbox answers)
REFUSED: list[tuple[str, str, Callable[[dict[str, Any]], None], int]] = [
    ("named body", "a parameter without its name", _unnamed, 100),
    ("named body", "a name the template lacks", _renamed, 132000),
    ("named header and copy code", "a header parameter without its name", _header_unnamed, 100),
    ("currency and date_time", "a name on a positional template", _named_positional, 132000),
    ("currency and date_time", "amount_1000 as text", _amount_text, 131009),
    ("currency and date_time", "a lower-case currency code", _code_lower, 131009),
    ("currency and date_time", "a date_time without fallback_value", _no_fallback, 132000),
    ("location header", "a location without its name", _no_place_name, 131008),
    ("location header", "a latitude past 90", _latitude_out, 131009),
    ("limited-time offer", "no expiration", _no_offer, 132000),
    ("limited-time offer", "a 16-character coupon code", _long_code, 131009),
    ("currency and date_time", "an offer the template lacks", _offer_elsewhere, 132000),
]


@pytest.mark.parametrize(("case", "wrong", "change", "code"), REFUSED, ids=[r[1] for r in REFUSED])
def test_the_sandbox_refuses_a_wrong_body(
    case: str, wrong: str, change: Callable[[dict[str, Any]], None], code: int
) -> None:
    check_message(body_of(case), {}, "cloud")  # the body flowrun sends is taken
    body = body_of(case)
    change(body)
    with pytest.raises(ApiError) as refused:
        check_message(body, {}, "cloud")
    assert refused.value.code_for("cloud") == code, (wrong, refused.value.details)


def flow_text(steps: str) -> str:
    return HEADER + f"recipients:\n{PERSON}messages:\n" + steps


def errors(result: Result) -> list[str]:
    return [line for line in result.err_lines if line.startswith("flow.yaml:")]


def line_of(text: str, marker: str) -> int:
    """The 1-based line of the flow where `marker` is written (where an error must point)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


# case → (steps, the text on the line the error points at, the error, its hint or "")
MISMATCHES = {
    "a mapping for a positional template": (
        "  - template: {name: payment_nudge, language: en_US, body: {amount: x}}\n",
        "payment_nudge",
        "template 'payment_nudge' takes positional parameters ({{1}}), this step gives named ones",
        "body: is a list, one value for each of {{1}}",
    ),
    "a misspelt name": (
        "  - template:\n      name: appointment_reminder\n      language: en_US\n"
        "      body: {first_name: Ann, dat: 3 March}\n",
        "dat:",
        "template 'appointment_reminder' has no parameter 'dat' (error 132000)",
        "did you mean 'date'?",
    ),
    "a missing name": (
        "  - template:\n      name: appointment_reminder\n      language: en_US\n"
        "      body:\n        first_name: Ann\n",
        "first_name",
        "template 'appointment_reminder' needs date, this step does not give it (error 132000)",
        "body: names each of first_name, date",
    ),
    "a list for a named template": (
        "  - template:\n      name: appointment_reminder\n      language: en_US\n"
        "      body: [Ann, 3 March]\n",
        "body:",
        "template 'appointment_reminder' takes named parameters (first_name, date), this step"
        " gives a list",
        "body: is a mapping, {first_name: ..., date: ...}",
    ),
    "plain text for a named header": (
        "  - template:\n      name: sale_announcement\n      language: en_US\n"
        "      header: {text: Summer sale}\n      body: {discount_code: A, end_date: B}\n"
        "      buttons: [{copy_code: A}]\n",
        "header:",
        "template 'sale_announcement' has named parameters: its text header's is sale_name",
        "write header: {text: {sale_name: ...}}",
    ),
    "a quick reply for a copy code button": (
        "  - template:\n      name: sale_announcement\n      language: en_US\n"
        "      header: {text: {sale_name: Sale}}\n      body: {discount_code: A, end_date: B}\n"
        "      buttons: [{quick_reply: A}]\n",
        "buttons:",
        "button 0 of template 'sale_announcement' is COPY_CODE '', it takes a copy_code"
        " parameter, not a quick_reply",
        "its buttons: 0: COPY_CODE ''",
    ),
    "an offer without its expiration": (
        "  - template:\n      name: summer_offer\n      language: en_US\n      body: [a, b]\n"
        "      buttons: [{copy_code: A}, {url: b}]\n",
        "summer_offer",
        "template 'summer_offer' is a limited-time offer with an expiration, this step gives none",
        "add limited_time_offer: {expiration_time_ms: ...} (UNIX time in milliseconds)",
    ),
    "an offer for a template without one": (
        "  - template:\n      name: payment_nudge\n      language: en_US\n      body: [a]\n"
        "      limited_time_offer: {expiration_time_ms: 1767225600000}\n",
        "limited_time_offer",
        "template 'payment_nudge' is not a limited-time offer",
        "remove limited_time_offer:",
    ),
    "a missing location header": (
        "  - template: {name: pickup_point, language: en_US, body: [a]}\n",
        "pickup_point",
        "template 'pickup_point' has a location header, this step gives none",
        "add header: {location: ...}",
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_validate_locates_each_mismatch_with_the_lock(run_flowrun: RunFlow, case: str) -> None:
    steps, marker, message, hint = MISMATCHES[case]
    text = flow_text(steps)
    result = run_flowrun(text, dedent=False, files={"flow.templates.json": LOCK})
    assert result.code == EXIT_INVALID
    found = errors(result)
    assert len(found) == 1, result.err
    assert found[0].startswith(f"flow.yaml:{line_of(text, marker)}:"), result.err
    assert found[0].endswith(f": {message}"), result.err
    assert f"  hint: {hint}" in result.err
    offline = run_flowrun(text, "--offline", dedent=False, files={"flow.templates.json": LOCK})
    assert offline.code == EXIT_OK, offline.err  # without the lock: today's checks only


# case → (a step whose value WhatsApp would refuse once rendered, the line's text, the error)
RENDERED = {
    "currency code": (
        "        - currency: {fallback_value: $1, code: '{{ recipient.name }}', amount_1000: 1}\n",
        "currency",
        "currency code 'Ann' is not three capital letters (ISO 4217, like USD)",
    ),
    "amount": (
        "        - currency: {fallback_value: $1, code: USD, amount_1000: '{{ recipient.lat }}'}\n",
        "currency",
        "amount_1000 '52.52' is not a whole number",
    ),
    "coupon code": (
        None,
        "copy_code",
        "coupon code 'SUMMER25SUMMER25' is 16 characters; WhatsApp allows 15",
    ),
    "latitude": (
        None,
        "latitude",
        "latitude 152.52 is not between -90 and 90",
    ),
}


@pytest.mark.parametrize("case", sorted(RENDERED))
def test_rendered_values_are_checked_where_written(run_flowrun: RunFlow, case: str) -> None:
    parameter, marker, message = RENDERED[case]
    steps = {
        "coupon code": "  - template:\n      name: sale_announcement\n      language: en_US\n"
        "      header: {text: {sale_name: Sale}}\n      body: {discount_code: A, end_date: B}\n"
        "      buttons: [{copy_code: '{{ recipient.coupon ~ recipient.coupon }}'}]\n",
        "latitude": "  - template:\n      name: pickup_point\n      language: en_US\n"
        "      header:\n        location:\n"
        "          latitude: '{{ recipient.lat | float + 100 }}'\n"
        "          longitude: 1\n          name: a\n          address: b\n      body: [a]\n",
    }.get(
        case,
        "  - template:\n      name: order_total\n      language: en_US\n      body:\n"
        f"        - a\n{parameter}        - date_time: {{fallback_value: c}}\n",
    )
    text = flow_text(steps)
    result = run_flowrun(text, dedent=False, files={"flow.templates.json": LOCK})
    assert result.code == EXIT_INVALID, result.err
    found = errors(result)
    assert len(found) == 1, result.err
    assert found[0].startswith(f"flow.yaml:{line_of(text, marker)}:"), result.err
    assert f": {message} (first for the recipient at" in found[0], result.err


def test_the_words_show_named_and_fallback_values() -> None:
    """`plan` shows a named template's text and a currency's fallback value filled in."""
    texts = {
        ("appointment_reminder", "en_US"): "Hi {{first_name}}, your check-up is on {{date}}.",
        ("order_total", "en_US"): "Hi {{1}}, your total is {{2}}, due on {{3}}.",
    }
    named = words(SENT["named body"][1], texts)
    assert named == "Hi Ann, your check-up is on 3 March."
    money = words(SENT["currency and date_time"][1], texts)
    assert money == "Hi Ann, your total is $12.50, due on 3 March 2027."
