"""Reads one YAML flow file into plain Python data, remembering where every key and value stands.

Why not `yaml.load`: a flow is written by people, so every mistake must be reported at its line,
and a flow may come from anywhere, so loading must stay bounded. Building the data ourselves from
ruamel.yaml's event stream gives both in one iterative pass (no recursion, so ten thousand levels
of nesting cannot overflow the stack):

- positions for every key and value, so validation errors map back to `FILE:LINE:COL`;
- all duplicate keys reported, not just the first;
- alias bombs stopped by a budget on what aliases expand to, deep nesting by a depth limit, huge
  files by a size limit, all before memory grows;
- YAML 1.2 core scalars ("no" stays text), except that numerals with a leading zero stay text:
  in a flow they are phone numbers and codes (`0791...`, `01234`), where 1.2 would silently drop
  the zero and with it the meaning.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)
from ruamel.yaml.nodes import ScalarNode

from .errors import FlowInvalid, Location, Problem, Problems, single_problem

YamlPath = tuple[str | int, ...]

MAX_BYTES = 5 * 1024 * 1024  # a flow is a playbook; big recipient lists belong in a CSV
MAX_DEPTH = 64  # no flow needs more; deep nesting is an attack or an accident
MAX_ALIAS_EXPANSION = 100_000  # nodes that aliases may repeat: enough for any real reuse

_SYNTAX_HINTS = {
    "found character '\\t'": "YAML indents with spaces only; replace the tab with spaces",
    "mapping values are not allowed here": (
        "a value that contains ': ' must be quoted, e.g. caption: \"Note: hello\""
    ),
    "could not find expected ':'": "each line of a mapping needs 'key: value'",
    "found unexpected end of stream": "a quote or bracket was opened and never closed",
    "while scanning a quoted scalar": "a quote was opened and never closed",
    "found undefined alias": "define the anchor (&name) before using it (*name)",
}


@dataclass(slots=True)
class Document:
    """A parsed flow file: its data and where each part of it was written."""

    file: str
    data: Any
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: YamlPath, *, key: bool = False) -> Location:
        """Where `path` was written: its key (for 'unknown key' and mapping-level errors) or its
        value; paths that no longer exist in the text (aliases, merges, defaults) fall back to the
        nearest written ancestor."""
        for cut in range(len(path), -1, -1):
            sub = path[:cut]
            found = (
                (self.keys.get(sub) or self.values.get(sub))
                if key
                else (self.values.get(sub) or self.keys.get(sub))
            )
            if found is not None:
                return Location(self.file, found[0] + 1, found[1] + 1)
        return Location(self.file, 1, 1)


def read_text(path: Path, display: str, max_bytes: int = MAX_BYTES) -> str:
    """The file's text, or a located problem: missing, too large, not UTF-8, binary."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise single_problem(Location(display, 1, 1), "file not found") from None
    except IsADirectoryError:
        raise single_problem(Location(display, 1, 1), "this is a folder, not a file") from None
    except OSError as exc:
        raise single_problem(Location(display, 1, 1), f"cannot read: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise single_problem(
            Location(display, 1, 1),
            f"file is larger than {max_bytes // (1024 * 1024)} MB",
            "keep long recipient lists in a CSV file (recipients: {csv: contacts.csv})",
        )
    return decode(raw, display)


def decode(raw: bytes, display: str) -> str:
    """UTF-8 text (a BOM is allowed, as Windows editors write one), else the bad byte's place."""
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise single_problem(Location(display, line, 1), "binary data, not a text file")
    body = raw.removeprefix(codecs.BOM_UTF8)  # no column: positions count from after it
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = body[: exc.start]  # valid UTF-8: the decoder stopped at the first bad byte
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1  # characters
        raise single_problem(
            Location(display, line, col),
            f"not UTF-8 text (byte 0x{body[exc.start]:02x})",
            "save the file as UTF-8 in your editor",
        ) from None
    return text


def parse(text: str, file: str) -> Document:
    """Parse one YAML document into a `Document`; raise `FlowInvalid` with located problems."""
    builder = _Builder(file, text)
    yaml = YAML(typ="safe", pure=True)
    try:
        for event in yaml.parse(text):
            builder.feed(event)
    except MarkedYAMLError as exc:
        raise _syntax_problem(exc, file, text) from None
    except YAMLError as exc:  # unmarked: rare, but never a traceback
        raise single_problem(Location(file, 1, 1), f"YAML error: {exc}") from None
    if builder.problems.has_errors():
        raise FlowInvalid(builder.problems)
    return builder.document


def _syntax_problem(exc: MarkedYAMLError, file: str, text: str) -> FlowInvalid:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = f"YAML syntax: {exc.problem}"
    context = exc.context_mark
    if (
        exc.context
        and context is not None
        and (context.line + 1, context.column + 1) != (line, col)
    ):
        message += (
            f" ({exc.context} that starts at line {context.line + 1}, column {context.column + 1})"
        )
    what = " ".join(s for s in (exc.context, exc.problem) if s)
    hint = next((h for key, h in _SYNTAX_HINTS.items() if key in what), None)
    written = _line_of(text, line - 1)
    if _UNQUOTED_TEMPLATE in written:  # `body: {{ name }}, welcome`: a broken mapping
        key, _, value = written.partition(_UNQUOTED_TEMPLATE[:2])
        hint = _quote_hint(key.strip(" -"), "{" + value.split(" #")[0].strip())
    return single_problem(Location(file, line, col), message, hint)


_UNQUOTED_TEMPLATE = ": {{"  # a value that starts with a template, not in quotes


def _line_of(text: str, line: int) -> str:
    """Line `line` (0-based) of `text`, '' past its end; only called for a problem."""
    lines = text.splitlines()
    return lines[line] if 0 <= line < len(lines) else ""


def _quote_hint(key: str | None, value: str) -> str:
    """How to write a value holding a template so that YAML keeps it as text."""
    quote = "'" if '"' in value else '"'
    quoted = f"{quote}{value}{quote}"
    return f"put the value in quotes: {key}: {quoted}" if key else f"put it in quotes: {quoted}"


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("anchor", "container", "key", "key_mark", "merges", "path", "size")

    def __init__(self, container: dict[Any, Any] | list[Any], path: YamlPath, anchor: str | None):
        self.container = container
        self.path = path
        self.anchor = anchor
        self.key: Any = _NO_KEY
        self.key_mark: tuple[int, int] = (0, 0)
        self.merges: list[dict[Any, Any]] = []
        self.size = 1


_NO_KEY = object()


@dataclass(frozen=True, slots=True)
class _Mark:
    """A place as the parser's marks give it (0-based)."""

    line: int
    column: int


class _Builder:
    """Turns parser events into data and positions, enforcing the limits."""

    def __init__(self, file: str, text: str = "") -> None:
        self.text = text  # for the words of a problem only
        self.document = Document(file, None)
        self.problems = Problems()
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.alias_expansion = 0
        self.documents = 0
        self.resolver = YAML(typ="safe", pure=True).resolver

    def fail(self, mark: Any, message: str, hint: str | None = None) -> FlowInvalid:
        return single_problem(
            Location(self.document.file, mark.line + 1, mark.column + 1), message, hint
        )

    def feed(self, event: Any) -> None:
        if isinstance(event, ScalarEvent):
            self.scalar(event)
        elif isinstance(event, CollectionStartEvent):
            self.start(event)
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            self.end()
        elif isinstance(event, AliasEvent):
            self.alias(event)
        elif isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise self.fail(
                    event.start_mark,
                    "a flow file holds one YAML document, but a second one starts here",
                    "remove the '---' line, or split the flows into separate files",
                )
        elif isinstance(event, StreamEndEvent):
            pass

    def expecting_key(self) -> bool:
        return (
            bool(self.stack)
            and isinstance(self.stack[-1].container, dict)
            and (self.stack[-1].key is _NO_KEY)
        )

    def scalar(self, event: Any) -> None:
        value = self.resolve(event)
        if self.expecting_key():
            # Keys are names: `1:` or `true:` mean the text the person wrote.
            self.take_key(value if isinstance(value, str) else event.value, event)
        else:
            self.attach(value, self.place(event), 1)
            self.remember(event.anchor, value, 1)

    def place(self, event: Any) -> Any:
        """Where a scalar value was written. An empty one (`text:` and nothing after it) has no
        place of its own: the parser marks where the next token starts, often the next line's
        key, so it is placed at its own key instead."""
        frame = self.stack[-1] if self.stack else None
        if event.value or event.style or frame is None or not isinstance(frame.container, dict):
            return event.start_mark
        return _Mark(*frame.key_mark)

    def take_key(self, key: Any, event: Any) -> None:
        frame = self.stack[-1]
        if not isinstance(key, str):
            raise self.fail(event.start_mark, "a key must be a plain name")
        mark = (event.start_mark.line, event.start_mark.column)
        assert isinstance(frame.container, dict)
        if key in frame.container:
            first = self.document.keys.get((*frame.path, key), (0, 0))
            self.problems.add(
                Problem(
                    Location(self.document.file, mark[0] + 1, mark[1] + 1),
                    f"duplicate key '{key}' (first written on line {first[0] + 1})",
                    "each key may appear once in a mapping; remove or rename one",
                )
            )
        else:
            self.document.keys[(*frame.path, key)] = mark
        frame.key = key
        frame.key_mark = mark

    def start(self, event: Any) -> None:
        if self.expecting_key():
            raise self._not_a_key(event)
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        container: dict[Any, Any] | list[Any] = {} if isinstance(event, MappingStartEvent) else []
        path = self.child_path()
        self.document.values.setdefault(path, (event.start_mark.line, event.start_mark.column))
        self.stack.append(_Frame(container, path, event.anchor))

    def _not_a_key(self, event: Any) -> FlowInvalid:
        """A mapping or list where a key should be. `body: {{ recipient.name }}` is the usual
        one: YAML reads the unquoted braces as a mapping inside a mapping, so it is said as
        what the person meant (a template), at the value's start, with the line quoted."""
        frame, mark = self.stack[-1], event.start_mark
        opened = self.document.values.get(frame.path)
        if (
            isinstance(event, MappingStartEvent)
            and event.flow_style
            and not frame.container
            and opened == (mark.line, mark.column - 1)
        ):
            written = _line_of(self.text, opened[0])
            value = written[opened[1] :].split(" #")[0].strip()
            if "{" in written[: opened[1]]:  # inside a `{...}` of its own: up to the `}}`
                value = value[: value.rfind("}}") + 2]
            parent = self.stack[-2] if len(self.stack) > 1 else None
            key = parent.key if parent is not None and isinstance(parent.key, str) else None
            return self.fail(
                _Mark(*opened),
                "a value starting with {{ must be in quotes: YAML reads {{ ... }} as a mapping",
                _quote_hint(key, value),
            )
        return self.fail(mark, "a key must be a plain name, not a list or mapping")

    def end(self) -> None:
        frame = self.stack.pop()
        if isinstance(frame.container, dict):
            for merged in frame.merges:  # explicit keys win over merged ones, as YAML says
                for key, value in merged.items():
                    frame.container.setdefault(key, value)
        self.attach_built(frame)

    def attach_built(self, frame: _Frame) -> None:
        if self.stack:
            self.attach(frame.container, None, frame.size)
        else:
            self.document.data = frame.container
        self.remember(frame.anchor, frame.container, frame.size)

    def alias(self, event: Any) -> None:
        if event.anchor not in self.anchors:
            raise self.fail(event.start_mark, f"unknown alias '*{event.anchor}'")
        value, size = self.anchors[event.anchor]
        self.alias_expansion += size
        if self.alias_expansion > MAX_ALIAS_EXPANSION:
            raise self.fail(
                event.start_mark,
                f"aliases expand to more than {MAX_ALIAS_EXPANSION:,} values",
                "this looks like an alias bomb; use fewer nested aliases",
            )
        if self.expecting_key():
            self.take_key(value, event)
        else:
            self.attach(value, event.start_mark, size)

    def remember(self, anchor: str | None, value: Any, size: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = (value, size)

    def child_path(self) -> YamlPath:
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if isinstance(frame.container, dict):
            return (*frame.path, frame.key)
        return (*frame.path, len(frame.container))

    def attach(self, value: Any, mark: Any, size: int) -> None:
        if not self.stack:
            self.document.data = value
            return
        frame = self.stack[-1]
        frame.size += size
        path = self.child_path()
        if mark is not None:
            self.document.values.setdefault(path, (mark.line, mark.column))
        if isinstance(frame.container, list):
            frame.container.append(value)
            return
        key, frame.key = frame.key, _NO_KEY
        if key == "<<" and self.is_merge(value):
            frame.merges.extend(value if isinstance(value, list) else [value])
        elif key not in frame.container:
            frame.container[key] = value

    @staticmethod
    def is_merge(value: Any) -> bool:
        if isinstance(value, list):
            return all(isinstance(item, dict) for item in value)
        return isinstance(value, dict)

    def resolve(self, event: Any) -> Any:
        """The scalar's value under YAML 1.2's core schema (see the module docstring)."""
        text: str = event.value
        tag = str(event.tag) if event.tag is not None else None
        if tag not in (None, "!", "tag:yaml.org,2002:str"):
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise self.fail(
                event.start_mark,
                f"YAML tags such as {shown} are not supported",
                "write the plain value; quote it to keep it as text",
            )
        if tag is not None:
            return text
        kind = str(self.resolver.resolve(ScalarNode, text, event.implicit)).rsplit(":", 1)[-1]
        return _CONVERT.get(kind, _as_text)(text)


def _as_text(text: str) -> Any:
    return text


def _leading_zero(digits: str) -> bool:
    """0791..., 01234, 09.30: a phone, a code or a time, not a number (0.5 and 0x1F are)."""
    unsigned = digits.lstrip("+-")
    return len(unsigned) > 1 and unsigned[0] == "0" and unsigned[1].isdigit()


def _as_int(text: str) -> Any:
    digits = text.replace("_", "")
    if _leading_zero(digits):
        return text
    try:
        return int(digits, 0)
    except ValueError:
        return text


def _as_float(text: str) -> Any:
    lowered = text.lower().replace("_", "")
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    if lowered in special:
        return special[lowered]
    if _leading_zero(lowered):
        return text
    try:
        return float(lowered)
    except ValueError:
        return text


_CONVERT = {
    "null": lambda _text: None,
    "bool": lambda text: text.lower() == "true",
    "int": _as_int,
    "float": _as_float,
}
