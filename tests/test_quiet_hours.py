"""Quiet hours (runner/quiet_hours.py): windows as people write them, where a recipient is (their
`timezone` column, their number, the flow's zone), and the first moment their clock shows a time
inside the window: across midnight, across daylight-saving changes, and for numbers that may be
in several zones. Errors are checked through the real `flowrun validate`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.quiet_hours import (
    LocalZones,
    Window,
    check_send_between,
    check_timezone,
    next_open,
    parse_window,
    phone_zones,
    recipient_zones,
)
from tests.sandbox_helpers import flowrun, write_flow

BERLIN, TOKYO = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Tokyo")
NEW_YORK, SYDNEY = ZoneInfo("America/New_York"), ZoneInfo("Australia/Sydney")
BOISE, LOS_ANGELES, MOSCOW = (
    ZoneInfo("America/Boise"),
    ZoneInfo("America/Los_Angeles"),
    ZoneInfo("Europe/Moscow"),
)
GERMAN, JAPANESE, IDAHO = "4915112345678", "819012345678", "12085551234"
RUSSIAN_MOBILE = "79161234567"  # libphonenumber places Russian mobiles in all 16 zones
UNPLACED = "15550100000"  # the fictional +1 555 range the other tests use
DAY = parse_window("09:00-20:00")
NIGHT = parse_window("22:00-06:00")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def clock(moment: datetime, where: ZoneInfo) -> str:
    return f"{moment.astimezone(where):%Y-%m-%d %H:%M %Z}"


# -- windows and zone names, as people write them ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end", "crosses"),
    [
        ("09:00-20:00", time(9), time(20), False),
        (" 9:00 - 20:30 ", time(9), time(20, 30), False),
        ("22:00-06:00", time(22), time(6), True),
        ("20:00-24:00", time(20), time(0), True),  # until midnight
        ("09:00–20:00", time(9), time(20), False),  # an en dash, as word processors write it
    ],
)
def test_windows_read_as_people_write_them(
    text: str, start: time, end: time, crosses: bool
) -> None:
    window = parse_window(text)
    assert window == Window(start, end)
    assert window.crosses_midnight is crosses
    assert check_send_between(text) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "9-20",
            "'9-20' is not a time window: write it as 09:00-20:00 (24-hour clock, the"
            " recipient's local time)",
        ),
        ("9am-8pm", "'9am-8pm' is not a time window: write it as 09:00-20:00"),
        ("09:00-25:00", "'09:00-25:00' is not a time window: hours go from 00 to 23"),
        ("09:60-20:00", "'09:60-20:00' is not a time window: hours go from 00 to 23 and minutes"),
        ("09:00-09:00", "'09:00-09:00' is an empty window: give two different times"),
        ("  ", "send_between is empty: write a window such as 09:00-20:00, or remove it"),
    ],
)
def test_an_unreadable_window_says_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)) as caught:
        check_send_between(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "Europe/Berln",
            "'Europe/Berln' is not a time zone: use an IANA name like Europe/Berlin"
            " (did you mean Europe/Berlin?)",
        ),
        ("asia/tokyo", "(did you mean Asia/Tokyo?)"),
        ("America/Sao Paulo", "(did you mean America/Sao_Paulo?)"),
        # the machine's own zone is never a recipient's
        ("localtime", "'localtime' is not a time zone: use an IANA name like Europe/Berlin"),
        ("../etc/passwd", "'../etc/passwd' is not a time zone"),
        ("", "'' is not a time zone"),
    ],
)
def test_an_unknown_zone_names_the_closest_one(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        check_timezone(name)
    assert "\n" not in str(caught.value)


def test_real_zones_are_accepted() -> None:
    for name in ("Europe/Berlin", "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT-14"):
        assert check_timezone(name) == name


# -- where a recipient is ---------------------------------------------------------------------


def test_a_number_is_placed_by_its_country() -> None:
    assert phone_zones(GERMAN) == (BERLIN,)
    assert phone_zones(JAPANESE) == (TOKYO,)
    assert phone_zones(UNPLACED) == ()
    assert phone_zones("88212345678") == ()  # international networks have no zone
    assert phone_zones(IDAHO) == (BOISE, LOS_ANGELES)  # Idaho spans Mountain and Pacific time


def test_the_column_wins_then_the_number_then_the_flow_then_utc() -> None:
    assert recipient_zones(GERMAN, SYDNEY, NEW_YORK) == LocalZones((SYDNEY,), SYDNEY, "column")
    assert recipient_zones(GERMAN, None, NEW_YORK) == LocalZones((BERLIN,), BERLIN, "phone")
    assert recipient_zones(UNPLACED, None, NEW_YORK) == LocalZones((NEW_YORK,), NEW_YORK, "flow")
    utc_zone = ZoneInfo("UTC")
    assert recipient_zones(UNPLACED, None, None) == LocalZones((utc_zone,), utc_zone, "flow")


def test_quiet_hours_hold_in_three_zones_at_once() -> None:
    """One moment, 2026-06-01 12:00 UTC, four recipients: each waits for 09:00 on their clock."""
    now = utc(2026, 6, 1, 12, 0)
    column = recipient_zones(GERMAN, SYDNEY, NEW_YORK)  # 22:00 in Sydney
    german = recipient_zones(GERMAN, None, NEW_YORK)  # 14:00 in Berlin
    japanese = recipient_zones(JAPANESE, None, NEW_YORK)  # 21:00 in Tokyo
    unplaced = recipient_zones(UNPLACED, None, NEW_YORK)  # 08:00 in New York
    assert next_open(now, german, DAY) == now
    assert clock(next_open(now, column, DAY), SYDNEY) == "2026-06-02 09:00 AEST"
    assert clock(next_open(now, japanese, DAY), TOKYO) == "2026-06-02 09:00 JST"
    assert clock(next_open(now, unplaced, DAY), NEW_YORK) == "2026-06-01 09:00 EDT"
    assert next_open(now, unplaced, DAY) == utc(2026, 6, 1, 13, 0)


# -- across midnight and daylight-saving changes -----------------------------------------------


@pytest.mark.parametrize(
    ("local", "opens"),
    [
        ("2026-06-01 23:30", "2026-06-01 23:30"),  # open: late evening
        ("2026-06-02 00:00", "2026-06-02 00:00"),  # open: midnight
        ("2026-06-02 05:59", "2026-06-02 05:59"),  # open: the last minute
        ("2026-06-02 06:00", "2026-06-02 22:00"),  # closed from the end
        ("2026-06-02 12:00", "2026-06-02 22:00"),  # closed at noon
        ("2026-06-02 21:59", "2026-06-02 22:00"),
    ],
)
def test_a_window_across_midnight(local: str, opens: str) -> None:
    now = datetime.fromisoformat(local).replace(tzinfo=BERLIN)
    assert clock(next_open(now, LocalZones.single(BERLIN), NIGHT), BERLIN)[:16] == opens


@pytest.mark.parametrize(
    ("text", "now", "opens"),
    [
        # 2026-03-29, Europe/Berlin: the clock jumps from 02:00 CET to 03:00 CEST (01:00 UTC)
        ("02:30-06:00", utc(2026, 3, 28, 23, 0), "2026-03-29 03:00 CEST"),  # 02:30 is skipped
        ("02:00-06:00", utc(2026, 3, 28, 23, 0), "2026-03-29 03:00 CEST"),
        ("09:00-20:00", utc(2026, 3, 29, 0, 0), "2026-03-29 09:00 CEST"),  # 07:00 UTC now
        ("22:00-02:30", utc(2026, 3, 29, 0, 59), "2026-03-29 01:59 CET"),  # still open
        ("22:00-02:30", utc(2026, 3, 29, 1, 0), "2026-03-29 22:00 CEST"),  # jumped past the end
        ("09:00-20:00", utc(2026, 3, 28, 19, 0), "2026-03-29 09:00 CEST"),  # over the night
        # 2026-10-25, Europe/Berlin: 03:00 CEST falls back to 02:00 CET (01:00 UTC): 02:00-03:00
        # comes twice
        ("02:30-06:00", utc(2026, 10, 24, 23, 0), "2026-10-25 02:30 CEST"),  # the first 02:30
        ("02:30-06:00", utc(2026, 10, 25, 1, 10), "2026-10-25 02:30 CET"),  # back at 02:10
        ("22:00-02:30", utc(2026, 10, 25, 0, 45), "2026-10-25 02:00 CET"),  # back inside
        ("22:00-02:30", utc(2026, 10, 25, 1, 35), "2026-10-25 22:00 CET"),
        ("09:00-20:00", utc(2026, 10, 25, 7, 30), "2026-10-25 09:00 CET"),  # 08:00 UTC now
    ],
)
def test_daylight_saving_days_in_berlin(text: str, now: datetime, opens: str) -> None:
    found = next_open(now, LocalZones.single(BERLIN), parse_window(text))
    assert clock(found, BERLIN) == opens


def _shows(moment: datetime, zones: tuple[ZoneInfo, ...], window: Window) -> bool:
    return all(window.shows(moment.astimezone(where).time()) for where in zones)


def _first_open_minute(now: datetime, zones: tuple[ZoneInfo, ...], window: Window) -> datetime:
    """The plain answer: look at every minute (zones change their clocks on whole minutes)."""
    moment = now
    while not _shows(moment, zones, window):
        moment += timedelta(minutes=1)
        assert moment - now < timedelta(days=3)
    return moment


CHANGES = [  # the days around 2026's clock changes of the zones below
    datetime(2026, 3, 8),
    datetime(2026, 3, 29),
    datetime(2026, 4, 5),
    datetime(2026, 10, 4),
    datetime(2026, 10, 25),
    datetime(2026, 11, 1),
]
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe"]


@settings(max_examples=120, deadline=None)
@given(
    day=st.sampled_from(CHANGES),
    minutes=st.integers(-2 * 1440, 2 * 1440),
    zone=st.sampled_from(ZONES),
    start=st.integers(0, 95),
    length=st.integers(1, 95),
)
def test_next_open_is_the_first_minute_the_clock_shows_the_window(
    day: datetime, minutes: int, zone: str, start: int, length: int
) -> None:
    """Against every minute of the days around clock changes, with windows on the quarter hour
    (Lord Howe moves its clock by 30 minutes)."""
    window = Window(_quarter(start), _quarter((start + length) % 96))
    now = day.replace(tzinfo=UTC) + timedelta(minutes=minutes)
    where = ZoneInfo(zone)
    assert next_open(now, LocalZones.single(where), window) == _first_open_minute(
        now, (where,), window
    )


def _quarter(index: int) -> time:
    return time(index // 4, index % 4 * 15)


# -- numbers that may be in several zones -----------------------------------------------------


def test_a_number_in_two_zones_waits_until_both_clocks_are_in_the_window() -> None:
    """Idaho: 09:00 in Los Angeles is 10:00 in Boise; 20:00 in Boise is 19:00 in LA."""
    idaho = recipient_zones(IDAHO, None, None)
    assert idaho.zones == (BOISE, LOS_ANGELES)
    opens = next_open(utc(2026, 6, 1, 15, 30), idaho, DAY)  # 09:30 Boise, 08:30 LA
    assert clock(opens, LOS_ANGELES) == "2026-06-01 09:00 PDT"
    late = utc(2026, 6, 2, 2, 30)  # 20:30 in Boise, 19:30 in LA: Boise is quiet
    assert clock(next_open(late, idaho, DAY), LOS_ANGELES) == "2026-06-02 09:00 PDT"
    for minutes in range(0, 3 * 1440, 17):
        now = utc(2026, 6, 1) + timedelta(minutes=minutes)
        assert next_open(now, idaho, DAY) == _first_open_minute(now, idaho.zones, DAY)


def test_zones_whose_windows_never_meet_fall_back_to_one() -> None:
    """A Russian mobile may be anywhere from UTC+2 to UTC+12."""
    now = utc(2026, 6, 1, 12, 0)  # 15:00 in Moscow, 00:00 in Kamchatka
    russian = recipient_zones(RUSSIAN_MOBILE, None, MOSCOW)
    assert len(russian.zones) == 16
    assert russian.fallback == MOSCOW  # the flow's zone is one of them
    # 09:00-20:00 (11 hours) holds in all from 09:00 Moscow (18:00 Kamchatka) to 11:00 Moscow
    assert clock(next_open(now, russian, DAY), MOSCOW) == "2026-06-02 09:00 MSK"
    assert _shows(next_open(now, russian, DAY), russian.zones, DAY)
    # 09:00-18:00 never does: Moscow decides
    office = parse_window("09:00-18:00")
    assert next_open(now, russian, office) == now
    assert clock(next_open(utc(2026, 6, 1, 16), russian, office), MOSCOW) == "2026-06-02 09:00 MSK"
    # without the flow's zone among them, the first listed
    elsewhere = recipient_zones(RUSSIAN_MOBILE, None, BERLIN)
    first = elsewhere.zones[0]
    assert elsewhere.fallback == first
    assert next_open(now, elsewhere, office) == next_open(now, LocalZones.single(first), office)


# -- located errors through the real CLI -------------------------------------------------------


def test_a_bad_timezone_column_is_a_located_error(folder: Path) -> None:
    write_flow(folder, "http://127.0.0.1:9", _STEP, people=1, kind="cloud")
    (folder / "people.csv").write_text(
        "phone,name,lang,timezone\n"
        "+49 151 1234 5678,P0,de,Europe/Berln\n"
        "+81 90 1234 5678,P1,en,localtime\n"
        "+1 555 010 0002,P2,en,Asia/Tokyo\n"
        "+1 555 010 0003,P3,en,\n",
        "utf-8",
    )
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    lines = err.splitlines()
    assert (
        "people.csv:2:1: timezone: 'Europe/Berln' is not a time zone: use an IANA name like"
        " Europe/Berlin (did you mean Europe/Berlin?)"
    ) in lines, err
    assert any(line.startswith("people.csv:3:1: timezone: 'localtime' is not") for line in lines)
    assert not any(line.startswith(("people.csv:4:", "people.csv:5:")) for line in lines), err


def test_a_good_timezone_column_validates(folder: Path) -> None:
    write_flow(folder, "http://127.0.0.1:9", _STEP, people=1, kind="cloud")
    (folder / "people.csv").write_text(
        "phone,name,lang,timezone\n+49 151 1234 5678,P0,de,America/Sao_Paulo\n"
        "+1 555 010 0001,P1,en,\n",
        "utf-8",
    )
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 0, err


def test_bad_quiet_hours_settings_are_located_errors(folder: Path) -> None:
    path = write_flow(
        folder,
        "http://127.0.0.1:9",
        _STEP,
        people=1,
        kind="cloud",
        send_between='"9-20"',
        timezone="Europe/Berln",
    )
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    text = path.read_text("utf-8").splitlines()
    between = next(i for i, t in enumerate(text, 1) if t.strip().startswith("send_between:"))
    zone = next(i for i, t in enumerate(text, 1) if t.strip().startswith("timezone:"))
    assert (
        f"flow.yaml:{between}:17: '9-20' is not a time window: write it as 09:00-20:00 (24-hour"
        " clock, the recipient's local time)"
    ) in err.splitlines(), err
    assert (
        f"flow.yaml:{zone}:13: 'Europe/Berln' is not a time zone: use an IANA name like"
        " Europe/Berlin (did you mean Europe/Berlin?)"
    ) in err.splitlines(), err


_STEP = """\
  - name: welcome
    template:
      name: hello_world
      language: en_US
"""
