"""`flowrun ledger copy SRC DST`: a campaign's whole history from one ledger into another,
SQLite to PostgreSQL or back (issue 16, item 4), so that a team can start on a laptop and move
to CI (or back) without sending anything again.

What it promises, and why:
- every row of every table (schema.TABLES: messages, uploads, statuses, inbound,
  preferences), as it is: states, attempts, times and the webhooks' words, so that the
  destination answers every question a run asks (what was sent, what waits, who wrote, who
  stopped, which media ids are fresh) as the source did;
- the source is never written: a SQLite file is read through a read-only connection (mode=ro),
  a PostgreSQL one in a READ ONLY transaction; both read one snapshot (a SQLite read
  transaction, PostgreSQL's REPEATABLE READ), so a run or receiver writing the source meanwhile
  cannot tear the copy. A SQLite ledger of an older schema is copied to a temporary file first
  (sqlite3's backup API) and that copy is migrated (sqlite.migrate), not the source;
- the destination is migrated to the current schema (the stores do it on open) and filled in
  one transaction: an interrupted copy leaves it empty, never half a history;
- the destination must hold no rows at all, in any table. Merging two histories would need a
  rule per row (a `failed` row beside a `sent` one of the same message; statuses heard twice),
  and a wrong rule resends a message or hides one; a destination that already has rows is
  most often the wrong one (a URL pasted from another campaign). One clear line and nothing
  written is the safe answer: name a new file, database or schema;
- rows stream in batches of BATCH (a million messages never sit in memory);
- a PostgreSQL location is shown without its password (locations.py), in errors too.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

from . import locations
from .pg_schema import PG_VERSION
from .postgres import CONNECT_TIMEOUT, PostgresLedger
from .records import LedgerError, refuse_filled
from .schema import TABLES, VERSION
from .sqlite import SqliteLedger, damaged, is_damage

BATCH = 5_000  # rows read and written at a time
Row = tuple[object, ...]


class Source(Protocol):
    """A ledger read for copying: one snapshot, nothing written."""

    location: str

    def rows(self, table: str) -> Iterator[Sequence[Row]]:
        """The table's rows in TABLES' column order, BATCH at a time."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Copied:
    source: str  # shown locations
    destination: str
    rows: dict[str, int]  # table → rows copied
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def copy_ledger(source: str, destination: str) -> Copied:
    """Copy every row of `source` into the empty ledger `destination` (module docstring)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        reader = open_source(source)
        stack.callback(reader.close)
        target = _open_destination(destination)
        stack.callback(target.close)
        # said before a row is read; checked again inside the filling transaction
        refuse_filled(target.location, target.held())
        written = target.fill((table, reader.rows(table)) for table in TABLES)
    return Copied(reader.location, target.location, written, time.monotonic() - started)


@contextlib.contextmanager
def sqlite_snapshot(url: str) -> Iterator[Path]:
    """A PostgreSQL ledger copied whole into a temporary SQLite file, for the read-only reader
    (reading.py, whose queries are SQLite's: julianday, group_concat) to read as one
    snapshot: what `flowrun report --ledger postgresql://...` reads. Measured on 100,000
    messages and 50,000 statuses: the report takes 0.23 s on the SQLite file and 1.27 s on
    PostgreSQL, 1.0 s of it the copy; a second set of the reader's queries in PostgreSQL's
    dialect would save that second and have to be kept equal to the first forever."""
    with tempfile.TemporaryDirectory(prefix="flowrun-report-") as folder:
        path = Path(folder) / "ledger.sqlite"
        try:
            copy_ledger(url, str(path))
        except EmptyLedger:
            path.unlink(missing_ok=True)  # no ledger yet: nobody wrote (as a missing file)
        yield path


class EmptyLedger(LedgerError):
    """A database (or schema) no flowrun has written a ledger into yet."""


def open_source(location: str) -> Source:
    if locations.is_postgres(location):
        return PostgresSource(location)
    return SqliteSource(Path(location))


def _open_destination(location: str) -> SqliteLedger | PostgresLedger:
    if locations.is_postgres(location):
        return PostgresLedger.for_writer(location)
    # the file's run lock: no run may start on it while it is being filled
    return SqliteLedger(Path(location), "", lock=True, reads=False)


class SqliteSource:
    """A SQLite ledger, read-only, as one snapshot."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise LedgerError(f"{path}: no ledger here (nothing to copy)")
        self.location = str(path)
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        try:
            self._db = _read_only(path)
            version = self._version(path)
            if version < VERSION:
                self._db = self._migrated_copy(path)
            self._db.execute("BEGIN")  # one snapshot from the first read on
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise damaged(path, exc) from None
            raise LedgerError(f"{path}: not a flowrun ledger ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _version(self, path: Path) -> int:
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            raise LedgerError(f"{path}: not a flowrun ledger (no meta table)")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > VERSION:
            raise LedgerError(
                f"{path}: this ledger was written by a newer flowrun (schema {version}, this one"
                f" knows {VERSION}); copy it with that flowrun"
            )
        return version

    def _migrated_copy(self, path: Path) -> sqlite3.Connection:
        """An older ledger, copied whole into a temporary file and migrated there."""
        self._temporary = tempfile.TemporaryDirectory(prefix="flowrun-copy-")
        copied = Path(self._temporary.name) / "ledger.sqlite"
        with contextlib.closing(sqlite3.connect(copied)) as target:
            self._db.backup(target)
        self._db.close()
        try:
            SqliteLedger.for_writer(copied).close()  # migrates
        except LedgerError as exc:
            raise LedgerError(str(exc).replace(str(copied), str(path))) from None
        return _read_only(copied)

    def rows(self, table: str) -> Iterator[Sequence[Row]]:
        cursor = self._db.execute(f"SELECT {', '.join(TABLES[table])} FROM {table}")
        try:
            while batch := cursor.fetchmany(BATCH):
                yield batch
        except sqlite3.DatabaseError as exc:
            raise damaged(Path(self.location), exc) from None

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._db.close()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None


class PostgresSource:
    """A PostgreSQL ledger, in one READ ONLY, REPEATABLE READ transaction (one snapshot)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.location = locations.shown(url)
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None
        try:
            self._db = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT)
            self._db.read_only = True
            self._db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._check_version()
        except psycopg.Error as exc:
            self.close()
            raise self._unreadable(exc) from None
        except BaseException:
            self.close()
            raise

    def _check_version(self) -> None:
        assert self._db is not None
        found = self._db.execute("SELECT to_regclass('flowrun_schema') IS NOT NULL").fetchone()
        if not (found and found[0]):
            raise EmptyLedger(f"{self.location}: not a flowrun ledger (nothing to copy)")
        row = self._db.execute("SELECT max(version) FROM flowrun_schema").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        # TABLES' columns are the same in every version so far (schema 2 added tables and a
        # column of its own): an older ledger copies as it is
        if not 1 <= version <= PG_VERSION:
            raise LedgerError(
                f"{self.location}: ledger schema {version}, this flowrun knows {PG_VERSION};"
                " copy it with the flowrun that wrote it"
            )

    def rows(self, table: str) -> Iterator[Sequence[Row]]:
        assert self._db is not None
        query = f"SELECT {', '.join(TABLES[table])} FROM {table}"
        try:  # a server-side cursor: BATCH rows come over the wire at a time
            with self._db.cursor(name=f"flowrun_copy_{table}") as cursor:
                cursor.itersize = BATCH
                cursor.execute(query)
                while batch := cursor.fetchmany(BATCH):
                    yield batch
        except psycopg.Error as exc:
            raise self._unreadable(exc) from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()  # the transaction only read: nothing to commit
            self._db = None

    def _unreadable(self, exc: psycopg.Error) -> LedgerError:
        """The driver's message on one line, without the password should it hold it."""
        said = locations.scrub(" ".join(str(exc).split()) or type(exc).__name__, self._url)
        return LedgerError(f"{self.location}: cannot read the ledger: {said}")


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
