"""One clock for everything in flowrun that reasons about the calendar: waits (`after:`,
`expires:`), quiet hours, the 24-hour window, the ledger's time stamps, the sandbox's customers.

`FLOWRUN_NOW` moves it, for the whole program and the processes it starts (the ledger's writer,
the receiver): an offset from the real time (`+2d`, `+36h`, `-1h`), which keeps running, or a
fixed ISO 8601 time with its zone (`2026-12-03T09:00:00Z`). Tests use it to run "on day 2"
without sleeping; people use it to ask `flowrun plan` what would be due in two days. Pacing,
time-outs and back-offs keep the real monotonic clock: they are about this machine, not the
calendar.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from functools import cache

from . import durations
from .errors import FlowrunError

VARIABLE = "FLOWRUN_NOW"


class BadClock(FlowrunError):
    """FLOWRUN_NOW cannot be read: a usage error (exit 2), said once."""

    exit_code = 2


def now() -> datetime:
    """The time, aware, in UTC, as FLOWRUN_NOW says."""
    fixed, offset = _setting(os.environ.get(VARIABLE, ""))
    return fixed if fixed is not None else datetime.now(UTC) + offset


@cache
def _setting(text: str) -> tuple[datetime | None, timedelta]:
    text = text.strip()
    if not text:
        return None, timedelta()
    if text[0] in "+-":
        try:
            offset = durations.parse(text[1:])
        except ValueError as exc:
            raise BadClock(f"{VARIABLE}={text}: {exc}") from None
        return None, offset if text[0] == "+" else -offset
    try:
        fixed = datetime.fromisoformat(text)
    except ValueError:
        fixed = None
    if fixed is None or fixed.tzinfo is None:
        raise BadClock(
            f"{VARIABLE}={text}: write an offset (+2d, -1h) or a time with its zone"
            " (2026-12-03T09:00:00Z)"
        )
    return fixed.astimezone(UTC), timedelta()
