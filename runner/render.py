"""Rendering: one recipient's steps turned into messages ready to send (or skips), with every
rendered value checked against what WhatsApp accepts.

The executor sends what `Renderer.messages` yields; `validate` renders every recipient with
`survey` to find every problem before anything is sent; `plan` prints samples. A rendered value
that WhatsApp would refuse is a located problem here, never a failed request later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import models
from .conversation import NO_CONTACT, NOT_SENT, UNANSWERED, WAITS_ANSWER, Answer
from .errors import Problem
from .media import LocalMedia, MediaError
from .plan import FieldPlan, ParameterPlan, Plan, StepPlan, TemplatePlan
from .recipients import Recipient
from .templates import (
    RENDER_ERRORS,
    TooLong,
    contact_fields,
    describe,
)
from .yamldoc import YamlPath

if TYPE_CHECKING:
    from .dialect import Dialect

COUPON_CODE_MAX = 15  # copy code buttons (docs/whatsapp-api.md#template-parameters)
UPLOAD_PLACEHOLDER = "@upload:"  # shown by `plan` where a media id will come from an upload


@dataclass(frozen=True, slots=True)
class Message:
    """A message ready to send; `upload` is set when the media id comes from a local file."""

    recipient: Recipient
    step: StepPlan
    content: dict[str, Any]
    upload: LocalMedia | None = None
    media_at: tuple[str | int, ...] = ()  # where in `content` the uploaded media's id goes

    def body(self, dialect: Dialect, media_id: str | None = None) -> dict[str, Any]:
        content = self.content
        if self.upload is not None:
            shown = media_id or f"{UPLOAD_PLACEHOLDER}{self.upload.path.name}"
            content = _with_id(content, self.media_at, shown)
        return dialect.message_body(self.recipient.phone, self.step.kind, content)


def _with_id(content: Any, at: tuple[str | int, ...], media_id: str) -> Any:
    """A copy of `content` with `id` set in the media object at `at` (copied along that path
    only: the rest is shared, nothing is mutated)."""
    if not at:
        return {"id": media_id, **content}
    head, rest = at[0], at[1:]
    if isinstance(content, list):
        assert isinstance(head, int)
        return [*content[:head], _with_id(content[head], rest, media_id), *content[head + 1 :]]
    return {**content, head: _with_id(content[head], rest, media_id)}


@dataclass(frozen=True, slots=True)
class Skipped:
    """A step not sent to this recipient because its `when` was false; `final` when the
    `when` read the recipient's history (then false when due stays false: a follow-up for
    "did not read it within 2 days" must not fire on day 9)."""

    recipient: Recipient
    step: StepPlan
    reason: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class Waiting:
    """A step that cannot be decided yet: its `when` reads the answer to an earlier step
    (`on`) that was sent and not answered yet (`reason` WAITS_ANSWER), or its `after:` is not
    due yet (WAITS_TIME until `until`; WAITS_EVENT: the event has not happened)."""

    recipient: Recipient
    step: StepPlan
    on: str | None  # the step it waits on
    reason: str = WAITS_ANSWER
    until: datetime | None = None


# The answer to a step of this recipient's (by key); None: nothing sent of it.
Answers = Callable[[str], Answer]
# A step may be held before its `when` is even looked at (its `after:` is not due)
Gate = Callable[[StepPlan], "Waiting | None"]
Item = Message | Skipped | Waiting


class RenderFailure(Exception):
    """A recipient's step could not be rendered; `problem` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class Renderer:
    """Renders recipients of one compiled plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._context = plan.templates_see()

    def context(self, recipient: Recipient) -> dict[str, Any]:
        return self._context(recipient.fields)

    def messages(
        self,
        recipient: Recipient,
        answers: Answers | None = None,
        *,
        gate: Gate | None = None,
        contact: Mapping[str, Any] | None = None,
    ) -> Iterator[Item]:
        """This recipient's steps, in order; raises RenderFailure for the first broken one.

        Lazy: a step's `when` reads `answers` when the step is reached, so a run that sends a
        step and then asks for the next one sees it sent. Without `answers` (validate, plan),
        a step counts as sent when it rendered to a message in this pass, unanswered. `gate`
        holds a step before its `when` is looked at (`after:`); `contact` is what `when` sees
        as `contact` (when the customer last wrote)."""
        context = {**self.context(recipient), "contact": contact_fields(contact or NO_CONTACT)}
        rendered: set[str] = set()

        def assumed(key: str) -> Answer:
            return UNANSWERED if key in rendered else NOT_SENT

        for step in self.plan.steps:
            held = gate(step) if gate is not None else None
            if held is not None:
                yield held
                continue
            item = self._render_step(step, recipient, context, answers or assumed)
            if isinstance(item, Message):
                rendered.add(step.key)
            yield item

    def _render_step(
        self, step: StepPlan, recipient: Recipient, context: Mapping[str, Any], answers: Answers
    ) -> Item:
        when = step.when
        if step.reads:
            read = {key: answers(key) for key in step.reads}
            waits = next((key for key in step.awaits if read[key].pending), None)
            if waits is not None:
                return Waiting(recipient, step, waits)
            context = {**context, "steps": {key: a.fields() for key, a in read.items()}}
        if when is not None and not self._guard(
            lambda: when(context), (*step.path, "when"), recipient
        ):
            return Skipped(recipient, step, f"when: {step.when_source}", final=step.history)
        if step.template is not None:
            return self._render_template(step, step.template, recipient, context)
        content: dict[str, Any] = {}
        for plan in step.fields:
            content[plan.name] = self._value(plan, recipient, context)
        if step.provider is not None:
            content["provider"] = {"name": self._value(step.provider, recipient, context)}
        content.update(step.constants)
        upload = None
        if step.file is not None:
            upload = self._local_file(step.kind, step.file, recipient, context)
        return Message(recipient, step, content, upload)

    def _render_template(
        self, step: StepPlan, plan: TemplatePlan, recipient: Recipient, context: Mapping[str, Any]
    ) -> Message:
        """The template object with its `components`, as both dialects take it (the
        On-Premises one adds its namespace and language policy)."""

        def value(field: FieldPlan) -> str:
            return self._value(field, recipient, context)

        components: list[dict[str, Any]] = []
        upload = None
        media_at: tuple[str | int, ...] = ()
        kind = plan.header_kind
        if kind == "text":
            header = _named({"type": "text", "text": value(plan.header[0])}, plan.header_name)
            components.append({"type": "header", "parameters": [header]})
        elif kind == "location":
            place: dict[str, Any] = {field.name: value(field) for field in plan.header}
            for axis in ("latitude", "longitude"):
                place[axis] = float(place[axis])  # checked by check_rendered
            components.append(
                {"type": "header", "parameters": [{"type": "location", "location": place}]}
            )
        elif kind is not None:
            media: dict[str, Any] = {}
            for field in plan.header:
                if field.name == "provider":
                    media["provider"] = {"name": value(field)}
                else:
                    media[field.name] = value(field)
            if plan.header_file is not None:
                upload = self._local_file(kind, plan.header_file, recipient, context)
                media_at = ("components", 0, "parameters", 0, kind)
            components.append({"type": "header", "parameters": [{"type": kind, kind: media}]})
        if plan.body:
            parameters = [_body_parameter(parameter, value) for parameter in plan.body]
            components.append({"type": "body", "parameters": parameters})
        if plan.offer is not None:
            offer = {"expiration_time_ms": int(value(plan.offer))}
            components.append(
                {
                    "type": "limited_time_offer",
                    "parameters": [{"type": "limited_time_offer", "limited_time_offer": offer}],
                }
            )
        for sub_type, index, field in plan.buttons:
            kind_of, key = BUTTON_PARAMETERS[sub_type]
            components.append(
                {
                    "type": "button",
                    "sub_type": sub_type,
                    "index": str(index),
                    "parameters": [{"type": kind_of, key: value(field)}],
                }
            )
        language = {"code": value(plan.language)}
        content: dict[str, Any] = {"name": plan.name, "language": language}
        if components:
            content["components"] = components
        return Message(recipient, step, content, upload, media_at)

    def _guard(self, action: Callable[[], Any], where: YamlPath, recipient: Recipient) -> Any:
        try:
            return action()
        except RENDER_ERRORS as exc:
            raise RenderFailure(self._problem(where, describe(exc), recipient)) from None

    def _problem(self, where: YamlPath, message: str, recipient: Recipient) -> Problem:
        return Problem(
            self.plan.loaded.locate(where),
            message,
            detail=f"first for the recipient at {recipient.where}",
        )

    def _value(self, plan: FieldPlan, recipient: Recipient, context: Mapping[str, Any]) -> str:
        try:  # not through _guard: this runs for every field of every recipient
            text = plan.render(context)
        except RENDER_ERRORS as exc:
            message = describe(exc)
            if isinstance(exc, TooLong):  # stopped early: said as the field's own limit
                message = _too_long(plan.name, exc.length, exc.exact) or message
            raise RenderFailure(self._problem(plan.where, message, recipient)) from None
        error = check_rendered(plan.name, text)
        if error:
            raise RenderFailure(self._problem(plan.where, error, recipient))
        return text

    def _local_file(
        self, kind: str, plan: FieldPlan, recipient: Recipient, context: Mapping[str, Any]
    ) -> LocalMedia:
        relative: str = self._guard(lambda: plan.render(context), plan.where, recipient)
        try:
            return self.plan.files.check(relative, kind)
        except MediaError as exc:
            problem = self._problem(plan.where, str(exc), recipient)
            raise RenderFailure(
                Problem(problem.location, problem.message, exc.hint, detail=problem.detail)
            ) from None


# A button's parameter by its sub_type: (the parameter's type, the key of its value)
BUTTON_PARAMETERS = {
    "url": ("text", "text"),
    "quick_reply": ("payload", "payload"),
    "copy_code": ("coupon_code", "coupon_code"),
}


def _named(parameter: dict[str, Any], name: str | None) -> dict[str, Any]:
    """A NAMED template's parameter carries its placeholder's name
    (docs/whatsapp-api.md#template-parameters)."""
    return parameter if name is None else {**parameter, "parameter_name": name}


def _body_parameter(parameter: ParameterPlan, value: Callable[[FieldPlan], str]) -> dict[str, Any]:
    """A body parameter as the API takes it: text, currency (amount_1000 a whole number) or
    date_time (docs/whatsapp-api.md#template-parameters)."""
    if parameter.type == "currency":
        fallback, code, amount = (value(field) for field in parameter.fields)
        money = {"fallback_value": fallback, "code": code, "amount_1000": int(amount)}
        return _named({"type": "currency", "currency": money}, parameter.name)
    if parameter.type == "date_time":
        moment = {"fallback_value": value(parameter.fields[0])}
        return _named({"type": "date_time", "date_time": moment}, parameter.name)
    return _named({"type": "text", "text": value(parameter.fields[0])}, parameter.name)


_VALUE_RULES: dict[str, Callable[[str], str]] = {
    "link": models.check_http_url,
    "language": models.check_language,
}


def check_rendered(name: str, text: str) -> str | None:
    """Rules on a rendered value (constants were checked by the models already)."""
    rule = _VALUE_RULES.get(name)
    if rule is not None:
        try:
            rule(text)
        except ValueError as exc:
            return str(exc)
    if name == "param":
        return _check_parameter(text)
    rule_of_kind = _KIND_RULES.get(name)
    if rule_of_kind is not None:
        return rule_of_kind(text)
    if name in ("id", "filename", "body", "file", "url", "quick_reply") and not text.strip():
        return f"{name} is empty after rendering"
    if (name == "caption" and len(text) > models.CAPTION_MAX) or (
        name == "body" and len(text) > models.TEXT_BODY_MAX
    ):
        return _too_long(name, len(text))
    return None


def _number_in(name: str, low: float, high: float) -> Callable[[str], str | None]:
    def rule(text: str) -> str | None:
        try:
            number = float(text)
        except ValueError:
            return f"{name} {text!r} is not a number"
        if not low <= number <= high:
            return f"{name} {number:g} is not between {low:g} and {high:g}"
        return None

    return rule


def _whole(name: str) -> Callable[[str], str | None]:
    def rule(text: str) -> str | None:
        if not re.fullmatch(r"\s*-?\d+\s*", text):
            return f"{name} {text!r} is not a whole number"
        return None

    return rule


def _filled(name: str, limit: int | None = None) -> Callable[[str], str | None]:
    def rule(text: str) -> str | None:
        if not text.strip():
            return f"{name} is empty after rendering"
        if limit is not None and len(text) > limit:
            return f"{name} '{text}' is {len(text)} characters; WhatsApp allows {limit}"
        return None

    return rule


def _currency_code(text: str) -> str | None:
    if not re.fullmatch(r"[A-Z]{3}", text):
        return f"currency code {text!r} is not three capital letters (ISO 4217, like USD)"
    return None


# Rules on template parameters other than text (docs/whatsapp-api.md#template-parameters)
_KIND_RULES: dict[str, Callable[[str], str | None]] = {
    "latitude": _number_in("latitude", -90, 90),
    "longitude": _number_in("longitude", -180, 180),
    "name": _filled("location name"),
    "address": _filled("location address"),
    "amount_1000": _whole("amount_1000"),
    "expiration_time_ms": _whole("expiration_time_ms"),
    "currency_code": _currency_code,
    "fallback_value": _filled("fallback_value"),
    "copy_code": _filled("coupon code", COUPON_CODE_MAX),
}

_LENGTH_LIMITS = {"caption": models.CAPTION_MAX, "body": models.TEXT_BODY_MAX}


def _too_long(name: str, length: int, exact: bool = True) -> str | None:
    """The caption and text limits (docs/whatsapp-api.md#message-bodies), said the same way
    whether the value rendered (`exact`) or its render was stopped (templates.TooLong)."""
    limit = _LENGTH_LIMITS.get(name)
    if limit is None or length <= limit:
        return None
    what = "caption" if name == "caption" else "text"
    return (
        f"{what} is {'' if exact else 'more than '}{length:,} characters; WhatsApp allows {limit:,}"
    )


def _check_parameter(text: str) -> str | None:
    """A template text parameter: WhatsApp refuses empty ones, line breaks, tabs and more than
    four spaces in a row (observed as 132018: docs/whatsapp-api.md#templates), so they are
    caught before sending."""
    if not text.strip():
        return "template parameter is empty after rendering"
    if "\n" in text or "\t" in text or "     " in text:
        return "template parameter holds a line break, a tab or more than 4 spaces in a row"
    return None


@dataclass
class Survey:
    """What a full pass over all recipients found: the numbers `validate` and `plan` report."""

    recipients: int = 0
    messages: int = 0
    skipped: int = 0
    waiting: int = 0  # steps that wait for an answer to an earlier one (and those behind them)
    per_step: dict[str, int] = field(default_factory=dict)
    samples: list[Item] = field(default_factory=list)


def survey(
    plan: Plan,
    sample_recipients: int = 0,
    on_message: Callable[[Message], None] | None = None,
) -> Survey:
    """Render every step for every recipient, collecting problems (bounded) and counts."""
    result = Survey(per_step={step.key: 0 for step in plan.steps})
    renderer = Renderer(plan)
    for recipient in plan.recipients():
        result.recipients += 1
        try:
            items = list(renderer.messages(recipient))
        except RenderFailure as failure:
            plan.problems.add(failure.problem)
            continue
        for item in items:
            if isinstance(item, Skipped):
                result.skipped += 1
                continue
            if isinstance(item, Waiting):
                result.waiting += 1
                continue
            result.messages += 1
            result.per_step[item.step.key] += 1
            if on_message is not None:
                on_message(item)
        if result.recipients <= sample_recipients:
            result.samples.extend(items)
    return result
