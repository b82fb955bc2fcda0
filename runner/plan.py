"""The plan: a flow compiled once, before any recipient is looked at.

`compile_plan` does all per-flow work a single time (template compilation, constant media
checks, step identities, the flow's dialect rules) and reports problems at their place in the
flow file. Rendering recipients with it is render.py's work; nothing is parsed twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel

from . import durations, models
from .conversation import ANSWER_FIELDS, HISTORY_FIELDS
from .dialect import check_flow
from .errors import FlowInvalid, Location, Problem, Problems
from .loader import LoadedFlow
from .media import LocalFiles, LocalMedia, MediaError
from .recipients import CsvError, Recipient, RecipientStream, read_csv
from .template_lock import check_templates
from .templates import (
    RENDER_ERRORS,
    EnvVars,
    Render,
    compile_condition,
    compile_text,
    describe,
    env_references,
    reads_name,
    recipient_fields,
    step_reads,
    vars_fields,
)
from .yamldoc import YamlPath


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
    reads: tuple[str, ...] = ()  # the earlier steps whose answer or history `when` reads
    awaits: tuple[str, ...] = ()  # of those, the ones whose answer it reads: it waits for it
    history: bool = False  # `when` reads what happened (steps.*, contact.*): false is final
    expires: timedelta = timedelta(days=7)  # how long it may wait, after the last step sent
    after: AfterPlan | None = None  # when it is due (None: as soon as it is reached)

    @property
    def free_form(self) -> bool:
        """Anything but a template needs the customer's window open."""
        return self.kind != "template"


@dataclass(frozen=True, slots=True)
class AfterPlan:
    """`after:` compiled: `wait` after `event` of step `step` (None: the recipient's latest
    message sent before this step)."""

    wait: timedelta
    step: str | None = None
    event: str = "sent"


@dataclass(frozen=True, slots=True)
class ParameterPlan:
    """One body (or text header) parameter: its type (text, currency, date_time), the fields
    that render it (text: one; currency: fallback_value, code, amount_1000; date_time:
    fallback_value) and, for a NAMED template, its `parameter_name`."""

    type: str
    fields: tuple[FieldPlan, ...]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class TemplatePlan:
    """A template step, compiled: its header, body, offer and button parameters."""

    name: str
    language: FieldPlan
    header_kind: str | None
    header: tuple[FieldPlan, ...]  # id/link/filename of a media header, its text, or the map
    header_file: FieldPlan | None
    body: tuple[ParameterPlan, ...]
    buttons: tuple[tuple[str, int, FieldPlan], ...]  # (sub_type, index, parameter)
    header_name: str | None = None  # a NAMED template's text header placeholder
    offer: FieldPlan | None = None  # limited_time_offer.expiration_time_ms


@dataclass
class Plan:
    loaded: LoadedFlow
    steps: tuple[StepPlan, ...]
    problems: Problems
    env: EnvVars
    files: LocalFiles

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    @property
    def flow(self) -> models.Flow:
        return self.loaded.flow

    def recipients(self) -> Iterable[Recipient]:
        """Every recipient, each phone once, in the source's order: those `recipients.when`
        chooses (a CSV's rows the flow is for, without a `when:` on every step)."""
        stream = RecipientStream(self._rows, self.problems, self.flow.settings.default_country)
        source = self.flow.recipients
        if isinstance(source, models.CsvRecipients) and source.when is not None:
            return _Chosen(stream, self, source.when)
        return stream

    def templates_see(self) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """What a template sees of a recipient (their fields), `vars` and `env`. Messages
        reach customers and `plan` prints them: they never see the api section's variables
        nor secret-like names (runner/templates.py, EnvVars)."""
        variables = vars_fields(self.flow.vars)
        env = self.env.for_messages(api_variables(self.flow.api))

        def context(fields: Mapping[str, Any]) -> dict[str, Any]:
            return {"recipient": recipient_fields(fields), "vars": variables, "env": env}

        return context

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

    def uploads(self) -> list[LocalMedia]:
        """The distinct local files met so far (by content), in first-use order."""
        return self.files.uploads()


def compile_plan(loaded: LoadedFlow, env: EnvVars | None = None, *, offline: bool = False) -> Plan:
    """Compile every step once; raise FlowInvalid with all template and rule problems found.
    Template steps are checked against the template lock beside the flow, unless `offline`."""
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
        compiled = _compile_step(loaded, step, index, problems)
        reads, awaits, history = _history_reads(loaded, step, index, names, problems)
        steps.append(
            dataclasses.replace(
                compiled,
                reads=reads,
                # a step with after: is decided when due, with what is known then (a
                # reminder "if they did not answer within a week" must not wait for one)
                awaits=awaits if step.after is None else (),
                history=history,
                expires=_expiry(loaded.flow, step),
                after=_after(loaded, step, index, names, problems),
            )
        )
    check_flow(loaded, problems)
    _check_audience(loaded, problems)
    check_templates(loaded, problems, offline=offline)
    plan = Plan(loaded, tuple(steps), problems, env or EnvVars(), LocalFiles(loaded.base_dir))
    _check_constant_files(plan)
    if problems.has_errors():
        raise FlowInvalid(problems)
    return plan


def _expiry(flow: models.Flow, step: Any) -> timedelta:
    return durations.parse(step.expires or flow.settings.expires)


def _after(
    loaded: LoadedFlow, step: Any, index: int, earlier: Mapping[str, int], problems: Problems
) -> AfterPlan | None:
    """`after:` compiled; a step it names must be an earlier one (a located error)."""
    after = step.after
    if after is None:
        return None
    if isinstance(after, str):
        return AfterPlan(durations.parse(after))
    wait = durations.parse(after.wait) if after.wait else timedelta()
    problem = _read_problem(after.step, "sent_at", step.name, earlier)
    if after.step == step.name:
        problem = (f"step '{after.step}' waits for itself", "after: names an earlier step")
    if problem is not None:
        message, hint = problem
        problems.add(Problem(loaded.locate(("messages", index, "after", "step")), message, hint))
    return AfterPlan(wait, after.step, after.event)


def _history_reads(
    loaded: LoadedFlow, step: Any, index: int, earlier: Mapping[str, int], problems: Problems
) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """What this step's `when` reads of the recipient's history: the earlier named steps
    (`steps.NAME.FIELD`), those whose answer it waits for, and whether it reads history at all
    (steps or `contact`). Each name must be an earlier step's and each field one a step
    offers, or the flow is refused here, at the `when:`, rather than at a recipient's run."""
    if step.when is None:
        return (), (), False
    where = loaded.locate(("messages", index, "when"))
    reads, others = step_reads(step.when)
    if others:
        problems.add(
            Problem(
                where,
                "steps is read here in a way flowrun cannot check",
                "name the step and the field: steps.NAME.button, steps.NAME.reply or"
                " steps.NAME.answered",
            )
        )
    found: list[str] = []
    awaited: list[str] = []
    for name, field, _line in reads:
        problem = _read_problem(name, field, step.name, earlier)
        if problem is not None:
            problems.add(Problem(where, *problem))
            continue
        if name not in found:
            found.append(name)
        if field in ANSWER_FIELDS and name not in awaited:
            awaited.append(name)
    history = bool(reads) or reads_name(step.when, "contact")
    return tuple(found), tuple(awaited), history


def _read_problem(
    name: str, field: str, own: str | None, earlier: Mapping[str, int]
) -> tuple[str, str] | None:
    """(message, hint) for a `steps.NAME.FIELD` that cannot be read, else None."""
    named = ", ".join(sorted(n for n in earlier if n != own)) or "none is named"
    if name == own:
        return (f"step '{name}' reads its own answer", "a step can only read earlier steps")
    if name not in earlier:
        return (
            f"no earlier step is named '{name}'",
            f"a when: reads the steps before it, by name (earlier named steps: {named})",
        )
    if field not in HISTORY_FIELDS:
        return (
            f"steps.{name}.{field}: a step offers {', '.join(HISTORY_FIELDS)}",
            "button is the quick reply tapped on it, reply the text the customer wrote after"
            " it, answered whether they wrote at all, status how far its message got (sent,"
            " delivered, read, failed, skipped, waiting), sent_at when it was sent",
        )
    return None


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
    kind = content.header.kind if content.header is not None else None
    header, header_file, header_name = _compile_header(content.header, base, compiled)
    if isinstance(content.body, dict):
        body = tuple(
            _parameter(value, (*base, "body", key), compiled, key)
            for key, value in content.body.items()
        )
    else:
        body = tuple(
            _parameter(value, (*base, "body", i), compiled) for i, value in enumerate(content.body)
        )
    buttons = []
    for i, button in enumerate(content.buttons):
        index = button.index if button.index is not None else i
        where = (*base, "buttons", i, button.kind)
        buttons.append((button.kind, index, compiled(button.kind, button.value, where)))
    offer = None
    if content.limited_time_offer is not None:
        ends = content.limited_time_offer.expiration_time_ms
        where = (*base, "limited_time_offer", "expiration_time_ms")
        offer = compiled("expiration_time_ms", str(ends), where)
    language = compiled("language", content.language, (*base, "language"))
    return TemplatePlan(
        content.name,
        language,
        kind,
        tuple(header),
        header_file,
        body,
        tuple(buttons),
        header_name,
        offer,
    )


def _compile_header(
    given: models.TemplateHeader | None,
    base: YamlPath,
    compiled: Callable[[str, str, YamlPath], FieldPlan],
) -> tuple[list[FieldPlan], FieldPlan | None, str | None]:
    """A template header's fields, its local file (if any) and a named text header's name."""
    header: list[FieldPlan] = []
    if given is None:
        return header, None, None
    kind = given.kind
    where: YamlPath = (*base, "header", kind)
    media = getattr(given, kind)
    if isinstance(media, str):
        return [compiled("param", media, where)], None, None
    if isinstance(media, dict):  # a NAMED text header: {name: value}
        name, text = next(iter(media.items()))
        return [compiled("param", text, (*where, name))], None, name
    if isinstance(media, models.HeaderLocation):
        places = ("latitude", "longitude", "name", "address")
        return [compiled(n, str(getattr(media, n)), (*where, n)) for n in places], None, None
    for name in ("id", "link", "filename"):
        value = getattr(media, name, None)
        if value is not None:
            header.append(compiled(name, value, (*where, name)))
    if media.provider is not None:
        header.append(compiled("provider", media.provider.name, (*where, "provider")))
    header_file = None
    if media.file is not None:
        header_file = compiled("file", media.file, (*where, "file"))
    return header, header_file, None


def _parameter(
    value: Any,
    where: YamlPath,
    compiled: Callable[[str, str, YamlPath], FieldPlan],
    name: str | None = None,
) -> ParameterPlan:
    """A body parameter compiled: text, or a currency or date_time object
    (docs/whatsapp-api.md#template-parameters)."""
    if isinstance(value, models.CurrencyParameter):
        money = value.currency
        at: YamlPath = (*where, "currency")
        fields = (
            compiled("fallback_value", money.fallback_value, (*at, "fallback_value")),
            compiled("currency_code", money.code, (*at, "code")),
            compiled("amount_1000", str(money.amount_1000), (*at, "amount_1000")),
        )
        return ParameterPlan("currency", fields, name)
    if isinstance(value, models.DateTimeParameter):
        at = (*where, "date_time", "fallback_value")
        return ParameterPlan(
            "date_time", (compiled("fallback_value", value.date_time.fallback_value, at),), name
        )
    return ParameterPlan("text", (compiled("param", value, where),), name)


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
                plan.files.check(source.source, kind)
            except MediaError as exc:
                plan.problems.add(Problem(plan.loaded.locate(source.where), str(exc), exc.hint))


def api_variables(api: BaseModel) -> frozenset[str]:
    """The environment variables the api section names (`env.X`), whatever its fields."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and models.is_template(value):
            names.update(env_references(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(api.model_dump())
    return frozenset(names)


class _Chosen:
    """The recipients `recipients.when` is true for; one whose test fails to render is a
    located problem (and is left out), like a step's `when`."""

    def __init__(self, stream: RecipientStream, plan: Plan, source: str) -> None:
        self._stream = stream
        self._plan = plan
        self._test = compile_condition(source)  # checked at compile: _check_audience

    def __iter__(self) -> Iterator[Recipient]:
        context = self._plan.templates_see()
        where = self._plan.loaded.locate(("recipients", "when"))
        for recipient in self._stream:
            try:
                chosen = self._test(context(recipient.fields))
            except RENDER_ERRORS as exc:
                detail = f"first for the recipient at {recipient.where}"
                self._plan.problems.add(Problem(where, describe(exc), detail=detail))
                continue
            if chosen:
                yield recipient


def _check_audience(loaded: LoadedFlow, problems: Problems) -> None:
    """`recipients.when` compiles (its values are checked per recipient, as they are read)."""
    source = loaded.flow.recipients
    if not isinstance(source, models.CsvRecipients) or source.when is None:
        return
    try:
        compile_condition(source.when)
    except TemplateSyntaxError as exc:
        problems.add(Problem(loaded.locate(("recipients", "when")), describe(exc)))
