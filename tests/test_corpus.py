"""The bad-input corpus: broken flows as people really write them, each answered with exit 2
and the exact located line its first comment expects, never a traceback, within two seconds.

tests/corpus/NAME.yaml starts with `# expect: LINE` where FLOW stands for the file's own name;
CSV files it names are in tests/corpus/csv/. The largest attacks (a 10,000-level nesting, an
alias bomb, a 50 MB line) are made here and run as processes with a memory ceiling.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import cli

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(CORPUS.glob("*.yaml"))


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_each_broken_flow_is_one_located_line(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    monkeypatch.delenv("WA_TOKEN", raising=False)
    first = case.read_bytes().split(b"\n", 1)[0].decode()  # the rest may not be text
    assert first.startswith("# expect: ")
    expected = first.removeprefix("# expect: ").replace("FLOW", case.name, 1)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["validate", case.name])
    # a bound against hangs, not a speed test (speed lives in bench/): the render budget is
    # 1 s, and a shared machine may be slow
    assert time.monotonic() - started < 20
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if "warning:" not in line]
    assert lines[0] == expected
    assert "Traceback" not in result.stderr


# a billion laughs: each level ten times the one before
BOMB = b"".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode()
    for i in range(8)
)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1024 * 1024 * 1024, 1024 * 1024 * 1024))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "deep",
            b"version: 1\nvars: " + b"[" * 10_000 + b"\n",
            "deep.yaml:2:70: nested deeper than 64 levels",
        ),
        (
            "aliases",
            b"version: 1\nvars:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + BOMB,
            "aliases.yaml:7:38: aliases expand to more than 100,000 values",
        ),
        (
            "long-line",
            b"version: 1\nname: " + b"x" * (50 * 1024 * 1024) + b"\n",
            "long-line.yaml:1:1: file is larger than 5 MB",
        ),
    ],
)
def test_attacks_are_refused_fast_in_bounded_memory(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    (tmp_path / f"{name}.yaml").write_bytes(content)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", f"{name}.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limited,  # a 1 GB address-space ceiling: a bomb would die, not pass
        check=False,
    )
    assert time.monotonic() - started < 25  # against hangs (the subprocess timeout is 30 s)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected)
    assert "Traceback" not in result.stderr
