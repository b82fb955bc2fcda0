"""runner/errors.py on its own: how a problem reads (`FILE:LINE:COL: message`, its hint, its
count), and the bounded, de-duplicated collection every flow's problems go into."""

from __future__ import annotations

import pytest

from runner.errors import (
    EXIT_BUG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    FlowInvalid,
    FlowrunError,
    Location,
    Problem,
    Problems,
    single_problem,
)
from tests.conftest import RunFlow


def at(line: int, col: int = 1, file: str = "flow.yaml") -> Location:
    return Location(file, line, col)


def test_a_location_reads_as_editors_and_ci_expect() -> None:
    assert str(Location("flows/onboarding.yaml", 12, 7)) == "flows/onboarding.yaml:12:7"


@pytest.mark.parametrize(
    ("problem", "repeats", "shown"),
    [
        (Problem(at(3, 5), "unknown key 'tiemout'"), 0, "flow.yaml:3:5: unknown key 'tiemout'"),
        (
            Problem(at(3, 5), "unknown key 'tiemout'", hint="did you mean 'timeout'?"),
            0,
            "flow.yaml:3:5: unknown key 'tiemout'\n  hint: did you mean 'timeout'?",
        ),
        (
            Problem(at(4, 10), "environment variable WA_TOKEN is not set", severity="warning"),
            0,
            "flow.yaml:4:10: warning: environment variable WA_TOKEN is not set",
        ),
        (
            Problem(
                at(8, 18), "'x' is undefined", detail="first for the recipient at flow.yaml:6:12"
            ),
            12345,
            "flow.yaml:8:18: 'x' is undefined (first for the recipient at flow.yaml:6:12)"
            " (and 12,345 more like it)",
        ),
        (
            Problem(at(1), "a", hint="b", severity="warning", detail="c"),
            1,
            "flow.yaml:1:1: warning: a (c) (and 1 more like it)\n  hint: b",
        ),
    ],
)
def test_how_a_problem_reads(problem: Problem, repeats: int, shown: str) -> None:
    assert problem.format(repeats) == shown


def test_the_same_mistake_for_many_recipients_is_one_problem_with_a_count() -> None:
    problems = Problems()
    for row in range(100_000):
        problems.add(Problem(at(8, 18), "'x' is undefined", detail=f"recipient {row}"))
    assert problems.lines() == [
        "flow.yaml:8:18: 'x' is undefined (recipient 0) (and 99,999 more like it)"
    ]
    assert len(problems.errors) == 1


def test_problems_differ_by_place_message_hint_and_severity() -> None:
    problems = Problems()
    problems.extend(
        [
            Problem(at(1), "m"),
            Problem(at(2), "m"),
            Problem(at(1, 2), "m"),
            Problem(at(1, file="other.csv"), "m"),
            Problem(at(1), "n"),
            Problem(at(1), "m", hint="h"),
            Problem(at(1), "m", severity="warning"),
        ]
    )
    assert len(problems.errors) == 6
    assert len(problems.warnings) == 1


def test_problems_are_listed_by_file_then_line_then_column() -> None:
    problems = Problems()
    for problem in (
        Problem(at(10, 1), "ten"),
        Problem(at(9, 30), "nine, far right"),
        Problem(at(9, 3), "nine"),
        Problem(at(1, 1, "contacts.csv"), "csv"),
        Problem(at(2, 1), "two, a warning", severity="warning"),
    ):
        problems.add(problem)
    assert problems.lines() == [
        "contacts.csv:1:1: csv",
        "flow.yaml:2:1: warning: two, a warning",
        "flow.yaml:9:3: nine",
        "flow.yaml:9:30: nine, far right",
        "flow.yaml:10:1: ten",  # 10 after 9: numbers, not text
    ]
    assert problems.lines("warning") == ["flow.yaml:2:1: warning: two, a warning"]
    assert problems.lines("error")[0] == "contacts.csv:1:1: csv"
    assert len(problems.lines("error")) == 4


def test_memory_stays_bounded_however_broken_the_input() -> None:
    problems = Problems(limit=3)
    for line in range(1, 11):
        problems.add(Problem(at(line), "error"))
    problems.add(Problem(at(11), "a warning", severity="warning"))
    problems.add(Problem(at(1), "error"))  # one already kept: counted, not dropped
    assert problems.lines() == [
        "flow.yaml:1:1: error (and 1 more like it)",
        "flow.yaml:2:1: error",
        "flow.yaml:3:1: error",
        "... and 7 more errors not shown",
        "... and 1 more warnings not shown",
    ]
    assert problems.lines("warning") == ["... and 1 more warnings not shown"]
    assert problems.lines("error")[-1] == "... and 7 more errors not shown"
    assert problems.dropped == {"error": 7, "warning": 1}


def test_errors_dropped_past_the_limit_still_count_as_errors() -> None:
    problems = Problems(limit=1)
    problems.add(Problem(at(1), "only a warning", severity="warning"))
    assert not problems.has_errors()
    problems.add(Problem(at(2), "an error, dropped"))
    assert problems.errors == []
    assert problems.has_errors()


def test_the_default_limit_is_200() -> None:
    problems = Problems()
    problems.extend(Problem(at(line), "e") for line in range(1, 1001))
    assert len(problems.errors) == 200
    assert problems.lines()[-1] == "... and 800 more errors not shown"


def test_an_invalid_flow_prints_its_errors_and_exits_2() -> None:
    problems = Problems()
    problems.add(Problem(at(2), "second"))
    problems.add(Problem(at(1), "a warning", severity="warning"))  # printed when found
    problems.add(Problem(at(1), "first", hint="fix it"))
    error = FlowInvalid(problems)
    assert error.exit_code == EXIT_INVALID == 2
    assert error.lines() == ["flow.yaml:1:1: first\n  hint: fix it", "flow.yaml:2:1: second"]
    assert str(error) == "2 problem(s)"


def test_single_problem() -> None:
    error = single_problem(at(1), "the flow is empty", "start with 'version: 1'")
    assert isinstance(error, FlowInvalid)
    assert error.lines() == ["flow.yaml:1:1: the flow is empty\n  hint: start with 'version: 1'"]
    assert single_problem(at(3, 4), "no hint").lines() == ["flow.yaml:3:4: no hint"]


def test_an_expected_failure_is_its_message_and_exit_code() -> None:
    assert FlowrunError("cannot create the ledger here").lines() == [
        "cannot create the ledger here"
    ]
    assert FlowrunError.exit_code == EXIT_INVALID


def test_exit_codes_scripts_rely_on() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_BUG, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


# Mistakes said in the words of the person who made them (issue 17, item 5): whole flows
# validated as `flowrun validate` does, each first line (and hint) as printed.

PEOPLE_CSV = {"people.csv": "phone,name,lang\n+15550100001,Ann,en\n"}
MISTAKES_HEAD = """\
version: 1
api: {phone_number_id: "1", token: "{{ env.WA_TOKEN }}"}
settings: {window: open}
recipients: {csv: people.csv}
messages:
"""


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            "  - text:\n      body: {{ recipient.name }}\n",
            "flow.yaml:7:13: a value starting with {{ must be in quotes: YAML reads"
            " {{ ... }} as a mapping\n"
            '  hint: put the value in quotes: body: "{{ recipient.name }}"',
            id="unquoted template",
        ),
        pytest.param(
            "  - text: {body: hi}\n    when: \"{{ recipient.lang == 'en' }}\"\n",
            "flow.yaml:7:11: when: is an expression, without {{ }}:"
            " write when: recipient.lang == 'en'",
            id="when in braces",
        ),
        pytest.param(
            "  - text: {body: hi}\n    when: recipient.lang = 'en'\n",
            "flow.yaml:7:11: when: compares with ==, not =: write when: recipient.lang == 'en'",
            id="when with =",
        ),
        pytest.param(
            "  - text: {body: 'hi {{ recipient.nmae }}'}\n",
            "flow.yaml:6:18: recipient has no field 'nmae'; did you mean 'name'? (columns:"
            " phone, name, lang) (first for the recipient at people.csv:2:1)",
            id="a column that does not exist",
        ),
        pytest.param(
            "  - image: {file: assets/welcom.jpg}\n",
            "flow.yaml:6:19: file 'assets/welcom.jpg' not found\n"
            "  hint: did you mean 'assets/welcome.jpg'?",
            id="a file name mistyped",
        ),
        pytest.param(
            "  - template: {name: hello_world, language: en_US}\n    name: '#one'\n",
            "flow.yaml:7:11: name: must not start with '#' or start or end with spaces, got '#one'",
            id="a template step's name",
        ),
    ],
)
def test_mistakes_in_the_words_of_who_made_them(
    run_flowrun: RunFlow, steps: str, expected: str
) -> None:
    result = run_flowrun(MISTAKES_HEAD + steps, files=PEOPLE_CSV, dedent=False)
    assert result.code == 2
    assert "\n".join(result.err_lines) == expected


def test_a_missing_csv_is_said_where_the_flow_names_it(run_flowrun: RunFlow) -> None:
    """Not at line 1 of a file that does not exist, but at the flow's line, with the CSV
    files that are there."""
    result = run_flowrun(
        MISTAKES_HEAD.replace("people.csv", "peopel.csv") + "  - text: {body: hi}\n",
        files=PEOPLE_CSV,
        dedent=False,
    )
    assert result.code == 2
    assert result.err_lines == [
        "flow.yaml:4:19: CSV file 'peopel.csv' not found",
        "  hint: did you mean 'people.csv'?",
    ]
