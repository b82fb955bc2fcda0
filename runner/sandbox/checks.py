"""What the sandbox accepts: the WhatsApp APIs' rules for a message body, in both dialects.

Checked as strictly as the real APIs do (one media object matching `type`, exactly one of id and
link, http(s) links, caption and filename rules, known media ids, templates that exist with the
right number of parameters), so a body the sandbox takes is one the real API would take too.
Each refusal carries the error code each dialect would answer with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.media import LIMITS, MEDIA_TYPES
from runner.models import CAPTION_MAX, TEXT_BODY_MAX, check_http_url

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
    """A template as approved in WhatsApp Manager: what parameters it takes."""

    header: str | None  # image | video | document | text | None
    body: int  # number of body parameters
    buttons: tuple[str, ...] = ()  # sub_type of each button with a parameter, by index
    labels: tuple[str, ...] = ()  # each button's text as approved (what a tap sends back)


# The templates the sandbox knows (by name and language), used by the example flows and tests.
TEMPLATES: dict[tuple[str, str], TemplateSpec] = {
    ("hello_world", "en_US"): TemplateSpec(None, 0),  # Meta's sample template
    ("onboarding_welcome", "en_US"): TemplateSpec("image", 2, ("url",)),
    ("onboarding_welcome", "de"): TemplateSpec("image", 2, ("url",)),
    ("invoice_reminder", "en_US"): TemplateSpec("document", 3),
    ("launch_offer", "en_US"): TemplateSpec(
        "video", 1, ("quick_reply", "quick_reply"), ("Tell me more", "Not now")
    ),
    ("order_update", "en_US"): TemplateSpec("text", 1, ("quick_reply",), ("Track my order",)),
    # flows/onboarding*.yaml: a welcome whose quick replies the later steps branch on
    ("onboarding_start", "en_US"): TemplateSpec(
        "image", 2, ("quick_reply", "quick_reply"), ("Show me around", "Prices, please")
    ),
    ("onboarding_start", "de"): TemplateSpec(
        "image", 2, ("quick_reply", "quick_reply"), ("Zeig mir alles", "Preise, bitte")
    ),
    ("payment_nudge", "en_US"): TemplateSpec(None, 1),  # flows/document-reminder.yaml
    ("welcome_choice", "en_US"): TemplateSpec(
        None, 0, ("quick_reply", "quick_reply"), ("Send the brochure", "Later")
    ),
    # flows/drip.yaml: a welcome with two quick replies, then a tip and a reminder days later
    ("drip_welcome", "en_US"): TemplateSpec(
        None, 1, ("quick_reply", "quick_reply"), ("Show me how", "Not now")
    ),
    ("drip_tip", "en_US"): TemplateSpec(None, 1),
    ("drip_reminder", "en_US"): TemplateSpec(None, 1),
}


def check_message(body: Any, media: dict[str, str], dialect: str) -> None:
    """The API's rules for a message body; ApiError for the first broken one."""
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
        _check_template(body["template"], media, dialect)
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


def _check_template(template: dict[str, Any], media: dict[str, str], dialect: str) -> None:
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
    spec = TEMPLATES.get((str(template.get("name")), language["code"]))
    if spec is None:
        raise ApiError(
            "template_missing",
            f"template {template.get('name')!r} does not exist in {language['code']!r}",
            status=404,
        )
    components = template.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise ApiError("invalid", "template.components must be a list of objects")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for component in components:
        by_type.setdefault(str(component.get("type")), []).append(component)
    if set(by_type) - {"header", "body", "button"}:
        raise ApiError("invalid", f"unknown component types {sorted(by_type)}")
    _check_header(spec, by_type.get("header", []), media, dialect)
    body = by_type.get("body", [])
    parameters = _parameters(body[0]) if body else []
    if len(body) > 1 or len(parameters) != spec.body:
        raise ApiError(
            "template_params", f"body expects {spec.body} parameter(s), got {len(parameters)}"
        )
    for parameter in parameters:
        _check_text_parameter(parameter)
    _check_buttons(spec, by_type.get("button", []))


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
    else:
        check_media(spec.header, parameters[0].get(spec.header), media, dialect)


def _check_text_parameter(parameter: dict[str, Any]) -> None:
    text = parameter.get("text")
    if parameter.get("type") != "text" or not isinstance(text, str) or not text.strip():
        raise ApiError("template_params", "a text parameter needs non-empty text")
    if "\n" in text or "\t" in text or "     " in text:
        raise ApiError(
            "invalid", "param text cannot have new-line/tab characters or more than 4 spaces"
        )


def _check_buttons(spec: TemplateSpec, buttons: list[dict[str, Any]]) -> None:
    seen = set()
    for button in buttons:
        index = button.get("index")
        if not isinstance(index, str) or not index.isdigit():
            raise ApiError("invalid", "button index must be a string of digits")
        position = int(index)
        if position >= len(spec.buttons) or position in seen:
            raise ApiError("template_params", f"the template has no button {position} to fill")
        seen.add(position)
        sub_type = spec.buttons[position]
        if button.get("sub_type") != sub_type:
            raise ApiError("invalid", f"button {position} is a {sub_type} button")
        parameters = _parameters(button)
        kind = "text" if sub_type == "url" else "payload"  # the parameter's type and its key
        if (
            len(parameters) != 1
            or parameters[0].get("type") != kind
            or not isinstance(parameters[0].get(kind), str)
            or not parameters[0][kind]
        ):
            raise ApiError("template_params", f"button {position} takes one {kind} parameter")
    if len(seen) != len(spec.buttons):
        raise ApiError(
            "template_params", f"the template's {len(spec.buttons)} button(s) need parameters"
        )


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
