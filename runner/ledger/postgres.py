"""The ledger in a PostgreSQL database (psycopg 3): for campaigns run from CI or cron, on
machines that keep no file between runs (issue 16).

The same methods as the SQLite store (sqlite.py) and the same guarantees:
- a message's `sending` mark is committed before its request leaves: the run's writer process
  (writer.py) commits each batch in one transaction, with `synchronous_commit = on` for its
  session whatever the server's default (a commit acknowledged before it reaches the WAL on
  disk could be lost by a crash of the server, and a sent message would then look unsent:
  https://www.postgresql.org/docs/current/wal-async-commit.html);
- a dead run's `sending` rows become `uncertain` (`recover`) when the next run starts;
- one run of a flow at a time: a run holds a session-level advisory lock keyed by the flow
  (and the schema), taken with pg_try_advisory_lock, so a second run is refused at once, as
  SQLite's file lock refuses it; the server drops the lock when the run's connection ends,
  however the run ends (kill -9 included).

Like the SQLite store, no token or password is stored; the location it shows (`location`) is
its URL without the password (locations.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from . import locations
from .pg_schema import MIGRATION_LOCK, PG_MIGRATIONS, PG_VERSION
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
from .schema import TABLES

CONNECT_TIMEOUT = 10  # seconds: a database that does not answer is an error, not a hang

_MARK = (
    "INSERT INTO messages (flow, step, recipient, state, attempts, first_attempt,"
    " last_attempt, body_hash) VALUES (%s, %s, %s, 'sending', 0, %s, %s, %s)"
    " ON CONFLICT (flow, recipient, step) DO UPDATE SET state = 'sending',"
    " last_attempt = excluded.last_attempt, body_hash = excluded.body_hash"
)
_OUTCOME = (
    "INSERT INTO messages (flow, step, recipient, state, message_id, http_status,"
    " error_code, error_title, error_details, attempts, first_attempt, last_attempt)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (flow, recipient, step) DO UPDATE SET state = excluded.state,"
    " message_id = excluded.message_id, http_status = excluded.http_status,"
    " error_code = excluded.error_code, error_title = excluded.error_title,"
    " error_details = excluded.error_details,"
    " attempts = messages.attempts + excluded.attempts,"
    " last_attempt = excluded.last_attempt"
)
_UPLOAD = (
    "INSERT INTO uploads VALUES (%s, %s, %s, %s) ON CONFLICT (api, sha256) DO UPDATE SET"
    " media_id = excluded.media_id, uploaded_at = excluded.uploaded_at"
)
# A customer's message once, whatever Meta repeats; a preference once per time and value.
_INBOUND = "INSERT INTO inbound VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
_PREFERENCE = "INSERT INTO preferences VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"

# the earliest time seen of each status (least() skips nulls): repeats change nothing
_FIRST_TIME = ",\n".join(f"{c} = least(statuses.{c}, excluded.{c})" for c in TIMES)
# Idempotent and monotonic: any order, any repetition, the same row (as sqlite.py's).
_STATUS = f"""
INSERT INTO statuses (message_id, status, rank, recipient, error_code, error_title,
    error_details, pricing_category, billable, sent_at, delivered_at, read_at, failed_at,
    received_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (message_id) DO UPDATE SET
    status = CASE WHEN excluded.rank > statuses.rank THEN excluded.status ELSE statuses.status END,
    rank = greatest(statuses.rank, excluded.rank),
    recipient = coalesce(statuses.recipient, excluded.recipient),
    error_code = coalesce(statuses.error_code, excluded.error_code),
    error_title = coalesce(statuses.error_title, excluded.error_title),
    error_details = coalesce(statuses.error_details, excluded.error_details),
    pricing_category = coalesce(excluded.pricing_category, statuses.pricing_category),
    billable = coalesce(excluded.billable, statuses.billable),
    {_FIRST_TIME},
    received_at = excluded.received_at
"""

Connection = psycopg.Connection[tuple[Any, ...]]
Row = tuple[object, ...]  # one row of a table, in TABLES' column order


def _pg(query: str) -> str:
    """A query shared with the SQLite store (queries.py) in psycopg's placeholders."""
    return query.replace("?", "%s")


class PostgresLedger(Reads):
    """One flow's view of a PostgreSQL ledger (the receiver's view spans every flow: `flow`
    ""). `url` may hold a password; it is kept for the writer process only (locations.py)."""

    def __init__(self, url: str, flow: str, *, lock: bool, reads: bool) -> None:
        self.flow = flow
        self._url = url
        self.shown = locations.remember(url)
        self._db: Connection | None = None
        self._reader: Connection | None = None
        try:
            self._db = self._connect()
            # durable before acknowledged, whatever the server's default (module docstring)
            self._db.execute("SET synchronous_commit = on")
            migrate(self._db, self.shown)
            if reads or lock:
                # reads (and the run's lock) on a connection of their own
                self._reader = self._connect()
            if lock:
                self._take_lock()
        except psycopg.Error as exc:
            self.close()
            raise LedgerError(f"{self.shown}: cannot use the ledger: {self._say(exc)}") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls, url: str, flow: str) -> PostgresLedger:
        """A run's ledger: locked against a second run of the flow, readable; written through
        a writer process (writer.py)."""
        return cls(url, flow, lock=True, reads=True)

    @classmethod
    def for_writer(cls, url: str, flow: str = "") -> PostgresLedger:
        """The writing side only: the run's writer process, or the webhook receiver."""
        return cls(url, flow, lock=False, reads=False)

    @classmethod
    def for_customers(cls, url: str) -> PostgresLedger:
        """What customers said, to read and to add to, beside a run."""
        return cls(url, "", lock=False, reads=True)

    @property
    def location(self) -> str:
        """The URL without its password: what people see, and the writer is started with."""
        return self.shown

    def close(self) -> None:
        for connection in (self._reader, self._db):
            if connection is not None:
                connection.close()
        self._reader = self._db = None

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Writes

    def recover(self) -> int:
        """Turn the `sending` rows a dead run left behind into `uncertain`; how many. Only a
        run holding the flow's lock calls it, so no live run's rows are touched."""
        with self._writing():
            cursor = self._writes().execute(
                "UPDATE messages SET state = 'uncertain' WHERE flow = %s AND state = 'sending'",
                (self.flow,),
            )
        return cursor.rowcount

    def commit(self, batch: Batch) -> None:
        """Marks, outcomes and uploads in one durable transaction (the run's group commit)."""
        if not batch:
            return
        stamp = now()
        db = self._writes()
        with self._writing(), db.transaction(), db.cursor() as cursor:
            outcomes = [outcome_row(self.flow, o, stamp) for o in batch.outcomes]
            marks = [
                (self.flow, m.step, m.recipient, stamp, stamp, m.body_hash) for m in batch.marks
            ]
            uploads = [(u.api, u.sha256, u.media_id, stamp) for u in batch.uploads]
            preferences = [preference_row(p, stamp) for p in batch.preferences]
            for query, rows in (
                (_OUTCOME, outcomes),
                (_MARK, marks),
                (_UPLOAD, uploads),
                (_PREFERENCE, preferences),
            ):
                if rows:
                    cursor.executemany(query, rows)

    def record_webhooks(self, heard: Sequence[Status | Inbound | Preference]) -> None:
        """What the webhooks said, in one durable transaction; any order, any repetition, the
        same rows."""
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
        with self._writing(), db.transaction(), db.cursor() as cursor:
            writes = ((_STATUS, statuses), (_INBOUND, inbound), (_PREFERENCE, preferences))
            for query, rows in writes:
                if rows:
                    cursor.executemany(query, rows)

    # Filling a new ledger (`flowrun ledger copy`: copy.py)

    def held(self) -> dict[str, int]:
        """table → its number of rows, for the tables that hold any."""
        with self._writing(), self._writes().cursor() as cursor:
            return _held(cursor)

    def fill(self, tables: Iterable[tuple[str, Iterable[Sequence[Row]]]]) -> dict[str, int]:
        """Every table's rows (batches of TABLES' columns) in one transaction, into a ledger
        that holds none: refused (LedgerError, nothing written) if it holds any. table → rows
        written. COPY FROM STDIN streams the rows (the fastest way in:
        https://www.postgresql.org/docs/current/populate.html#POPULATE-COPY-FROM); the tables
        are locked against other writers first, so two copies at once cannot both find the
        ledger empty."""
        db = self._writes()
        written: dict[str, int] = {}
        with self._writing(), db.transaction(), db.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {', '.join(TABLES)} IN SHARE ROW EXCLUSIVE MODE")
            refuse_filled(self.shown, _held(cursor))
            for table, batches in tables:
                written[table] = 0
                copy_in = f"COPY {table} ({', '.join(TABLES[table])}) FROM STDIN"
                with cursor.copy(copy_in) as copy:
                    for batch in batches:
                        for row in batch:
                            copy.write_row(row)
                        written[table] += len(batch)
        return written

    # Plumbing

    def _connect(self) -> Connection:
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"flowrun {self.flow}".strip(),
        )

    def _take_lock(self) -> None:
        """The flow's run lock (module docstring), on the reading connection, which lives as
        long as the run."""
        assert self._reader is not None
        schema = self._reader.execute("SELECT current_schema()").fetchone()
        key = run_lock_key(str(schema[0] if schema else ""), self.flow)
        taken = self._reader.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (taken and taken[0]):
            raise LedgerError(
                f"{self.shown}: another flowrun is using this ledger for flow {self.flow!r};"
                " wait for it to finish (or stop it) before running again"
            )

    def _read(self, query: str, args: tuple[str, ...]) -> list[Any]:
        assert self._reader is not None, "this ledger was opened for writing only"
        try:
            return self._reader.execute(_pg(query), args).fetchall()
        except psycopg.Error as exc:
            raise LedgerError(f"{self.shown}: cannot read the ledger: {self._say(exc)}") from None

    def _writes(self) -> Connection:
        assert self._db is not None, "the ledger is closed"
        return self._db

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise LedgerError(f"{self.shown}: cannot write the ledger: {self._say(exc)}") from None

    def _say(self, exc: psycopg.Error) -> str:
        """The driver's message on one line, without the password should it hold it."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        return locations.scrub(text, self._url)


def _held(cursor: psycopg.Cursor[tuple[Any, ...]]) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        row = cursor.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = int(row[0]) if row else 0
    return {table: n for table, n in counts.items() if n}


def run_lock_key(schema: str, flow: str) -> int:
    """pg_try_advisory_lock's bigint for one flow's runs in one schema (advisory locks are
    per database already)."""
    digest = hashlib.sha256(f"flowrun run\0{schema}\0{flow}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrate(db: Connection, shown: str) -> None:
    """Bring the ledger to the current schema (pg_schema.py), or refuse one from a newer
    flowrun or a database whose `messages` table is another program's."""
    if _version(db, shown) == PG_VERSION:
        return  # the common case: no lock taken
    # The lock is taken before the transaction begins: a transaction that began before another
    # runner's migration committed may not see its tables (catalog lookups without a table
    # lock keep the caches of the transaction's start), and would migrate a second time.
    db.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        with db.transaction():
            version = _version(db, shown)  # again: another runner may have migrated meanwhile
            if version is None:
                row = db.execute("SELECT to_regclass('messages') IS NOT NULL").fetchone()
                if row and row[0]:
                    raise LedgerError(
                        f"{shown}: not a flowrun ledger (its schema holds a messages table of"
                        " another program); use another database or schema"
                    )
            for script in PG_MIGRATIONS[version or 0 :]:
                db.execute(script)  # several statements: allowed without parameters
            db.execute("UPDATE flowrun_schema SET version = %s", (PG_VERSION,))
    finally:
        db.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _version(db: Connection, shown: str) -> int | None:
    """The schema version; None for a database without flowrun's tables."""
    exists = db.execute("SELECT to_regclass('flowrun_schema') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return None
    row = db.execute("SELECT max(version) FROM flowrun_schema").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    if version > PG_VERSION:
        raise LedgerError(
            f"{shown}: this ledger was written by a newer flowrun (schema {version}, this one knows"
            f" {PG_VERSION}); upgrade flowrun, or use a new --ledger"
        )
    return version
