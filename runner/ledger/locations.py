"""Where a ledger lives, and how it is shown to people: a file path, or a PostgreSQL URL whose
password is never printed, never written.

A PostgreSQL location is known by its scheme (`postgresql://` or `postgres://`, as libpq takes
them: https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS). What
flowrun shows, logs and hands to its child processes on their command line is the URL without
its password (`shown`); the password stays in this process's memory, and a child process (the
run's ledger writer) gets it in its environment as PGPASSWORD, which libpq reads when the URL
has none. A process's environment is readable by its own user only (/proc/PID/environ is
0400); its command line is readable by everyone (`ps`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
_passwords: dict[str, str] = {}  # shown location → its password, for child processes


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0].lower() in SCHEMES


def shown(location: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter)."""
    return _split(location)[0]


def password_of(location: str) -> str | None:
    return _split(location)[1]


def remember(location: str) -> str:
    """The shown location; its password is kept for `child_environment`."""
    visible, password = _split(location)
    if password is not None:
        _passwords[visible] = password
    return visible


def child_environment(location: str) -> dict[str, str] | None:
    """The environment of a child process that opens `location` (a shown URL): this one's,
    with the password in PGPASSWORD; None (inherit as is) when there is nothing to add."""
    password = _passwords.get(location)
    if password is None:
        return None
    return {**os.environ, "PGPASSWORD": password}


def scrub(text: str, location: str) -> str:
    """An error message with the location's password replaced, should a driver repeat it."""
    password = password_of(location)
    return text.replace(password, "***") if password else text


def _split(location: str) -> tuple[str, str | None]:
    parts = urlsplit(location)
    password = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user, colon, secret = userinfo.partition(":")
        if colon:
            password = unquote(secret)
        netloc = f"{user}@{hosts}"
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = value
        else:
            query.append((key, value))
    visible = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
    return visible, password
