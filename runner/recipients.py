"""Recipients, streamed one at a time from the flow or a CSV file, with phones normalised.

Streaming matters: a campaign of a million rows must cost the same memory as one of ten. The
only state kept across rows is the set of phones seen (to send each person their messages once).

CSV as people save it: UTF-8 with or without a BOM, `,` `;` tab or `|` as separator (guessed from
the header row, or set with `delimiter:`), quoted fields with newlines, Windows line endings,
blank trailing rows skipped. The `phone` column is found whatever its case.
"""

from __future__ import annotations

import csv
import re
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from .conversation import parse_time
from .errors import Location, Problem, Problems
from .quiet_hours import zone

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

# What may separate a phone's digits as people write them; anything else (letters, `ext`, `;`)
# makes it not a phone number.
_PUNCTUATION = str.maketrans("", "", " -().\u00a0/\t")
CSV_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person: the WhatsApp id (`phone`, digits only) and the fields templates may use."""

    phone: str
    fields: Mapping[str, Any]
    where: Location
    # When the business knows the customer last wrote (the `last_inbound_at` column: its CRM's
    # export of today's chats), for the 24-hour window: runner/conversation.py
    wrote: datetime | None = None
    # Their time zone (the `timezone` column), for quiet hours: runner/quiet_hours.py
    zone: ZoneInfo | None = None


LAST_INBOUND = "last_inbound_at"
TIMEZONE = "timezone"


@dataclass(frozen=True, slots=True)
class Phone:
    """A phone as WhatsApp knows it (`digits`: country code and number, the WhatsApp id), and
    why it may not exist (`doubt`: a possible number in no range its country uses; None for a
    number in use or one reserved for examples)."""

    digits: str
    doubt: str | None = None


def normalize_phone(raw: object, country: str | None = None) -> str:
    """`+1 (555) 010-0001` → `15550100001`, the WhatsApp id form; ValueError says what is wrong.

    `country` (ISO 3166 letters, `settings.default_country`) reads national formats:
    `07700 900456` with GB is 447700900456."""
    return parse_phone(raw, country).digits


def parse_phone(raw: object, country: str | None = None) -> Phone:
    """A phone as written in a flow or CSV, read with Google's libphonenumber data
    (`phonenumbers`): trunk prefixes dropped where a country has them (`+44 (0)7700 900101`),
    kept where they are part of the number (Italy's `+39 06 ...`); impossible numbers (too
    short, too long, no such country code) raise ValueError in the words of the person who
    wrote them; possible numbers no country range has are returned with a `doubt`.

    Without a `country`, a number without `+` or `00` is read as a WhatsApp id
    (`447700900101`), as before libphonenumber; with one, as that country's national format.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValueError(f"phone must be a phone number, not {raw!r}")
    text = str(raw).strip()
    digits = text.translate(_PUNCTUATION)
    international = digits.startswith(("+", "00"))
    digits = digits[1:] if digits.startswith("+") else digits[2:] if international else digits
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"'{text}' is not a phone number")
    if international or country is None:
        if digits.startswith("0"):
            raise _no_country_code(text, international)
        number = _international(text, digits)
    else:
        number = _parsed(text, digits, country)
    return _checked(text, number, national=not international and country is not None)


def _no_country_code(text: str, international: bool) -> ValueError:
    if international:
        return ValueError(f"phone '{text}': a country code never starts with 0")
    return ValueError(
        f"phone '{text}' has no country code (it starts with 0); write it as"
        " +<country code><number>, e.g. +44 7911 123456, or set settings.default_country"
        " (e.g. GB) when the list is of one country's numbers"
    )


def _international(text: str, digits: str) -> PhoneNumber:
    """The number of `+digits`. Fast: most numbers are built straight from their country
    code, with no regular expression but the country's trunk prefix (`phonenumbers.parse`
    costs about 15 us, a fifth of what `validate` spends on a recipient); the others, those
    that start with a trunk prefix or 0, are parsed by phonenumbers. Both read a number alike:
    tests/test_recipients.py checks it for every country code."""
    import phonenumbers  # here, not `from ... import`: that costs a microsecond a call

    for length in (1, 2, 3):
        code = int(digits[:length])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        raise _no_such_country(text)
    national = digits[length:]
    trunk = _trunk_prefix(code)
    if (
        not 2 <= len(national) <= 17  # phonenumbers' _MIN/_MAX_LENGTH_FOR_NSN
        or national.startswith("0")
        or (trunk is not None and trunk.match(national))
    ):
        return _parsed(text, "+" + digits, None)
    return phonenumbers.PhoneNumber(country_code=code, national_number=int(national))


def _no_such_country(text: str) -> ValueError:
    return ValueError(f"phone '{text}' does not start with a country code")


def _parsed(text: str, digits: str, country: str | None) -> PhoneNumber:
    """`digits` read by phonenumbers: `+digits`, or a national number of `country`."""
    import phonenumbers

    try:
        return phonenumbers.parse(digits, country)
    except phonenumbers.NumberParseException as exc:
        kind = phonenumbers.NumberParseException
        if exc.error_type == kind.INVALID_COUNTRY_CODE:
            raise _no_such_country(text) from None
        if exc.error_type == kind.TOO_LONG:
            raise ValueError(f"phone '{text}' is too long for a phone number") from None
        raise ValueError(f"phone '{text}' is too short for a phone number") from None


@cache
def _trunk_prefix(code: int) -> re.Pattern[str] | None:
    """What a country's numbers may start with that is dialled only at home (UK `0`, US `1`),
    as libphonenumber's metadata says; phonenumbers.parse drops it when what stays is a
    possible number."""
    import phonenumbers

    region = phonenumbers.region_code_for_country_code(code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    pattern = metadata.national_prefix_for_parsing if metadata else None
    return re.compile(pattern) if pattern else None


def _checked(text: str, number: PhoneNumber, national: bool) -> Phone:
    """The number if it is possible (a ValueError in the writer's words if not), with a doubt
    if it is in no range its country uses."""
    import phonenumbers

    reason = phonenumbers.is_possible_number_with_reason(number)
    result = phonenumbers.ValidationResult
    if reason == result.IS_POSSIBLE and _kept_trunk_prefix(number):
        # `07700 9004` in GB: without its 0 it is too short, so libphonenumber keeps the 0 as
        # part of the number; but where 0 is the trunk prefix no number starts with it
        shorter = phonenumbers.PhoneNumber(
            country_code=number.country_code, national_number=number.national_number
        )
        reason = phonenumbers.is_possible_number_with_reason(shorter)
    if reason != result.IS_POSSIBLE:
        where = _country_name(number.country_code or 0)
        if reason == result.INVALID_COUNTRY_CODE:
            raise _no_such_country(text)
        size = "too long" if reason == result.TOO_LONG else "too short"
        if reason == result.INVALID_LENGTH:
            size = "the wrong length"
        message = f"phone '{text}' is {size} for a number in {where}"
        if national and reason == result.TOO_LONG:
            message += "; a number of another country needs + and its country code"
        raise ValueError(message)
    digits = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    if _is_example(digits) or is_valid(number):
        return Phone(digits)
    where = _country_name(number.country_code or 0)
    return Phone(digits, f"phone '{text}' is not a number in use in {where}; check it")


def is_valid(number: PhoneNumber) -> bool:
    """`phonenumbers.is_valid_number`, three times as fast: the same metadata and rules
    (the number's region: the first of its calling code's whose leading digits it has, or
    whose numbers it is one of; then: it matches the region's general pattern and one of its
    number types'), with each region's patterns compiled once and the types' patterns joined
    into one per length, instead of ten lookups and matches. `phonenumbers.is_valid_number`
    costs 10 to 25 us, a third of what `validate` spends on a recipient; tests/test_recipients.py
    checks that both agree for every calling code."""
    import phonenumbers

    code = number.country_code or 0
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if not regions:
        return False
    digits = phonenumbers.national_significant_number(number)
    if len(regions) == 1:
        ranges = _ranges(code, regions[0])
        return ranges is not None and ranges.known(digits)
    for region in regions:
        ranges = _ranges(code, region)
        if ranges is None:
            continue
        if ranges.leading is not None:
            if ranges.leading.match(digits):
                return ranges.known(digits)
        elif ranges.known(digits):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Ranges:
    """A region's numbers, as libphonenumber's metadata describes them, compiled."""

    leading: re.Pattern[str] | None  # leading digits that pick this region in a shared code
    general: tuple[frozenset[int], re.Pattern[str]] | None
    by_length: Mapping[int, re.Pattern[str]]  # the types' patterns for numbers of a length
    any_length: re.Pattern[str] | None  # the types' patterns that name no length

    def known(self, digits: str) -> bool:
        if self.general is None:
            return False
        lengths, pattern = self.general
        if (lengths and len(digits) not in lengths) or not pattern.fullmatch(digits):
            return False
        typed = self.by_length.get(len(digits))
        if typed is not None and typed.fullmatch(digits):
            return True
        return self.any_length is not None and self.any_length.fullmatch(digits) is not None


_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


@cache
def _ranges(code: int, region: str) -> _Ranges | None:
    import phonenumbers

    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None:
        return None
    general = metadata.general_desc
    descs = [getattr(metadata, name) for name in _TYPES]
    if not metadata.same_mobile_and_fixed_line_pattern:
        descs.append(metadata.mobile)
    by_length: dict[int, list[str]] = {}
    any_length: list[str] = []
    for desc in descs:
        if desc is None or not desc.national_number_pattern:
            continue
        for length in desc.possible_length or ():
            by_length.setdefault(length, []).append(desc.national_number_pattern)
        if not desc.possible_length:
            any_length.append(desc.national_number_pattern)
    return _Ranges(
        re.compile(metadata.leading_digits) if metadata.leading_digits else None,
        (frozenset(general.possible_length or ()), re.compile(general.national_number_pattern))
        if general is not None and general.national_number_pattern
        else None,
        {length: _joined(patterns) for length, patterns in by_length.items()},
        _joined(any_length) if any_length else None,
    )


def _joined(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


def _kept_trunk_prefix(number: PhoneNumber) -> bool:
    """Whether the number starts with a 0 its country dials only at home (and so it is not
    in use: the 0 was kept because what followed was too short or too long)."""
    import phonenumbers

    code = number.country_code or 0
    if not number.italian_leading_zero or is_valid(number):
        return False
    region = phonenumbers.region_code_for_country_code(code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    return metadata is not None and metadata.national_prefix == "0"


# Numbers reserved for films, books and documentation, so that nobody's real phone rings:
# - North America: area code 555 is not assigned (flowrun's own examples are +1 555 010 ...);
#   555-0100 to 555-0199 in any area code are for fiction (NANPA), and libphonenumber
#   already counts those as in use;
# - United Kingdom: Ofcom's drama numbers, 07700 900000-900999 and 01632 960000-960999 (the
#   others, 020 7946 0xxx and the like, are in ranges libphonenumber counts as in use).
# They may be sent to (a sandbox, a test send) and raise no doubt.
_EXAMPLES = re.compile(r"1555\d{7}|447700900\d{3}|441632960\d{3}")


def _is_example(digits: str) -> bool:
    return _EXAMPLES.fullmatch(digits) is not None


def _country_name(code: int) -> str:
    """ "the United Kingdom (+44)", "North America (+1)": where a calling code is, as people
    say it, in libphonenumber's English names (its main country's: +7 is Russia's name, though
    Kazakhstan shares it; +1 is a score of countries). Only for problems: the names cost a
    third of a second to load."""
    import phonenumbers
    from phonenumbers import geocoder

    if code == 1:
        return "North America (+1)"
    region = phonenumbers.region_code_for_country_code(code)
    # geocoder's own lookup of a region's name (no public one takes a region code)
    named = getattr(geocoder, "_region_display_name", None)
    name = named(region, "en") if named is not None and region != "001" else ""
    if not name:
        return f"+{code}"
    if name.startswith(("United ", "Netherlands", "Czech", "Philippines", "Bahamas")):
        name = "the " + name
    return f"{name} (+{code})"


def check_country(text: str) -> str:
    """`settings.default_country`: two letters of ISO 3166 libphonenumber knows (any case),
    as upper case; UK is a common slip for GB."""
    import phonenumbers

    code = text.strip().upper()
    if code in phonenumbers.SUPPORTED_REGIONS:
        return code
    if code == "UK":
        raise ValueError("'UK' is not a country code; the United Kingdom's is GB")
    raise ValueError(
        f"'{text}' is not a country code; write the two letters of ISO 3166, e.g. GB, DE, US"
    )


class CsvError(ValueError):
    """A CSV that cannot be read as recipients at all (no header, no phone column, ...)."""

    def __init__(self, location: Location, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.location = location
        self.hint = hint


def read_csv(
    path: Path, display: str, delimiter: str | None
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) pairs of a CSV file, streamed; raises CsvError for a file-level problem."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise CsvError(Location(display, 1, 1), "CSV file not found") from None
    except OSError as exc:
        raise CsvError(Location(display, 1, 1), f"cannot read CSV file: {exc.strerror}") from None
    with handle:
        try:
            header_line = handle.readline()
            handle.seek(0)
            sep = delimiter or _guess_delimiter(header_line)
            reader = csv.reader(handle, delimiter=sep)
            header = _header(next(reader, None), display)
            yield from _rows(reader, header, display)
        except UnicodeDecodeError:
            raise CsvError(
                Location(display, _first_bad_line(path), 1),
                "not UTF-8 text",
                "save the CSV as UTF-8 (in Excel: Save As, CSV UTF-8)",
            ) from None
        except csv.Error as exc:
            line = reader.line_num if "reader" in locals() else 1
            raise CsvError(Location(display, line, 1), f"broken CSV: {exc}") from None


def _first_bad_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8 (text decoding reads ahead in chunks, so
    the reader's own line count is not where the bad byte is)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _guess_delimiter(header_line: str) -> str:
    counts = {sep: header_line.count(sep) for sep in CSV_DELIMITERS}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _header(row: list[str] | None, display: str) -> list[str]:
    where = Location(display, 1, 1)
    if not row or not any(cell.strip() for cell in row):
        raise CsvError(where, "CSV file is empty; it needs a header row with a 'phone' column")
    names = [cell.strip() for cell in row]
    for index, name in enumerate(names, start=1):
        if not name:
            raise CsvError(where, f"column {index} of the header row has no name")
        if names.index(name) != index - 1:
            raise CsvError(where, f"column '{name}' appears twice in the header row")
    if not any(name.lower() == "phone" for name in names):
        raise CsvError(
            where,
            f"CSV has no 'phone' column (columns: {', '.join(names)})",
            "name the column with the phone numbers 'phone'",
        )
    return names


def _rows(reader: Any, header: list[str], display: str) -> Iterator[tuple[int, dict[str, str]]]:
    width = len(header)
    line = reader.line_num + 1
    for row in reader:
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank rows, as spreadsheets leave at the end
        if len(row) != width:
            raise CsvError(
                Location(display, start, 1),
                f"row has {len(row)} values but the header has {width} columns",
                "a value that contains the separator must be in double quotes",
            )
        yield start, dict(zip(header, row, strict=True))


def with_phone(fields: dict[str, Any]) -> dict[str, Any]:
    """The row with `phone` under that exact name, whatever case the header used."""
    if "phone" not in fields:
        for key, value in fields.items():
            if key.lower() == "phone":
                fields["phone"] = value
                break
    return fields


class PhoneSet:
    """The phones seen so far, in 16 to 32 bytes each: an open-addressing table in an `array`.

    A Python set of ints costs about 60 bytes a phone (table slot and int object); at a million
    recipients that was 60 MB of a run's 150 MB budget (performance issue). Phones are at most
    15 digits, so they fit in 64 bits, and none is 0, which marks an empty slot. About 0.3 us an
    addition, growth included.
    """

    __slots__ = ("_count", "_limit", "_mask", "_table")

    def __init__(self, expected: int = 0) -> None:
        size = 1024
        while size < 2 * expected:
            size *= 2
        self._table = array("q", [0]) * size
        self._mask = size - 1
        self._limit = size // 2  # at most half full: probes stay short
        self._count = 0

    def add(self, phone: int) -> bool:
        """Add `phone`; False if it was there already."""
        table, mask = self._table, self._mask
        slot = ((phone ^ (phone >> 21)) * 0x5851F42D) & mask  # spread nearby numbers apart
        while found := table[slot]:
            if found == phone:
                return False
            slot = (slot + 1) & mask
        table[slot] = phone
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return True

    def __len__(self) -> int:
        return self._count

    def _grow(self) -> None:
        old = self._table
        size = 2 * len(old)
        table = self._table = array("q", [0]) * size
        mask = self._mask = size - 1
        self._limit = size // 2
        for phone in old:
            if phone:
                slot = ((phone ^ (phone >> 21)) * 0x5851F42D) & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = phone


class RecipientStream:
    """Recipients, each phone once. Iterating again starts a new pass over the source."""

    def __init__(
        self,
        rows: Any,  # a callable giving (Location, fields) pairs, so each pass re-reads
        problems: Problems,
        default_country: str | None = None,
    ) -> None:
        self._rows = rows
        self._problems = problems
        self._country = default_country or _flow_country(rows)

    def __iter__(self) -> Iterator[Recipient]:
        seen = PhoneSet()
        doubts = _Doubts(self._problems)
        for where, row in self._rows():
            fields = with_phone(row)
            try:
                phone = parse_phone(fields.get("phone"), self._country)
            except ValueError as exc:
                self._problems.add(Problem(where, str(exc)))
                continue
            if not seen.add(int(phone.digits)):
                self._problems.add(
                    Problem(
                        where,
                        f"phone {phone.digits} is listed again; it gets its messages once",
                        severity="warning",
                    )
                )
                continue
            if phone.doubt is not None:
                doubts.add(where, phone.doubt, str(fields.get("phone")).strip())
            fields["phone"] = phone.digits
            try:
                wrote = _wrote(fields)
            except ValueError as exc:
                self._problems.add(Problem(where, f"{LAST_INBOUND}: {exc}"))
                continue
            try:
                local = _zone(fields)
            except ValueError as exc:
                self._problems.add(Problem(where, f"{TIMEZONE}: {exc}"))
                continue
            yield Recipient(phone.digits, fields, where, wrote, local)


def _flow_country(rows: Any) -> str | None:
    """`settings.default_country` of the flow whose plan gives `rows` (runner/plan.py's
    `Plan._rows`: the plan passes its rows, not its settings, to this stream)."""
    flow = getattr(getattr(rows, "__self__", None), "flow", None)
    settings = getattr(flow, "settings", None)
    country = getattr(settings, "default_country", None)
    return country if isinstance(country, str) else None


class _Doubts:
    """Numbers not in use in their country, as warnings: the first `SHOWN` each at its row,
    the rest as one line with a count, so a list of 10,000 such numbers (an old export, made
    up test data) does not bury every other message."""

    SHOWN = 3

    def __init__(self, problems: Problems) -> None:
        self._problems = problems
        self._count = 0
        self._rest: Problem | None = None

    def add(self, where: Location, doubt: str, written: str) -> None:
        self._count += 1
        if self._count <= self.SHOWN:
            self._problems.add(Problem(where, doubt, severity="warning"))
            return
        if self._rest is None:
            self._rest = Problem(
                where,
                "more phones are not numbers in use in their country",
                severity="warning",
                detail=f"'{written}'",
            )
        self._problems.add(self._rest)


def _wrote(fields: Mapping[str, Any]) -> datetime | None:
    """The `last_inbound_at` column, if given and not empty (a customer who never wrote)."""
    value = fields.get(LAST_INBOUND)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):  # YAML reads an unquoted ISO time as one
        return parse_time(value.isoformat())
    return parse_time(str(value))


def _zone(fields: Mapping[str, Any]) -> ZoneInfo | None:
    """The `timezone` column (an IANA name), if given and not empty (then: from the phone)."""
    value = fields.get(TIMEZONE)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return zone(str(value).strip())
