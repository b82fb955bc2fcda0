"""What flowrun tells people when something is wrong, and the exit codes scripts rely on.

Every expected failure is a `FlowrunError`: it knows its exit code and renders itself as lines a
person can act on, so the CLI has exactly one place that turns errors into output (the click and
pre-commit pattern). Problems in a flow are `FILE:LINE:COL: message` lines, 1-based as editors
count, so that editors and CI annotate the offending line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

EXIT_OK = 0
EXIT_FAILED = 1  # some messages failed or are uncertain
EXIT_INVALID = 2  # invalid flow or usage: nothing was sent
EXIT_BUG = 3  # flowrun itself failed: a bug to report
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM, as shells report 128 + SIGINT

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a file, 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in a flow, at one place."""

    location: Location
    message: str
    hint: str | None = None
    severity: Severity = "error"
    # Which recipient it happened for: shown, but not part of the problem's identity, so the
    # same mistake for 100,000 recipients is one problem with a count.
    detail: str | None = field(default=None, compare=False, hash=False)

    def format(self, repeats: int = 0) -> str:
        label = "warning: " if self.severity == "warning" else ""
        line = f"{self.location}: {label}{self.message}"
        if self.detail:
            line += f" ({self.detail})"
        if repeats:
            line += f" (and {repeats:,} more like it)"
        if self.hint:
            line += f"\n  hint: {self.hint}"
        return line


class Problems:
    """Collects the problems of one flow, once each and bounded.

    A template error in a 100,000-row CSV is the same mistake 100,000 times: it is shown once
    with a count, and at most `limit` distinct problems are kept, so memory stays flat however
    broken the input is.
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._counts: dict[Problem, int] = {}
        self.dropped: dict[Severity, int] = {"error": 0, "warning": 0}

    def add(self, problem: Problem) -> None:
        if problem in self._counts:
            self._counts[problem] += 1
        elif len(self._counts) < self.limit:
            self._counts[problem] = 0
        else:
            self.dropped[problem.severity] += 1

    def extend(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            self.add(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self._counts if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self._counts if p.severity == "warning"]

    def has_errors(self) -> bool:
        return bool(self.errors) or self.dropped["error"] > 0

    def lines(self, severity: Severity | None = None) -> list[str]:
        """The problems sorted by place, as printed."""
        chosen = [p for p in self._counts if severity is None or p.severity == severity]
        chosen.sort(key=lambda p: (p.location.file, p.location.line, p.location.col))
        out = [p.format(self._counts[p]) for p in chosen]
        for kind in ("error", "warning"):
            if self.dropped[kind] and severity in (None, kind):
                out.append(f"... and {self.dropped[kind]:,} more {kind}s not shown")
        return out


class FlowrunError(Exception):
    """An expected failure: printed as its lines, never as a traceback."""

    exit_code = EXIT_INVALID

    def lines(self) -> list[str]:
        return [str(self)]


class FlowInvalid(FlowrunError):
    """The flow (or a file it names) breaks the rules; nothing was sent."""

    def __init__(self, problems: Problems) -> None:
        super().__init__(f"{len(problems.errors)} problem(s)")
        self.problems = problems

    def lines(self) -> list[str]:
        return self.problems.lines("error")  # warnings are printed as they are found


def single_problem(location: Location, message: str, hint: str | None = None) -> FlowInvalid:
    """A `FlowInvalid` for the common case of one problem that stops loading at once."""
    problems = Problems()
    problems.add(Problem(location, message, hint))
    return FlowInvalid(problems)
