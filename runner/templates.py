"""Jinja2 for flows: one sandboxed environment, templates compiled once and rendered per recipient.

Why the sandbox: a flow is a file anyone on the team can edit, and CI runs it; a template must not
reach Python internals (`''.__class__.__mro__`), the file system, the API's secrets or unbounded
memory and time. Why strict undefined: a misspelt `{{ recipient.nmae }}` must be an error before
sending, never an empty string in a customer's message. Recipient data (CSV cells, inline
fields) is never rendered as a template: a customer named "{{ 7*7 }}" is just a name.

Names a template sees: `recipient` (the row, with `phone` normalised), `vars` (the flow's vars)
and `env` (environment variables; in message templates without the secrets, see `EnvVars`).

Bounds (issue 18, item 3): WhatsApp takes at most 1,024 characters in a caption and 4,096 in a
text body (docs/whatsapp-api.md#message-bodies), so a render far beyond that can stop early, with
an error instead of gigabytes, a hang or a crash. Every render of one value is bounded by:
- size: no operation may build a string, bytes or list longer than MAX_SIZE, checked from the
  operands BEFORE it runs (`*`, `+`, `%`, `~`, `str.format`, the string methods and filters that
  take a width or a count); nothing is printed whose printed form would pass MAX_SIZE (a list of
  a thousand references to one long string is small until printed); no integer grows past
  MAX_INT_BITS; a rendered value is at most MAX_RENDERED characters.
- work: at most MAX_STEPS loop turns, calls and filters; at most MAX_MADE characters and items
  made by filters and calls (`map` applies any filter to every item: the amplifier); at most
  MAX_WRITTEN characters written into the render's buffers (macros, loops, `set` blocks); calls
  nested at most MAX_DEPTH deep; MAX_SECONDS of wall time, checked at every step.
The checks live in the sandbox's hooks (`call`, `call_binop`, a str.format that checks its
fields), in the filters (each wrapped), and in a rewrite of each template's tree before it is
compiled (`_Bounds`: loops count their turns, printed values are measured, `~` is checked).
Templates that only place fields (the common case) skip all of it, as they skip Jinja:
`_fields_only`.

Others: Jinja itself bounds only `range()` (MAX_RANGE, jinja2/sandbox.py) and its maintainers
decline limits inside the process as a surface too large to cover, pointing to OS limits
(pallets/jinja#2149); Home Assistant checks a template's output size after rendering
(MAX_TEMPLATE_OUTPUT) and probes for a timeout in a thread, "not a security control". Here the
surface is small on purpose (no globals, a fixed set of filters, three names), so each way to
grow is checked before it grows; the tests run every bomb under a 1 GB address-space ceiling as
the backstop that would turn a missed one into a failure.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import string
import time
import types
from collections import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS, make_multi_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import pass_context
from jinja2.visitor import NodeTransformer
from markupsafe import EscapeFormatter, Markup

from .models import is_template

MAX_RENDERED = 64 * 1024  # characters one value may render to; far above any WhatsApp limit
MAX_SIZE = 64 * 1024  # characters, bytes or items one value built by a template may hold
MAX_INT_BITS = 14_000  # below Python's 4,300-digit limit for printing an int
MAX_STEPS = 100_000  # loop turns, calls and filters in one render
MAX_MADE = 16 * MAX_SIZE  # characters and items the filters and calls of one render make
MAX_WRITTEN = 4 * MAX_RENDERED  # characters written into one render's buffers, macros included
MAX_DEPTH = 32  # calls nested (macros calling macros)
MAX_SECONDS = 1.0  # wall time of one render


class MissingEnv(UndefinedError):
    """An environment variable a template reads is not set."""


class FieldError(UndefinedError):
    """A template reads a recipient field or var that does not exist."""


class WhenMistake(TemplateSyntaxError):
    """A `when:` written as a template (`"{{ ... }}"`) or comparing with `=`: said in the
    words of the person who wrote it, with the expression they meant (`describe`)."""


class TemplateLimit(SecurityError):
    """A render went past one of the bounds above; raised before the work is done."""


class TooLong(TemplateLimit):
    """A value rendered to more than MAX_RENDERED characters (or, `exact` False, its render
    wrote more than MAX_WRITTEN): render.py names the field's own WhatsApp limit."""

    def __init__(self, length: int, exact: bool = True) -> None:
        self.length = length
        self.exact = exact
        more = "" if exact else "more than "
        super().__init__(
            f"rendered to {more}{length:,} characters; a value may hold {MAX_RENDERED:,}"
        )


class SecretInMessage(SecurityError):
    """A message template read a secret (found while rendering: `env[name]`, `env|attr(x)`)."""


class SecretReference(TemplateSyntaxError):
    """A message template names a secret (`env.WA_TOKEN`): refused when it is compiled."""


# --- secrets (issue 18, item 8) ---

# Parts of a variable's name that mark it as a secret; upper-cased before the test, so
# `wa_token` is one too. PASS covers PASSWORD, PASSWD and PASSPHRASE; PWD is a common short
# form; AUTH covers OAUTH and AUTHORIZATION; KEY covers API_KEY and PRIVATE_KEY.
SECRET_WORDS = ("TOKEN", "SECRET", "PASS", "PWD", "KEY", "CREDENTIAL", "AUTH", "PRIVATE")
_RULE = "secrets may be read only in the api section; if {name} is not a secret, {fix}"


def secret_reason(name: str, api: frozenset[str]) -> str | None:
    """Why a message template may not read `env.NAME`, or None if it may."""
    word = next((w for w in SECRET_WORDS if w in name.upper()), None)
    if word is not None:
        rule = _RULE.format(name=name, fix="rename it")
        return f"env.{name} looks like a secret (its name contains {word}): {rule}"
    if name in api:
        rule = _RULE.format(name=name, fix="give messages a variable of their own")
        return f"env.{name} is read by the api section: {rule}"
    return None


class EnvVars:
    """Environment variables as `env.NAME`; a missing one is a `MissingEnv` error when used.

    The api section sees them all. Message templates see `for_messages(...)`: a mapping without
    the secrets (`secret_reason`), so `env.X`, `env['X']`, `env|attr('X')`, `'{0.X}'.format(env)`
    and `'%(X)s' % env` all raise SecretInMessage, and iterating or `in` shows only the rest.
    Not a dict: no `items()` or `values()` that would list values (`env.items` is a variable
    called `items`), and no repr with values.
    """

    __slots__ = ("_api", "_environ")

    def __init__(
        self, environ: Mapping[str, str] | None = None, api: frozenset[str] | None = None
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._api = api  # None: the api section's full view

    def for_messages(self, api: Iterable[str]) -> EnvVars:
        """The view message templates get: without secret-like names and what `api` reads."""
        return EnvVars(self._environ, frozenset(api))

    def _hidden(self, name: str) -> str | None:
        return None if self._api is None else secret_reason(name, self._api)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # Python's own protocols (copy, pickle), never a variable
        reason = self._hidden(name)
        if reason is not None:
            raise SecretInMessage(reason)
        value = self._environ.get(name)
        if value is None:
            return _missing(f"environment variable {name} is not set", MissingEnv)
        return value

    def __getitem__(self, name: object) -> Any:
        if not isinstance(name, str):
            raise KeyError(name)
        return self.__getattr__(name)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._environ if self._hidden(name) is None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._environ and self._hidden(name) is None

    def __repr__(self) -> str:
        return "<environment>"  # never the values: they may be secrets


def env_references(source: str) -> set[str]:
    """The variables a template names literally (`env.X`, `env['X']`, `env|attr('X')`); the
    api section's are hidden from messages. Empty for a template that does not parse."""
    try:
        tree = ENVIRONMENT.parse(source)
    except (TemplateSyntaxError, RecursionError):
        return set()
    return {name for name, _line in _env_reads(tree)}


def _env_reads(tree: nodes.Node) -> Iterator[tuple[str, int]]:
    """(NAME, line) of each literal read of the environment; none if `env` is redefined in the
    template (a loop variable or `set env = ...`: then it is not the environment)."""
    for name in tree.find_all(nodes.Name):
        if name.name == "env" and name.ctx != "load":
            return
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        owner = getattr(node, "node", None)
        if not (isinstance(owner, nodes.Name) and owner.name == "env"):
            continue
        key: Any = None
        if isinstance(node, nodes.Getattr):
            key = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            key = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            key = first.value if isinstance(first, nodes.Const) else None
        if isinstance(key, str):
            yield key, node.lineno


def step_reads(source: str) -> tuple[list[tuple[str, str, int]], list[int]]:
    """What a `when:` reads of `steps`: (step name, field, line) of each `steps.NAME.FIELD`
    (or `steps['NAME'].FIELD`), and the lines of any other use of `steps` (a computed name, the
    whole mapping), which cannot be checked before the run and are refused by the caller.

    Parsed, not searched as text: `'steps.x'` inside a string is not a read."""
    try:
        tree = Parser(ENVIRONMENT, source, state="variable").parse_expression()
    except (RecursionError, SyntaxError, TemplateSyntaxError):
        return [], []  # compile_condition reports it
    reads: list[tuple[str, str, int]] = []
    inner: set[int] = set()  # the `steps.NAME` nodes of the reads found
    for node in tree.find_all(nodes.Getattr):
        owner = node.node
        key = _literal_key(owner)
        base = getattr(owner, "node", None)
        if key is not None and isinstance(base, nodes.Name) and base.name == "steps":
            reads.append((key, node.attr, node.lineno))
            inner.add(id(owner))
    names = [*tree.find_all(nodes.Name), *([tree] if isinstance(tree, nodes.Name) else [])]
    others = [
        name.lineno
        for name in names
        if name.name == "steps" and not any(id(p) in inner for p in _parents_of(tree, name))
    ]
    return reads, others


def reads_name(source: str, name: str) -> bool:
    """Whether an expression reads the variable `name` (parsed: text in a string is no read)."""
    try:
        tree = Parser(ENVIRONMENT, source, state="variable").parse_expression()
    except (RecursionError, SyntaxError, TemplateSyntaxError):
        return False
    names = [*tree.find_all(nodes.Name), *([tree] if isinstance(tree, nodes.Name) else [])]
    return any(n.name == name and n.ctx == "load" for n in names)


def _literal_key(node: nodes.Node) -> str | None:
    """NAME of `x.NAME` or `x['NAME']`."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def _parents_of(tree: nodes.Node, target: nodes.Node) -> list[nodes.Node]:
    """The nodes directly holding `target` (Jinja nodes keep no parent links)."""
    return [
        node
        for node in tree.find_all((nodes.Getattr, nodes.Getitem))
        if getattr(node, "node", None) is target
    ]


def _check_secrets(tree: nodes.Node) -> None:
    for name, line in _env_reads(tree):
        reason = secret_reason(name, frozenset())
        if reason is not None:
            raise SecretReference(reason, line)


# --- recipient and vars ---


class _Fields:
    """Read-only attribute and item access to a mapping for templates.

    Not a dict, so a CSV column called `items` or `keys` is that column and not a dict method;
    the sandbox blocks underscore names, so `_data` is out of a template's reach. Iterating gives
    the field names (without `__iter__`, Python iterated it by index, 0, 1, 2, ... for ever).
    """

    __slots__ = ("_data", "_what")

    def __init__(self, data: Mapping[str, Any], what: str) -> None:
        self._data = data
        self._what = what

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            return _MissingField(self._what, name, self._data)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __repr__(self) -> str:
        return f"<{self._what}>"


def _missing(hint: str, exc: type[UndefinedError]) -> StrictUndefined:
    return StrictUndefined(hint=hint, exc=exc)


class _MissingField(StrictUndefined):
    """A field that is not there: its error names the closest field and those there are
    (`recipient.nmae`: did you mean 'name'?). Said only when raised: `recipient.vip is
    defined`, for every recipient, costs no search for close names."""

    __slots__ = ("_fields", "_what")

    def __init__(self, what: str, name: str, fields: Mapping[str, Any]) -> None:
        super().__init__(name=name, exc=FieldError)
        self._what = what
        self._fields = fields

    @property
    def _undefined_message(self) -> str:
        name = str(self._undefined_name)
        known = [str(key) for key in self._fields]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if not close:  # a case slip (Name for name) is closer than difflib says
            close = [key for key in known if key.lower() == name.lower()][:1]
        meant = f"; did you mean '{close[0]}'?" if close else ""
        shown = ", ".join(known[:MAX_NAMES_SHOWN]) + (
            ", ..." if len(known) > MAX_NAMES_SHOWN else ""
        )
        listed = (
            f" ({'columns' if self._what == 'recipient' else 'it has'}: {shown})" if known else ""
        )
        return f"{self._what} has no field '{name}'{meant}{listed}"


MAX_NAMES_SHOWN = 20  # a CSV of 300 columns is not listed in full


def recipient_fields(row: Mapping[str, Any]) -> _Fields:
    return _Fields(row, "recipient")


def vars_fields(values: Mapping[str, Any]) -> _Fields:
    return _Fields(values, "vars")


def contact_fields(values: Mapping[str, Any]) -> _Fields:
    return _Fields(values, "contact")


# --- bounds: sizes predicted from the operands ---


def _units(value: object) -> str:
    if isinstance(value, str):
        return "characters"
    return "bytes" if isinstance(value, bytes) else "items"


def _check_size(what: str, size: int, like: object) -> None:
    if size > MAX_SIZE:
        raise TemplateLimit(
            f"{what} would make {size:,} {_units(like)}; a value may hold {MAX_SIZE:,}"
        )


def _check_bits(what: str, bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimit(
            f"{what} would make a number of {bits:,} bits; a number may have {MAX_INT_BITS:,}"
        )


def _check_width(width: object) -> None:
    if isinstance(width, int) and width > MAX_SIZE:
        raise TemplateLimit(
            f"a format width of {width:,}; a value may hold {MAX_SIZE:,} characters"
        )


def _weight(value: Any, limit: int, depth: int = 0) -> int:
    """About how many characters `str(value)` would print (containers print their items' reprs),
    counted only until it passes `limit`: a list of 60,000 references to one 60,000-character
    string is 60,000 items but 3.6 GB printed, and is measured in two steps."""
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, bool | float | types.NoneType):
        return 24
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if depth > 64:
        return limit + 1
    items: Iterable[Any]
    if isinstance(value, abc.Mapping):
        items = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple | abc.Set | abc.MappingView):
        items = cast(Iterable[Any], value)
    else:
        return 64  # objects print as a short fixed text: <recipient>, <Macro 'f'>, generators
    total = 2
    for item in items:
        total += _weight(item, limit - total, depth + 1) + 2
        if total > limit:
            break
    return total


def _text(value: Any) -> str:
    """`str(value)`, refused if it would print more than MAX_SIZE characters; a string is
    itself (data may be longer: the field's own limit says so later)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, int | float) and _weight(value, MAX_SIZE) > MAX_SIZE:
        raise TemplateLimit(
            f"a {type(value).__name__} that would print as more than {MAX_SIZE:,} characters"
        )
    return str(value)


def _text_size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes) else len(_text(value))


def _check_percent(what: str, text: str | bytes, values: Any) -> None:
    """`text % values` is refused before it runs if a width or precision passes MAX_SIZE or the
    fields would fill more than MAX_SIZE: widths and `*` widths, `%(key)s` lookups and
    positional values are read as Python's printf-style formatting reads them."""
    fmt = text.decode("latin-1") if isinstance(text, bytes) else text
    positional = list(values) if isinstance(values, tuple) else [values]
    index = 0
    total = len(fmt)
    for key, width, precision, kind in _percent_fields(fmt):
        sizes = []
        for part in (width, precision):
            number = part
            if part == "*":
                number = positional[index] if index < len(positional) else 0
                index += 1
            _check_width(number)
            sizes.append(number if isinstance(number, int) else 0)
        if kind in ("%", ""):
            continue
        if key is not None:
            value = values[key]
        elif index < len(positional):
            value = positional[index]
            index += 1
        else:
            break  # too few values: Python raises its own TypeError
        size = _text_size(value) * (4 if kind in "ra" else 1) + (24 if kind in "eEfFgG" else 0)
        if kind == "s" and precision:
            size = min(size, sizes[1])
        total += max(sizes[0], size + sizes[1])
    _check_size(what, total, text)


def _percent_fields(
    fmt: str,
) -> Iterator[tuple[str | None, str | int | None, str | int | None, str]]:
    """(key, width, precision, conversion) of each `%` field, parsed as CPython does (a key's
    parentheses nest); widths are ints, '*' or None."""
    i, end = 0, len(fmt)
    while (i := fmt.find("%", i)) >= 0:
        i += 1
        key = None
        if i < end and fmt[i] == "(":
            depth, start = 1, i + 1
            while i + 1 < end and depth:
                i += 1
                depth += {"(": 1, ")": -1}.get(fmt[i], 0)
            key, i = fmt[start:i], i + 1
        while i < end and fmt[i] in "-+ #0":
            i += 1
        width, i = _percent_number(fmt, i)
        precision: str | int | None = None
        if i < end and fmt[i] == ".":
            precision, i = _percent_number(fmt, i + 1)
        while i < end and fmt[i] in "hlL":
            i += 1
        kind = fmt[i] if i < end else ""
        i += 1
        yield key, width, precision, kind


def _percent_number(fmt: str, i: int) -> tuple[str | int | None, int]:
    if i < len(fmt) and fmt[i] == "*":
        return "*", i + 1
    start = i
    while i < len(fmt) and fmt[i].isdigit():
        i += 1
    return (int(fmt[start:i]) if i > start else None), i


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """`*`, `**`, `+` and `%` are checked from their operands before they run."""
    sequence = (str, bytes, list, tuple)
    if operator == "*":
        if isinstance(left, sequence) and isinstance(right, int):
            _check_size("'*'", len(left) * right, left)
        elif isinstance(right, sequence) and isinstance(left, int):
            _check_size("'*'", len(right) * left, right)
        elif isinstance(left, int) and isinstance(right, int):
            _check_bits("'*'", left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_bits("'**'", int(right * math.log2(abs(left))) + 1)
    elif operator == "+":
        if isinstance(left, sequence) and isinstance(right, sequence):
            _check_size("'+'", len(left) + len(right), left)
    elif operator == "%" and isinstance(left, str | bytes):
        _check_percent("'%'", left, right)


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The methods of str, bytes and int that make a result longer than their inputs, checked
    before they run; the arguments to pass on (a `join`'s items, read once)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    what = f"{name}()"
    if isinstance(owner, int) and not isinstance(owner, bool) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            _check_size(what, length, b"")
    if not isinstance(owner, str | bytes):
        return args
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _check_size(what, args[0], owner)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            _check_size(what, len(owner) + tabs * (size - 1), owner)
    elif name == "replace" and len(args) >= 2:
        _check_size(what, _replaced_size(owner, args[0], args[1], args[2:]), owner)
    elif name == "join" and args:
        items = list(args[0])
        sizes = sum(len(x) for x in items if isinstance(x, str | bytes))
        _check_size(what, sizes + max(len(items) - 1, 0) * len(owner), owner)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], abc.Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        _check_size(what, len(owner) * max(longest, 1), owner)
    return args


def _replaced_size(text: Any, old: Any, new: Any, count: tuple[Any, ...]) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)  # Python raises its own TypeError
    found: int = text.count(old)
    if count and isinstance(count[0], int) and count[0] >= 0:
        found = min(found, count[0])
    return len(text) + found * (len(new) - len(old))


# --- bounds: work per render ---


class _Budget:
    """What one render (one value for one recipient) has spent; see the module's docstring."""

    __slots__ = ("deadline", "depth", "made", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.depth = 0
        self.made = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateLimit(
                f"more than {MAX_STEPS:,} loop turns, calls and filters for one value"
            )
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"rendering one value took more than {MAX_SECONDS:g} s")

    def make(self, value: Any) -> None:
        """A filter's or call's result: its size counts (`map` applies a filter to each of up
        to MAX_SIZE items, each result up to MAX_SIZE long; kept by a `list`, that is what
        grows)."""
        self.made += _made(value)
        if self.made > MAX_MADE:
            raise TemplateLimit(
                f"filters and calls made more than {MAX_MADE:,} characters and items for one value"
            )

    def charged(self, items: Iterator[Any]) -> Iterator[Any]:
        """A filter's lazy result (`batch`, `map`, `select`, ...): each item counts as made."""
        for item in items:
            self.make(item)
            yield item


def _made(value: Any, depth: int = 0) -> int:
    """The size of a made value: characters, or items counted two levels into lists and tuples
    (`groupby` makes (key, list) pairs, `batch` makes lists of lists)."""
    if isinstance(value, str | bytes | abc.Mapping | abc.Set):
        return len(value)
    if not isinstance(value, list | tuple):
        return 0
    size = len(value)
    if depth < 2:
        for item in value:
            if isinstance(item, list | tuple):
                size += _made(item, depth + 1)
    return size


class _BoundedContext(Context):
    """Jinja's render context, with the budget of its render: every template, `when:`
    expression and macro call of one render shares the one context it was started with. The
    budget is made at its first use: most renders never loop or call."""

    _budget: _Budget | None = None
    written = 0  # characters written into the render's buffers

    def write(self, size: int) -> None:
        self.written += size
        if self.written > MAX_WRITTEN:
            raise TooLong(MAX_WRITTEN, exact=False)

    @property
    def budget(self) -> _Budget:
        budget = self._budget
        if budget is None:
            budget = self._budget = _Budget()
        return budget


@pass_context
def _turns(context: _BoundedContext, iterable: Iterable[Any], written: int) -> Iterator[Any]:
    """A `for` loop's iterable, rewritten by `_Bounds`: each turn is a step and writes the
    loop body's constant text."""
    budget = context.budget
    for item in iterable:
        budget.step()
        context.write(written)
        yield item


@pass_context
def _written(context: _BoundedContext, value: Any) -> str:
    """Each value a template prints (`{{ ... }}`), rewritten by `_Bounds`: measured before it
    is printed, and counted against what the render may write."""
    text = value if type(value) is str else _text(value)
    context.write(len(text))
    return text


def _concat(*parts: Any) -> str:
    """`a ~ b`, rewritten by `_Bounds`: the parts' sizes are summed before they are joined."""
    texts = [_text(part) for part in parts]
    _check_size("'~'", sum(map(len, texts)), "")
    return "".join(texts)


_TURNS, _WRITTEN, _CONCAT = "(turns)", "(written)", "(concat)"  # names no template can spell


class _Bounds(NodeTransformer):
    """Rewrites a template's tree so its loops, prints and `~` are bounded (see `_turns`,
    `_written`, `_concat`); Jinja then compiles the rewritten tree as usual. A print whose
    value can only be one of its constants (`{{ 'de' if x else 'en_US' }}`, a common idiom)
    is left alone: like template text, it is counted by the loop it is in, if any."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        constant = 0
        for output in node.find_all(nodes.Output):
            for child in output.nodes:
                constant += _constant_size(child) or 0
        node.iter = _filter(cast(nodes.Expr, node.iter), _TURNS, [nodes.Const(constant)])
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if _constant_size(child) is not None else _filter(child, _WRITTEN, [])
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(node.nodes[0], _CONCAT, node.nodes[1:])


def _constant_size(node: nodes.Node) -> int | None:
    """The longest text `node` can print if it can only print constants written in the
    template, else None."""
    if isinstance(node, nodes.TemplateData):
        return len(node.data)
    if isinstance(node, nodes.Const) and isinstance(node.value, str | int | float | None):
        return len(str(node.value))
    if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
        sizes = (_constant_size(node.expr1), _constant_size(node.expr2))
        return None if None in sizes else max(cast(tuple[int, int], sizes))
    return None


def _filter(node: nodes.Expr, name: str, args: list[nodes.Expr]) -> nodes.Filter:
    made = nodes.Filter(node, name, args, [], None, None, lineno=node.lineno)
    environment = getattr(node, "environment", None)
    if environment is not None:
        made.set_environment(environment)
    return made


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's compiler, after `_Bounds` rewrote the tree: every template compiled in the flow
    environment is bounded, whichever way it was compiled (from_string, compile_expression)."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Bounds().visit(node)
        super().visit_Template(node, frame)


# --- bounds: str.format and the filters ---


class _BoundedFormatter(SandboxedFormatter):
    """The sandbox's `str.format`, with each field's format spec and printed size checked and
    the whole result bounded as it is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            _text(value)  # `!r` prints a list's items as `str()` does
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _numbers(format_spec):
            _check_width(number)
        text = super().format_field(_checked(value), format_spec)
        self.made += len(text)
        if self.made > MAX_SIZE:
            raise TemplateLimit(
                f"format() would make more than {MAX_SIZE:,} characters; a value may hold"
                f" {MAX_SIZE:,}"
            )
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    """The same for a Markup string's `format` (the sandbox escapes its fields)."""


def _numbers(spec: str) -> Iterator[int]:
    digits = ""
    for char in f"{spec} ":
        if char.isdigit():
            digits += char
        elif digits:
            yield int(digits)
            digits = ""


def _checked(value: Any) -> Any:
    if not isinstance(value, str | int | float):
        _text(value)
    return value


def _bounded_filter(
    name: str, check: Callable[..., Any] | None = None, *, prints: bool = False
) -> Callable[..., Any]:
    """Jinja's filter `name`, bounded: a step of the render's budget (filters run per item
    under `map`, the amplifier of any filter), its input measured first if it prints it,
    `check(value, *args, **kwargs)` first if it grows it (it raises, or returns a replacement
    for the value: an iterable read into a list), and its result counted as made. The wrapper
    takes the context (for the budget) and passes on what the filter itself takes."""
    original = FILTERS[name]
    # Jinja marks filters that take the context, eval context or environment first.
    passed = getattr(getattr(original, "jinja_pass_arg", None), "name", None)

    def bounded(context: _BoundedContext, *args: Any, **kwargs: Any) -> Any:
        budget = context.budget
        budget.step()
        if prints and args and type(args[0]) is not str:
            _text(args[0])
        if check is not None:
            replaced = check(*args, **kwargs)
            if replaced is not None:
                args = (replaced, *args[1:])
        if passed == "context":
            result = original(context, *args, **kwargs)
        elif passed == "eval_context":
            result = original(context.eval_ctx, *args, **kwargs)
        elif passed == "environment":
            result = original(context.environment, *args, **kwargs)
        else:
            result = original(*args, **kwargs)
        if isinstance(result, abc.Iterator):
            return budget.charged(result)
        budget.make(result)
        return result

    return pass_context(functools.update_wrapper(bounded, original))


def _center_check(value: Any, width: int = 80) -> None:
    _text(value)
    if isinstance(width, int):
        _check_size("|center", width, "")


def _indent_check(text: Any, width: int | str = 4, *_args: Any, **_kwargs: Any) -> None:
    text = _text(text)
    if isinstance(width, int):
        _check_size("|indent", width, "")
    prefix = len(width) if isinstance(width, str) else max(int(width), 0)
    _check_size("|indent", len(text) + (text.count("\n") + 1) * prefix, "")


def _wordwrap_check(text: Any, width: int = 79, *args: Any, **kwargs: Any) -> None:
    """Lines of a greedy wrap: two neighbours hold more than `width` characters together, so
    there are at most 2 * len / width + 2 of them per paragraph; each gets `wrapstring`."""
    text = _text(text)
    _check_size("|wordwrap", len(text), "")  # textwrap is Python: slow on long text
    wrapstring = args[1] if len(args) > 1 else kwargs.get("wrapstring")
    extra = len(wrapstring) if isinstance(wrapstring, str) else 1
    lines = 2 * len(text) // max(width if isinstance(width, int) else 1, 1) + 2
    _check_size("|wordwrap", len(text) + (lines + text.count("\n")) * extra, "")


def _replace_check(text: Any, old: Any, new: Any, count: int | None = None) -> None:
    text = _text(text)
    extra = () if count is None else (count,)
    _check_size("|replace", _replaced_size(text, str(old), str(new), extra), text)


def _format_check(text: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent("|format", _text(text), kwargs or args)


def _join_check(value: Iterable[Any], d: str = "", attribute: Any = None) -> list[Any]:
    items = list(value)
    per_item = 64 if attribute is not None else 0  # an attribute's text, not the item's
    size = sum(_text_size(item) + per_item for item in items)
    _check_size("|join", size + max(len(items) - 1, 0) * len(str(d)), "")
    return items


def _batch_check(value: Any, linecount: int, fill_with: Any = None) -> None:
    if fill_with is not None and isinstance(linecount, int):
        _check_size("|batch", linecount, [])


def _slice_check(value: Any, slices: int, fill_with: Any = None) -> None:
    if isinstance(slices, int):
        _check_size("|slice", slices, [])


def _sum_check(value: Iterable[Any], attribute: Any = None, start: Any = 0) -> list[Any] | None:
    """Numbers add up without growing much; lists and tuples (`sum(start=[])`) concatenate."""
    if not isinstance(start, list | tuple):
        return None
    items = list(value)
    if attribute is not None:
        raise SecurityError("|sum of lists by attribute")
    sizes = sum(len(item) for item in items if isinstance(item, list | tuple))
    _check_size("|sum", len(start) + sizes, start)
    return items


def _tojson_check(value: Any, indent: Any = None) -> None:
    if indent:
        raise SecurityError("|tojson with an indent")
    _text(value)


def _check_keys(what: str, keys: Iterable[Any]) -> None:
    """Sorting, grouping and comparing filters compare their keys (and, by default, keep a
    lower-cased copy of each: a list of 60,000 references to one long string becomes 60,000
    copies): the keys' text is bounded as what the filter makes, before it runs."""
    total = 0
    for key in keys:
        total += _key_size(key)
        if total > MAX_MADE:
            raise TemplateLimit(
                f"{what} would compare more than {MAX_MADE:,} characters of keys for one value"
            )


def _key_size(key: Any, depth: int = 0) -> int:
    if isinstance(key, str | bytes):
        return len(key)
    if isinstance(key, list | tuple) and depth < 2:
        return sum(_key_size(part, depth + 1) for part in key)
    return 0


def _keyed(what: str, value: Iterable[Any], attribute: Any) -> list[Any]:
    items = list(value)
    if attribute is None:
        _check_keys(what, items)
    else:
        get = make_multi_attrgetter(ENVIRONMENT, attribute)
        _check_keys(what, map(get, items))
    return items


# The checks take the filters' own parameter names: templates may pass them by keyword.
def _sort_check(
    value: Any, reverse: Any = False, case_sensitive: Any = False, attribute: Any = None
) -> Any:
    return _keyed("|sort", value, attribute)


def _unique_check(value: Any, case_sensitive: Any = False, attribute: Any = None) -> Any:
    return _keyed("|unique", value, attribute)


def _min_check(value: Any, case_sensitive: Any = False, attribute: Any = None) -> Any:
    return _keyed("|min", value, attribute)


def _max_check(value: Any, case_sensitive: Any = False, attribute: Any = None) -> Any:
    return _keyed("|max", value, attribute)


def _groupby_check(value: Any, attribute: Any, *_args: Any, **_kwargs: Any) -> Any:
    return _keyed("|groupby", value, attribute)


def _dictsort_check(value: Any, *_args: Any, **_kwargs: Any) -> None:
    if isinstance(value, abc.Mapping):
        _check_keys("|dictsort", (part for pair in value.items() for part in pair))


def _bounded_filters() -> dict[str, Callable[..., Any]]:
    """Jinja's filters for flows, each bounded (`_bounded_filter`): those that print their
    input measure it first, those that grow it check the growth first; `pprint` and `urlize`
    (debugging, HTML) are left out."""
    checks: dict[str, Callable[..., Any]] = {
        "center": _center_check,
        "indent": _indent_check,
        "wordwrap": _wordwrap_check,
        "replace": _replace_check,
        "format": _format_check,
        "join": _join_check,
        "batch": _batch_check,
        "slice": _slice_check,
        "sum": _sum_check,
        "tojson": _tojson_check,
        "sort": _sort_check,
        "unique": _unique_check,
        "min": _min_check,
        "max": _max_check,
        "groupby": _groupby_check,
        "dictsort": _dictsort_check,
    }
    printing = (
        "capitalize", "e", "escape", "forceescape", "lower", "safe", "string", "striptags",
        "title", "trim", "truncate", "upper", "urlencode", "wordcount", "xmlattr",
    )  # fmt: skip
    filters = {
        name: _bounded_filter(name, checks.get(name), prints=name in printing)
        for name in FILTERS
        if name not in ("pprint", "urlize")
    }
    filters[_TURNS] = _turns
    filters[_WRITTEN] = _written
    filters[_CONCAT] = _concat
    return filters


class _FlowEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, bounded (see the module's docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    context_class = _BoundedContext

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Fast path for recipient and vars fields, read on every render: their values are data,
        # and underscore names stay blocked as everywhere else in the sandbox.
        if type(obj) is _Fields:
            return not attr.startswith("_")
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        bounded = cast(_BoundedContext, context)
        budget = bounded.budget
        budget.step()
        if budget.depth >= MAX_DEPTH:
            raise TemplateLimit(
                f"calls nested more than {MAX_DEPTH} deep (does a macro call itself?)"
            )
        if type(obj) is LoopContext and args:  # `loop(children)` in a recursive for loop
            args = (_turns(bounded, args[0], 0), *args[1:])
        args = _check_call(obj, args, kwargs)
        budget.depth += 1
        try:
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        budget.make(result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`'...'.format(...)` and `format_map`, with a formatter that checks every field."""
        if not (
            isinstance(value, types.MethodType | types.BuiltinMethodType)
            and value.__name__ in ("format", "format_map")
            and isinstance(value.__self__, str)
        ):
            return None
        text: str = value.__self__
        mapping = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if mapping:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                kwargs = args[0]
                args = ()
            formatter: string.Formatter
            if isinstance(text, Markup):
                formatter = _BoundedEscapeFormatter(self, escape=text.escape)
            else:
                formatter = _BoundedFormatter(self)
            return type(text)(formatter.vformat(text, args, kwargs))

        return bounded


def make_environment() -> ImmutableSandboxedEnvironment:
    """The one environment every flow template is compiled in."""
    environment = _FlowEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    # Helpers such as lipsum, cycler, joiner and namespace are needless in messages and have
    # been the handles of sandbox escapes; templates see only recipient, vars and env.
    environment.globals.clear()
    environment.filters = _bounded_filters()
    return environment


ENVIRONMENT = make_environment()

Render = Callable[[Mapping[str, Any]], str]


def compile_text(source: str, *, api: bool = False) -> Render:
    """A function that renders `source` for a context; constants cost nothing per recipient.

    `api` False (message templates): naming a secret (`env.WA_TOKEN`) is refused here. Raises
    jinja2.TemplateSyntaxError for a broken template.
    """
    if not is_template(source):
        return lambda _context: source
    try:
        if not api:
            _check_secrets(ENVIRONMENT.parse(source))
        template = ENVIRONMENT.from_string(source)
    except (RecursionError, SyntaxError):  # Jinja's parser, or Python compiling its output
        raise TemplateSyntaxError("expressions nested too deeply", 1) from None

    def render(context: Mapping[str, Any]) -> str:
        text = template.render(context)
        if len(text) > MAX_RENDERED:
            raise TooLong(len(text))
        return text

    return _fields_only(source, render) or render


def _fields_only(source: str, slow: Render) -> Render | None:
    """Most message templates only put fields into text (`Hi {{ recipient.name }}`). Those are
    rendered here without Jinja's per-render machinery (a context object, a generator): about
    15 times faster, and the same result: `str()` of each value, the same errors for a missing
    field (StrictUndefined raises on `str()`), underscore names left to the sandbox. Anything
    else (filters, expressions, tags, env) returns None: Jinja renders it. The length is summed
    before the parts are joined (a long field placed many times), and a value that is not a
    string is measured before it is printed."""
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

    constant = sum(len(part) for part in parts if isinstance(part, str))

    def render(context: Mapping[str, Any]) -> str:
        out = []
        size = constant
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, key = part
            fields = context.get(name)
            if type(fields) is not _Fields:
                return slow(context)  # not a recipient/vars context: Jinja says what is wrong
            value = fields[key]
            text = value if type(value) is str else _text(value)
            size += len(text)
            out.append(text)
        if size > MAX_RENDERED:
            raise TooLong(size)
        return "".join(out)

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
    """A `when:` expression, as in Ansible: a bare Jinja expression whose truth decides.

    Part of the messages: naming a secret is refused here, as in compile_text."""
    try:
        expression = ENVIRONMENT.compile_expression(source, undefined_to_none=False)
        _check_secrets(Parser(ENVIRONMENT, source, state="variable").parse_expression())
    except (RecursionError, SyntaxError):  # Jinja's parser, or Python compiling its output
        raise TemplateSyntaxError("expressions nested too deeply", 1) from None
    except TemplateSyntaxError as exc:
        meant = _when_mistake(source)
        if meant is None:
            raise
        raise WhenMistake(meant, exc.lineno) from None

    def test(context: Mapping[str, Any]) -> bool:
        result = expression(**context)
        if isinstance(result, StrictUndefined):
            bool(result)  # raises the UndefinedError with its hint
        return bool(result)

    return test


_LONE_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")


def _when_mistake(source: str) -> str | None:
    """The usual ways a `when:` that does not parse was meant, said with the fix; None for
    any other mistake (Jinja's own words then)."""
    text = source.strip()
    braces = text.startswith("{{") and text.endswith("}}")
    bare = text[2:-2].strip() if braces else text
    fixed = _LONE_EQUALS.sub("==", bare)
    if braces:
        return f"when: is an expression, without {{{{ }}}}: write when: {fixed}"
    if fixed != bare:
        return f"when: compares with ==, not =: write when: {fixed}"
    return None


# What rendering a template may raise: Jinja's own errors, and the Python errors of the
# operations a template performs on data (`{{ -vars.name }}`, `{{ 1 / 0 }}`, `{{ x[99] }}`).
# RecursionError: a structure nested deeper than Python prints, say; one located line too.
RENDER_ERRORS = (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError)


def describe(error: Exception) -> str:
    """A one-line description of a template failure, for a `FILE:LINE:COL:` problem."""
    if isinstance(error, SecretInMessage | SecretReference):
        return str(error.message if isinstance(error, SecretReference) else error)
    if not isinstance(error, TemplateError):
        return f"template error: {error}"
    if isinstance(error, UndefinedError):
        return str(error.message or "undefined value")
    if isinstance(error, TemplateLimit):
        return f"template exceeds a limit: {error}"
    if isinstance(error, SecurityError):
        return f"not allowed in a flow template: {error}"
    said = "" if isinstance(error, WhenMistake) else "template error: "
    return f"{said}{error.message or error}"
