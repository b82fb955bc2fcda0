"""Durations as people write them in a flow: `30m`, `2h`, `2d`, `1w`, `90s`, and combinations
such as `1d12h`.

A flow is read by people who are not programmers: one number and a unit letter is what
calendars and campaign tools show (Braze, Customer.io), so that is the whole syntax. ISO 8601
(`P2D`) is not offered: it reads as code.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PATTERN = r"^\s*(\d+\s*[smhdw]\s*)+$"
_PART = re.compile(r"(\d+)\s*([smhdw])")
LONGEST = timedelta(days=366)  # a wait of more than a year is a typo, not a campaign


def parse(text: str) -> timedelta:
    """`2d` → 2 days; raises ValueError with a one-line reason (said to the flow's author)."""
    if not re.fullmatch(PATTERN, text):
        raise ValueError(
            f"'{text}' is not a duration: write a number and a unit, e.g. 30m, 2h, 2d or 1w"
        )
    seconds = sum(int(n) * UNITS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration '{text}' is zero; give a positive one, e.g. 1h")
    duration = timedelta(seconds=seconds)
    if duration > LONGEST:
        raise ValueError(f"duration '{text}' is longer than a year; is it a typo?")
    return duration


def _checked(text: str) -> str:
    parse(text)
    return text


Duration = Annotated[
    str,
    AfterValidator(_checked),
    Field(
        json_schema_extra={"pattern": PATTERN},
        description="A duration: a number and a unit (s, m, h, d, w), e.g. 30m, 2h, 2d, 1w.",
    ),
]


def said(duration: timedelta) -> str:
    """A duration as a person says it: `7 days`, `36 hours`, `90 minutes`."""
    seconds = int(duration.total_seconds())
    for unit, size in (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
