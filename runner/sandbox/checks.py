"""What the sandbox accepts: the WhatsApp APIs' rules for a message body, in both dialects.

Checked as strictly as the real APIs do (one media object matching `type`, exactly one of id and
link, http(s) links, caption and filename rules, known media ids, templates that exist with the
right number of parameters), so a body the sandbox takes is one the real API would take too.
Each refusal carries the error code each dialect would answer with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.media import LIMITS, MEDIA_TYPES
from runner.models import CAPTION_MAX, TEXT_BODY_MAX, check_http_url
from runner.template_lock import shape_of

from .catalog import CATALOG

# Media ids the sandbox knows without an upload: the one from Meta's examples, used by the
# example flows' `id:` steps.
PRESET_MEDIA = frozenset({"f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68"})
NAMESPACE = "sandbox_namespace"  # the On-Premises template namespace the sandbox expects

# meaning: (On-Premises code, Cloud code, title)
CODES = {
    "auth": (1005, 190, "Access denied"),
    "media": (1006, 131053, "Media upload error"),
    "missing": (1008, 131008, "Required parameter is missing"),
    "invalid": (1009, 131009, "Parameter value is not valid"),
    "extra": (1010, 100, "Invalid parameter"),
    "recipient": (1013, 131026, "Message undeliverable"),
    "too_long": (1001, 131008, "Message too long"),
    "throttled": (1015, 130429, "Rate limit hit"),
    "internal": (1014, 131000, "Something went wrong"),
    "template_params": (2000, 132000, "Number of parameters does not match"),
    "template_missing": (2001, 132001, "Template name does not exist in the translation"),
    # On-Premises codes for these two are unconfirmed (its error page is not in the stored
    # copies: docs/whatsapp-api.md#on-premises-errors); 2001 as for a missing template
    "template_paused": (2001, 132015, "Template is Paused"),
    "template_disabled": (2001, 132016, "Template is Disabled"),
    "object": (1009, 100, "Unsupported post request"),
    # free-form outside the customer service window (docs/whatsapp-api.md#customer-service-window)
    "window": (470, 131047, "Re-engagement message"),
}

WINDOW_DETAILS = (
    "Message failed to send because more than 24 hours have passed since the customer last"
    " replied to this number."
)


# Titles of codes a test may inject (fail_recipients), as the real APIs word them.
TITLES = {
    **{code: title for code, _, title in CODES.values()},
    **{code: title for _, code, title in CODES.values()},
    1013: "User is not valid",
    1026: "Receiver Incapable",
    470: "Re-engagement message",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    130429: "Rate limit hit",
    190: "Error validating access token: Session has expired",
}


class ApiError(Exception):
    """A refusal: `meaning` picks the code per dialect, unless `code` names one outright."""

    def __init__(
        self, meaning: str, details: str, status: int = 400, code: int | None = None
    ) -> None:
        super().__init__(details)
        self.meaning = meaning
        self.details = details
        self.status = status
        self.code = code

    def code_for(self, dialect: str) -> int:
        if self.code is not None:
            return self.code
        onprem, cloud, _ = CODES[self.meaning]
        return cloud if dialect == "cloud" else onprem

    @property
    def title(self) -> str:
        if self.code is not None:
            return TITLES.get(self.code, "Error")
        return CODES[self.meaning][2]


@dataclass(frozen=True)
class TemplateSpec:
    """A template as approved in WhatsApp Manager: what parameters a send must give."""

    header: str | None  # image | video | document | text | location | None
    body: int  # number of body parameters
    # sub_type of each button, by index: quick_reply, url (a dynamic one), copy_code; ""
    # for a button that takes no parameter (a static URL, a phone number)
    buttons: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # each button's text as approved (what a tap sends back)
    status: str = "APPROVED"  # only APPROVED ones can be sent
    names: tuple[str, ...] = ()  # parameter_format NAMED: the body's parameter names
    header_name: str | None = None  # parameter_format NAMED: the text header's parameter name
    offer: bool | None = None  # a limited-time offer: True when a send gives its expiration

    @classmethod
    def from_graph(cls, entry: dict[str, Any]) -> TemplateSpec:
        """What a send must give, read from the template as the Graph API describes it (the
        sandbox's catalog, or a lock file: runner/template_lock.py)."""
        shape = shape_of(entry)
        return cls(
            header=shape.header_kind,
            body=len(shape.body_parameters),
            buttons=tuple(b.parameter or "" for b in shape.buttons),
            labels=tuple(b.text for b in shape.buttons),
            status=shape.status,
            names=shape.body_parameters if shape.named else (),
            header_name=shape.header_parameters[0]
            if shape.named and shape.header_parameters
            else None,
            offer=shape.offer,
        )


def specs(catalog: Iterable[dict[str, Any]]) -> dict[tuple[str, str], TemplateSpec]:
    """Templates by (name, language), as a send is checked against them."""
    return {(t["name"], t["language"]): TemplateSpec.from_graph(t) for t in catalog}


# The templates the sandbox knows (by name and language), used by the example flows and tests:
# its account's catalog (catalog.py), the same ones `message_templates` lists.
TEMPLATES: dict[tuple[str, str], TemplateSpec] = specs(CATALOG)
# Refusals of a template that is not approved (docs/whatsapp-api.md#templates); PENDING,
# REJECTED and the rest are "does not exist or is not approved" (132001)
STATUS_MEANINGS = {"PAUSED": "template_paused", "DISABLED": "template_disabled"}


def check_message(
    body: Any,
    media: dict[str, str],
    dialect: str,
    *,
    templates: Mapping[tuple[str, str], TemplateSpec] = TEMPLATES,
) -> None:
    """The API's rules for a message body; ApiError for the first broken one. `templates`:
    the account's (the built-in ones, or a flow's lock: SandboxState.use_lock)."""
    if not isinstance(body, dict):
        raise ApiError("invalid", "the body must be a JSON object")
    if dialect == "cloud" and body.get("messaging_product") != "whatsapp":
        raise ApiError("missing", "messaging_product must be 'whatsapp'")
    if body.get("recipient_type", "individual" if dialect == "cloud" else None) != "individual":
        raise ApiError("invalid", "recipient_type must be 'individual'")
    to = body.get("to")
    if not isinstance(to, str) or not to.isdigit() or not 7 <= len(to) <= 15:
        raise ApiError("recipient", f"'to' is not a valid WhatsApp id: {to!r}")
    kind = body.get("type")
    kinds = (*MEDIA_TYPES, "text", "template")
    if kind not in kinds:
        raise ApiError("invalid", f"unknown type {kind!r}")
    others = [key for key in kinds if key in body and key != kind]
    if others or not isinstance(body.get(kind), dict):
        raise ApiError("invalid", f"the body needs exactly one '{kind}' object")
    if kind == "text":
        _check_text(body["text"])
    elif kind == "template":
        _check_template(body["template"], media, dialect, templates)
    else:
        check_media(kind, body[kind], media, dialect)


def _check_text(text: dict[str, Any]) -> None:
    value = text.get("body")
    if not isinstance(value, str) or not value:
        raise ApiError("missing", "text.body is required")
    if len(value) > TEXT_BODY_MAX:
        raise ApiError("too_long", "message too long")
    extra = set(text) - {"body", "preview_url"}
    if extra:
        raise ApiError("extra", f"text does not take {sorted(extra)}")


def check_media(kind: str, obj: Any, media: dict[str, str], dialect: str) -> None:
    """A media object (a message's, or a template header's)."""
    if not isinstance(obj, dict):
        raise ApiError("invalid", f"{kind} must be an object")
    sources = [key for key in ("id", "link") if key in obj]
    if len(sources) != 1:
        raise ApiError("missing" if not sources else "invalid", "exactly one of id and link")
    if "link" in obj:
        try:
            check_http_url(str(obj["link"]))
        except ValueError as exc:
            raise ApiError("invalid", str(exc)) from None
    elif obj["id"] not in media and obj["id"] not in PRESET_MEDIA:
        raise ApiError("media", f"media id {obj['id']!r} not found (expired, or never uploaded)")
    elif obj["id"] in media and media[obj["id"]] not in LIMITS[kind][0]:
        raise ApiError("invalid", f"media id {obj['id']!r} is {media[obj['id']]}, not {kind}")
    allowed = {"id", "link"}
    if dialect == "onprem":
        allowed.add("provider")  # the Cloud API has no media providers
    if kind in ("image", "video", "document"):
        allowed.add("caption")
    if kind == "document":
        allowed.add("filename")
    extra = set(obj) - allowed
    if extra:
        raise ApiError("extra", f"{kind} does not take {sorted(extra)}")
    if "provider" in obj and "link" not in obj:
        raise ApiError("extra", "provider goes only with link")
    if len(str(obj.get("caption", ""))) > CAPTION_MAX:
        raise ApiError("invalid", "caption too long")


def _check_template(
    template: dict[str, Any],
    media: dict[str, str],
    dialect: str,
    templates: Mapping[tuple[str, str], TemplateSpec],
) -> None:
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str):
        raise ApiError("missing", "template.language.code is required")
    if dialect == "onprem":
        if template.get("namespace") != NAMESPACE:
            raise ApiError("invalid", f"template.namespace must be {NAMESPACE!r}")
        if language.get("policy") != "deterministic":
            raise ApiError("invalid", "template.language.policy must be 'deterministic'")
    extra = set(template) - {"name", "language", "components", "namespace"}
    if extra or (dialect == "cloud" and "namespace" in template):
        raise ApiError("extra", f"template does not take {sorted(extra or {'namespace'})}")
    spec = templates.get((str(template.get("name")), language["code"]))
    if spec is None:
        raise ApiError(
            "template_missing",
            f"template {template.get('name')!r} does not exist in {language['code']!r}",
            status=404,
        )
    if spec.status != "APPROVED":
        raise ApiError(
            STATUS_MEANINGS.get(spec.status, "template_missing"),
            f"template {template.get('name')!r} is {spec.status.lower()}, not approved",
        )
    components = template.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise ApiError("invalid", "template.components must be a list of objects")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for component in components:
        by_type.setdefault(str(component.get("type")), []).append(component)
    if set(by_type) - {"header", "body", "button", "limited_time_offer"}:
        raise ApiError("invalid", f"unknown component types {sorted(by_type)}")
    _check_header(spec, by_type.get("header", []), media, dialect)
    body = by_type.get("body", [])
    parameters = _parameters(body[0]) if body else []
    if len(body) > 1 or len(parameters) != spec.body:
        raise ApiError(
            "template_params", f"body expects {spec.body} parameter(s), got {len(parameters)}"
        )
    for parameter in parameters:
        _check_body_parameter(parameter)
    _check_names(spec.names, parameters)
    _check_offer(spec, by_type.get("limited_time_offer", []))
    _check_buttons(spec, by_type.get("button", []))


def _check_names(names: tuple[str, ...], parameters: list[dict[str, Any]]) -> None:
    """A NAMED template's parameters each carry `parameter_name`, one for each of its names; a
    positional one's carry none (docs/whatsapp-api.md#template-parameters). A missing name is
    refused with 100 "Parameter name is missing or empty", as the Cloud API answers it; a name
    the template lacks counts as a wrong set of parameters (132000)."""
    given = [p.get("parameter_name") for p in parameters]
    if names and any(not isinstance(name, str) or not name for name in given):
        raise ApiError("extra", "Parameter name is missing or empty")
    if names and sorted(map(str, given)) != sorted(names):
        raise ApiError(
            "template_params",
            f"the template's parameters are named {', '.join(names)}, got"
            f" {', '.join(map(str, given))}",
        )
    if not names and any(name is not None for name in given):
        raise ApiError("template_params", "the template's parameters are positional")


def _check_offer(spec: TemplateSpec, offers: list[dict[str, Any]]) -> None:
    """A limited-time offer with an expiration takes one `limited_time_offer` parameter with
    `expiration_time_ms` (UNIX milliseconds); any other template takes none."""
    if not spec.offer:
        if offers:
            raise ApiError("template_params", "the template has no offer expiration to fill")
        return
    parameters = _parameters(offers[0]) if len(offers) == 1 else []
    offer = parameters[0].get("limited_time_offer") if len(parameters) == 1 else None
    ends = offer.get("expiration_time_ms") if isinstance(offer, dict) else None
    if parameters[:1] and parameters[0].get("type") != "limited_time_offer":
        ends = None
    if not isinstance(ends, int) or isinstance(ends, bool):
        raise ApiError(
            "template_params",
            "the limited-time offer takes one limited_time_offer parameter with expiration_time_ms",
        )


def _parameters(component: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = component.get("parameters")
    if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
        raise ApiError("invalid", "parameters must be a list of objects")
    return parameters


def _check_header(
    spec: TemplateSpec, headers: list[dict[str, Any]], media: dict[str, str], dialect: str
) -> None:
    if spec.header is None or not headers:
        if headers or (spec.header is not None and spec.header != "text"):
            raise ApiError("template_params", f"the template's header is {spec.header}")
        if spec.header == "text":
            raise ApiError("template_params", "the template's text header takes a parameter")
        return
    parameters = _parameters(headers[0])
    if len(headers) > 1 or len(parameters) != 1 or parameters[0].get("type") != spec.header:
        raise ApiError("template_params", f"the header takes one {spec.header} parameter")
    if spec.header == "text":
        _check_text_parameter(parameters[0])
        _check_names((spec.header_name,) if spec.header_name else (), parameters)
    elif spec.header == "location":
        _check_location(parameters[0].get("location"))
    else:
        check_media(spec.header, parameters[0].get(spec.header), media, dialect)


def _check_location(location: Any) -> None:
    """A location header: latitude and longitude (numbers in range), name and address."""
    if not isinstance(location, dict):
        raise ApiError("template_params", "a location header needs a location object")
    for axis, limit in (("latitude", 90), ("longitude", 180)):
        value = location.get(axis)
        if not isinstance(value, int | float) or isinstance(value, bool) or abs(value) > limit:
            raise ApiError("invalid", f"location.{axis} must be a number from -{limit} to {limit}")
    for key in ("name", "address"):
        if not isinstance(location.get(key), str) or not location[key].strip():
            raise ApiError("missing", f"location.{key} is required")
    extra = set(location) - {"latitude", "longitude", "name", "address"}
    if extra:
        raise ApiError("extra", f"location does not take {sorted(extra)}")


def _check_text_parameter(parameter: dict[str, Any]) -> None:
    text = parameter.get("text")
    if parameter.get("type") != "text" or not isinstance(text, str) or not text.strip():
        raise ApiError("template_params", "a text parameter needs non-empty text")
    if "\n" in text or "\t" in text or "     " in text:
        raise ApiError(
            "invalid", "param text cannot have new-line/tab characters or more than 4 spaces"
        )


def _check_body_parameter(parameter: dict[str, Any]) -> None:
    """A body parameter: text, currency or date_time, with only its own keys."""
    kind = parameter.get("type")
    extra = set(parameter) - {"type", str(kind), "parameter_name"}
    if extra:
        raise ApiError("extra", f"a {kind} parameter does not take {sorted(extra)}")
    if kind == "text":
        _check_text_parameter(parameter)
        return
    if kind not in ("currency", "date_time"):
        raise ApiError("invalid", f"a body parameter is text, currency or date_time, not {kind!r}")
    value = parameter.get(kind)
    keys = {"fallback_value", "code", "amount_1000"} if kind == "currency" else {"fallback_value"}
    if not isinstance(value, dict) or set(value) != keys:
        raise ApiError("template_params", f"a {kind} parameter takes {', '.join(sorted(keys))}")
    if not isinstance(value["fallback_value"], str) or not value["fallback_value"].strip():
        raise ApiError("template_params", f"{kind}.fallback_value must be non-empty text")
    if kind == "currency":
        code, amount = value["code"], value["amount_1000"]
        if not isinstance(code, str) or len(code) != 3 or not code.isalpha() or not code.isupper():
            raise ApiError("invalid", f"currency.code {code!r} is not an ISO 4217 code")
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise ApiError("invalid", "currency.amount_1000 must be a whole number")


def _check_buttons(spec: TemplateSpec, buttons: list[dict[str, Any]]) -> None:
    seen = set()
    for button in buttons:
        index = button.get("index")
        if not isinstance(index, str) or not index.isdigit():
            raise ApiError("invalid", "button index must be a string of digits")
        position = int(index)
        if position >= len(spec.buttons) or not spec.buttons[position] or position in seen:
            raise ApiError("template_params", f"the template has no button {position} to fill")
        seen.add(position)
        sub_type = spec.buttons[position]
        if button.get("sub_type") != sub_type:
            raise ApiError("invalid", f"button {position} is a {sub_type} button")
        parameters = _parameters(button)
        kind = BUTTON_PARAMETERS[sub_type]  # the parameter's type and its key
        if (
            len(parameters) != 1
            or parameters[0].get("type") != kind
            or not isinstance(parameters[0].get(kind), str)
            or not parameters[0][kind]
        ):
            raise ApiError("template_params", f"button {position} takes one {kind} parameter")
        if kind == "coupon_code" and len(parameters[0][kind]) > COUPON_CODE_MAX:
            raise ApiError("invalid", f"a coupon code has at most {COUPON_CODE_MAX} characters")
    needed = sum(1 for sub_type in spec.buttons if sub_type)
    if len(seen) != needed:
        raise ApiError("template_params", f"the template's {needed} button(s) need parameters")


# A button's parameter, by its sub_type: the type, which is also the key of its value
BUTTON_PARAMETERS = {"url": "text", "quick_reply": "payload", "copy_code": "coupon_code"}
COUPON_CODE_MAX = 15  # docs/whatsapp-api.md#template-parameters


def quick_replies(body: dict[str, Any]) -> list[tuple[str, str]]:
    """A checked message's quick-reply buttons, by index: (the payload our body gave it, its
    label). What a customer who taps one sends back (docs/whatsapp-api.md#incoming-message-shapes);
    empty for anything but a template with quick replies."""
    template = body.get("template")
    if body.get("type") != "template" or not isinstance(template, dict):
        return []
    spec = TEMPLATES.get((str(template.get("name")), str(template["language"]["code"])))
    found = []
    for component in template.get("components", []):
        if component.get("type") == "button" and component.get("sub_type") == "quick_reply":
            index = int(component["index"])
            payload = str(component["parameters"][0]["payload"])
            labels = spec.labels if spec else ()
            found.append((index, payload, labels[index] if index < len(labels) else payload))
    return [(payload, label) for _, payload, label in sorted(found)]
