"""runner/yamldoc.py on its own: YAML 1.2 values, where each part was written, and the limits.

Fast unit tests (no flow, no CLI): every problem is asserted as the exact line a person sees.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from runner.errors import FlowInvalid
from runner.yamldoc import MAX_BYTES, decode, parse, read_text


def value(text: str) -> Any:
    """The value of `a:` in a one-line document."""
    return parse(f"a: {text}\n", "f.yaml").data["a"]


def problems(text: str) -> list[str]:
    with pytest.raises(FlowInvalid) as caught:
        parse(text, "f.yaml")
    return caught.value.lines()


def read_problems(raw: bytes) -> list[str]:
    with pytest.raises(FlowInvalid) as caught:
        decode(raw, "f.yaml")
    return caught.value.lines()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        # YAML 1.2 core schema: only true/false are booleans, no sexagesimals or dates
        ("no", "no"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("1:20", "1:20"),
        ("2001-12-14", "2001-12-14"),
        ("~", None),
        ("null", None),
        ("", None),
        ("0", 0),
        ("-0", 0),
        ("+1", 1),
        ("-12", -12),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("0.5", 0.5),
        ("1e3", 1000.0),
        ("-.5", -0.5),
        ("1e", "1e"),
        # quoted or tagged as text: text
        ("'12'", "12"),
        ('"true"', "true"),
        ("!!str 12", "12"),
        ("! 12", "12"),
    ],
)
def test_scalars_are_read_as_yaml_1_2(written: str, expected: Any) -> None:
    assert value(written) == expected
    assert type(value(written)) is type(expected)


def test_infinities_and_nan() -> None:
    assert value(".inf") == math.inf
    assert value("-.INF") == -math.inf
    assert math.isnan(value(".NaN"))


@pytest.mark.parametrize(
    "written",
    ["0791", "07911123456", "+0791", "-01", "00", "08", "012_3", "0_1"],
)
def test_leading_zero_integers_stay_text(written: str) -> None:
    assert value(written) == written


@pytest.mark.parametrize("written", ["09.30", "01.5", "007.5", "-01.5", "00.5", "01e3"])
def test_leading_zero_decimals_stay_text(written: str) -> None:
    """A time like 09.30 or a code like 01.5 is what a person wrote; as a float it would
    render as 9.3 and 1.5 (the module's rule: numerals with a leading zero stay text)."""
    assert value(written) == written


def test_keys_are_the_text_written() -> None:
    data = parse("1: a\ntrue: b\n~: c\n0791: d\n'x': e\n", "f.yaml").data
    assert data == {"1": "a", "true": "b", "~": "c", "0791": "d", "x": "e"}


def test_nested_data_and_a_scalar_document() -> None:
    text = "a:\n  - {b: 1, c: [x, 'y']}\n  - z\nd: {}\ne: []\n"
    assert parse(text, "f.yaml").data == {"a": [{"b": 1, "c": ["x", "y"]}, "z"], "d": {}, "e": []}
    assert parse("hello\n", "f.yaml").data == "hello"
    assert parse("", "f.yaml").data is None
    assert parse("# only a comment\n", "f.yaml").data is None
    assert parse("---\na: 1\n...\n", "f.yaml").data == {"a": 1}
    assert parse("a: 1\r\nb: 2\r\n", "f.yaml").data == {"a": 1, "b": 2}


def test_aliases_and_merge_keys() -> None:
    text = (
        "base: &base {k: 1, j: 2}\n"
        "other: &other {k: 5, m: 6}\n"
        "copy: *base\n"
        "x:\n  <<: *base\n  k: 3\n"  # explicit keys win over merged ones
        "y:\n  <<: [*base, *other]\n"  # of several merged mappings, the first wins
    )
    data = parse(text, "f.yaml").data
    assert data["copy"] == {"k": 1, "j": 2}
    assert data["x"] == {"k": 3, "j": 2}
    assert data["y"] == {"k": 1, "j": 2, "m": 6}


LOCATED = """\
name: onboarding
api:
  kind: cloud
messages:
  - text: {body: hi}
  - image:
      link: https://x.example/a.jpg
copy: &c {k: 1}
again: *c
"""


@pytest.mark.parametrize(
    ("path", "as_value", "as_key"),
    [
        (("name",), "f.yaml:1:7", "f.yaml:1:1"),
        (("api",), "f.yaml:3:3", "f.yaml:2:1"),
        (("api", "kind"), "f.yaml:3:9", "f.yaml:3:3"),
        (("messages", 0), "f.yaml:5:5", "f.yaml:5:5"),
        (("messages", 0, "text", "body"), "f.yaml:5:18", "f.yaml:5:12"),
        (("messages", 1, "image", "link"), "f.yaml:7:13", "f.yaml:7:7"),
        # not written: the nearest ancestor that was
        (("api", "token"), "f.yaml:3:3", "f.yaml:2:1"),
        (("messages", 7, "text"), "f.yaml:5:3", "f.yaml:4:1"),
        # inside an alias: where the alias stands
        (("again", "k"), "f.yaml:9:8", "f.yaml:9:1"),
        ((), "f.yaml:1:1", "f.yaml:1:1"),
    ],
)
def test_paths_are_located_at_their_value_or_key(
    path: tuple[str | int, ...], as_value: str, as_key: str
) -> None:
    document = parse(LOCATED, "f.yaml")
    assert str(document.locate(path)) == as_value
    assert str(document.locate(path, key=True)) == as_key


def test_an_empty_value_is_located_at_its_key() -> None:
    """`text:` with nothing after it: the parser marks an empty value where the next token
    starts (the next line's key), so an error about it would point at an innocent line."""
    document = parse("messages:\n  - text:\n    name: greet\nlast:\n", "f.yaml")
    assert document.data == {"messages": [{"text": None, "name": "greet"}], "last": None}
    assert str(document.locate(("messages", 0, "text"))) == "f.yaml:2:5"
    assert str(document.locate(("last",))) == "f.yaml:4:1"
    # an empty quoted value has a place of its own
    assert str(parse("a: ''\n", "f.yaml").locate(("a",))) == "f.yaml:1:4"


def test_an_empty_document_locates_everything_at_its_start() -> None:
    assert str(parse("", "f.yaml").locate(("api", "kind"))) == "f.yaml:1:1"


def test_every_duplicate_key_is_reported() -> None:
    hint = "\n  hint: each key may appear once in a mapping; remove or rename one"
    assert problems("a: 1\nb: 2\na: 3\nm:\n  - {n: 1, n: 2}\na: 4\n") == [
        "f.yaml:3:1: duplicate key 'a' (first written on line 1)" + hint,
        "f.yaml:5:12: duplicate key 'n' (first written on line 5)" + hint,
        "f.yaml:6:1: duplicate key 'a' (first written on line 1)" + hint,
    ]
    # the same key in different mappings is no duplicate
    assert parse("a: {k: 1}\nb: {k: 2}\n", "f.yaml").data == {"a": {"k": 1}, "b": {"k": 2}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: 1\n---\nb: 2\n",
            "f.yaml:2:1: a flow file holds one YAML document, but a second one starts here\n"
            "  hint: remove the '---' line, or split the flows into separate files",
        ),
        ("[a]: 1\n", "f.yaml:1:1: a key must be a plain name, not a list or mapping"),
        ("x: &x [1]\n*x : 2\n", "f.yaml:2:1: a key must be a plain name"),
        ("a: *nope\n", "f.yaml:1:4: unknown alias '*nope'"),
        (
            "a: !!int '5'\n",
            "f.yaml:1:4: YAML tags such as !!int are not supported\n"
            "  hint: write the plain value; quote it to keep it as text",
        ),
        (
            "a: !!python/object:os.system x\n",
            "f.yaml:1:4: YAML tags such as !!python/object:os.system are not supported\n"
            "  hint: write the plain value; quote it to keep it as text",
        ),
        (
            "a: !custom x\n",
            "f.yaml:1:4: YAML tags such as !custom are not supported\n"
            "  hint: write the plain value; quote it to keep it as text",
        ),
        (
            "a:\n\tb: 1\n",
            "f.yaml:2:1: YAML syntax: found character '\\t' that cannot start any token\n"
            "  hint: YAML indents with spaces only; replace the tab with spaces",
        ),
        (
            "a: 'open\n",
            "f.yaml:2:1: YAML syntax: found unexpected end of stream (while scanning a quoted"
            " scalar that starts at line 1, column 4)\n"
            "  hint: a quote or bracket was opened and never closed",
        ),
        (
            "a: [1, 2\n",
            "f.yaml:2:1: YAML syntax: expected ',' or ']', but got '<stream end>' (while parsing"
            " a flow sequence that starts at line 1, column 4)",
        ),
        (
            "a: b: c\n",
            "f.yaml:1:5: YAML syntax: mapping values are not allowed here\n"
            "  hint: a value that contains ': ' must be quoted, e.g. caption: \"Note: hello\"",
        ),
    ],
)
def test_problems_are_one_located_line(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_nesting_is_bounded() -> None:
    assert parse("[" * 64 + "]" * 64, "f.yaml").data is not None
    assert problems("a: " + "[" * 70) == ["f.yaml:1:67: nested deeper than 64 levels"]


def test_reusing_anchors_is_fine_but_an_alias_bomb_is_refused() -> None:
    reuse = "a: &a {k: [1, 2, 3]}\n" + "".join(f"b{i}: *a\n" for i in range(100))
    assert len(parse(reuse, "f.yaml").data) == 101
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
    assert problems("\n".join(levels) + "\n") == [
        "f.yaml:5:45: aliases expand to more than 100,000 values\n"
        "  hint: this looks like an alias bomb; use fewer nested aliases"
    ]


def test_decode_accepts_utf8_with_or_without_a_bom() -> None:
    assert decode("a: café\n".encode(), "f.yaml") == "a: café\n"
    assert decode(b"\xef\xbb\xbfa: 1\n", "f.yaml") == "a: 1\n"


def test_decode_locates_the_first_byte_that_is_not_utf8() -> None:
    hint = "\n  hint: save the file as UTF-8 in your editor"
    assert read_problems(b"version: 1\nname: Jos\xe9\n") == [
        "f.yaml:2:10: not UTF-8 text (byte 0xe9)" + hint
    ]


def test_decode_counts_columns_in_characters_as_editors_do() -> None:
    # "a: café" is 7 characters (8 bytes): the bad byte is the 8th character
    assert read_problems("a: café".encode() + b"\xff\n")[0].startswith(
        "f.yaml:1:8: not UTF-8 text (byte 0xff)"
    )


def test_decode_locates_the_bad_byte_after_a_bom() -> None:
    """A file saved by a Windows editor starts with a BOM; the bad byte's place and value
    are still the ones in the file (the BOM is no column)."""
    assert read_problems(b"\xef\xbb\xbfa: b\xff\n")[0].startswith(
        "f.yaml:1:5: not UTF-8 text (byte 0xff)"
    )
    assert read_problems(b"\xef\xbb\xbfx: 1\na: b\xe9\n")[0].startswith(
        "f.yaml:2:5: not UTF-8 text (byte 0xe9)"
    )


def test_decode_refuses_binary_data_at_its_line() -> None:
    assert read_problems(b"a: 1\nb: \x00\x01\n") == ["f.yaml:2:1: binary data, not a text file"]


def test_read_text_reads_a_file(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_bytes(b"\xef\xbb\xbfversion: 1\n")
    assert read_text(tmp_path / "flow.yaml", "flow.yaml") == "version: 1\n"


def test_read_text_problems(tmp_path: Path) -> None:
    def problem(path: Path) -> list[str]:
        with pytest.raises(FlowInvalid) as caught:
            read_text(path, "shown.yaml")
        return caught.value.lines()

    assert problem(tmp_path / "missing.yaml") == ["shown.yaml:1:1: file not found"]
    assert problem(tmp_path) == ["shown.yaml:1:1: this is a folder, not a file"]
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES + 1))
    assert problem(big) == [
        "shown.yaml:1:1: file is larger than 5 MB\n"
        "  hint: keep long recipient lists in a CSV file (recipients: {csv: contacts.csv})"
    ]
    big.write_bytes(b"#" * MAX_BYTES)  # the limit itself is fine
    assert len(read_text(big, "shown.yaml")) == MAX_BYTES
