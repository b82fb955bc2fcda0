"""The template lock: the account's templates as the API describes them, in a file beside the
flow (`FLOW.templates.json`), and every template step checked against it before anything is sent.

Why: the commonest way a campaign fails at send time is a template that does not match what
was approved (132000 wrong number of parameters, 132001 no such template in that language,
132015/132016 paused or disabled: docs/whatsapp-api.md#templates). `flowrun templates pull`
writes the lock from the Cloud API's `GET /{version}/{waba_id}/message_templates`
(runner/commands/templates.py); On-Premises has no such endpoint, so there the lock is written by
hand in the same format. The file is reviewable in git: sorted by name then language, keys in a
fixed order, no token and no URL.

The format (one JSON object):

    {"templates": [
      {"name": "order_update", "language": "en_US", "status": "APPROVED",
       "category": "UTILITY", "parameter_format": "POSITIONAL",
       "components": [
         {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
         {"type": "BODY", "text": "Hi {{1}}, your order has shipped."},
         {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Track my order"}]}]}]}

`components` are the Graph API's template components (HEADER with `format` IMAGE, VIDEO,
DOCUMENT, TEXT or LOCATION; LIMITED_TIME_OFFER with `has_expiration`; BODY; FOOTER; BUTTONS of
QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE); only `name`, `language` and `components` are
required (`status` defaults to APPROVED, `parameter_format` to POSITIONAL).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import models
from .errors import FlowInvalid, Location, Problem, Problems
from .loader import LoadedFlow
from .yamldoc import YamlPath

LOCK_SUFFIX = ".templates.json"
# What a template entry of the lock holds, in this order: the fields `pull` asks the API for.
LOCK_FIELDS = ("name", "language", "status", "category", "parameter_format", "components")
HEADER_FORMATS = ("IMAGE", "VIDEO", "DOCUMENT", "TEXT", "LOCATION")
# {{1}} (positional) or {{first_name}} (named): the placeholders of a template's texts
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
# What to do about a template that is not approved (Meta's template statuses)
STATUS_HINTS = {
    "PAUSED": "Meta paused it for low quality (error 132015 if sent): wait for the pause to"
    " end or edit it in WhatsApp Manager, then run flowrun templates pull",
    "DISABLED": "Meta disabled it for low quality (error 132016 if sent): make a new template",
    "PENDING": "it is still in review: wait for approval, then run flowrun templates pull",
    "REJECTED": "it was rejected: read the reason in WhatsApp Manager, edit and submit it"
    " again, or use another template",
    "IN_APPEAL": "its rejection is under appeal: wait for the decision",
}


class LockError(Exception):
    """The lock file cannot be read as a lock: one line saying where and why."""


@dataclass(frozen=True, slots=True)
class Button:
    """One button of a template, by its position: its type, its label, and what a send must
    give for it (`parameter`: the send's sub_type, or None when it takes nothing)."""

    type: str  # QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE, ...
    text: str
    parameter: str | None  # quick_reply, url (a dynamic suffix), copy_code; None: static


@dataclass(frozen=True, slots=True)
class Shape:
    """What one approved template (a name in a language) takes, read from its components."""

    name: str
    language: str
    status: str
    category: str | None
    named: bool  # parameter_format NAMED: parameters go by name, not by position
    header: str | None  # IMAGE, VIDEO, DOCUMENT, TEXT, LOCATION, or None
    header_parameters: tuple[str, ...]  # a TEXT header's placeholders ({{1}} or {{name}})
    body_parameters: tuple[str, ...]  # the body's placeholders, in order, each once
    buttons: tuple[Button, ...]
    # a LIMITED_TIME_OFFER component: None without one; True when it shows an expiration
    # (a send gives expiration_time_ms), False when it does not (a send gives nothing)
    offer: bool | None = None

    @property
    def header_kind(self) -> str | None:
        """The header a send must fill (image, video, document, text, location), or None:
        a TEXT header without a placeholder is fixed and takes nothing."""
        if self.header is None or (self.header == "TEXT" and not self.header_parameters):
            return None
        return self.header.lower()


def shape_of(entry: Mapping[str, Any]) -> Shape:
    """A lock entry (or a Graph API template object) as the Shape a send must fit; LockError
    for one that is not a template."""
    name, language = entry.get("name"), entry.get("language")
    if not isinstance(name, str) or not isinstance(language, str):
        raise LockError("a template needs a name and a language (strings)")
    components = entry.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise LockError(f"{name} ({language}): components must be a list of objects")
    by_type = {str(c.get("type", "")).upper(): c for c in components}
    header = by_type.get("HEADER")
    header_format = None
    if header is not None:
        header_format = str(header.get("format", "TEXT")).upper()
        if header_format not in HEADER_FORMATS:
            raise LockError(f"{name} ({language}): unknown header format {header_format!r}")
    header_text = str(header.get("text", "")) if header_format == "TEXT" and header else ""
    body = by_type.get("BODY", {})
    return Shape(
        name=name,
        language=language,
        status=str(entry.get("status", "APPROVED")).upper(),
        category=str(entry["category"]) if entry.get("category") else None,
        named=str(entry.get("parameter_format", "POSITIONAL")).upper() == "NAMED",
        header=header_format,
        header_parameters=_placeholders(header_text),
        body_parameters=_placeholders(str(body.get("text", ""))),
        buttons=_buttons(by_type.get("BUTTONS", {}).get("buttons", [])),
        offer=_offer(by_type.get("LIMITED_TIME_OFFER")),
    )


def _offer(component: Mapping[str, Any] | None) -> bool | None:
    """Whether a limited-time offer shows an expiration (`has_expiration`), None without one."""
    if component is None:
        return None
    offer = component.get("limited_time_offer")
    return bool(offer.get("has_expiration")) if isinstance(offer, dict) else False


def _placeholders(text: str) -> tuple[str, ...]:
    """The distinct placeholders of a text, in first-use order ({{1}} used twice is one)."""
    return tuple(dict.fromkeys(PLACEHOLDER.findall(text)))


def _buttons(raw: Any) -> tuple[Button, ...]:
    if not isinstance(raw, list):
        raise LockError("BUTTONS.buttons must be a list")
    found = []
    for button in raw:
        if not isinstance(button, dict):
            raise LockError("each button must be an object")
        kind = str(button.get("type", "")).upper()
        parameter = None
        if kind == "QUICK_REPLY":
            parameter = "quick_reply"
        elif kind == "URL" and PLACEHOLDER.search(str(button.get("url", ""))):
            parameter = "url"  # a dynamic URL: the send gives the end of it
        elif kind == "COPY_CODE":
            parameter = "copy_code"
        found.append(Button(kind, str(button.get("text", "")), parameter))
    return tuple(found)


def lock_path(flow_path: Path) -> Path:
    """Beside the flow, named after it (as its ledger is)."""
    return flow_path.with_name(flow_path.stem + LOCK_SUFFIX)


def lock_text(templates: Iterable[Mapping[str, Any]]) -> str:
    """The lock file's text: only LOCK_FIELDS of each template, sorted by name then language,
    keys sorted inside components, two-space indents and a final newline: the same templates
    always give the same bytes, so pulling twice leaves git with no diff."""
    entries = [
        {field: template[field] for field in LOCK_FIELDS if field in template}
        for template in templates
    ]
    entries.sort(key=lambda t: (str(t.get("name")), str(t.get("language"))))
    body = ",\n".join(
        "    {\n"
        + ",\n".join(
            f"      {json.dumps(f)}: {_value(entry[f])}" for f in LOCK_FIELDS if f in entry
        )
        + "\n    }"
        for entry in entries
    )
    return '{\n  "templates": [\n' + body + ("\n" if entries else "") + "  ]\n}\n"


def _value(value: Any) -> str:
    """A field's JSON: a list (the components) one item a line, so that a changed button is a
    one-line diff; anything else on its own line."""
    if isinstance(value, list) and value:
        items = ",\n".join(f"        {_compact(item)}" for item in value)
        return f"[\n{items}\n      ]"
    return _compact(value)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def read_lock(path: Path) -> dict[tuple[str, str], Shape]:
    """The lock at `path`, by (name, language); LockError naming the file for a broken one."""
    shapes = {}
    for entry in read_entries(path):
        shape = shape_of(entry)
        shapes[(shape.name, shape.language)] = shape
    return shapes


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The lock's templates as written (Graph's shape: what the sandbox serves and checks
    sends against), each one readable as a Shape; LockError naming the file otherwise."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LockError(f"{path.name}: not a readable JSON lock file ({exc})") from None
    templates = data.get("templates") if isinstance(data, dict) else None
    if not isinstance(templates, list) or not all(isinstance(t, dict) for t in templates):
        raise LockError(f'{path.name}: a lock file is {{"templates": [...]}}')
    for entry in templates:
        try:
            shape_of(entry)
        except LockError as exc:
            raise LockError(f"{path.name}: {exc}") from None
    return templates


def check_templates(loaded: LoadedFlow, problems: Problems, *, offline: bool = False) -> None:
    """Every template step against the lock beside the flow, each mismatch a located error at
    the step; nothing without a lock (today's checks stand) or `offline` (CI without it)."""
    path = lock_path(loaded.path)
    if offline or not path.is_file():
        return
    try:
        shapes = read_lock(path)
    except LockError as exc:
        raise FlowInvalid(_one(Location(str(path), 1, 1), str(exc))) from None
    for index, step in enumerate(loaded.flow.messages):
        if isinstance(step, models.TemplateStep):
            base: YamlPath = ("messages", index, "template")
            for where, message, hint in _mismatches(step.template, shapes):
                problems.add(Problem(loaded.locate((*base, *where)), message, hint))


def _one(location: Location, message: str) -> Problems:
    problems = Problems()
    problems.add(Problem(location, message))
    return problems


Mismatch = tuple[YamlPath, str, str | None]  # (path below the step's template:, message, hint)


def _mismatches(step: models.Template, shapes: Mapping[tuple[str, str], Shape]) -> list[Mismatch]:
    """What the API would refuse in this step, as the lock describes its template."""
    languages = sorted(lang for name, lang in shapes if name == step.name)
    if not languages:
        names = sorted({name for name, _ in shapes})
        close = difflib.get_close_matches(step.name, names, 1, 0.6)
        hint = f"did you mean '{close[0]}'?" if close else "run flowrun templates pull if it is new"
        return [(("name",), f"the account has no template '{step.name}' (error 132001)", hint)]
    if models.is_template(step.language):
        return []  # a language per recipient: only the name can be checked here
    shape = shapes.get((step.name, step.language))
    if shape is None:
        close = difflib.get_close_matches(step.language, languages, 1, 0.5)
        hint = f"it is approved in {', '.join(languages)}"
        if close:
            hint = f"did you mean '{close[0]}'? ({hint})"
        return [
            (
                ("language",),
                f"template '{step.name}' does not exist in '{step.language}' (error 132001)",
                hint,
            )
        ]
    if shape.status != "APPROVED":
        hint = STATUS_HINTS.get(shape.status, "only APPROVED templates can be sent")
        return [(("name",), f"template '{step.name}' is {shape.status}, not APPROVED", hint)]
    return [
        *_header(step, shape),
        *_body(step, shape),
        *_offer_mismatch(step, shape),
        *_buttons_mismatch(step, shape),
    ]


def _header(step: models.Template, shape: Shape) -> list[Mismatch]:
    wanted = shape.header_kind
    given = step.header.kind if step.header is not None else None
    if wanted == given:
        return _header_name(step, shape)
    if wanted is None:
        fixed = " (its text header is fixed)" if shape.header == "TEXT" else ""
        return [
            (
                ("header",),
                f"template '{step.name}' takes no header parameter{fixed}, this step gives a"
                f" {given}",
                "remove header:",
            )
        ]
    if given is None:
        return [
            (
                ("name",),
                f"template '{step.name}' has a{_n(wanted)} {wanted} header, this step gives none",
                f"add header: {{{wanted}: ...}}",
            )
        ]
    return [
        (
            ("header", given),
            f"template '{step.name}' has a{_n(wanted)} {wanted} header, not a{_n(given)} {given}",
            f"write header: {{{wanted}: ...}}",
        )
    ]


def _header_name(step: models.Template, shape: Shape) -> list[Mismatch]:
    """A text header's parameter: by name for a NAMED template, plain text otherwise."""
    text = step.header.text if step.header is not None else None
    if text is None or not shape.header_parameters:
        return []
    wanted = shape.header_parameters[0]
    if not shape.named and isinstance(text, dict):
        return [
            (
                ("header", "text"),
                f"template '{step.name}' has positional parameters: its text header takes"
                " plain text, not a name",
                "write header: {text: ...}",
            )
        ]
    if shape.named and not isinstance(text, dict):
        return [
            (
                ("header", "text"),
                f"template '{step.name}' has named parameters: its text header's is {wanted}",
                f"write header: {{text: {{{wanted}: ...}}}}",
            )
        ]
    given = next(iter(text)) if isinstance(text, dict) else wanted
    if given != wanted:
        return [
            (
                ("header", "text", given),
                f"template '{step.name}' has no header parameter '{given}' (error 132000)",
                f"did you mean '{wanted}'?",
            )
        ]
    return []


def _n(word: str) -> str:
    return "n" if word[:1] in "aeiou" else ""


def _body(step: models.Template, shape: Shape) -> list[Mismatch]:
    """The body's parameters against the template's: as many as it declares, positional (a
    list) or named (a mapping whose names are exactly its placeholders)."""
    declared = shape.body_parameters
    where: YamlPath = ("body",) if step.body else ("name",)
    if isinstance(step.body, dict) and step.body:
        if not shape.named:
            return [
                (
                    where,
                    f"template '{step.name}' takes positional parameters"
                    f" ({_listed(declared) or 'none'}), this step gives named ones",
                    _body_hint(shape),
                )
            ]
        return _names(step.name, list(step.body), declared)
    if shape.named and declared:
        return [
            (
                where,
                f"template '{step.name}' takes named parameters ({', '.join(declared)}),"
                f" this step gives {'a list' if step.body else 'none'}",
                _body_hint(shape),
            )
        ]
    if len(step.body) == len(declared):
        return []
    return [
        (
            where,
            f"template '{step.name}' ({shape.language}) takes {len(declared)} body"
            f" parameter(s), this step gives {len(step.body)} (error 132000)",
            _body_hint(shape),
        )
    ]


def _names(template: str, given: Sequence[str], declared: Sequence[str]) -> list[Mismatch]:
    """A mapping's names against a NAMED template's placeholders: each unknown one at its
    place, with the closest missing name; the missing ones together."""
    found: list[Mismatch] = []
    missing = [name for name in declared if name not in given]
    for name in given:
        if name in declared:
            continue
        close = difflib.get_close_matches(name, missing or declared, 1, 0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"its parameters: {', '.join(declared)}"
        if close and close[0] in missing:
            missing.remove(close[0])  # a misspelling: said once, at the name written
        found.append(
            (
                ("body", name),
                f"template '{template}' has no parameter '{name}' (error 132000)",
                hint,
            )
        )
    if missing:
        found.append(
            (
                ("body",),
                f"template '{template}' needs {', '.join(missing)}, this step does not give"
                f" {'it' if len(missing) == 1 else 'them'} (error 132000)",
                "body: names each of " + ", ".join(declared),
            )
        )
    return found


def _listed(placeholders: Sequence[str]) -> str:
    return ", ".join("{{" + p + "}}" for p in placeholders)


def _body_hint(shape: Shape) -> str:
    if not shape.body_parameters:
        return "remove body:"
    if shape.named:
        return "body: is a mapping, {" + ", ".join(f"{p}: ..." for p in shape.body_parameters) + "}"
    return "body: is a list, one value for each of " + _listed(shape.body_parameters)


def _offer_mismatch(step: models.Template, shape: Shape) -> list[Mismatch]:
    """A limited-time offer that shows an expiration needs one; any other template takes none."""
    given = step.limited_time_offer is not None
    if shape.offer and not given:
        return [
            (
                ("name",),
                f"template '{step.name}' is a limited-time offer with an expiration, this step"
                " gives none",
                "add limited_time_offer: {expiration_time_ms: ...} (UNIX time in milliseconds)",
            )
        ]
    if given and not shape.offer:
        what = "shows no expiration" if shape.offer is False else "is not a limited-time offer"
        return [
            (
                ("limited_time_offer",),
                f"template '{step.name}' {what}",
                "remove limited_time_offer:",
            )
        ]
    return []


def _buttons_mismatch(step: models.Template, shape: Shape) -> list[Mismatch]:
    found: list[Mismatch] = []
    given: set[int] = set()
    for i, button in enumerate(step.buttons):
        index = button.index if button.index is not None else i
        sub_type = button.kind
        given.add(index)
        where: YamlPath = ("buttons", i)
        if index >= len(shape.buttons):
            found.append(
                (where, f"template '{step.name}' has no button {index}", _buttons_hint(shape))
            )
            continue
        wanted = shape.buttons[index]
        if wanted.parameter != sub_type:
            takes = (
                f"a {wanted.parameter} parameter" if wanted.parameter else "no parameter (static)"
            )
            found.append(
                (
                    where,
                    f"button {index} of template '{step.name}' is {wanted.type}"
                    f" '{wanted.text}', it takes {takes}, not a {sub_type}",
                    _buttons_hint(shape),
                )
            )
    missing = [i for i, b in enumerate(shape.buttons) if b.parameter is not None and i not in given]
    if missing:
        found.append(
            (
                ("buttons",) if step.buttons else ("name",),
                f"template '{step.name}' needs parameters for button(s)"
                f" {', '.join(map(str, missing))}",
                _buttons_hint(shape),
            )
        )
    return found


def _buttons_hint(shape: Shape) -> str:
    listed = [
        f"{i}: {b.type} '{b.text}'" + ("" if b.parameter else " (static)")
        for i, b in enumerate(shape.buttons)
    ]
    return "its buttons: " + ("; ".join(listed) if listed else "none")


def body_texts(path: Path) -> dict[tuple[str, str], str]:
    """(name, language) → the approved body text of each template in the lock file (none when
    there is no lock): the words `plan` and `preview` show, with the parameters filled in."""
    if not path.is_file():
        return {}
    texts = {}
    for entry in read_entries(path):
        for component in entry.get("components", []):
            if str(component.get("type", "")).upper() == "BODY":
                texts[(str(entry.get("name")), str(entry.get("language")))] = str(
                    component.get("text", "")
                )
    return texts


def fill(text: str, parameters: Sequence[str] | Mapping[str, str]) -> str:
    """A template's text with its placeholders replaced: `{{1}}`, `{{2}}`, ... by a list of
    parameters (1-based, as WhatsApp numbers them: docs/whatsapp-api.md#templates), or
    `{{first_name}}` by a mapping of a NAMED template's; a placeholder with no parameter stays
    as written, so a mismatch shows."""

    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if isinstance(parameters, Mapping):
            return parameters.get(key, match.group(0))
        index = int(key) if key.isdigit() else 0
        return parameters[index - 1] if 1 <= index <= len(parameters) else match.group(0)

    return PLACEHOLDER.sub(one, text)


def shown(parameter: Mapping[str, Any]) -> str:
    """What the customer reads of one sent parameter: its text, or a currency's or a
    date_time's fallback_value, which the Cloud API shows
    (docs/whatsapp-api.md#template-parameters)."""
    kind = str(parameter.get("type", "text"))
    value = parameter.get(kind)
    if isinstance(value, dict):
        return str(value.get("fallback_value", ""))
    return str(parameter.get("text", ""))


def words(content: Mapping[str, Any], texts: Mapping[tuple[str, str], str]) -> str | None:
    """What the customer reads of a rendered template message (`content`: the `template`
    object of its body), when the lock file knows the template's text; else None."""
    language = content.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    text = texts.get((str(content.get("name")), str(code)))
    if not text:
        return None
    parameters: list[str] | dict[str, str] = []
    for component in content.get("components", []):
        if component.get("type") == "body":
            sent = component.get("parameters", [])
            if any("parameter_name" in p for p in sent):
                parameters = {str(p.get("parameter_name")): shown(p) for p in sent}
            else:
                parameters = [shown(p) for p in sent]
    return fill(text, parameters)
