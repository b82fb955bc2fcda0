"""Load a flow file into a validated `Flow`, or into located problems: the loader owns the mapping
from every pydantic error back to the line and column a person wrote.

Order matters: the file is read within limits, parsed (yamldoc), its top level and `version`
checked first (a flow of a future version should say so, not list fifty unknown keys), then the
whole structure is validated in one pass so that every problem is reported at once.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import models
from .errors import FlowInvalid, Location, Problem, Problems, single_problem
from .media import near_names
from .yamldoc import Document, YamlPath, parse, read_text


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    """A valid flow with what later stages need to locate their own problems."""

    flow: models.Flow
    document: Document
    path: Path  # the flow file
    display: str  # the path as the user wrote it, for messages

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.flow.name or self.path.stem

    def locate(self, path: YamlPath, *, key: bool = False) -> Location:
        return self.document.locate(path, key=key)


def load_flow(path: Path | str) -> LoadedFlow:
    """Read, parse and validate one flow file; raise FlowInvalid with every problem found."""
    display = str(path)
    path = Path(path)
    document = parse(read_text(path, display), display)
    _check_top_level(document)
    try:
        flow = models.Flow.model_validate(document.data)
    except ValidationError as exc:
        problems = Problems()
        for error in exc.errors(include_url=False):
            problems.add(_problem(document, error))
        raise FlowInvalid(problems) from None
    return LoadedFlow(flow, document, path, display)


def missing_csv(loaded: LoadedFlow) -> Problem | None:
    """A recipients CSV that is not there, said at the flow's line that names it (not at
    line 1 of a file that does not exist), with the close names that are there."""
    source = loaded.flow.recipients
    if not isinstance(source, models.CsvRecipients):
        return None
    path = loaded.base_dir / source.csv
    if path.exists():
        return None
    return Problem(
        loaded.locate(("recipients", "csv")),
        f"CSV file '{source.csv}' not found",
        near_names(path, source.csv, ".csv"),
    )


def _check_top_level(document: Document) -> None:
    start = Location(document.file, 1, 1)
    if document.data is None:
        raise single_problem(
            start,
            "the flow is empty",
            "a flow needs at least version, api, recipients and messages",
        )
    if not isinstance(document.data, dict):
        raise single_problem(
            start,
            f"a flow must be a mapping (key: value lines), not a {_kind(document.data)}",
            "start with 'version: 1'",
        )
    version = document.data.get("version")
    if "version" in document.data and version != 1:
        raise single_problem(
            document.locate(("version",)),
            f"unsupported flow version {version!r}; this flowrun reads version 1",
            "write version: 1, or upgrade flowrun if the flow was written for a newer one",
        )


def _kind(value: Any) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _data_path(data: Any, loc: tuple[Any, ...], missing: bool) -> YamlPath:
    """The path in the data that a pydantic `loc` means: union tags and member names, which
    pydantic inserts into locs, are not keys of the data and are skipped.

    A tag can also be a key (a step `{name: x, text: {...}}` has the tag `text` and a key
    `text`), so each part is tried both as a key and as a tag, keeping the reading that
    places more of the loc; a missing key's name counts as placed."""
    return tuple(_best_path(data, loc, missing)[1])


def _best_path(node: Any, loc: tuple[Any, ...], missing: bool) -> tuple[int, list[str | int]]:
    """(parts placed, path) for the rest of a loc below `node`."""
    if not loc:
        return 0, []
    part, rest = loc[0], loc[1:]
    skipped = _best_path(node, rest, missing)
    present = (isinstance(node, dict) and part in node) or (
        isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
    )
    if present:
        placed, path = _best_path(node[part], rest, missing)
        if placed + 1 > skipped[0] or (placed + 1 == skipped[0] and not rest):
            return placed + 1, [part, *path]
    elif missing and not rest:
        return 1, [part]
    return skipped


def _all_paths(node: Any, loc: tuple[Any, ...]) -> Iterator[list[str | int]]:
    """Every reading of a loc that reaches a value in the data (each part a key, or a tag)."""
    if not loc:
        yield []
        return
    part, rest = loc[0], loc[1:]
    present = (isinstance(node, dict) and part in node) or (
        isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
    )
    if present:
        yield from ([part, *path] for path in _all_paths(node[part], rest))
    yield from _all_paths(node, rest)


def _value_at(data: Any, path: YamlPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _error_path(document: Document, error: Any, missing: bool) -> YamlPath:
    """Where an error is: `_data_path`, unless the value there is not the one refused while
    another reading of the loc leads to it. A template step's own `name` and its template's
    `name` share a loc (..., 'template', 'name': the tag, then the key), and the refused
    value tells them apart."""
    path = _data_path(document.data, error["loc"], missing)
    refused = error.get("input")
    if missing or isinstance(refused, dict | list) or _value_at(document.data, path) == refused:
        return path
    for reading in _all_paths(document.data, tuple(error["loc"])):
        if len(reading) > 0 and _value_at(document.data, tuple(reading)) == refused:
            return tuple(reading)
    return path


def _problem(document: Document, error: Any) -> Problem:
    kind = error["type"]
    path = _error_path(document, error, missing=kind == "missing")
    name = path[-1] if path else "flow"
    if kind == "extra_forbidden":
        return Problem(
            document.locate(path, key=True),
            f"unknown key '{name}'{_where(path[:-1])}",
            _unknown_key_hint(str(name), path[:-1], document.data),
        )
    if kind == "missing":
        return Problem(
            document.locate(path[:-1], key=True), f"missing key '{name}'{_where(path[:-1])}"
        )
    if kind == "api_kind":
        value = error["input"].get("kind") if isinstance(error["input"], dict) else None
        if value is None:
            return Problem(document.locate(path, key=True), "api must be a mapping")
        return Problem(
            document.locate((*path, "kind")),
            f"kind must be cloud (the default) or onprem, got {value!r}",
        )
    if kind in ("step_kind", "recipients") or isinstance(error.get("input"), dict | list):
        return Problem(document.locate(path, key=True), _message(kind, error, name))
    return Problem(document.locate(path), _message(kind, error, name))


def _where(parent: YamlPath) -> str:
    if not parent:
        return ""
    shown = ".".join(str(part) for part in parent)
    return f" in {shown}"


_MESSAGES = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list (lines starting with '- ')",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
}


_PATTERN_WORDS = {
    models.STEP_NAME_PATTERN: "must not start with '#' or start or end with spaces",
    models.TEMPLATE_NAME_PATTERN: "must be lower-case letters, digits and underscores",
    models.VERSION_PATTERN: "should look like v23.0",
}


def _message(kind: str, error: Any, name: str | int) -> str:
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"{name} must be {ctx.get('expected')}"
    if kind == "step_kind":
        return _step_kind_message(error.get("input"))
    for bound, words in (
        ("ge", "at least"),
        ("gt", "more than"),
        ("le", "at most"),
        ("lt", "less than"),
    ):
        if bound in ctx:
            return f"{name} must be {words} {ctx[bound]}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        base = _PATTERN_WORDS.get(pattern, f"should match {pattern}")
    else:
        base = _MESSAGES.get(kind, str(error["msg"]))
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and kind not in ("too_short",):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return f"{name}: {base}, got {shown}"
    return f"{name}: {base}"


def _step_kind_message(value: Any) -> str:
    types = ", ".join(sorted(models.STEP_TYPES))
    if isinstance(value, dict):
        found = [key for key in value if key in models.STEP_TYPES]
        if len(found) > 1:
            return f"a step has one message type, this one has {len(found)}: {', '.join(found)}"
        guess = [
            match
            for key in value
            for match in difflib.get_close_matches(str(key), models.STEP_TYPES, 1, 0.6)
        ]
        if guess:
            return f"a step needs a message type ({types}); did you mean '{guess[0]}'?"
    return f"a step needs exactly one message type: {types}"


def _content_model(kind: str) -> type[BaseModel]:
    annotation = models.STEP_TYPES[kind].model_fields[kind].annotation
    assert isinstance(annotation, type)
    assert issubclass(annotation, BaseModel)
    return annotation


def _known_keys(parent: YamlPath, data: Any) -> list[str]:
    """The keys allowed in the mapping at `parent`: the vocabulary for "did you mean"."""
    shape = tuple("#" if isinstance(part, int) else part for part in parent)
    api = data.get("api") if isinstance(data, dict) else None
    onprem = isinstance(api, dict) and api.get("kind") == "onprem"
    fixed: dict[tuple[Any, ...], type[BaseModel]] = {
        (): models.Flow,
        ("api",): models.OnPremApi if onprem else models.CloudApi,
        ("api", "login"): models.Login,
        ("settings",): models.Settings,
        ("recipients",): models.CsvRecipients,
    }
    if shape in fixed:
        return list(fixed[shape].model_fields)
    if shape[:1] == ("messages",) and len(shape) == 2:
        return ["name", "when", *models.STEP_TYPES]
    if shape[:1] == ("messages",) and len(shape) >= 3 and shape[2] in models.STEP_TYPES:
        return list(_nested_model(_content_model(str(shape[2])), shape[3:]).model_fields)
    return []


def _nested_model(model: type[BaseModel], shape: tuple[Any, ...]) -> type[BaseModel]:
    """The model at `shape` below `model`, following field annotations (list items are '#')."""
    for part in shape:
        if part == "#":
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        found = _models_in(field.annotation)
        if not found:
            break
        model = found[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation names: `Template`, `Template | None`, `list[Button]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _unknown_key_hint(key: str, parent: YamlPath, data: Any) -> str | None:
    owners = [kind for kind in models.STEP_TYPES if key in _content_model(kind).model_fields]
    if owners and len(parent) == 3:
        return f"'{key}' is only for {', '.join(owners)} messages"
    known = _known_keys(parent, data)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if known:
        return f"known keys here: {', '.join(sorted(known))}"
    return None
