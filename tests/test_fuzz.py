"""Property: any input, however broken, gives a valid flow or located problems, never a crash."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.commands.checking import check
from runner.errors import FlowrunError
from tests.conftest import REPO

VALID = (REPO / "flows" / "onboarding.yaml").read_text("utf-8")
LOCATED = re.compile(r"^\S.*:\d+:\d+: ")  # a file name may itself hold a colon


def outcome(tmp: Path, text: str) -> None:
    """Load `text` as a flow beside the example assets; it must succeed or fail cleanly."""
    flow = tmp / "flow.yaml"
    flow.write_text(text, "utf-8")
    started = time.monotonic()
    try:
        check(str(flow))
    except FlowrunError as exc:
        lines = exc.lines()
        assert lines
        assert LOCATED.match(lines[0]), lines[0]
    assert time.monotonic() - started < 5


# CI runs a fixed set of examples (the same every run: a red CI is never luck);
# HYPOTHESIS_PROFILE=long explores new ones, deeper.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _copy_example(tmp_path: Path) -> Path:
    for name in ("contacts.csv",):
        (tmp_path / name).write_bytes((REPO / "flows" / name).read_bytes())
    assets = tmp_path / "assets"
    if not assets.exists():
        shutil.copytree(REPO / "flows" / "assets", assets)
    return tmp_path


@FUZZ
@given(st.text(max_size=400))
def test_random_text(tmp_path: Path, text: str) -> None:
    outcome(_copy_example(tmp_path), text)


YAMLISH = st.sampled_from(
    [
        ":",
        " ",
        "\n",
        "-",
        "[",
        "]",
        "{",
        "}",
        "'",
        '"',
        "&a",
        "*a",
        "#",
        "|",
        "{{",
        "}}",
        "\t",
        "messages",
        "image",
        "link",
        "file",
        "id",
        "~",
        "null",
        "1",
        "0x1",
        "!!str",
        "---",
    ]
)


@FUZZ
@given(st.data())
def test_mutated_example(tmp_path: Path, data: st.DataObject) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.lists(YAMLISH, max_size=3).map("".join))
        text = text[:position] + insert + text[position + cut :]
    outcome(_copy_example(tmp_path), text)


CSV_PIECES = st.sampled_from(
    [",", ";", "\t", "|", '"', '""', "\n", "\r\n", " ", "+1 555 010 0001", "0044 20", "phone",
     "Phone", "name", "Ольга", "🙂", "\ufeff", "", "x" * 50, "=cmd|' /C calc'!A0", "\x00"]
)  # fmt: skip


@FUZZ
@given(
    st.lists(CSV_PIECES, max_size=60), st.sampled_from(["phone,name\n", "", "\ufeffphone;name\r\n"])
)
def test_mutated_csv(tmp_path: Path, pieces: list[str], header: str) -> None:
    """Any CSV, however mangled, gives recipients or located problems: never a crash."""
    folder = _copy_example(tmp_path)
    (folder / "contacts.csv").write_text(header + "".join(pieces), "utf-8")
    outcome(folder, VALID)


def test_a_symlink_leading_outside_the_folder_is_outside(tmp_path: Path) -> None:
    folder = _copy_example(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-secret.jpg"
    secret.write_bytes((REPO / "flows" / "assets" / "welcome.jpg").read_bytes())
    (folder / "assets" / "welcome.jpg").unlink()
    (folder / "assets" / "welcome.jpg").symlink_to(secret)
    (folder / "flow.yaml").write_text(VALID, "utf-8")
    with pytest.raises(FlowrunError) as refused:
        check(str(folder / "flow.yaml"))
    assert "'assets/welcome.jpg' is outside the flow's folder" in refused.value.lines()[0]
