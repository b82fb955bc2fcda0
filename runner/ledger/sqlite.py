"""The ledger in one SQLite file: WAL mode, `synchronous=FULL`, batched transactions.

The guarantee it carries: a message is marked `sending` and committed *before* its request
leaves. A run that dies after that point leaves `sending` rows, which the next run turns into
`uncertain` (the API may or may not have the message) and never resends unless asked. No
token, password or header is ever stored: rows hold ids, states and the API's error fields.

Three kinds of user open the same file, each with only the connections it needs:
- a run (`SqliteLedger.for_run`): holds the lock, reads; its writes go through the writer
  process (writer.py), which opens the file with `for_writer`;
- the webhook receiver (`for_writer` too): writes statuses only, and takes no lock, since a
  run may hold it;
- reports (reading.py): read-only, alongside all of these.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .reads import Reads
from .records import (
    Batch,
    Inbound,
    LedgerError,
    Preference,
    Status,
    now,
    refuse_filled,
)
from .rows import TIMES, inbound_row, outcome_row, preference_row, status_row
from .schema import MIGRATIONS, TABLES, VERSION

BUSY_TIMEOUT_MS = 10_000  # a report or receiver holding the file briefly: wait, not fail
Row = tuple[object, ...]  # one row of a table, in TABLES' column order

_MARK = (
    "INSERT INTO messages (flow, step, recipient, state, attempts, first_attempt,"
    " last_attempt, body_hash) VALUES (?, ?, ?, 'sending', 0, ?, ?, ?)"
    " ON CONFLICT (flow, step, recipient) DO UPDATE SET state = 'sending',"
    " last_attempt = excluded.last_attempt, body_hash = excluded.body_hash"
)
_OUTCOME = (
    "INSERT INTO messages (flow, step, recipient, state, message_id, http_status,"
    " error_code, error_title, error_details, attempts, first_attempt, last_attempt)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (flow, step, recipient) DO UPDATE SET state = excluded.state,"
    " message_id = excluded.message_id, http_status = excluded.http_status,"
    " error_code = excluded.error_code, error_title = excluded.error_title,"
    " error_details = excluded.error_details,"
    " attempts = messages.attempts + excluded.attempts,"
    " last_attempt = excluded.last_attempt"
)
_UPLOAD = "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?)"
# A customer's message once, whatever Meta repeats; a preference once per time and value.
_INBOUND = "INSERT OR IGNORE INTO inbound VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PREFERENCE = "INSERT OR IGNORE INTO preferences VALUES (?, ?, ?, ?, ?, ?)"

_FIRST_TIME = ",\n".join(  # the earliest time seen of each status: repeats change nothing
    f"{c} = min(coalesce(statuses.{c}, excluded.{c}), coalesce(excluded.{c}, statuses.{c}))"
    for c in TIMES
)
# Idempotent and monotonic: any order, any repetition, the same row.
_STATUS = f"""
INSERT INTO statuses (message_id, status, rank, recipient, error_code, error_title,
    error_details, pricing_category, billable, sent_at, delivered_at, read_at, failed_at,
    received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (message_id) DO UPDATE SET
    status = CASE WHEN excluded.rank > statuses.rank THEN excluded.status ELSE statuses.status END,
    rank = max(statuses.rank, excluded.rank),
    recipient = coalesce(statuses.recipient, excluded.recipient),
    error_code = coalesce(statuses.error_code, excluded.error_code),
    error_title = coalesce(statuses.error_title, excluded.error_title),
    error_details = coalesce(statuses.error_details, excluded.error_details),
    pricing_category = coalesce(excluded.pricing_category, statuses.pricing_category),
    billable = coalesce(excluded.billable, statuses.billable),
    {_FIRST_TIME},
    received_at = excluded.received_at
"""


class SqliteLedger(Reads):
    """One flow's view of a SQLite ledger (the receiver's view spans every flow: `flow` "")."""

    # One run at a time (the file lock): no runner ids, and every recipient is the run's.
    runner: int | None = None

    def __init__(self, path: Path, flow: str, *, lock: bool, reads: bool) -> None:
        self.path = path
        self.flow = flow
        self._lock = _take_lock(path) if lock else None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        try:
            _inspect(path)
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed `sending` mark must survive power loss too, or a sent message
            # could later look unsent; group commits keep the number of fsyncs small.
            self._db.execute("PRAGMA synchronous=FULL")
            migrate(self._db, path)
            if reads:
                # Reads on a connection of their own: WAL lets them go on while a write commits.
                self._reader = _connect(path)
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise damaged(path, exc) from None
            raise LedgerError(f"{path}: cannot use the ledger: {exc}") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls, path: Path, flow: str) -> SqliteLedger:
        """A run's ledger: locked against a second run, readable; written through a writer
        process (writer.py)."""
        return cls(path, flow, lock=True, reads=True)

    @classmethod
    def for_writer(cls, path: Path, flow: str = "") -> SqliteLedger:
        """The writing side only: the run's writer process, or the webhook receiver."""
        return cls(path, flow, lock=False, reads=False)

    @classmethod
    def for_customers(cls, path: Path) -> SqliteLedger:
        """What customers said, to read and to add to (`flowrun contacts`), beside a run."""
        return cls(path, "", lock=False, reads=True)

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        for connection in (self._reader, self._db):
            if connection is not None:
                connection.close()
        self._reader = self._db = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Writes

    def recover(self) -> int:
        """Turn the `sending` rows a dead run left behind into `uncertain`; how many."""
        with self._writing():
            cursor = self._writes().execute(
                "UPDATE messages SET state = 'uncertain' WHERE flow = ? AND state = 'sending'",
                (self.flow,),
            )
        return cursor.rowcount

    def claim(self, recipients: Sequence[str]) -> dict[str, bool]:
        """Every recipient is this run's: the file admits one run (postgres.py shares)."""
        return dict.fromkeys(recipients, True)

    def running(self) -> int:
        """This run alone."""
        return 1

    def served(self, recipients: Sequence[str]) -> None:
        """Nothing to say: no other runner could take them over."""

    def orphans(self) -> set[tuple[str, int]]:
        """No other runner: nothing to take over."""
        return set()

    def following(self) -> None:
        """No other runner to leave the rate to."""

    def commit(self, batch: Batch) -> None:
        """Marks, outcomes and uploads in one durable transaction (the run's group commit)."""
        if not batch:
            return
        stamp = now()
        db = self._writes()
        with self._writing(), _transaction(db):
            db.executemany(_OUTCOME, [outcome_row(self.flow, o, stamp) for o in batch.outcomes])
            db.executemany(
                _MARK,
                [(self.flow, m.step, m.recipient, stamp, stamp, m.body_hash) for m in batch.marks],
            )
            db.executemany(_UPLOAD, [(u.api, u.sha256, u.media_id, stamp) for u in batch.uploads])
            db.executemany(_PREFERENCE, [preference_row(p, stamp) for p in batch.preferences])

    def record_webhooks(self, heard: Sequence[Status | Inbound | Preference]) -> None:
        """What the webhooks said (delivery statuses, customers' messages and preferences), in
        one durable transaction; any order, any repetition, the same rows."""
        received = now()
        statuses, inbound, preferences = [], [], []
        for item in heard:
            if isinstance(item, Status):
                statuses.append(status_row(item, received))
            elif isinstance(item, Inbound):
                inbound.append(inbound_row(item, received))
            else:
                preferences.append(preference_row(item, received))
        db = self._writes()
        with self._writing(), _transaction(db):
            db.executemany(_STATUS, statuses)
            db.executemany(_INBOUND, inbound)
            db.executemany(_PREFERENCE, preferences)

    # Filling a new ledger (`flowrun ledger copy`: copy.py)

    def held(self) -> dict[str, int]:
        """table → its number of rows, for the tables that hold any."""
        return _held(self._writes())

    def fill(self, tables: Iterable[tuple[str, Iterable[Sequence[Row]]]]) -> dict[str, int]:
        """Every table's rows (batches of TABLES' columns) in one transaction, into a ledger
        that holds none: refused (LedgerError, nothing written) if it holds any. table → rows
        written."""
        db = self._writes()
        written: dict[str, int] = {}
        with self._writing(), _transaction(db):
            refuse_filled(self.location, _held(db))  # again, under the write lock
            for table, batches in tables:
                columns = TABLES[table]
                insert = (
                    f"INSERT INTO {table} ({', '.join(columns)})"
                    f" VALUES ({', '.join('?' * len(columns))})"
                )
                written[table] = 0
                for batch in batches:
                    db.executemany(insert, batch)
                    written[table] += len(batch)
        return written

    # Plumbing

    def _read(self, query: str, args: tuple[str, ...]) -> list[Any]:
        """All rows of a query; a damaged file is one clear LedgerError, not a traceback."""
        assert self._reader is not None, "this ledger was opened for writing only"
        try:
            return self._reader.execute(query, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise damaged(self.path, exc) from None

    def _writes(self) -> sqlite3.Connection:
        assert self._db is not None, "the ledger is closed"
        return self._db

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(self.path, exc) from None
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from None


def _held(db: sqlite3.Connection) -> dict[str, int]:
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    return {table: n for table, n in counts.items() if n}


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Malformed pages (SQLITE_CORRUPT and its variants), as opposed to a file that is no
    database at all or one that is busy."""
    return getattr(exc, "sqlite_errorname", "").startswith("SQLITE_CORRUPT")


def damaged(path: Path, exc: sqlite3.DatabaseError) -> LedgerError:
    """The ledger file is damaged (a disk fault, a copy made while it was written): nothing
    may be sent on the word of a ledger that cannot be read whole."""
    wal = path.with_name(path.name + "-wal")
    stray = f" (if {wal.name} came from another database, move it away first)"
    return LedgerError(
        f"{path}: the ledger is damaged ({exc}); nothing is sent on its word. Keep a copy, then"
        f" rebuild it: sqlite3 {path} .recover | sqlite3 REPAIRED.sqlite (and run with"
        f" --ledger REPAIRED.sqlite){stray if wal.exists() else ''}"
    )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _inspect(path: Path) -> None:
    """Refuse what is not a flowrun ledger before a writable connection touches it.

    Closing a writable connection checkpoints the `-wal` file into the database: a stray wal
    of another database (copied along, restored from elsewhere) would be merged into the ledger
    and deleted, losing the ledger. A read-only connection never checkpoints."""
    try:
        if path.stat().st_size == 0:
            return  # new (or just created by the lock): nothing to lose
    except FileNotFoundError:
        return
    wal = path.with_name(path.name + "-wal")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            _check_version(db, path)
            _check_legacy(db, path)
    except (LedgerError, sqlite3.DatabaseError) as exc:
        if isinstance(exc, sqlite3.DatabaseError) and is_damage(exc):
            raise damaged(path, exc) from None
        if not wal.exists():
            if isinstance(exc, LedgerError):
                raise
            raise LedgerError(f"{path}: cannot use the ledger: {exc}") from None
        raise LedgerError(
            f"{path}: not readable as a flowrun ledger together with {wal.name} ({exc}); if"
            f" {wal.name} came from another database, move it away (keep it) and run again"
        ) from None


def _check_version(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > VERSION:
        raise LedgerError(
            f"{path}: this ledger was written by a newer flowrun (schema {version}, this"
            f" one knows {VERSION}); upgrade flowrun, or use a new --ledger"
        )


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the ledger to the current schema (see schema.py), or refuse one from a newer
    flowrun or another program."""
    if db.execute("PRAGMA user_version").fetchone()[0] == VERSION:
        return  # the common case: no write lock taken
    with _transaction(db):
        _check_version(db, path)  # again: another process may have migrated meanwhile
        _check_legacy(db, path)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")


def _check_legacy(db: sqlite3.Connection, path: Path) -> None:
    """A file with tables that are not a flowrun ledger's (or a ledger of an unknown older
    format) is refused rather than written into."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
    if has_meta is None:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
            raise LedgerError(f"{path}: not a flowrun ledger (it holds other tables)")
        return
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is not None and row[0] != "1":
        raise LedgerError(
            f"{path}: ledger schema {row[0]} is not 1; use a flowrun of the version that wrote"
            " it, or a new --ledger"
        )


def _statements(script: str) -> list[str]:
    """A script's statements, for running inside a transaction (executescript would commit
    first)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [s for s in statements if s]


def _take_lock(path: Path) -> int:
    """An exclusive lock on the ledger file itself, held while a run uses it: two runs of one
    campaign at once would each think the other's `sending` rows were their own. The lock is
    on the file (its inode), so a symlink or a hard link to the same ledger meets it too.

    flock, not fcntl: SQLite's own locks are fcntl locks, which Linux keeps apart from flock
    locks, so this one never interferes with them. The descriptor stays open until the run's
    connections are closed (closing a descriptor of the file drops the process's fcntl
    locks: https://sqlite.org/howtocorrupt.html#_posix_advisory_locks_canceled_by_a_separate_thread_doing_close_)."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot create the ledger here: {exc.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise LedgerError(
            f"{path}: another flowrun is using this ledger; wait for it to finish "
            "(or stop it) before running again"
        ) from None
    return descriptor
