"""Templates that only place fields take a fast path; it must render exactly what Jinja does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from runner import templates
from runner.templates import ENVIRONMENT, EnvVars, compile_text, recipient_fields, vars_fields

NAMES = st.sampled_from(["name", "city", "n", "missing", "items", "keys", "_data", "__class__"])
VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)
TEXT = st.text(alphabet=st.characters(blacklist_characters="{}%#"), max_size=10)


@st.composite
def field_templates(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        owner = draw(st.sampled_from(["recipient", "vars"]))
        name = draw(NAMES)
        reference = draw(st.sampled_from([f"{owner}.{name}", f"{owner}['{name}']"]))
        dash = draw(st.sampled_from(["", "-"]))
        pieces.append(draw(TEXT) + "{{" + dash + " " + reference + " " + dash + "}}")
    return "".join(pieces) + draw(TEXT)


def outcome(render: Any, context: dict[str, Any]) -> tuple[str, str]:
    try:
        return "ok", render(context)
    except (UndefinedError, SecurityError) as exc:
        return type(exc).__name__, str(exc)


@given(
    field_templates(),
    st.dictionaries(NAMES, VALUES, max_size=4),
    st.dictionaries(NAMES, VALUES, max_size=4),
)
def test_the_fast_path_renders_what_jinja_renders(
    source: str, row: dict[str, Any], values: dict[str, Any]
) -> None:
    context = {"recipient": recipient_fields(row), "vars": vars_fields(values), "env": EnvVars({})}
    jinja = ENVIRONMENT.from_string(source)
    assert outcome(compile_text(source), context) == outcome(jinja.render, context)


@pytest.mark.parametrize(
    ("source", "fast"),
    [
        ("Hi {{ recipient.name }}!", True),
        ("{{ vars.cdn }}/{{ recipient['lang'] }}.jpg", True),
        ("{{ recipient.name | upper }}", False),
        ("{{ env.HOME }}", False),
        ("{{ recipient._data }}", False),
        ("{% if recipient.x %}a{% endif %}", False),
        ("{{ vars.greeting[recipient.lang] }}", False),
    ],
)
def test_which_templates_take_the_fast_path(source: str, fast: bool) -> None:
    def jinja(_context: Any) -> str:
        return "jinja"

    chosen = templates._fields_only(source, jinja)
    assert (chosen is not None) is fast
    if chosen is not None:
        context = {"recipient": recipient_fields({"name": "A", "lang": "en"}), "env": EnvVars({})}
        context["vars"] = vars_fields({"cdn": "https://c"})
        assert chosen(context) == ENVIRONMENT.from_string(source).render(context)
        assert chosen({}) == "jinja"  # no recipient in this context: Jinja explains
