"""Quiet hours: when a message may reach a recipient, by the clock on *their* wall.

A flow says `settings.send_between: "09:00-20:00"` (a window may cross midnight, "22:00-06:00")
and `settings.timezone` (an IANA name, default UTC). This module reads both, finds the time
zones a recipient may be in, and answers one question for the executor and `plan`: the earliest
moment, from now on, when the window is open for that recipient (`next_open`).

Named for the feature a flow's author sees, not "localtime": flowrun must never use the
*machine's* local time (`time.localtime`, the `localtime` zone file); every time here is aware,
and "now" comes from runner/clock.py.

Where a recipient is (`recipient_zones`), first found wins:
1. their `timezone` column (checked when recipients are read: runner/recipients.py);
2. their phone number, with Google's libphonenumber data (`phonenumbers`): one zone for most
   numbers, several where a country or a mobile range spans several (the US, Russia, Brazil,
   Australia, Indonesia, ...);
3. the flow's `settings.timezone`, else UTC.

Several zones: the message goes only when the window is open in *every* zone the number may be
in, so nobody gets it at 3 a.m. ("never at 3 a.m." is the promise people expect of quiet hours;
a message a few hours later than possible costs little, one at night costs a customer). A US
number listed in Eastern and Pacific time with 09:00-20:00 gets messages from 12:00 to 20:00
Eastern. When the windows never meet (no moment in the next two days is open in all: a Russian
mobile number may be anywhere from UTC+2 to UTC+12, and 09:00-18:00 is never open in all of
those at once), one zone decides: `settings.timezone` if it is one of them (the author said
where their audience lives), else the zone listed first (libphonenumber lists them in
alphabetical order: arbitrary, but the same on every run and machine; the author can choose
with settings.timezone or a `timezone` column).

Open means: the recipient's clock shows a time inside the window (start included, end not).
So across daylight-saving changes nobody gets a message while their clock shows a quiet hour:
a start their clock skips (02:30 on Europe/Berlin's last Sunday of March) opens the window at
the first time it shows after it (03:00); in the hour that comes twice (last Sunday of
October), a window ending at 02:30 opens again for the second 02:00-02:30, which is inside it.
"""

from __future__ import annotations

import difflib
import math
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import cache, lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

WINDOW_PATTERN = r"^\s*(\d{1,2}):(\d{2})\s*[-–]\s*(\d{1,2}):(\d{2})\s*$"
_WINDOW = re.compile(WINDOW_PATTERN)
# Zone files that are not places: the machine's own zone, and tzdata's placeholders.
NOT_PLACES = frozenset({"localtime", "posixrules", "Factory", "Etc/Unknown"})
# Windows that never meet in this long do not meet at all: a day, and a day more for a
# daylight-saving change in between.
OVERLAP_HORIZON = timedelta(days=2)
_DAY = timedelta(days=1)

Source = Literal["column", "phone", "flow"]


@dataclass(frozen=True, slots=True)
class Window:
    """Local start and end times; `start > end` crosses midnight (22:00-06:00)."""

    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def shows(self, clock: time) -> bool:
        """Whether a clock showing `clock` is inside the window (start included, end not)."""
        if self.crosses_midnight:
            return clock >= self.start or clock < self.end
        return self.start <= clock < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """`"09:00-20:00"` → Window; ValueError with a one-line reason and its fix."""
    if not text.strip():
        raise ValueError(
            "send_between is empty: write a window such as 09:00-20:00, or remove it to send"
            " at any hour"
        )
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(
            f"'{text}' is not a time window: write it as 09:00-20:00 (24-hour clock, the"
            " recipient's local time)"
        )
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    if end_h == 24 and end_m == 0:
        end_h = 0  # "20:00-24:00" is how some people write "until midnight"
    if max(start_h, end_h) > 23 or max(start_m, end_m) > 59:
        raise ValueError(
            f"'{text}' is not a time window: hours go from 00 to 23 and minutes from 00 to 59,"
            " e.g. 09:00-20:00"
        )
    window = Window(time(start_h, start_m), time(end_h, end_m))
    if window.start == window.end:
        raise ValueError(
            f"'{text}' is an empty window: give two different times, e.g. 09:00-20:00 (to send"
            " at any hour, remove send_between)"
        )
    return window


def check_send_between(text: str) -> str:
    """The models' validator for settings.send_between: the text, unchanged, if it reads."""
    parse_window(text)
    return text


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError naming the closest real one."""
    found = _zone_or_complaint(name)
    if isinstance(found, str):
        raise ValueError(found)
    return found


@lru_cache(maxsize=1024)
def _zone_or_complaint(name: str) -> ZoneInfo | str:
    """Cached, the complaint too: a CSV repeats a handful of names over many rows, and a
    misspelt one must not cost a search for the closest name (milliseconds) on every row."""
    if name not in NOT_PLACES:
        try:
            return ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return _unknown_zone(name)


def _unknown_zone(name: str) -> str:
    shown = name if len(name) <= 60 else name[:57] + "..."
    message = f"'{shown}' is not a time zone: use an IANA name like Europe/Berlin"
    names = _zone_names()
    by_case = {known.lower(): known for known in names}
    guess = by_case.get(name.strip().lower()) or next(
        iter(difflib.get_close_matches(name, names, n=1, cutoff=0.6)), None
    )
    return f"{message} (did you mean {guess}?)" if guess else message


@cache
def _zone_names() -> list[str]:
    """The zones this machine knows (25 ms to list: only when a name is wrong)."""
    return sorted(zoneinfo.available_timezones() - NOT_PLACES)


def check_timezone(text: str) -> str:
    """The models' validator for settings.timezone: the text, unchanged, if it is a zone."""
    zone(text)
    return text


@lru_cache(maxsize=4096)
def _zones_named(names: tuple[str, ...]) -> tuple[ZoneInfo, ...]:
    """libphonenumber's answer as zones, once per distinct answer (there are a few hundred);
    names this machine's tz database lacks are left out."""
    found = []
    for name in names:
        try:
            found.append(zone(name))
        except ValueError:
            continue
    return tuple(found)


def phone_zones(phone: str) -> tuple[ZoneInfo, ...]:
    """The zones a number (digits with country code, as runner/recipients.py keeps it) may be
    in; () when libphonenumber cannot place it (an unknown range: `Etc/Unknown`).

    About 22 us a number (bench/quiet_hours_bench.py), nearly all of it libphonenumber's parse
    and number-type check: the zones depend on whether the number is valid, fixed or mobile,
    that is on all its digits. A cache keyed on all but the last four digits costs 5.6 us on a
    first pass over 100,000 numbers, but gives other answers than the library for 14 of 859
    ranges sampled across all regions (Bonaire, Micronesia, ...), so there is none: resolve a
    recipient once and keep the answer. Imported here: loading libphonenumber's data takes
    33 ms that commands without quiet hours should not pay."""
    import phonenumbers
    from phonenumbers import timezone as phone_timezones

    try:
        number = phonenumbers.parse("+" + phone)
    except phonenumbers.NumberParseException:
        return ()
    return _zones_named(tuple(phone_timezones.time_zones_for_number(number)))


@dataclass(frozen=True, slots=True)
class LocalZones:
    """Where a recipient may be: every zone to respect, the one that decides when their windows
    never meet, and how it was found (for `plan` and messages)."""

    zones: tuple[ZoneInfo, ...]
    fallback: ZoneInfo
    source: Source

    @classmethod
    def single(cls, where: ZoneInfo, source: Source = "flow") -> LocalZones:
        return cls((where,), where, source)


def recipient_zones(phone: str, column: ZoneInfo | None, flow_zone: ZoneInfo | None) -> LocalZones:
    """Where a recipient is: their `timezone` column, else their number, else the flow's
    settings.timezone, else UTC (the rule and its reasons: this module's docstring)."""
    if column is not None:
        return LocalZones.single(column, "column")
    default = flow_zone or ZoneInfo("UTC")
    zones = phone_zones(phone)
    if not zones:
        return LocalZones.single(default, "flow")
    fallback = next((known for known in zones if known.key == default.key), zones[0])
    return LocalZones(zones, fallback, "phone")


def next_open(now: datetime, zones: LocalZones, window: Window) -> datetime:
    """The earliest moment ≥ `now` (aware) when `window` is open in every one of `zones`:
    `now` itself if it is open. If the windows never meet, `zones.fallback` alone decides."""
    if len(zones.zones) == 1:
        return _next_open_in(now, zones.zones[0], window)
    # Each zone's next opening from a moment no later than the answer is itself no later than
    # the answer; so moving to it until all are open finds the earliest common moment.
    moment, give_up = now, now + OVERLAP_HORIZON
    while moment <= give_up:
        before = moment
        for where in zones.zones:
            moment = _next_open_in(moment, where, window)
        if moment == before:
            return moment
    return _next_open_in(now, zones.fallback, window)


def is_open(now: datetime, zones: LocalZones, window: Window) -> bool:
    """Whether a message may go to these zones at `now`."""
    return next_open(now, zones, window) == now


def _next_open_in(now: datetime, where: ZoneInfo, window: Window) -> datetime:
    """One zone: the first moment ≥ `now` when the clock in `where` shows a time in `window`.

    Without a clock change that is when it next shows the start; a change on the way (found by
    its offset) is stepped to, and looked at from there: the jump may land inside the window
    (past a skipped start, or back into an hour that comes twice)."""
    moment = now
    for _ in range(4):  # at most two changes a day, two days ahead
        local = moment.astimezone(where)
        wall = local.replace(tzinfo=None)
        if window.shows(wall.time()):
            return moment
        day = wall.date() if wall.time() < window.start else wall.date() + _DAY
        reached = moment + (datetime.combine(day, window.start) - wall)
        if reached.astimezone(where).utcoffset() == local.utcoffset():
            return reached
        moment = _clock_change(moment, reached, where)
    raise AssertionError(f"no opening of {window} in {where.key} after {now}")  # pragma: no cover


def _clock_change(after: datetime, before: datetime, where: ZoneInfo) -> datetime:
    """The moment in (after, before] when `where` changes its offset (there is one there)."""
    offset = after.astimezone(where).utcoffset()
    low, high = math.floor(after.timestamp()), math.ceil(before.timestamp())
    while low + 1 < high:  # offset unchanged at low, changed at high
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, where).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return max(after, datetime.fromtimestamp(high, UTC))


# When a recipient's window next opens: (phone, their `timezone` column, now) → the time, or
# None when it is open now
Opening = Callable[[str, ZoneInfo | None, datetime], datetime | None]


def opening(send_between: str | None, timezone: str | None) -> Opening | None:
    """The flow's quiet hours as one function (None: the flow has none): what the executor
    waits for and what `plan` shows, from one rule."""
    if not send_between:
        return None
    window = parse_window(send_between)
    flow_zone = zone(timezone) if timezone else None

    def opens(phone: str, column: ZoneInfo | None, now: datetime) -> datetime | None:
        found = next_open(now, recipient_zones(phone, column, flow_zone), window)
        return found if found > now else None

    return opens
