"""Jinja2 for flows: one sandboxed environment, templates compiled once and rendered per recipient.

Why the sandbox: a flow is a file anyone on the team can edit, and CI runs it; a template must not
reach Python internals (`''.__class__.__mro__`), the file system or unbounded memory. Why strict
undefined: a misspelt `{{ recipient.nmae }}` must be an error before sending, never an empty
string in a customer's message. Recipient data (CSV cells, inline fields) is never rendered as a
template: a customer named "{{ 7*7 }}" is just a name.

Names a template sees: `recipient` (the row, with `phone` normalised), `vars` (the flow's vars)
and `env` (environment variables).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .models import is_template

MAX_RENDERED = 64 * 1024  # characters one value may render to; far above any WhatsApp limit
MAX_REPEAT = 10_000  # bound on sequence repetition ('a' * n) inside a template


class MissingEnv(UndefinedError):
    """An environment variable a template reads is not set."""


class FieldError(UndefinedError):
    """A template reads a recipient field or var that does not exist."""


class _Fields:
    """Read-only attribute and item access to a mapping for templates.

    Not a dict, so a CSV column called `items` or `keys` is that column and not a dict method;
    the sandbox blocks underscore names, so `_data` is out of a template's reach.
    """

    __slots__ = ("_data", "_what")

    def __init__(self, data: Mapping[str, Any], what: str) -> None:
        self._data = data
        self._what = what

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            return _missing(f"{self._what} has no field '{name}'", FieldError)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __repr__(self) -> str:
        return f"<{self._what}>"


class EnvVars:
    """Environment variables as `env.NAME`; a missing one is a `MissingEnv` error when used."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def __getattr__(self, name: str) -> Any:
        value = self._environ.get(name)
        if value is None:
            return _missing(f"environment variable {name} is not set", MissingEnv)
        return value

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __repr__(self) -> str:
        return "<environment>"  # never the values: they may be secrets


def _missing(hint: str, exc: type[UndefinedError]) -> StrictUndefined:
    return StrictUndefined(hint=hint, exc=exc)


def recipient_fields(row: Mapping[str, Any]) -> _Fields:
    return _Fields(row, "recipient")


def vars_fields(values: Mapping[str, Any]) -> _Fields:
    return _Fields(values, "vars")


class _FlowEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with repetition bounded: `{{ 'x' * 10**9 }}` must not eat the machine."""

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Fast path for recipient and vars fields, read on every render: their values are data,
        # and underscore names stay blocked as everywhere else in the sandbox.
        if type(obj) is _Fields:
            return not attr.startswith("_")
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*" and (
            (isinstance(left, str | list | tuple) and isinstance(right, int) and right > MAX_REPEAT)
            or (
                isinstance(right, str | list | tuple)
                and isinstance(left, int)
                and left > MAX_REPEAT
            )
        ):
            raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def make_environment() -> ImmutableSandboxedEnvironment:
    """The one environment every flow template is compiled in."""
    environment = _FlowEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    # Helpers such as lipsum, cycler, joiner and namespace are needless in messages and have
    # been the handles of sandbox escapes; templates see only recipient, vars and env.
    environment.globals.clear()
    return environment


ENVIRONMENT = make_environment()

Render = Callable[[Mapping[str, Any]], str]


def compile_text(source: str) -> Render:
    """A function that renders `source` for a context; constants cost nothing per recipient.

    Raises jinja2.TemplateSyntaxError for a broken template.
    """
    if not is_template(source):
        return lambda _context: source
    template = ENVIRONMENT.from_string(source)

    def render(context: Mapping[str, Any]) -> str:
        text = template.render(context)
        if len(text) > MAX_RENDERED:
            raise SecurityError(f"rendered to more than {MAX_RENDERED:,} characters")
        return text

    return _fields_only(source, render) or render


def _fields_only(source: str, slow: Render) -> Render | None:
    """Most message templates only put fields into text (`Hi {{ recipient.name }}`). Those are
    rendered here without Jinja's per-render machinery (a context object, a generator): about
    15 times faster, and the same result: `str()` of each value, the same errors for a missing
    field (StrictUndefined raises on `str()`), underscore names left to the sandbox. Anything
    else (filters, expressions, tags, env) returns None: Jinja renders it."""
    parts: list[str | tuple[str, str]] = []
    body = ENVIRONMENT.parse(source).body
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    for node in body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        field = _field_reference(node)
        if field is None:
            return None
        parts.append(field)

    def render(context: Mapping[str, Any]) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, key = part
            fields = context.get(name)
            if type(fields) is not _Fields:
                return slow(context)  # not a recipient/vars context: Jinja says what is wrong
            out.append(str(fields[key]))
        text = "".join(out)
        if len(text) > MAX_RENDERED:
            raise SecurityError(f"rendered to more than {MAX_RENDERED:,} characters")
        return text

    return render


def _field_reference(node: nodes.Node) -> tuple[str, str] | None:
    """("recipient", "name") for `recipient.name` or `recipient['name']`, else None."""
    if isinstance(node, nodes.Getattr):
        owner, key = node.node, node.attr
    elif (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        owner, key = node.node, node.arg.value
    else:
        return None
    if not isinstance(owner, nodes.Name) or owner.name not in ("recipient", "vars"):
        return None
    return None if key.startswith("_") else (owner.name, key)


def compile_condition(source: str) -> Callable[[Mapping[str, Any]], bool]:
    """A `when:` expression, as in Ansible: a bare Jinja expression whose truth decides."""
    expression = ENVIRONMENT.compile_expression(source, undefined_to_none=False)

    def test(context: Mapping[str, Any]) -> bool:
        result = expression(**context)
        if isinstance(result, StrictUndefined):
            bool(result)  # raises the UndefinedError with its hint
        return bool(result)

    return test


# What rendering a template may raise: Jinja's own errors, and the Python errors of the
# operations a template performs on data (`{{ -vars.name }}`, `{{ 1 / 0 }}`, `{{ x[99] }}`).
RENDER_ERRORS = (TemplateError, TypeError, ValueError, ArithmeticError, LookupError)


def describe(error: Exception) -> str:
    """A one-line description of a template failure, for a `FILE:LINE:COL:` problem."""
    if not isinstance(error, TemplateError):
        return f"template error: {error}"
    if isinstance(error, UndefinedError):
        return str(error.message or "undefined value")
    if isinstance(error, SecurityError):
        return f"not allowed in a flow template: {error}"
    return f"template error: {error.message or error}"
