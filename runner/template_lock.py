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
DOCUMENT, TEXT or LOCATION; BODY; FOOTER; BUTTONS of QUICK_REPLY, URL, PHONE_NUMBER,
COPY_CODE); only `name`, `language` and `components` are required (`status` defaults to
APPROVED, `parameter_format` to POSITIONAL).
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
    )


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
    return [*_header(step, shape), *_body(step, shape), *_buttons_mismatch(step, shape)]


def _header(step: models.Template, shape: Shape) -> list[Mismatch]:
    wanted = shape.header_kind
    given = step.header.kind if step.header is not None else None
    if wanted == given:
        return []
    if wanted == "location":
        return [(("name",), f"template '{step.name}' has a location header", LOCATION_HINT)]
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


LOCATION_HINT = "flowrun cannot send a location header yet: use another template"


def _n(word: str) -> str:
    return "n" if word[:1] in "aeiou" else ""


def _body(step: models.Template, shape: Shape) -> list[Mismatch]:
    declared = len(shape.body_parameters)
    given = len(step.body)
    if shape.named and declared:
        names = ", ".join(shape.body_parameters)
        return [
            (
                ("body",) if step.body else ("name",),
                f"template '{step.name}' takes named parameters ({names}); flowrun sends"
                " positional ones",
                "use a template with positional parameters ({{1}}, {{2}}, ...) for now",
            )
        ]
    if given == declared:
        return []
    return [
        (
            ("body",) if step.body else ("name",),
            f"template '{step.name}' ({shape.language}) takes {declared} body parameter(s),"
            f" this step gives {given} (error 132000)",
            _body_hint(shape),
        )
    ]


def _body_hint(shape: Shape) -> str:
    if not shape.body_parameters:
        return "remove body:"
    return "body: is a list, one value for each of " + ", ".join(
        "{{" + p + "}}" for p in shape.body_parameters
    )


def _buttons_mismatch(step: models.Template, shape: Shape) -> list[Mismatch]:
    found: list[Mismatch] = []
    given: set[int] = set()
    for i, button in enumerate(step.buttons):
        index = button.index if button.index is not None else i
        sub_type = "url" if button.url is not None else "quick_reply"
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


_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")


def fill(text: str, parameters: Sequence[str]) -> str:
    """A template's text with `{{1}}`, `{{2}}`, ... replaced by the parameters (1-based, as
    WhatsApp numbers them: docs/whatsapp-api.md#templates); a placeholder with no parameter
    stays as written, so a mismatch shows."""

    def one(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return parameters[index - 1] if 1 <= index <= len(parameters) else match.group(0)

    return _PLACEHOLDER.sub(one, text)


def words(content: Mapping[str, Any], texts: Mapping[tuple[str, str], str]) -> str | None:
    """What the customer reads of a rendered template message (`content`: the `template`
    object of its body), when the lock file knows the template's text; else None."""
    language = content.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    text = texts.get((str(content.get("name")), str(code)))
    if not text:
        return None
    parameters: list[str] = []
    for component in content.get("components", []):
        if component.get("type") == "body":
            parameters = [str(p.get("text", "")) for p in component.get("parameters", [])]
    return fill(text, parameters)
