"""What quiet hours cost per recipient: finding their zones from the number, and next_open.

Run: python bench/quiet_hours_bench.py [N]. N numbers (default 100,000), a fixed mix: mobile and
fixed-line ranges of twelve countries (some with several zones: US, RU, BR, AU, MX, ID) and the
unplaceable +1 555 range the tests use. Prints microseconds per recipient, and what a cache
keyed on the number's leading digits would save and how many of its answers differ from
libphonenumber's (the zone depends on the number's type, that is on all its digits).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers import timezone as phone_timezones

from runner.quiet_hours import next_open, parse_window, phone_zones, recipient_zones

REGIONS = ("US", "DE", "JP", "BR", "IN", "RU", "GB", "AU", "MX", "FR", "ID", "NG")


def numbers(count: int) -> list[str]:
    """Real ranges with random subscriber digits, as a campaign's list would have them."""
    rng = random.Random(14)
    bases = ["15550100000"]
    for region in REGIONS:
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                bases.append(phonenumbers.format_number(example, PhoneNumberFormat.E164)[1:])
    return [rng.choice(bases)[:-7] + f"{rng.randrange(10**7):07d}" for _ in range(count)]


def library(phone: str) -> tuple[str, ...]:
    return tuple(phone_timezones.time_zones_for_number(phonenumbers.parse("+" + phone)))


_seen: dict[tuple[str, int], tuple[str, ...]] = {}


def by_prefix(phone: str) -> tuple[str, ...]:
    """The cache the task suggested: keyed on all but the last four digits (and the length)."""
    key = (phone[:-4], len(phone))
    found = _seen.get(key)
    if found is None:
        found = _seen[key] = library(phone)
    return found


def ranges_whose_zone_depends_on_the_last_digits(tries: int = 150) -> tuple[int, list[str]]:
    """Every region's example ranges (mobile, fixed, toll-free, ...), `tries` random last four
    digits each: the ranges where libphonenumber's answer changes with those digits."""
    rng = random.Random(3)
    ranges, differing = 0, []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (
            PhoneNumberType.MOBILE,
            PhoneNumberType.FIXED_LINE,
            PhoneNumberType.VOIP,
            PhoneNumberType.TOLL_FREE,
            PhoneNumberType.PERSONAL_NUMBER,
            PhoneNumberType.UAN,
        ):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            base = phonenumbers.format_number(example, PhoneNumberFormat.E164)[1:]
            if len(base) < 9:
                continue
            ranges += 1
            answers = {library(base[:-4] + f"{n:04d}") for n in rng.sample(range(10_000), tries)}
            if len(answers) > 1:
                differing.append(f"{region} +{base[:-4]}....: {sorted(answers)}")
    return ranges, differing


def per_item(label: str, items: list[str], work: Callable[[str], object]) -> float:
    start = time.perf_counter()
    for item in items:
        work(item)
    micros = (time.perf_counter() - start) / len(items) * 1e6
    print(f"{label:<58} {micros:6.2f} us/recipient")
    return micros


def main(count: int) -> None:
    phones = numbers(count)
    print(f"{count:,} numbers, {len({p[:-4] for p in phones}):,} distinct leading-digit keys")
    per_item("phonenumbers parse + time_zones_for_number (no cache)", phones, library)
    per_item("phone_zones (same, answers as ZoneInfo, cached per answer)", phones, phone_zones)
    berlin = ZoneInfo("Europe/Berlin")
    per_item(
        "recipient_zones (no timezone column)", phones, lambda p: recipient_zones(p, None, berlin)
    )
    _seen.clear()
    per_item("keyed on all but the last 4 digits (first pass)", phones, by_prefix)
    per_item("keyed on all but the last 4 digits (second pass)", phones, by_prefix)
    wrong = sum(library(p) != by_prefix(p) for p in phones)
    print(f"answers of that cache that differ from libphonenumber's: {wrong:,} of {count:,}")
    ranges, differing = ranges_whose_zone_depends_on_the_last_digits()
    print(
        f"ranges of all regions whose zones change with the last 4 digits: {len(differing)}"
        f" of {ranges}, e.g."
    )
    for line in differing[:3]:
        print("  " + line)

    window = parse_window("09:00-20:00")
    where = {p: recipient_zones(p, None, berlin) for p in phones}
    moments = [datetime(2026, 3, 29, 0, 0, tzinfo=UTC), datetime(2026, 6, 1, 12, 0, tzinfo=UTC)]
    for moment in moments:
        per_item(
            f"next_open at {moment:%Y-%m-%d %H:%M}Z",
            phones,
            lambda p, at=moment: next_open(at, where[p], window),
        )
    several = [p for p in phones if len(where[p].zones) > 1]
    per_item(
        f"next_open, numbers with several zones only ({len(several):,})",
        several,
        lambda p: next_open(moments[1], where[p], window),
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
