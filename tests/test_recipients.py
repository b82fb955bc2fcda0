"""Recipients as people really save them: phones in every notation, CSVs from spreadsheets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.recipients import PhoneSet, normalize_phone
from tests.conftest import HEADER, RunFlow

CSV_FLOW = (
    HEADER
    + "recipients: {csv: people.csv}\nmessages:\n  - text: {body: 'Hi {{ recipient.name }}'}\n"
)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("+1 (555) 010-0001", "15550100001"),
        ("+7 912 345-67-89", "79123456789"),
        ("0049 30 1234567", "49301234567"),
        ("44.7911.123456", "447911123456"),
        (15550100001, "15550100001"),
    ],
)
def test_phone_normalised(written: str | int, expected: str) -> None:
    assert normalize_phone(written) == expected


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("07911 123456", "phone '07911 123456' has no country code (it starts with 0)"),
        ("+1 555 CALL NOW", "'+1 555 CALL NOW' is not a phone number"),
        ("+1 555", "phone '+1 555' has 4 digits; with its country code a phone has 7 to 15"),
        ("+1234567890123456", "has 16 digits"),
        ("", "'' is not a phone number"),
        ("+00 44 7911 123456", "phone '+00 44 7911 123456': a country code never starts with 0"),
        ("+٣٣٣٣٣٣٣٣", "is not a phone number"),
    ],
)
def test_bad_phones(written: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        normalize_phone(written)


def rendered_bodies(run_flowrun: RunFlow, csv_text: str) -> list[dict[str, object]]:
    result = run_flowrun(CSV_FLOW, "--jsonl", command="plan", files={"people.csv": csv_text})
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def texts(bodies: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(b["to"], b["text"]["body"]) for b in bodies]  # type: ignore[index]


def test_csv_as_excel_saves_it(run_flowrun: RunFlow) -> None:
    csv_text = (
        "\ufeffPhone;name;city\r\n"
        "+7 912 345-67-89;Ольга;Казань\r\n"
        '+1 555 010 0002;"Bob ""the builder""\r\nSmith 🙂";Denver\r\n'
        ";;\r\n\r\n"
    )
    assert texts(rendered_bodies(run_flowrun, csv_text)) == [
        ("79123456789", "Hi Ольга"),
        ("15550100002", 'Hi Bob "the builder"\r\nSmith 🙂'),
    ]


def test_duplicate_phone_gets_messages_once(run_flowrun: RunFlow) -> None:
    csv_text = "phone,name\n+15550100001,A\n1 555 010 0001,B\n"
    result = run_flowrun(CSV_FLOW, command="validate", files={"people.csv": csv_text})
    assert result.code == 0
    assert "1 recipients" in result.out
    assert (
        "people.csv:3:1: warning: phone 15550100001 is listed again; it gets its messages once"
        in result.err
    )


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("name,city\nA,B\n", "people.csv:1:1: CSV has no 'phone' column (columns: name, city)"),
        ("", "people.csv:1:1: CSV file is empty; it needs a header row with a 'phone' column"),
        ("phone,name\n+15550100001,A,extra\n", "people.csv:2:1: row has 3 values but the header"),
        ("phone,name,name\n", "people.csv:1:1: column 'name' appears twice in the header row"),
        ("phone,name\n+1555010000x,A\n", "people.csv:2:1: '+1555010000x' is not a phone number"),
        ("phone,city\n+15550100001,A\n", "flow.yaml:7:18: recipient has no field 'name'"),
    ],
)
def test_csv_problems(run_flowrun: RunFlow, csv_text: str, expected: str) -> None:
    result = run_flowrun(CSV_FLOW, files={"people.csv": csv_text})
    assert result.code == 2
    assert result.err_lines[0].startswith(expected)


def test_csv_not_utf8(run_flowrun: RunFlow, flowdir: Path) -> None:
    run_flowrun(CSV_FLOW, files={"people.csv": "phone\n"})
    (flowdir / "people.csv").write_bytes(b"phone,name\n+15550100001,Jos\xe9\n")
    result = run_flowrun(CSV_FLOW)
    assert result.code == 2
    assert result.err_lines[0] == "people.csv:2:1: not UTF-8 text"


def test_missing_csv(run_flowrun: RunFlow) -> None:
    result = run_flowrun(CSV_FLOW)
    assert result.code == 2
    # at the flow's line that names it (issue 17), not at line 1 of a file that is not there
    assert result.err_lines[0] == "flow.yaml:5:19: CSV file 'people.csv' not found"


def test_csv_cells_are_data_not_templates(run_flowrun: RunFlow) -> None:
    csv_text = "phone,name\n+15550100001,{{ 7 * 7 }}\n"
    assert texts(rendered_bodies(run_flowrun, csv_text)) == [("15550100001", "Hi {{ 7 * 7 }}")]


@given(st.lists(st.integers(min_value=1, max_value=10**15 - 1), max_size=3000))
def test_the_phone_set_is_a_set(phones: list[int]) -> None:
    seen, expected = PhoneSet(), set[int]()
    for phone in phones:
        assert seen.add(phone) == (phone not in expected)
        expected.add(phone)
    assert len(seen) == len(expected)
