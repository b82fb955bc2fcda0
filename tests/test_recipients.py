"""Recipients as people really save them: phones in every notation, CSVs from spreadsheets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from runner.recipients import PhoneSet, is_valid, normalize_phone, parse_phone
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
        # a trunk prefix in brackets, as UK, German, Swiss and Dutch lists write it (issue 17)
        ("+44 (0)7700 900101", "447700900101"),
        ("+49 (0)30 1234567", "49301234567"),
        ("+41 (0)79 123 45 67", "41791234567"),
        ("+31 (0)6 12345678", "31612345678"),
        ("+44 07700 900101", "447700900101"),
        # Italy keeps its 0: it is part of the number there, not a trunk prefix
        ("+39 (0)6 1234 5678", "390612345678"),
        ("+39 06 1234 5678", "390612345678"),
    ],
)
def test_phone_normalised(written: str | int, expected: str) -> None:
    assert normalize_phone(written) == expected


@pytest.mark.parametrize(
    ("written", "country", "expected"),
    [
        ("07700 900456", "GB", "447700900456"),
        ("447700900101", "GB", "447700900101"),
        ("+44 (0)7700 900101", "GB", "447700900101"),
        ("030 1234567", "DE", "49301234567"),
        ("(212) 555-0123", "US", "12125550123"),
        ("1 212 555 0123", "US", "12125550123"),
        ("0049 30 1234567", "GB", "49301234567"),
        ("+7 912 345-67-89", "GB", "79123456789"),
    ],
)
def test_national_formats_with_a_default_country(written: str, country: str, expected: str) -> None:
    assert normalize_phone(written, country) == expected


@pytest.mark.parametrize(
    "written",
    [
        "+1 555 010 0001",  # flowrun's own examples: area code 555 is never assigned
        "+1 212 555 0123",  # 555-0100 to 555-0199: reserved for fiction in North America
        "+44 7700 900101",  # Ofcom's drama numbers
        "+44 1632 960001",
        "+7 912 345-67-89",
        "+49 30 1234567",
    ],
)
def test_example_and_valid_numbers_raise_no_doubt(written: str) -> None:
    assert parse_phone(written).doubt is None


def test_a_possible_number_not_in_use_is_a_doubt_not_an_error() -> None:
    phone = parse_phone("+1 212 055 0123")
    assert phone.digits == "12120550123"
    assert phone.doubt == (
        "phone '+1 212 055 0123' is not a number in use in North America (+1); check it"
    )


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("07911 123456", "phone '07911 123456' has no country code (it starts with 0)"),
        ("+1 555 CALL NOW", "'+1 555 CALL NOW' is not a phone number"),
        ("+1 555", "phone '+1 555' is too short for a number in North America (+1)"),
        ("+1234567890123456", "phone '+1234567890123456' is too long for a number in North"),
        ("+44 7700 900 1011", "phone '+44 7700 900 1011' is too long for a number in the United"),
        ("+44 7700 9001", "phone '+44 7700 9001' is too short for a number in the United King"),
        ("+999 123 4567", "phone '+999 123 4567' does not start with a country code"),
        ("+49 1511 234567890123", "phone '+49 1511 234567890123' is too long for a number in Ger"),
        ("", "'' is not a phone number"),
        ("+00 44 7911 123456", "phone '+00 44 7911 123456': a country code never starts with 0"),
        ("+٣٣٣٣٣٣٣٣", "is not a phone number"),
    ],
)
def test_bad_phones(written: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        normalize_phone(written)


def test_a_national_number_of_another_country_says_to_write_its_country_code() -> None:
    with pytest.raises(ValueError, match=re.escape("phone '4915112345678' is too long for a")):
        normalize_phone("4915112345678", "GB")


def test_a_national_number_without_a_default_country_names_the_setting() -> None:
    with pytest.raises(ValueError, match=re.escape("or set settings.default_country")):
        normalize_phone("07911 123456")


# The fast path (runner/recipients.py `_international`) must read every number as
# phonenumbers.parse does: any digits after a country code, trunk prefixes included.
COUNTRY_CODES = sorted(COUNTRY_CODE_TO_REGION_CODE)


@given(
    st.sampled_from(COUNTRY_CODES),
    st.text(alphabet="0123456789", min_size=1, max_size=16),
)
def test_the_fast_path_reads_numbers_as_phonenumbers_does(code: int, rest: str) -> None:
    written = f"+{code} {rest}"
    try:
        expected: str | None = phonenumbers.format_number(
            phonenumbers.parse(written), phonenumbers.PhoneNumberFormat.E164
        )[1:]
        reason = phonenumbers.is_possible_number_with_reason(phonenumbers.parse(written))
        # a local number (no area code) is possible to libphonenumber, not to WhatsApp
        possible = reason == phonenumbers.ValidationResult.IS_POSSIBLE
    except phonenumbers.NumberParseException:
        expected, possible = None, False
    try:
        got: str | None = normalize_phone(written)
    except ValueError:
        got = None
    assert got == (expected if possible else None)


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


def csv_lines(err: str) -> list[str]:
    """What flowrun said about the CSV (not the flow's other warnings: token, window)."""
    return [line for line in err.splitlines() if line.startswith("people.csv:")]


def test_duplicates_are_found_after_normalising(run_flowrun: RunFlow) -> None:
    """The issue's case: `+44 (0)7700 900101` once became 4407700900101, so the same person
    written as 447700900101 got everything twice."""
    csv_text = "phone,name\n+44 (0)7700 900101,A\n447700900101,B\n"
    result = run_flowrun(CSV_FLOW, command="validate", files={"people.csv": csv_text})
    assert result.code == 0, result.err
    assert "1 recipients" in result.out
    assert csv_lines(result.err) == [
        "people.csv:3:1: warning: phone 447700900101 is listed again; it gets its messages once"
    ]


GB_FLOW = HEADER + (
    "settings: {default_country: GB}\n"
    "recipients: {csv: people.csv}\n"
    "messages:\n  - text: {body: 'Hi {{ recipient.name }}'}\n"
)


def test_a_default_country_reads_national_formats(run_flowrun: RunFlow) -> None:
    csv_text = "phone,name\n07700 900456,A\n+49 30 1234567,B\n"
    result = run_flowrun(GB_FLOW, "--jsonl", command="plan", files={"people.csv": csv_text})
    assert result.code == 0, result.err
    bodies = [json.loads(line) for line in result.out.splitlines()]
    assert texts(bodies) == [("447700900456", "Hi A"), ("49301234567", "Hi B")]


def test_a_default_country_for_people_written_in_the_flow(run_flowrun: RunFlow) -> None:
    flow = HEADER + (
        "settings: {default_country: de}\n"
        "recipients:\n  - {phone: 030 1234567, name: A}\n"
        "messages:\n  - text: {body: 'Hi {{ recipient.name }}'}\n"
    )
    result = run_flowrun(flow, "--jsonl", command="plan")
    assert result.code == 0, result.err
    assert texts([json.loads(line) for line in result.out.splitlines()]) == [
        ("49301234567", "Hi A")
    ]


@pytest.mark.parametrize(
    ("country", "message"),
    [
        (
            "UK",
            "flow.yaml:5:29: 'UK' is not a country code; the United Kingdom's is GB",
        ),
        (
            "Germany",
            "flow.yaml:5:29: 'Germany' is not a country code;"
            " write the two letters of ISO 3166, e.g. GB, DE, US",
        ),
    ],
)
def test_a_wrong_default_country(run_flowrun: RunFlow, country: str, message: str) -> None:
    result = run_flowrun(GB_FLOW.replace("GB", country), files={"people.csv": "phone\n"})
    assert result.code == 2
    assert result.err_lines[0] == message


def test_impossible_numbers_are_located_errors(run_flowrun: RunFlow) -> None:
    csv_text = "phone,name\n07700 9004,A\n+999 1234567,B\n+44 7700 900457,C\n"
    result = run_flowrun(GB_FLOW, files={"people.csv": csv_text})
    assert result.code == 2
    assert result.err_lines == [
        "people.csv:2:1: phone '07700 9004' is too short for a number in the United Kingdom (+44)",
        "people.csv:3:1: phone '+999 1234567' does not start with a country code",
    ]


def test_numbers_not_in_use_are_warnings_summarised(run_flowrun: RunFlow) -> None:
    """Possible but in no range in use: sent (a warning, the list may know better than the
    data), the first three named with their row, the rest counted in one line."""
    rows = "".join(f"+1 212 055 {i:04d},P{i}\n" for i in range(10))
    csv_text = "phone,name\n+1 555 010 0001,Example\n+44 7700 900101,Drama\n" + rows
    result = run_flowrun(CSV_FLOW, files={"people.csv": csv_text})
    assert result.code == 0, result.err
    assert "12 recipients" in result.out
    assert csv_lines(result.err) == [
        f"people.csv:{line}:1: warning: phone '+1 212 055 {i:04d}' is not a number in use in"
        " North America (+1); check it"
        for i, line in zip(range(3), range(4, 7), strict=True)
    ] + [
        "people.csv:7:1: warning: more phones are not numbers in use in their country"
        " ('+1 212 055 0003') (and 6 more like it)"
    ]


@given(
    st.sampled_from(COUNTRY_CODES),
    st.text(alphabet="0123456789", min_size=2, max_size=14),
)
def test_validity_as_phonenumbers_says(code: int, rest: str) -> None:
    number = phonenumbers.PhoneNumber(
        country_code=code,
        national_number=int(rest),
        italian_leading_zero=rest.startswith("0") or None,
        number_of_leading_zeros=(len(rest) - len(rest.lstrip("0"))) or None
        if rest.startswith("0")
        else None,
    )
    assert is_valid(number) == phonenumbers.is_valid_number(number)


@pytest.mark.parametrize("code", COUNTRY_CODES)
def test_validity_of_each_countrys_example_numbers(code: int) -> None:
    """Random digits are mostly invalid: each region's own example numbers are valid."""
    for region in COUNTRY_CODE_TO_REGION_CODE[code]:
        for kind in phonenumbers.PhoneNumberType.values():
            if region == "001":
                example = phonenumbers.example_number_for_non_geo_entity(code)
            else:
                example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                assert is_valid(example) == phonenumbers.is_valid_number(example), example
