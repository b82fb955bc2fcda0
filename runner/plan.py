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

from . import models
from .dialect import Dialect
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
    source: str  # as written in the flow


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
    template: TemplatePlan | None = None


@dataclass(frozen=True, slots=True)
class TemplatePlan:
    """A template step, compiled: its header, body and button parameters."""

    name: str
    language: FieldPlan
    header_kind: str | None
    header: tuple[FieldPlan, ...]  # id/link/filename of a media header, or its text
    header_file: FieldPlan | None
    body: tuple[FieldPlan, ...]
    buttons: tuple[tuple[str, int, FieldPlan], ...]  # (sub_type, index, parameter)


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
    """A step not sent to this recipient because its `when` was false."""

    recipient: Recipient
    step: StepPlan
    reason: str


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """Where and how to reach the API, rendered from the flow and the environment (None where
    a value could not be rendered). Secrets are kept out of repr."""

    kind: str
    base_url: str | None
    token: str | None = field(default=None, repr=False)
    phone_number_id: str | None = None
    version: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    template_namespace: str | None = None

    @property
    def ready(self) -> bool:
        """Whether a run can reach the API with this: a URL and a credential (and on Cloud,
        the phone number's id)."""
        credential = self.token is not None or (
            self.username is not None and self.password is not None
        )
        number = self.kind != "cloud" or self.phone_number_id is not None
        return self.base_url is not None and credential and number

    def dialect(self) -> Dialect:
        """The dialect that speaks to this API (placeholders where values are unknown, for
        `plan` in CI without secrets)."""
        from .cloud import BASE_URL, VERSION, Cloud
        from .onprem import Credentials, OnPrem

        if self.kind == "cloud":
            return Cloud(
                self.base_url or BASE_URL,
                self.version or VERSION,
                self.phone_number_id or "PHONE_NUMBER_ID",
            )
        login = None
        if self.username is not None and self.password is not None:
            login = Credentials(self.username, self.password)
        return OnPrem(self.base_url or "", login, self.template_namespace)


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
            header = {"type": "text", "text": value(plan.header[0])}
            components.append({"type": "header", "parameters": [header]})
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
            parameters = [{"type": "text", "text": value(field)} for field in plan.body]
            components.append({"type": "body", "parameters": parameters})
        for sub_type, index, field in plan.buttons:
            parameter = (
                {"type": "text", "text": value(field)}
                if sub_type == "url"
                else {"type": "payload", "payload": value(field)}
            )
            components.append(
                {
                    "type": "button",
                    "sub_type": sub_type,
                    "index": str(index),
                    "parameters": [parameter],
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
        self, kind: str, plan: FieldPlan, recipient: Recipient, context: Mapping[str, Any]
    ) -> LocalMedia:
        relative: str = self._guard(lambda: plan.render(context), plan.where, recipient)
        key = relative  # a string key: no path arithmetic per recipient
        checked = self._files.get(key)
        if checked is None:
            try:
                checked = check_file(self.loaded.base_dir, relative, kind)
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
        """The API's URL and credentials, rendered from the environment.

        A missing environment variable is a warning where nothing is sent (validate and plan
        run in CI without secrets) and an error for a real run.
        """
        api = self.flow.api
        sources: dict[str, tuple[str | None, YamlPath]] = {
            "base_url": (api.base_url, ("api", "base_url")),
            "token": (api.token, ("api", "token")),
        }
        if isinstance(api, models.CloudApi):
            sources["phone_number_id"] = (api.phone_number_id, ("api", "phone_number_id"))
        else:
            sources["template_namespace"] = (api.template_namespace, ("api", "template_namespace"))
            if api.login is not None:
                sources["username"] = (api.login.username, ("api", "login", "username"))
                sources["password"] = (api.login.password, ("api", "login", "password"))
        values = {
            name: self._api_value(name, source, where, for_run)
            for name, (source, where) in sources.items()
            if source is not None
        }
        base_url = values.get("base_url")
        return ApiTarget(
            kind=api.kind,
            base_url=base_url.rstrip("/") if base_url else None,
            token=values.get("token"),
            phone_number_id=values.get("phone_number_id"),
            version=getattr(api, "version", None),
            username=values.get("username"),
            password=values.get("password"),
            template_namespace=values.get("template_namespace"),
        )

    def _api_value(self, name: str, source: str, where: YamlPath, for_run: bool) -> str | None:
        context = {"env": self.env, "vars": vars_fields(self.flow.vars)}
        try:
            value = compile_text(source)(context)
        except MissingEnv as exc:
            severity: Severity = "error" if for_run else "warning"
            message = describe(exc) + ("" if for_run else "; a real run needs it")
            self.problems.add(Problem(self.loaded.locate(where), message, severity=severity))
            return None
        except RENDER_ERRORS as exc:
            self.problems.add(Problem(self.loaded.locate(where), describe(exc)))
            return None
        if name in _SECRETS:
            value = value.strip()
        error = _check_api_value(name, value)
        if error:
            self.problems.add(Problem(self.loaded.locate(where), error))
            return None
        return value


_SECRETS = ("token", "password")  # a token file's trailing newline is stripped


def _check_api_value(name: str, value: str) -> str | None:
    """Rules on rendered API settings; a bad one would fail inside the HTTP client, after
    messages were marked, so it is refused before the run."""
    if name == "base_url":
        return check_rendered("link", value)
    if name == "phone_number_id" and not value.isdigit():
        return f"phone_number_id should be the number's id (digits), got {value!r}"
    if name in _SECRETS and (not value or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return f"the {name} is empty or holds a control character (a line break?)"
    return None


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
    if name in ("id", "filename", "body", "file", "button") and not text.strip():
        return f"{name} is empty after rendering"
    if name == "caption" and len(text) > models.CAPTION_MAX:
        return f"caption is {len(text):,} characters; WhatsApp allows {models.CAPTION_MAX:,}"
    if name == "body" and len(text) > models.TEXT_BODY_MAX:
        return f"text is {len(text):,} characters; WhatsApp allows {models.TEXT_BODY_MAX:,}"
    return None


def _check_parameter(text: str) -> str | None:
    """A template text parameter: WhatsApp refuses empty ones, line breaks, tabs and more than
    four spaces in a row (error 132000/131008), so they are caught before sending."""
    if not text.strip():
        return "template parameter is empty after rendering"
    if "\n" in text or "\t" in text or "     " in text:
        return "template parameter holds a line break, a tab or more than 4 spaces in a row"
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
    _check_dialect(loaded, problems)
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
            return FieldPlan(name, compile_text(source), where, source)
        except TemplateSyntaxError as exc:
            location = loaded.locate(where)
            problems.add(
                Problem(
                    Location(location.file, location.line + (exc.lineno or 1) - 1, location.col),
                    describe(exc),
                )
            )
            return FieldPlan(name, lambda _c: source, where, source)

    fields: list[FieldPlan] = []
    constants: dict[str, Any] = {}
    for name in ("id", "link", "caption", "filename", "body"):
        value = getattr(content, name, None)
        if isinstance(value, str):
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
    template = None
    if isinstance(content, models.Template):
        template = _compile_template(content, base, compiled)
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
        template=template,
    )


def _compile_template(
    content: models.Template, base: YamlPath, compiled: Callable[[str, str, YamlPath], FieldPlan]
) -> TemplatePlan:
    header: list[FieldPlan] = []
    header_file = None
    kind = None
    if content.header is not None:
        kind = content.header.kind
        where: YamlPath = (*base, "header", kind)
        media = getattr(content.header, kind)
        if isinstance(media, str):
            header.append(compiled("param", media, where))
        else:
            for name in ("id", "link", "filename"):
                value = getattr(media, name, None)
                if value is not None:
                    header.append(compiled(name, value, (*where, name)))
            if media.provider is not None:
                header.append(compiled("provider", media.provider.name, (*where, "provider")))
            if media.file is not None:
                header_file = compiled("file", media.file, (*where, "file"))
    body = tuple(compiled("param", text, (*base, "body", i)) for i, text in enumerate(content.body))
    buttons = []
    for i, button in enumerate(content.buttons):
        sub_type = "url" if button.url is not None else "quick_reply"
        value = button.url if button.url is not None else button.quick_reply
        assert value is not None  # the model requires one of them
        index = button.index if button.index is not None else i
        buttons.append(
            (sub_type, index, compiled("button", value, (*base, "buttons", i, sub_type)))
        )
    language = compiled("language", content.language, (*base, "language"))
    return TemplatePlan(
        content.name, language, kind, tuple(header), header_file, body, tuple(buttons)
    )


def _local_sources(step: StepPlan) -> Iterator[tuple[str, FieldPlan]]:
    """(media type, `file:` field) of a step: its own file, or its template header's."""
    if step.file is not None:
        yield step.kind, step.file
    template = step.template
    if template is not None and template.header_file is not None:
        assert template.header_kind is not None
        yield template.header_kind, template.header_file


def _check_constant_files(plan: Plan) -> None:
    """Constant `file:` paths are checked once here, so a missing file is found even with no
    recipients; templated ones are checked as they render."""
    for step in plan.steps:
        for kind, source in _local_sources(step):
            if models.is_template(source.source):
                continue
            try:
                checked: LocalMedia | MediaError = check_file(
                    plan.loaded.base_dir, source.source, kind
                )
            except MediaError as exc:
                checked = exc
                plan.problems.add(Problem(plan.loaded.locate(source.where), str(exc), exc.hint))
            plan._files[source.source] = checked


def _check_dialect(loaded: LoadedFlow, problems: Problems) -> None:
    """What one dialect accepts and the other does not, located at the step that uses it."""
    api = loaded.flow.api
    for index, step in enumerate(loaded.flow.messages):
        base: YamlPath = ("messages", index, step.kind)
        content = step.content
        media: list[tuple[models._Media, YamlPath]] = []
        if isinstance(content, models._Media):
            media.append((content, base))
        elif isinstance(content, models.Template) and content.header is not None:
            header = getattr(content.header, content.header.kind)
            if isinstance(header, models._Media):
                media.append((header, (*base, "header", content.header.kind)))
        if isinstance(api, models.CloudApi):
            for item, where in media:
                if item.provider is not None:
                    problems.add(
                        Problem(
                            loaded.locate((*where, "provider"), key=True),
                            "provider is only for the On-Premises API",
                            "on the Cloud API a link must be fetchable by WhatsApp without"
                            " credentials; or use file: to upload it",
                        )
                    )
        elif isinstance(content, models.Template) and api.template_namespace is None:
            problems.add(
                Problem(
                    loaded.locate(base, key=True),
                    "template messages on the On-Premises API need api.template_namespace",
                    "your business's template namespace, shown in WhatsApp Manager",
                )
            )


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
