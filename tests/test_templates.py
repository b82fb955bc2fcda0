"""Templates that only place fields take a fast path; it must render exactly what Jinja does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import StrictUndefined, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


# --- bounds: every render is bounded in time and size (README, "What flowrun guarantees") ---

CORPUS = Path(__file__).resolve().parent / "corpus"
BOMBS = sorted(CORPUS.glob("template-bomb-*.yaml"))
ROOT = Path(__file__).resolve().parent.parent
# `python -m runner ARGS` under a 1 GB address-space ceiling (a bomb that got through would die)
LIMITED = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
    " runpy.run_module('runner', run_name='__main__', alter_sys=True)"
)
PEAK_MB = 300  # generous: a validate process is about 40 MB; each bomb asked for gigabytes


def _expected(case: Path) -> str:
    first = case.read_text("utf-8").split("\n", 1)[0]
    return first.removeprefix("# expect: ").replace("FLOW", case.name, 1)


def _flowrun(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, float, float]:
    """Exit code, stderr, wall seconds and peak RSS in MB of one `flowrun` (measured by
    tests/peak.py: a child forked from this grown pytest process would report its size)."""
    err = cwd / "stderr.txt"
    started = time.monotonic()
    peak = [sys.executable, str(ROOT / "tests" / "peak.py"), "120"]
    with err.open("w") as err_file:
        measured = subprocess.run(
            [*peak, sys.executable, "-c", LIMITED, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err_file,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            check=True,
            text=True,
        )
    elapsed = time.monotonic() - started
    code, peak_kb = (int(x) for x in measured.stdout.split())
    return code, err.read_text("utf-8"), elapsed, peak_kb / 1024


def test_there_is_a_bomb_for_each_kind_the_attack_found() -> None:
    names = {case.stem.removeprefix("template-bomb-") for case in BOMBS}
    for kind in (
        "center", "ljust", "rjust", "zfill", "expandtabs", "format-width", "percent-width",
        "replace", "list-repeat", "field-repeat", "vars-repeat", "power", "power-tower",
        "nested-loops", "macro-recursion", "filter-format", "filter-wordwrap", "filter-indent",
    ):  # fmt: skip
        assert kind in names


def test_every_bomb_stops_fast_in_bounded_memory(tmp_path: Path) -> None:
    """All bombs of the corpus in one `flowrun validate`: each is its one located line (the
    corpus test checks the line of each, in under 2 s each), no traceback, exit 2, and the
    process never grew past PEAK_MB."""
    for case in BOMBS:
        shutil.copy(case, tmp_path / case.name)
    code, stderr, elapsed, peak = _flowrun(["validate", *(c.name for c in BOMBS)], tmp_path)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    lines = [line for line in stderr.splitlines() if "warning:" not in line]
    for case in BOMBS:
        mine = [line for line in lines if line.startswith(f"{case.name}:")]
        assert mine[0] in (_expected(case), _timed_out(_expected(case)))
    assert elapsed < 100  # against hangs: about 50 flows, the slow-loop one takes its 1 s
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"


def _timed_out(expected: str) -> str:
    """The same stop, at the same place, by the 1 s wall-clock limit: on a loaded machine it
    may come before the bomb's own limit (the turn count, the size), and it stops it as well."""
    return re.sub(
        r"a limit: .*? \(first for",
        "a limit: rendering one value took more than 1 s (first for",
        expected,
    )


def test_a_run_and_a_plan_refuse_a_bomb_with_exit_2(tmp_path: Path) -> None:
    case = CORPUS / "template-bomb-nested-loops.yaml"
    shutil.copy(case, tmp_path / case.name)
    for command in (["run", case.name, "--sandbox"], ["plan", case.name]):
        code, stderr, elapsed, peak = _flowrun(command, tmp_path, {"WA_TOKEN": "t"})
        assert code == 2, stderr
        assert stderr.splitlines()[0] == _expected(case)
        assert "Traceback" not in stderr
        assert elapsed < 60  # against hangs; speed lives in bench/
        assert peak < PEAK_MB


def _flow(folder: Path, recipients: str, messages: str, name: str = "flow.yaml") -> str:
    (folder / name).write_text(
        'version: 1\napi:\n  phone_number_id: "1"\n  token: "{{ env.WA_TOKEN }}"\n'
        f"recipients: {recipients}\nmessages:\n{messages}",
        "utf-8",
    )
    return name


def test_a_megabyte_field_in_a_caption_is_the_caption_error_fast(tmp_path: Path) -> None:
    bio = "b" * (1 << 20)
    flow = _flow(
        tmp_path,
        f"[{{phone: '+1 555 010 0001', bio: {bio}}}]",
        "  - image: {link: 'https://x.example/a.jpg', caption: '{{ recipient.bio }}'}\n",
    )
    code, stderr, elapsed, peak = _flowrun(["validate", flow], tmp_path)
    assert code == 2
    assert stderr.splitlines()[-1] == (
        "flow.yaml:7:55: caption is 1,048,576 characters; WhatsApp allows 1,024"
        " (first for the recipient at flow.yaml:5:22)"
    )
    assert elapsed < 60  # against hangs; speed lives in bench/
    assert peak < PEAK_MB


def test_a_large_csv_cell_is_refused_before_it_grows(tmp_path: Path) -> None:
    """Data-driven growth: a 100 KB cell (Python's csv module refuses cells over 128 KB) placed
    into a caption is the caption error; repeated, it is refused before the string is built."""
    rows = "".join(f"+1 555 010 {i:04d},{'c' * 100_000}\n" for i in range(1, 21))
    (tmp_path / "people.csv").write_text("phone,bio\n" + rows, "utf-8")
    caption = "  - image: {link: 'https://x.example/a.jpg', caption: '{{ recipient.bio }}'}\n"
    _flow(tmp_path, "{csv: people.csv}", caption, "caption.yaml")
    _flow(tmp_path, "{csv: people.csv}", "  - text: {body: '{{ recipient.bio * 10000 }}'}\n")
    code, stderr, elapsed, peak = _flowrun(["validate", "caption.yaml", "flow.yaml"], tmp_path)
    assert code == 2
    assert [line for line in stderr.splitlines() if "warning:" not in line] == [
        "caption.yaml:7:55: caption is 100,000 characters; WhatsApp allows 1,024"
        " (first for the recipient at people.csv:2:1) (and 19 more like it)",
        "flow.yaml:7:18: template exceeds a limit: '*' would make 1,000,000,000 characters;"
        " a value may hold 65,536 (first for the recipient at people.csv:2:1)"
        " (and 19 more like it)",
    ]
    assert elapsed < 60  # against hangs; speed lives in bench/
    assert peak < PEAK_MB


def _context(**row: Any) -> dict[str, Any]:
    return {"recipient": recipient_fields(row), "vars": vars_fields({}), "env": EnvVars({})}


def test_the_fast_path_sums_lengths_before_it_joins() -> None:
    """A field placed a thousand times: 1 GB if joined; the length is known without joining."""
    render = compile_text("{{ recipient.bio }}" * 1000)
    started = time.monotonic()
    with pytest.raises(templates.TooLong) as caught:
        render(_context(bio="b" * (1 << 20)))
    assert time.monotonic() - started < 1
    assert (caught.value.length, caught.value.exact) == (1000 << 20, True)


def test_a_structure_from_data_is_not_printed_when_it_would_be_huge() -> None:
    """YAML aliases may repeat one long string 100,000 times in a list: printing it would be
    gigabytes, so it is measured first, on both paths."""
    big = ["x" * (1 << 20)] * 100_000
    context = {
        "recipient": recipient_fields({}),
        "vars": vars_fields({"big": big}),
        "env": EnvVars({}),
    }
    for source in ("{{ vars.big }}", "{{ vars.big|first|length }} {{ vars.big }}"):
        with pytest.raises(SecurityError, match="a list that would print as more than 65,536"):
            compile_text(source)(context)


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ("{{ recipient|list }}", "['phone', 'name']"),
        ("{{ recipient|join(',') }}", "phone,name"),
        ("{% for k in recipient %}{{ k }}={{ recipient[k] }};{% endfor %}", "phone=1;name=Ann;"),
        ("{{ recipient|first }}", "phone"),
        ("{{ vars|list }}", "['cdn']"),
    ],
)
def test_iterating_recipient_or_vars_gives_the_field_names(source: str, rendered: str) -> None:
    """They were iterated by index (0, 1, 2, ...) for ever: each missing field an undefined."""
    context = {
        "recipient": recipient_fields({"phone": "1", "name": "Ann"}),
        "vars": vars_fields({"cdn": "https://c"}),
        "env": EnvVars({}),
    }
    assert compile_text(source)(context) == rendered


def test_a_bounded_template_still_renders_what_jinja_renders() -> None:
    """The bounds add checks, not behaviour: loops, macros, filters and formatting as usual."""
    source = (
        "{% macro item(p) %}{{ p.name|title }}: {{ '%.2f'|format(p.price) }}{% endmacro %}"
        "{% for p in vars.products if p.price > 1 %}{{ loop.index }}. {{ item(p) }}"
        "{{ ', ' if not loop.last }}{% endfor %} | {{ '{:>6}'.format(recipient.name) }}"
        " | {{ vars.products|map(attribute='name')|join('/') }} | {{ 2 ** 10 }}"
        " | {{ recipient.name ~ '!' }} | {{ ('ab' * 3)|center(10) }} | {{ [1, 2] + [3] }}"
    )
    products = [
        {"name": "tea", "price": 2.5},
        {"name": "cup", "price": 1},
        {"name": "pot", "price": 9},
    ]
    context = {
        "recipient": recipient_fields({"name": "Ann"}),
        "vars": vars_fields({"products": products}),
        "env": EnvVars({}),
    }
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(source)
    assert compile_text(source)(context) == plain.render(context)
    assert plain.render(context).startswith("1. Tea: 2.50, 2. Pot: 9.00 |    Ann | tea/cup/pot |")


@pytest.mark.parametrize(
    "source",
    [
        "{{ vars.items|sort(case_sensitive=true, attribute='n')|map(attribute='p')|join(d=',') }}",
        "{{ vars.items|sort(reverse=true, attribute='n')|first }}",
        "{{ ['B', 'a', 'b']|sort }} {{ ['B', 'a', 'b']|unique|list }} {{ [3, 1]|max }}",
        "{{ vars.items|unique(attribute='g')|list }} {{ vars.items|min(attribute='p') }}",
        "{{ vars.items|groupby(attribute='g')|map(attribute='grouper')|list }}",
        "{{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'b': 1, 'a': 2}|dictsort(true) }}",
        "{{ 'one two three four'|wordwrap(5, wrapstring='-') }}"
        " {{ 'a\nb'|indent(width=2, first=true) }}",
        "{{ [1, 2, 3]|batch(2, fill_with=0)|list }} {{ [1, 2, 3]|slice(2, fill_with=0)|list }}",
        "{{ vars.items|sum(attribute='p') }} {{ [[1], [2]]|sum(start=[]) }} {{ [1.5, 2]|sum }}",
        "{{ 'abc'|center(width=7) }}|{{ 'aaa'|replace('a', 'b', count=2) }}"
        "|{{ 'abcdefgh'|truncate(5, end='') }}",
        "{{ '%s-%s'|format(1, 2) }} {{ '%(a)s'|format(a=1) }} {{ vars.items|tojson }} {{ 'x'|e }}",
        "{{ '{:>5}|{:.2f}|{!r}'.format('a', 2, 'b') }} {{ '%-4s|%5.1f' % ('a', 2) }}"
        " {{ 'a\tb'.expandtabs(4) }}",
        "{{ ' '.join(['a', 'b']) }} {{ 'aXa'.replace('X', 'yy') }} {{ '7'.zfill(3) }}"
        " {{ 'ab'.translate({97: 'c'}) }}",
        "{% for x in [[1, [2]]] recursive %}{{ x }}{% endfor %} {{ [1, 2]|map('string')|list }}",
    ],
)
def test_the_bounded_filters_take_their_usual_arguments(source: str) -> None:
    """Every wrapped filter and checked method keeps Jinja's signature and result."""
    items = [{"n": "b", "p": 2, "g": 1}, {"n": "a", "p": 1, "g": 1}, {"n": "C", "p": 3, "g": 2}]
    context = {
        "recipient": recipient_fields({}),
        "vars": vars_fields({"items": items}),
        "env": EnvVars({}),
    }
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(source)
    assert compile_text(source)(context) == plain.render(context)


# --- secrets: message templates cannot read what the api section reads, nor secret-like names ---

SECRET = "s3cr3t-value"
ENVIRON = {"WA_TOKEN": SECRET, "WA_PHONE_NUMBER_ID": "106540352242922", "SHOP": "Tea House"}


def _message_env() -> EnvVars:
    return EnvVars(ENVIRON).for_messages(frozenset({"WA_PHONE_NUMBER_ID"}))


@pytest.mark.parametrize(
    "source",
    [
        "{{ env.WA_TOKEN }}",
        "{{ env['WA_TOKEN'] }}",
        "{{ env['WA_' ~ 'TOKEN'] }}",
        "{{ env|attr('WA_TOKEN') }}",
        "{{ env|attr(vars.name) }}",
        "{{ env[vars.name] }}",
        "{{ '{0.WA_TOKEN}'.format(env) }}",
        "{{ '{0[WA_TOKEN]}'.format(env) }}",
        "{{ '{WA_TOKEN}'.format_map(env) }}",
        "{{ '%(WA_TOKEN)s' % env }}",
        "{{ '%(WA_TOKEN)s'|format(**{'WA_TOKEN': env.WA_TOKEN}) }}",
        "{{ [env]|map(attribute='WA_TOKEN')|first }}",
        "{{ [env]|selectattr('WA_TOKEN')|list }}",
        "{{ env.WA_PHONE_NUMBER_ID }}",
        "{% for k in env %}{{ env[k] }}{% endfor %}{{ env.WA_TOKEN }}",
    ],
)
def test_no_way_around_the_secret_rule(source: str) -> None:
    context = {
        "recipient": recipient_fields({}),
        "vars": vars_fields({"name": "WA_TOKEN"}),
        "env": _message_env(),
    }
    with pytest.raises(templates.SecretInMessage) as caught:
        compile_text(source, api=True)(context)  # api=True: no static check, the render refuses
    assert SECRET not in str(caught.value)
    assert "secrets may be read only in the api section" in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ env.items() }}",
        "{{ env|dictsort }}",
        "{{ env|items|list }}",
        "{{ env.get('WA_TOKEN') }}",
        "{{ env.values() }}",
        "{{ env._environ }}",
        "{{ env|tojson }}",
    ],
)
def test_env_has_no_methods_that_list_values(source: str) -> None:
    context = {"recipient": recipient_fields({}), "vars": vars_fields({}), "env": _message_env()}
    with pytest.raises(templates.RENDER_ERRORS) as caught:
        compile_text(source)(context)
    assert SECRET not in str(caught.value)


def test_env_in_messages_is_a_mapping_without_the_secrets() -> None:
    context = {"recipient": recipient_fields({}), "vars": vars_fields({}), "env": _message_env()}
    listed = compile_text("{% for k in env %}{{ k }}={{ env[k] }};{% endfor %}")(context)
    assert listed == "SHOP=Tea House;"
    assert compile_text("{{ 'WA_TOKEN' in env }} {{ 'SHOP' in env }}")(context) == "False True"
    assert compile_text("{{ env|list }}")(context) == "['SHOP']"


def test_the_api_section_reads_every_variable() -> None:
    context = {"env": EnvVars(ENVIRON), "vars": vars_fields({})}
    assert compile_text("{{ env.WA_TOKEN }}", api=True)(context) == SECRET
    assert compile_text("{{ env['WA_PHONE_NUMBER_ID'] }}", api=True)(context) == "106540352242922"


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("{{ env.WA_TOKEN }}", 1),
        ("hi\n{{ env['MY_API_KEY'] }}", 2),
        ("{{ env|attr('SMTP_PASSWD') }}", 1),
        ("{% if x %}\n\n{{ env.OAuth_Client }}{% endif %}", 3),
    ],
)
def test_a_secret_named_in_a_message_is_refused_when_compiled(source: str, line: int) -> None:
    with pytest.raises(templates.SecretReference) as caught:
        compile_text(source)
    assert caught.value.lineno == line
    assert "secrets may be read only in the api section; if" in str(caught.value.message)


def test_a_shadowed_env_is_not_the_environment() -> None:
    source = "{% for env in [{'TOKEN_COUNT': 3}] %}{{ env.TOKEN_COUNT }}{% endfor %}"
    context = {"recipient": recipient_fields({}), "vars": vars_fields({}), "env": _message_env()}
    assert compile_text(source)(context) == "3"


def test_plan_never_prints_a_secret_a_message_reaches_for(tmp_path: Path) -> None:
    flow = _flow(
        tmp_path,
        "[{phone: '+1 555 010 0001'}]",
        "  - text: {body: \"{{ env['WA_' ~ 'TOKEN'] }}\"}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "runner", "plan", flow],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WA_TOKEN": SECRET},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == (
        "flow.yaml:7:18: env.WA_TOKEN looks like a secret (its name contains TOKEN): secrets"
        " may be read only in the api section; if WA_TOKEN is not a secret, rename it"
        " (first for the recipient at flow.yaml:5:22)"
    )
