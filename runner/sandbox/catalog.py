"""The sandbox's WhatsApp Business Account: its templates as the Graph API describes them, and
`GET /{version}/{WABA_ID}/message_templates` paged as the Graph API pages.

The templates are the example flows' and the tests' (checks.py derives what a send must give
from them: `TEMPLATES`), written as Meta returns them: components HEADER (format IMAGE, VIDEO,
DOCUMENT, TEXT or LOCATION, with an example), LIMITED_TIME_OFFER, BODY (text with {{1}}.. or,
for parameter_format NAMED, {{first_name}}), FOOTER, BUTTONS (QUICK_REPLY, URL, COPY_CODE); a
status and a category each. Paging: a
page of `limit` templates, `paging.cursors.before/after` (opaque cursors), and `paging.next`,
an absolute URL to the next page, only while there is one (Graph's cursor-based pagination).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

WABA_ID = "102290129340398"  # the sandbox's one WhatsApp Business Account (Meta's example id)
FIELDS = ("name", "language", "status", "category", "parameter_format", "components")
DEFAULT_LIMIT = 25  # Graph's default page size
MAX_LIMIT = 1000


def _media_header(kind: str) -> dict[str, Any]:
    """A media header as Graph returns it: the example is an upload handle."""
    return {"type": "HEADER", "format": kind, "example": {"header_handle": ["4::aW1hZ2U="]}}


def _body(text: str, *examples: str) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "BODY", "text": text}
    if examples:
        body["example"] = {"body_text": [list(examples)]}
    return body


def _quick_replies(*labels: str) -> dict[str, Any]:
    return {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": t} for t in labels]}


def _template(
    name: str,
    language: str,
    category: str,
    components: list[dict[str, Any]],
    *,
    status: str = "APPROVED",
    parameter_format: str = "POSITIONAL",
) -> dict[str, Any]:
    # a stable id per name and language, as Graph gives every template one
    number = int.from_bytes(f"{name}/{language}".encode()[:7], "big") % 10**15
    return {
        "name": name,
        "language": language,
        "status": status,
        "category": category,
        "parameter_format": parameter_format,
        "components": components,
        "id": str(10**15 + number),
    }


def _url_button(text: str) -> dict[str, Any]:
    """A URL button with a dynamic end: a send gives the part after the base."""
    url = {"type": "URL", "text": text, "url": "https://example.com/{{1}}"}
    return {"type": "BUTTONS", "buttons": [{**url, "example": ["https://example.com/start"]}]}


# The sandbox account's templates, in the order the API lists them (newest first is Meta's
# habit; any fixed order pages the same way).
CATALOG: tuple[dict[str, Any], ...] = (
    _template(  # Meta's sample template, as every new account has it
        "hello_world",
        "en_US",
        "UTILITY",
        [
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            _body(
                "Welcome and congratulations!! This message demonstrates your ability to send"
                " a WhatsApp message notification from the Cloud API, hosted by Meta."
            ),
            {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
        ],
    ),
    _template(
        "onboarding_welcome",
        "en_US",
        "MARKETING",
        [
            _media_header("IMAGE"),
            _body("Welcome, {{1}}! Your {{2}} account is ready.", "Ann", "Pro"),
            _url_button("Get started"),
        ],
    ),
    _template(
        "onboarding_welcome",
        "de",
        "MARKETING",
        [
            _media_header("IMAGE"),
            _body("Willkommen, {{1}}! Ihr {{2}}-Konto ist bereit.", "Anna", "Pro"),
            _url_button("Los geht's"),
        ],
    ),
    _template(
        "invoice_reminder",
        "en_US",
        "UTILITY",
        [
            _media_header("DOCUMENT"),
            _body("Hi {{1}}, invoice {{2}} for {{3}} is attached.", "Ann", "INV-1001", "$120.00"),
            {"type": "FOOTER", "text": "Reply STOP to opt out"},
        ],
    ),
    _template(
        "launch_offer",
        "en_US",
        "MARKETING",
        [
            _media_header("VIDEO"),
            _body("{{1}}, see what is new this spring.", "Ann"),
            _quick_replies("Tell me more", "Not now"),
        ],
    ),
    _template(
        "order_update",
        "en_US",
        "UTILITY",
        [
            {
                "type": "HEADER",
                "format": "TEXT",
                "text": "Order {{1}}",
                "example": {"header_text": ["#4521"]},
            },
            _body("Hi {{1}}, your order has shipped.", "Ann"),
            _quick_replies("Track my order"),
        ],
    ),
    _template(  # flows/onboarding*.yaml: a welcome whose quick replies later steps branch on
        "onboarding_start",
        "en_US",
        "MARKETING",
        [
            _media_header("IMAGE"),
            _body("Hi {{1}}, welcome to {{2}}. Where shall we start?", "Ann", "Acme"),
            _quick_replies("Show me around", "Prices, please"),
        ],
    ),
    _template(
        "onboarding_start",
        "de",
        "MARKETING",
        [
            _media_header("IMAGE"),
            _body("Hallo {{1}}, willkommen bei {{2}}. Womit fangen wir an?", "Anna", "Acme"),
            _quick_replies("Zeig mir alles", "Preise, bitte"),
        ],
    ),
    _template(  # flows/document-reminder.yaml
        "payment_nudge",
        "en_US",
        "UTILITY",
        [_body("A friendly reminder: {{1}} is due this week.", "$120.00")],
    ),
    _template(
        "welcome_choice",
        "en_US",
        "MARKETING",
        [
            _body("Thanks for your interest! Shall we send you our brochure?"),
            _quick_replies("Send the brochure", "Later"),
        ],
    ),
    # flows/drip.yaml (on main): a welcome with two quick replies, then a tip and a reminder
    _template(
        "drip_welcome",
        "en_US",
        "MARKETING",
        [
            _body("Hi {{1}}, glad you are here. Shall we show you around?", "Ann"),
            _quick_replies("Show me how", "Not now"),
        ],
    ),
    _template(
        "drip_tip",
        "en_US",
        "MARKETING",
        [_body("Tip of the week, {{1}}: save your favourites for later.", "Ann")],
    ),
    _template(
        "drip_reminder",
        "en_US",
        "UTILITY",
        [_body("{{1}}, your trial ends in two days.", "Ann")],
    ),
    _template(  # paused by Meta for low quality: a send is refused with 132015
        "spring_sale",
        "en_US",
        "MARKETING",
        [
            _media_header("IMAGE"),
            _body("{{1}}, our spring sale starts today: 20% off everything.", "Ann"),
            _quick_replies("Show me", "Stop promotions"),
        ],
        status="PAUSED",
    ),
    _template(  # parameters by name (docs/whatsapp-api.md#templates, parameter_format NAMED)
        "appointment_reminder",
        "en_US",
        "UTILITY",
        [
            {
                "type": "BODY",
                "text": "Hi {{first_name}}, your check-up is on {{date}}.",
                "example": {
                    "body_text_named_params": [
                        {"param_name": "first_name", "example": "Alice"},
                        {"param_name": "date", "example": "3 March"},
                    ]
                },
            }
        ],
        parameter_format="NAMED",
    ),
    _template(  # a LOCATION header: the map is given at send time
        "pickup_point",
        "en_US",
        "UTILITY",
        [
            {"type": "HEADER", "format": "LOCATION"},
            _body("Your parcel {{1}} is ready for pickup here.", "PKG-1001"),
        ],
    ),
    _template(  # currency and date_time parameters are sent for {{2}} and {{3}}
        "order_total",
        "en_US",
        "UTILITY",
        [_body("Hi {{1}}, your total is {{2}}, due on {{3}}.", "Ann", "$12.50", "March 3")],
    ),
    _template(  # Meta's limited-time offer example: an expiration, a copy code and a URL
        "summer_offer",
        "en_US",
        "MARKETING",
        [
            {
                "type": "LIMITED_TIME_OFFER",
                "limited_time_offer": {"text": "Expiring offer!", "has_expiration": True},
            },
            _body("Good news, {{1}}! Use code {{2}} to get 25% off.", "Ann", "SUMMER25"),
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "COPY_CODE", "example": "SUMMER25"},
                    {
                        "type": "URL",
                        "text": "Book now!",
                        "url": "https://example.com/offer?code={{1}}",
                        "example": ["https://example.com/offer?code=SUMMER25"],
                    },
                ],
            },
        ],
    ),
    _template(  # NAMED, with a named text header and a copy code button
        "sale_announcement",
        "en_US",
        "MARKETING",
        [
            {
                "type": "HEADER",
                "format": "TEXT",
                "text": "{{sale_name}} is here!",
                "example": {
                    "header_text_named_params": [{"param_name": "sale_name", "example": "Sale"}]
                },
            },
            {
                "type": "BODY",
                "text": "Save big with code {{discount_code}}. Offer ends {{end_date}}.",
                "example": {
                    "body_text_named_params": [
                        {"param_name": "discount_code", "example": "BF2024"},
                        {"param_name": "end_date", "example": "November 30th"},
                    ]
                },
            },
            {"type": "BUTTONS", "buttons": [{"type": "COPY_CODE", "example": "BF2024"}]},
        ],
        parameter_format="NAMED",
    ),
    _template(  # still in review
        "winter_preview",
        "en_US",
        "MARKETING",
        [_body("{{1}}, a first look at our winter collection.", "Ann")],
        status="PENDING",
    ),
)


class PagingError(ValueError):
    """A query the API refuses (the server answers it with error 100)."""


def page(
    templates: Sequence[Mapping[str, Any]], query: Mapping[str, str], url: str
) -> dict[str, Any]:
    """One page of `templates` for a request's query (`fields`, `limit`, `after`, `before`),
    shaped as Graph answers; `url` is the request's absolute URL without its query, where
    `next` and `previous` point. PagingError for a field or a value Graph would refuse."""
    fields = _fields(query.get("fields"))
    limit = _limit(query.get("limit"))
    start = _cursor(query["after"]) + 1 if "after" in query else 0
    if "before" in query:
        start = max(0, _cursor(query["before"]) - limit)
    chosen = templates[start : start + limit]
    data = [{f: t[f] for f in (*fields, "id") if f in t} for t in chosen]
    answer: dict[str, Any] = {"data": data}
    if chosen:
        last = start + len(chosen) - 1
        answer["paging"] = {"cursors": {"before": _encode(start), "after": _encode(last)}}
        following = {k: v for k, v in query.items() if k not in ("after", "before")}
        if last + 1 < len(templates):
            after = urlencode({**following, "after": _encode(last)})
            answer["paging"]["next"] = f"{url}?{after}"
        if start > 0:
            before = urlencode({**following, "before": _encode(start)})
            answer["paging"]["previous"] = f"{url}?{before}"
    return answer


def _fields(value: str | None) -> tuple[str, ...]:
    if value is None:
        return FIELDS
    asked = tuple(f.strip() for f in value.split(",") if f.strip())
    unknown = [f for f in asked if f not in (*FIELDS, "id")]
    if unknown:
        raise PagingError(f"Tried accessing nonexisting field ({unknown[0]})")
    return asked


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise PagingError(f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(value)


def _encode(position: int) -> str:
    return base64.urlsafe_b64encode(f"sandbox:{position}".encode()).decode().rstrip("=")


def _cursor(value: str) -> int:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix == "sandbox" and number.isdigit():
            return int(number)
    except ValueError:
        pass
    raise PagingError("the paging cursor is not valid")
