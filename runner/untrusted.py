"""Text that did not come from flowrun (the API's answers, webhook callbacks), made safe to keep
and to show.

An API or anything posing as one can put terminal control sequences in an error title (clear
the screen, rewrite the window title, print a fake "sent 1,000" line) or a formula in a field
that `report --csv` hands to a spreadsheet (`=HYPERLINK(...)`, `@SUM(...)`). So such text is
cleaned where it enters flowrun (the dialects, the receiver) and again where it leaves as CSV:
- `printable`: no control characters (C0, DEL, C1), no escape sequences, no bidirectional
  overrides (they reorder what a terminal shows), one line, bounded length;
- `spreadsheet_cell`: a cell starting with `=`, `+`, `-`, `@`, tab or carriage return is
  prefixed with `'`, as OWASP's "CSV injection" page advises
  (https://owasp.org/www-community/attacks/CSV_Injection).
"""

from __future__ import annotations

import re

MAX_TEXT = 1_000  # characters kept of one outside text (an API's error details run to ~200)

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and any other two-character escape
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """One line of plain text: escape sequences removed, other control characters (line
    breaks included) turned into a space, cut to `limit` characters."""
    cleaned = _CONTROL.sub(" ", _ESCAPE.sub("", text)).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def printable_or_none(text: object) -> str | None:
    """`printable(str(text))`, None for None or what is empty once cleaned."""
    if text is None:
        return None
    return printable(str(text)) or None


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text rather than running as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
