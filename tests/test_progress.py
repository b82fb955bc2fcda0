"""runner/progress.py on its own: a live line on a terminal (a real pseudo-terminal here), a
plain line now and then in a log, and lines that are never overwritten."""

from __future__ import annotations

import os
import re
import select
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest

from runner.progress import Progress


@dataclass
class Counts:
    """What Progress reads of a run's summary."""

    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: int = 0
    blocked: int = 0
    already: int = 0


@pytest.fixture
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A pseudo-terminal: the stream Progress writes to, and the fd that reads what it wrote
    (raw: no newline translation, so the bytes are the ones written)."""
    reader, writer = os.openpty()
    tty.setraw(writer)
    with open(writer, "w", encoding="utf-8") as stream:
        yield stream, reader
    os.close(reader)


def written(reader: int, wait: float = 2.0) -> str:
    """What reached the terminal: waits up to `wait` for the first bytes (a pty hands them
    over asynchronously), then takes whatever follows at once."""
    out = b""
    while select.select([reader], [], [], wait)[0]:
        out += os.read(reader, 65536)
        wait = 0.05
    return out.decode()


def test_a_log_gets_a_plain_line_when_asked(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w", encoding="utf-8") as log:
        progress = Progress(10, log)
        progress.update(Counts())  # the first moments: nothing to show yet
        progress.update(Counts(failed=2), force=True)
        progress.line("flowrun: stopping")
        progress.close()  # no live line to end
    assert (tmp_path / "log").read_text("utf-8") == (
        "sent 0/10, failed 2, 0 msg/s\nflowrun: stopping\n"
    )


def test_a_log_is_written_every_5_seconds_at_most(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w", encoding="utf-8") as log:
        progress = Progress(10, log)
        progress.update(Counts(sent=1), force=True)
        for sent in range(2, 10):
            progress.update(Counts(sent=sent))  # within 5 s of the last: not shown
    assert (tmp_path / "log").read_text("utf-8").count("\n") == 1


def line_of(counts: Counts, total: int, tmp_path: Path) -> str:
    with (tmp_path / "log").open("w", encoding="utf-8") as log:
        Progress(total, log).update(counts, force=True)
    return (tmp_path / "log").read_text("utf-8")


def test_the_rate_and_what_is_left(tmp_path: Path) -> None:
    assert re.fullmatch(
        r"sent 3/10, failed 1, [\d,]+ msg/s, [\d,]+ s left\n", line_of(Counts(3, 1), 10, tmp_path)
    )


@pytest.mark.parametrize(
    "counts",
    [
        Counts(sent=10),
        Counts(sent=2, failed=1, uncertain=1, skipped=2, blocked=1, already=3),
    ],
)
def test_no_time_left_once_everything_is_settled(counts: Counts, tmp_path: Path) -> None:
    shown = line_of(counts, 10, tmp_path)
    due = 10 - counts.already  # (what was sent before is not due: named apart)
    before = rf" \({counts.already} sent before\)" if counts.already else ""
    assert re.fullmatch(
        rf"sent {counts.sent}/{due}, failed {counts.failed}, [\d,]+ msg/s{before}\n", shown
    )


def test_thousands_are_grouped(tmp_path: Path) -> None:
    assert line_of(Counts(failed=1500), 1_000_000, tmp_path) == (
        "sent 0/1,000,000, failed 1,500, 0 msg/s\n"
    )


def test_a_terminal_gets_one_line_rewritten_in_place(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    progress = Progress(10, stream)
    progress.update(Counts(failed=1), force=True)
    assert written(reader) == "\r\x1b[2Ksent 0/10, failed 1, 0 msg/s"
    progress.update(Counts(failed=2), force=True)
    assert written(reader) == "\r\x1b[2Ksent 0/10, failed 2, 0 msg/s"
    progress.line("flowrun: stopping")  # ends the live line first: nothing is overwritten
    assert written(reader) == "\nflowrun: stopping\n"
    progress.line("again")
    assert written(reader) == "again\n"
    progress.update(Counts(failed=3), force=True)
    progress.close()
    assert written(reader) == "\r\x1b[2Ksent 0/10, failed 3, 0 msg/s\n"
    progress.close()
    assert written(reader, wait=0.1) == ""


def test_a_terminal_is_updated_five_times_a_second_at_most(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    progress = Progress(10, stream)
    progress.update(Counts(), force=True)
    first = time.monotonic()
    assert written(reader)
    shown = ""
    while not shown:  # updates within 0.2 s of the last are not shown
        assert time.monotonic() - first < 10
        progress.update(Counts(failed=1))
        shown = written(reader, wait=0.01)
    assert time.monotonic() - first >= 0.2
    assert shown == "\r\x1b[2Ksent 0/10, failed 1, 0 msg/s"


def test_a_resumed_run_counts_what_is_due_and_says_what_was_sent_before(tmp_path: Path) -> None:
    """Issue 17: a resume of 20,000 with 9,286 sent before ended at '10,704/20,000 ... 0 s
    left'. The messages sent before are not due: they are named apart, and the count is of
    what this run has to send (the run learns them as it passes their recipients)."""
    assert re.fullmatch(
        r"sent 10,704/10,714, failed 0, [\d,]+ msg/s, [\d,]+ s left \(9,286 sent before\)\n",
        line_of(Counts(sent=10_704, already=9_286), 20_000, tmp_path),
    )
    assert re.fullmatch(
        r"sent 10,714/10,714, failed 0, [\d,]+ msg/s \(9,286 sent before\)\n",
        line_of(Counts(sent=10_714, already=9_286), 20_000, tmp_path),
    )


def test_a_run_over_part_of_the_recipients_counts_its_part() -> None:
    """--limit 10 of 100,000 recipients showed 'sent 20/200,000'; --only one recipient too."""
    assert Progress.of_run(200_000, 100_000, limit=10, only=None).total == 20
    assert Progress.of_run(200_000, 100_000, limit=None, only="15550100001").total == 2
    assert Progress.of_run(200_000, 100_000, limit=500_000, only=None).total == 200_000
    assert Progress.of_run(0, 0, limit=None, only=None).total == 0
