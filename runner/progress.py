"""What a run shows while it works: a live line on a terminal, a plain line now and then in a log.

Updated a few times a second at most, never per message: printing must not slow sending.

What it counts is what is due: `total` is every message the flow sends (the survey, before the
ledger is read), and the messages an earlier run sent are taken off it as the run learns them
(`already`), and named apart. Learned, not counted beforehand: only the run's pass knows which
of them the flow still sends (a step renamed, a recipient gone from the CSV, a `when` now
false, --only and --limit), and it learns them at once: a recipient whose messages were all
sent costs no request and no wait, so the executor passes them before the first line shows.
Recipients another run serves at the same time (a shared PostgreSQL ledger) are taken off too,
at the flow's average number of messages per recipient.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, recipients: int = 0) -> None:
        self.total = total
        self.per_recipient = total / recipients if recipients else 0.0
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = 0.2 if self.live else 5.0
        self.started = time.monotonic()
        self._last = self.started  # nothing to show in the first moments
        self._shown = False

    @classmethod
    def of_run(
        cls, messages: int, recipients: int, *, limit: int | None, only: str | None
    ) -> Progress:
        """For a run over the survey's `messages` to `recipients`, or a part of them: --only
        serves one recipient, --limit N the first N (at the flow's average per recipient)."""
        serves = recipients
        if only is not None:
            serves = min(1, recipients)
        elif limit is not None:
            serves = min(limit, recipients)
        share = messages * serves / recipients if recipients else 0.0
        return cls(round(share), recipients=serves)

    def update(self, summary: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        done = summary.sent + summary.failed + summary.uncertain
        elapsed = max(now - self.started, 1e-6)
        rate = summary.sent / elapsed
        elsewhere = round(getattr(summary, "elsewhere", 0) * self.per_recipient)
        due = max(self.total - summary.already - elsewhere, summary.sent)
        left = max(due - done - summary.skipped - summary.blocked, 0)
        eta = f", {left / rate:,.0f} s left" if rate > 0 and left else ""
        before = f" ({summary.already:,} sent before)" if summary.already else ""
        if elsewhere:
            before += f" ({summary.elsewhere:,} recipients served by another run)"
        text = (
            f"sent {summary.sent:,}/{due:,}, failed {summary.failed:,}, "
            f"{rate:,.0f} msg/s{eta}{before}"
        )
        if self.live:
            self.stream.write(f"\r\x1b[2K{text}")
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """A message that must not be overwritten by the live line."""
        if self._shown:
            self.stream.write("\n")
            self._shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self._shown = False
