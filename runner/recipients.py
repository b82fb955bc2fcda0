"""Recipients, streamed one at a time from the flow or a CSV file, with phones normalised.

Streaming matters: a campaign of a million rows must cost the same memory as one of ten. The
only state kept across rows is the set of phones seen (to send each person their messages once).

CSV as people save it: UTF-8 with or without a BOM, `,` `;` tab or `|` as separator (guessed from
the header row, or set with `delimiter:`), quoted fields with newlines, Windows line endings,
blank trailing rows skipped. The `phone` column is found whatever its case.
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .conversation import parse_time
from .errors import Location, Problem, Problems
from .quiet_hours import zone

PHONE_MIN_DIGITS = 7
PHONE_MAX_DIGITS = 15  # E.164
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


def normalize_phone(raw: object) -> str:
    """`+1 (555) 010-0001` → `15550100001`, the WhatsApp id form; ValueError says what is wrong."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValueError(f"phone must be a phone number, not {raw!r}")
    text = str(raw).strip()
    digits = text.translate(_PUNCTUATION)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]  # the international prefix used across Europe
    elif digits.startswith("0"):
        raise ValueError(
            f"phone '{text}' has no country code (it starts with 0); "
            "write it as +<country code><number>, e.g. +44 7911 123456"
        )
    if digits.startswith("0") and text.lstrip().startswith(("+", "00")):
        raise ValueError(f"phone '{text}': a country code never starts with 0")
    if not text or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"'{text}' is not a phone number")
    if not PHONE_MIN_DIGITS <= len(digits) <= PHONE_MAX_DIGITS:
        raise ValueError(
            f"phone '{text}' has {len(digits)} digits; with its country code a phone has "
            f"{PHONE_MIN_DIGITS} to {PHONE_MAX_DIGITS}"
        )
    return digits


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
    ) -> None:
        self._rows = rows
        self._problems = problems

    def __iter__(self) -> Iterator[Recipient]:
        seen = PhoneSet()
        for where, row in self._rows():
            fields = with_phone(row)
            try:
                phone = normalize_phone(fields.get("phone"))
            except ValueError as exc:
                self._problems.add(Problem(where, str(exc)))
                continue
            if not seen.add(int(phone)):
                self._problems.add(
                    Problem(
                        where,
                        f"phone {phone} is listed again; it gets its messages once",
                        severity="warning",
                    )
                )
                continue
            fields["phone"] = phone
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
            yield Recipient(phone, fields, where, wrote, local)


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
