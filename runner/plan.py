"""The plan: a flow compiled once, then turned into concrete messages recipient by recipient.

`compile_plan` does all per-flow work a single time (template compilation, constant media checks,
step identities) and reports problems at their place in the flow file. `Plan.messages` renders one
recipient's steps: the executor sends what it yields, `validate` renders everyone to find every
problem before anything is sent, `plan` prints it. Nothing is parsed twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError

from . import models, onprem
from .errors import FlowInvalid, Location, Problem, Problems, Severity
from .loader import LoadedFlow
from .media import LocalMedia, MediaError, check_file
from .recipients import CsvError, Recipient, RecipientStream, read_csv
from .templates import (
    RENDER_ERRORS,
    EnvVars,
    MissingEnv,
    Render,
    compile_condition,
    compile_text,
    describe,
    recipient_fields,
    vars_fields,
)
from .yamldoc import YamlPath

UPLOAD_PLACEHOLDER = "@upload:"  # shown by `plan` where a media id will come from an upload


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One templated value of a message object, with where it was written."""

    name: str
    render: Render
    where: YamlPath


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One step of the flow, compiled."""

    key: str  # the step's identity in the ledger: its name, else "#" and its 1-based position
    position: int
    kind: str
    fields: tuple[FieldPlan, ...]
    constants: Mapping[str, Any]  # values that need no rendering (preview_url)
    provider: FieldPlan | None
    file: FieldPlan | None
    when: Callable[[Mapping[str, Any]], bool] | None
    when_source: str | None
    path: YamlPath


@dataclass(frozen=True, slots=True)
class Message:
    """A message ready to send; `upload` is set when the media id comes from a local file."""

    recipient: Recipient
    step: StepPlan
    content: dict[str, Any]
    upload: LocalMedia | None = None

    def body(self, media_id: str | None = None) -> dict[str, Any]:
        content = self.content
        if self.upload is not None:
            content = {"id": media_id or f"{UPLOAD_PLACEHOLDER}{self.upload.path.name}", **content}
        return onprem.message_body(self.recipient.phone, self.step.kind, content)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A step not sent to this recipient because its `when` was false."""

    recipient: Recipient
    step: StepPlan
    reason: str


@dataclass(frozen=True, slots=True)
class ApiTarget:
    base_url: str | None
    token: str | None = field(repr=False)  # never shown: it is a secret


class RenderFailure(Exception):
    """A recipient's step could not be rendered; `problem` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class Plan:
    loaded: LoadedFlow
    steps: tuple[StepPlan, ...]
    problems: Problems
    env: EnvVars
    _files: dict[str, LocalMedia | MediaError] = field(default_factory=dict)

    @property
    def flow(self) -> models.Flow:
        return self.loaded.flow

    def recipients(self) -> RecipientStream:
        return RecipientStream(self._rows, self.problems)

    def _rows(self) -> Iterator[tuple[Location, dict[str, Any]]]:
        source = self.flow.recipients
        if isinstance(source, models.CsvRecipients):
            path = self.loaded.base_dir / source.csv
            display = os.path.join(os.path.dirname(self.loaded.display), source.csv)
            try:
                for line, row in read_csv(path, display, source.delimiter):
                    yield Location(display, line, 1), dict(row)
            except CsvError as exc:
                self.problems.add(Problem(exc.location, str(exc), exc.hint))
            return
        for index, person in enumerate(source):
            where = self.loaded.locate(("recipients", index, "phone"))
            yield where, {**(person.model_extra or {}), "phone": person.phone}

    def context(self, recipient: Recipient) -> dict[str, Any]:
        return {
            "recipient": recipient_fields(recipient.fields),
            "vars": vars_fields(self.flow.vars),
            "env": self.env,
        }

    def messages(self, recipient: Recipient) -> Iterator[Message | Skipped]:
        """This recipient's steps, in order; raises RenderFailure for the first broken one."""
        context = self.context(recipient)
        for step in self.steps:
            yield self._render_step(step, recipient, context)

    def _render_step(
        self, step: StepPlan, recipient: Recipient, context: Mapping[str, Any]
    ) -> Message | Skipped:
        when = step.when
        if when is not None and not self._guard(
            lambda: when(context), (*step.path, "when"), recipient
        ):
            return Skipped(recipient, step, f"when: {step.when_source}")
        content: dict[str, Any] = {}
        for plan in step.fields:
            content[plan.name] = self._value(plan, recipient, context)
        if step.provider is not None:
            content["provider"] = {"name": self._value(step.provider, recipient, context)}
        content.update(step.constants)
        upload = None
        if step.file is not None:
            upload = self._local_file(step, step.file, recipient, context)
        return Message(recipient, step, content, upload)

    def _guard(self, action: Callable[[], Any], where: YamlPath, recipient: Recipient) -> Any:
        try:
            return action()
        except RENDER_ERRORS as exc:
            raise RenderFailure(self._problem(where, describe(exc), recipient)) from None

    def _problem(self, where: YamlPath, message: str, recipient: Recipient) -> Problem:
        return Problem(
            self.loaded.locate(where),
            message,
            detail=f"first for the recipient at {recipient.where}",
        )

    def _value(self, plan: FieldPlan, recipient: Recipient, context: Mapping[str, Any]) -> str:
        text: str = self._guard(lambda: plan.render(context), plan.where, recipient)
        error = check_rendered(plan.name, text)
        if error:
            raise RenderFailure(self._problem(plan.where, error, recipient))
        return text

    def _local_file(
        self, step: StepPlan, plan: FieldPlan, recipient: Recipient, context: Mapping[str, Any]
    ) -> LocalMedia:
        relative: str = self._guard(lambda: plan.render(context), plan.where, recipient)
        key = relative  # a string key: no path arithmetic per recipient
        checked = self._files.get(key)
        if checked is None:
            try:
                checked = check_file(self.loaded.base_dir, relative, step.kind)
            except MediaError as exc:
                checked = exc
            if len(self._files) < 10_000:
                self._files[key] = checked
        if isinstance(checked, MediaError):
            problem = self._problem(plan.where, str(checked), recipient)
            raise RenderFailure(
                Problem(problem.location, problem.message, checked.hint, detail=problem.detail)
            )
        return checked

    def uploads(self) -> list[LocalMedia]:
        """The distinct local files seen so far (by content), in first-use order."""
        seen: dict[str, LocalMedia] = {}
        for checked in self._files.values():
            if isinstance(checked, LocalMedia):
                seen.setdefault(checked.sha256, checked)
        return list(seen.values())

    def api_target(self, *, for_run: bool) -> ApiTarget:
        """The API's URL and token, rendered from the environment (None where they cannot be).

        A missing environment variable is a warning where nothing is sent (validate and plan
        run in CI without secrets) and an error for a real run.
        """
        api = self.flow.api
        context = {"env": self.env, "vars": vars_fields(self.flow.vars)}
        values: dict[str, str] = {}
        for name in ("base_url", "token"):
            where = ("api", name)
            try:
                values[name] = compile_text(getattr(api, name))(context)
            except MissingEnv as exc:
                severity: Severity = "error" if for_run else "warning"
                message = describe(exc) + ("" if for_run else "; a real run needs it")
                self.problems.add(Problem(self.loaded.locate(where), message, severity=severity))
            except RENDER_ERRORS as exc:
                self.problems.add(Problem(self.loaded.locate(where), describe(exc)))
        token = values.get("token")
        if token is not None:
            token = values["token"] = token.strip()  # a token file's trailing newline
            if not token or any(ord(c) < 32 or ord(c) == 127 for c in token):
                self.problems.add(
                    Problem(
                        self.loaded.locate(("api", "token")),
                        "the token is empty or holds a control character (a line break?)",
                    )
                )
                values.pop("token")
        base_url = values.get("base_url")
        if base_url is not None:
            error = check_rendered("link", base_url)
            if error:
                self.problems.add(Problem(self.loaded.locate(("api", "base_url")), error))
                base_url = None
        return ApiTarget(base_url.rstrip("/") if base_url else None, values.get("token"))


def check_rendered(name: str, text: str) -> str | None:
    """Rules on a rendered value (constants were checked by the models already)."""
    if name == "link":
        try:
            models.check_http_url(text)
        except ValueError as exc:
            return str(exc)
    elif name in ("id", "filename", "body", "file") and not text.strip():
        return f"{name} is empty after rendering"
    if name == "caption" and len(text) > models.CAPTION_MAX:
        return f"caption is {len(text):,} characters; WhatsApp allows {models.CAPTION_MAX:,}"
    if name == "body" and len(text) > models.TEXT_BODY_MAX:
        return f"text is {len(text):,} characters; WhatsApp allows {models.TEXT_BODY_MAX:,}"
    return None


def compile_plan(loaded: LoadedFlow, env: EnvVars | None = None) -> Plan:
    """Compile every step once; raise FlowInvalid with all template and rule problems found."""
    problems = Problems()
    steps = []
    names: dict[str, int] = {}
    for index, step in enumerate(loaded.flow.messages):
        path: YamlPath = ("messages", index)
        if step.name is not None:
            if step.name in names:
                problems.add(
                    Problem(
                        loaded.locate((*path, "name")),
                        f"step name '{step.name}' is already used by step {names[step.name]}",
                        "step names must be unique: the ledger knows a step by its name",
                    )
                )
            names.setdefault(step.name, index + 1)
        steps.append(_compile_step(loaded, step, index, problems))
    plan = Plan(loaded, tuple(steps), problems, env or EnvVars())
    _check_constant_files(plan)
    if problems.has_errors():
        raise FlowInvalid(problems)
    return plan


def _compile_step(loaded: LoadedFlow, step: Any, index: int, problems: Problems) -> StepPlan:
    path: YamlPath = ("messages", index)
    content = step.content
    base: YamlPath = (*path, step.kind)

    def compiled(name: str, source: str, where: YamlPath) -> FieldPlan:
        try:
            return FieldPlan(name, compile_text(source), where)
        except TemplateSyntaxError as exc:
            location = loaded.locate(where)
            problems.add(
                Problem(
                    Location(location.file, location.line + (exc.lineno or 1) - 1, location.col),
                    describe(exc),
                )
            )
            return FieldPlan(name, lambda _c: source, where)

    fields: list[FieldPlan] = []
    constants: dict[str, Any] = {}
    for name in ("id", "link", "caption", "filename", "body"):
        value = getattr(content, name, None)
        if value is not None:
            fields.append(compiled(name, value, (*base, name)))
    if isinstance(content, models.Text) and content.preview_url:
        constants["preview_url"] = True
    provider = None
    file = None
    if isinstance(content, models._Media):
        if content.provider is not None:
            provider = compiled("provider", content.provider.name, (*base, "provider", "name"))
        if content.file is not None:
            file = compiled("file", content.file, (*base, "file"))
    when = None
    if step.when is not None:
        try:
            when = compile_condition(step.when)
        except TemplateSyntaxError as exc:
            problems.add(Problem(loaded.locate((*path, "when")), describe(exc)))
    return StepPlan(
        key=step.name or f"#{index + 1}",
        position=index + 1,
        kind=step.kind,
        fields=tuple(fields),
        constants=constants,
        provider=provider,
        file=file,
        when=when,
        when_source=step.when,
        path=path,
    )


def _check_constant_files(plan: Plan) -> None:
    """Constant `file:` paths are checked once here, so a missing file is found even with no
    recipients; templated ones are checked as they render."""
    for step in plan.steps:
        source = step.file
        if source is None:
            continue
        content = plan.flow.messages[step.position - 1].content
        relative = getattr(content, "file", None)
        if relative is None or models.is_template(relative):
            continue
        try:
            checked: LocalMedia | MediaError = check_file(plan.loaded.base_dir, relative, step.kind)
        except MediaError as exc:
            checked = exc
            plan.problems.add(Problem(plan.loaded.locate(source.where), str(exc), exc.hint))
        plan._files[relative] = checked


@dataclass
class Survey:
    """What a full pass over all recipients found: the numbers `validate` and `plan` report."""

    recipients: int = 0
    messages: int = 0
    skipped: int = 0
    per_step: dict[str, int] = field(default_factory=dict)
    samples: list[Message | Skipped] = field(default_factory=list)


def survey(plan: Plan, sample_recipients: int = 0, on_message: Any = None) -> Survey:
    """Render every step for every recipient, collecting problems (bounded) and counts."""
    result = Survey(per_step={step.key: 0 for step in plan.steps})
    for recipient in plan.recipients():
        result.recipients += 1
        try:
            items = list(plan.messages(recipient))
        except RenderFailure as failure:
            plan.problems.add(failure.problem)
            continue
        for item in items:
            if isinstance(item, Skipped):
                result.skipped += 1
                continue
            result.messages += 1
            result.per_step[item.step.key] += 1
            if on_message is not None:
                on_message(item)
        if result.recipients <= sample_recipients:
            result.samples.extend(items)
    return result
