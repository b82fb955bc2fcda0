"""The ledger in a PostgreSQL database (psycopg 3): for campaigns run from CI or cron, on
machines that keep no file between runs (issue 16).

The same methods as the SQLite store (sqlite.py) and the same guarantees:
- a message's `sending` mark is committed before its request leaves: the run's writer process
  (writer.py) commits each batch in one transaction, with `synchronous_commit = on` for its
  session whatever the server's default (a commit acknowledged before it reaches the WAL on
  disk could be lost by a crash of the server, and a sent message would then look unsent:
  https://www.postgresql.org/docs/current/wal-async-commit.html);
- a dead run's `sending` rows become `uncertain` (`recover`) when the next run starts;
- nothing sent twice, also when several runs of one flow share the work (below).

Several runners (issue 16, item 2): runs of one flow on one database, on one machine or many,
share its recipients instead of refusing each other (a SQLite file still takes one run).
- **Who is alive.** A run registers in `runners` and holds a session-level advisory lock on
  its id (`pg_advisory_lock`, in the namespace of the ledger's schema) for as long as it runs.
  The server drops the lock the moment the run's connection ends, kill -9 included, so
  `pg_locks` says exactly which runners are alive, with no lease to wait out and no clock to
  trust (https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS,
  https://www.postgresql.org/docs/current/view-pg-locks.html). A machine that vanishes
  without closing its connection (power, network) is found out by the server's TCP
  keepalives, which the run's lock connection sets to about a minute (LOCK_KEEPALIVES:
  https://www.postgresql.org/docs/current/runtime-config-connection.html).
- **One rate.** The flow's rate is the phone number's: each run keeps its part of it
  (`running` counts the runs alive and in their pass; a follower, which sends little, leaves
  the rate to them; executor.py asks every few seconds).
- **The flowrun before runners** held the flow's run lock exclusively and knows no claims:
  every run holds that lock shared (`_exclude_older_runs`), so neither starts beside the
  other.
- **Who serves whom.** A runner claims recipients in batches (`claim`: one INSERT ... ON
  CONFLICT per batch) before serving them; a recipient whose claim is held by a live runner
  is that runner's. Claims stay after a run (`served` says it got through its recipient), so
  a claim that is new proves nobody ever wrote anything of that recipient in this flow: a first
  run keeps skipping its history read per recipient.
- **A runner that died.** The first runner to notice (`recover`, at the start of a run, after
  its pass, and every few seconds while following) fences it (`ended_at`, `fenced`) and turns
  its `sending` rows (every mark holds its runner's id) into `uncertain`; the recipients it
  had not got through (`orphans`) are claimed again, by the runs whose recipients they are
  (`claim` takes a claim only on positive evidence that its holder ended). The fence is what
  makes this safe whatever the timing: every commit of a run's writer first takes a share lock
  on its own `runners` row and refuses to write once it is fenced, and fencing takes that row's
  lock, so a late batch from the dead run (its writer outlives it for a moment) either
  committed before the fence, and is recovered with the rest, or is refused.

Like the SQLite store, no token or password is stored; the location it shows (`location`) is
its URL without the password (locations.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import zlib
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
# The server probes a silent run's lock connection after 30 s, every 10 s, 3 times: a vanished
# machine's run is known dead (its lock dropped) within a minute, not the kernel's two hours.
LOCK_KEEPALIVES = (
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
)

_MARK = (
    "INSERT INTO messages (flow, step, recipient, state, attempts, first_attempt,"
    " last_attempt, body_hash, runner) VALUES (%s, %s, %s, 'sending', 0, %s, %s, %s, %s)"
    " ON CONFLICT (flow, recipient, step) DO UPDATE SET state = 'sending',"
    " last_attempt = excluded.last_attempt, body_hash = excluded.body_hash,"
    " runner = excluded.runner"
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

# The runners alive: those whose session holds its advisory lock (two int4 keys: classid is
# the first, objid the second, objsubid 2), in this database.
_LIVE = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 2 AND classid::bigint = %s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# Runners of the flow that are gone without saying so (not ended, lock not held): fenced.
_FENCE = (
    "UPDATE runners SET ended_at = %s, fenced = true WHERE flow = %s AND ended_at IS NULL"
    f" AND id <> %s AND id NOT IN ({_LIVE})"
)
# `sending` rows of runners that ended (or are unknown: rows of an older flowrun, or copied)
_RECOVER = (
    "UPDATE messages SET state = 'uncertain' WHERE flow = %s AND state = 'sending'"
    " AND (runner IS NULL OR EXISTS (SELECT 1 FROM runners AS r"
    " WHERE r.id = messages.runner AND r.ended_at IS NOT NULL))"
)
# A batch of recipients for this runner: new ones, and those of runners that ended. Sorted, so
# that every statement that locks claims locks them in one order (no deadlock). A claim is
# taken only on positive evidence that its runner ended: under READ COMMITTED a row changed
# while the statement waited is checked again in its newest version, but a subquery still sees
# the statement's snapshot, where a runner that started since does not exist; "no live runner
# holds it" would then be true of a live one
# (https://www.postgresql.org/docs/current/transaction-iso.html#XACT-READ-COMMITTED).
# `generation` 0: inserted now, nobody ever held it.
_CLAIM = """
INSERT INTO claims (flow, recipient, runner)
SELECT %s, phone, %s FROM unnest(%s::text[]) AS phone ORDER BY phone
ON CONFLICT (flow, recipient) DO UPDATE
SET runner = excluded.runner, served = false, generation = claims.generation + 1
WHERE EXISTS (SELECT 1 FROM runners AS r WHERE r.id = claims.runner AND r.ended_at IS NOT NULL)
RETURNING recipient, generation = 0
"""
# Recipients a watched runner (alive at this run's start, or started since) held when it ended
# without getting through them: the claims `claim` then takes (read only here)
_ORPHANS = (
    "SELECT c.recipient, c.runner FROM claims AS c JOIN runners AS r ON r.id = c.runner"
    " WHERE c.flow = %s AND NOT c.served AND r.ended_at IS NOT NULL"
    " AND (r.id = ANY(%s) OR r.id > %s)"
)

Connection = psycopg.Connection[tuple[Any, ...]]
Row = tuple[object, ...]  # one row of a table, in TABLES' column order


def _pg(query: str) -> str:
    """A query shared with the SQLite store (queries.py) in psycopg's placeholders."""
    return query.replace("?", "%s")


class PostgresLedger(Reads):
    """One flow's view of a PostgreSQL ledger (the receiver's view spans every flow: `flow`
    ""). `url` may hold a password; it is kept for the writer process only (locations.py)."""

    def __init__(
        self, url: str, flow: str, *, lock: bool, reads: bool, runner: int | None = None
    ) -> None:
        self.flow = flow
        # a run's id among the flow's runners (module docstring); its writer is given it
        self.runner = runner
        self._space = 0  # the advisory lock namespace of this ledger's runners
        self._registered = False  # a run's: says when it ends (close)
        # the runners seen alive by this run (`recover`): their claims are this run's to take
        # over should they end (`orphans`); those that start later are watched too
        self._watched: set[int] = set()
        self._url = url
        self.shown = locations.remember(url)
        self._db: Connection | None = None
        self._reader: Connection | None = None
        try:
            self._db = self._connect()
            # durable before acknowledged, whatever the server's default (module docstring)
            self._db.execute("SET synchronous_commit = on")
            if reads or lock:
                # reads (and the run's lock) on a connection of their own
                self._reader = self._connect()
            if lock:
                self._exclude_older_runs()
            migrate(self._db, self.shown)
            if lock:
                self._register()
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
    def for_writer(cls, url: str, flow: str = "", runner: int | None = None) -> PostgresLedger:
        """The writing side only: the run's writer process (writing as `runner`, and refusing
        to once that runner is fenced), or the webhook receiver."""
        return cls(url, flow, lock=False, reads=False, runner=runner)

    @classmethod
    def for_customers(cls, url: str) -> PostgresLedger:
        """What customers said, to read and to add to, beside a run."""
        return cls(url, "", lock=False, reads=True)

    @property
    def location(self) -> str:
        """The URL without its password: what people see, and the writer is started with."""
        return self.shown

    def close(self) -> None:
        """A run's ledger says the run ended (its unserved claims go to whoever runs next);
        the connections close, and with them the run's lock."""
        if self._registered and self._db is not None:
            with contextlib.suppress(psycopg.Error):  # (gone: the server dropped the lock)
                self._db.execute(
                    "UPDATE runners SET ended_at = %s WHERE id = %s AND ended_at IS NULL",
                    (now(), self.runner),
                )
        self._registered = False
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
        """Fence the flow's runners that died, and turn the `sending` rows of every runner
        that ended into `uncertain`; how many. A live runner's rows are never touched."""
        db = self._writes()
        with self._writing(), db.transaction():
            db.execute(_FENCE, (now(), self.flow, self.runner or 0, self._space))
            cursor = db.execute(_RECOVER, (self.flow,))
            if self._registered:
                alive = db.execute(
                    "SELECT id FROM runners WHERE flow = %s AND ended_at IS NULL AND id <> %s",
                    (self.flow, self.runner),
                )
                self._watched.update(runner for (runner,) in alive.fetchall())
        return cursor.rowcount

    def claim(self, recipients: Sequence[str]) -> dict[str, bool]:
        """Which of these recipients are this run's to serve now (the rest are a live
        runner's): phone → whether the claim is new, so that nothing of theirs can be in the
        ledger (module docstring)."""
        with self._writing():
            unique = sorted(set(recipients))  # (ON CONFLICT may touch a row once per statement)
            rows = self._writes().execute(_CLAIM, (self.flow, self.runner, unique))
            return {phone: bool(new) for phone, new in rows.fetchall()}

    def running(self) -> int:
        """How many runs of the flow share its rate now, this one included: those alive and
        still in their pass (a follower sends little: `following`)."""
        query = (
            "SELECT count(*) FROM runners WHERE flow = %s AND ended_at IS NULL"
            f" AND (id = %s OR NOT following) AND id IN ({_LIVE})"
        )
        with self._writing():
            row = self._writes().execute(query, (self.flow, self.runner, self._space)).fetchone()
        return max(int(row[0]) if row else 1, 1)

    def served(self, recipients: Sequence[str]) -> None:
        """These recipients got through this run: nobody needs to take them over. One
        primary-key update each (executemany pipelines them: one round trip): `recipient =
        ANY(array)` was planned, on a claims table not analysed yet, as a scan of the flow's
        every claim per call, 300 ms a batch at 100,000 claims (bench/paced_bench.py)."""
        if recipients:
            db = self._writes()
            with self._writing(), db.cursor() as cursor:
                cursor.executemany(
                    "UPDATE claims SET served = true"
                    " WHERE flow = %s AND recipient = %s AND runner = %s",
                    [(self.flow, phone, self.runner) for phone in sorted(recipients)],
                )

    def orphans(self) -> set[tuple[str, int]]:
        """Recipients of runs of the flow that ended (killed, stopped) since this one started,
        before they got through them: this run claims them (`claim`) if they are its own
        (its CSV, its --only or --limit), with the run that held each. Call `recover` first:
        it fences the dead."""
        if not self._registered:
            return set()
        with self._writing():
            watched = sorted(self._watched)
            rows = self._writes().execute(_ORPHANS, (self.flow, watched, self.runner))
            return {(phone, int(runner)) for phone, runner in rows.fetchall()}

    def following(self) -> None:
        """This run is past its pass, serving only recipients who wait (`--follow`): it
        sends little, so the runs still passing keep the flow's rate for themselves."""
        with self._writing():
            self._writes().execute(
                "UPDATE runners SET following = true WHERE id = %s", (self.runner,)
            )

    def commit(self, batch: Batch) -> None:
        """Marks, outcomes and uploads in one durable transaction (the run's group commit)."""
        if not batch:
            return
        stamp = now()
        db = self._writes()
        with self._writing(), db.transaction(), db.cursor() as cursor:
            outcomes = [outcome_row(self.flow, o, stamp) for o in batch.outcomes]
            self._check_fence(cursor)
            marks = [
                (self.flow, m.step, m.recipient, stamp, stamp, m.body_hash, self.runner)
                for m in batch.marks
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
        ledger empty. A run going on the ledger refuses it too: it trusts that a recipient nobody
        claimed has no rows (module docstring), which a copy under it would make false."""
        db = self._writes()
        written: dict[str, int] = {}
        with self._writing(), db.transaction(), db.cursor() as cursor:
            locked = ", ".join([*TABLES, "runners"])
            cursor.execute(f"LOCK TABLE {locked} IN SHARE ROW EXCLUSIVE MODE")
            refuse_filled(self.shown, _held(cursor))
            self._refuse_runs(cursor)
            for table, batches in tables:
                written[table] = 0
                copy_in = f"COPY {table} ({', '.join(TABLES[table])}) FROM STDIN"
                with cursor.copy(copy_in) as copy:
                    for batch in batches:
                        for row in batch:
                            copy.write_row(row)
                        written[table] += len(batch)
        return written

    def _refuse_runs(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> None:
        space = runner_space(_schema_of_runners(cursor))
        row = cursor.execute(
            f"SELECT count(*) FROM runners WHERE ended_at IS NULL AND id IN ({_LIVE})", (space,)
        ).fetchone()
        if row and row[0]:
            raise LedgerError(
                f"{self.shown}: a flowrun is running on this ledger; nothing was copied: copy"
                " into a ledger no run uses"
            )

    # Plumbing

    def _connect(self) -> Connection:
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"flowrun {self.flow}".strip(),
        )

    def _register(self) -> None:
        """Join the flow's runners (module docstring): the lock on the new id is held before
        the id is in `runners`, so no other runner ever sees it there unlocked."""
        assert self._reader is not None
        db = self._writes()
        self._space = runner_space(_schema_of_runners(db))
        row = db.execute("SELECT nextval(pg_get_serial_sequence('runners', 'id'))").fetchone()
        assert row is not None
        self.runner = int(row[0])
        self._reader.execute(LOCK_KEEPALIVES)
        self._reader.execute(
            "SELECT pg_advisory_lock(%s::integer, %s::integer)", (self._space, self.runner)
        )
        db.execute(
            "INSERT INTO runners (id, flow, host, pid, started_at) VALUES (%s, %s, %s, %s, %s)",
            (self.runner, self.flow, socket.gethostname(), os.getpid(), now()),
        )
        self._registered = True

    def _exclude_older_runs(self) -> None:
        """A run of the flowrun before several runners (PostgreSQL schema 1) holds the flow's
        run lock exclusively, and knows nothing of claims: every run of this one holds it
        shared, so that neither starts beside the other (a database is upgraded while a
        `--follow` of the older flowrun goes on, or one cron host is upgraded before
        another)."""
        assert self._reader is not None
        schema = self._reader.execute("SELECT current_schema()").fetchone()
        key = older_run_key(str(schema[0] if schema else ""), self.flow)
        taken = self._reader.execute("SELECT pg_try_advisory_lock_shared(%s)", (key,)).fetchone()
        if not (taken and taken[0]):
            raise LedgerError(
                f"{self.shown}: a run of an older flowrun is going on flow {self.flow!r}; wait"
                " for it to finish (or stop it), and upgrade flowrun wherever it runs"
            )

    def _check_fence(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> None:
        """A run's writer writes only while its runner is not fenced; the share lock on its
        row holds off a fence until this commit is done (module docstring)."""
        if self.runner is None:
            return  # the receiver: writes no run's rows
        row = cursor.execute(
            "SELECT ended_at FROM runners WHERE id = %s FOR SHARE", (self.runner,)
        ).fetchone()
        if row is None or row[0] is not None:
            raise LedgerError(
                f"{self.shown}: this run lost its connection to the database long enough for"
                " another runner to take its recipients over; it stops (what it had in flight"
                " is reported uncertain)"
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


def older_run_key(schema: str, flow: str) -> int:
    """The flow's run lock of the flowrun before several runners (its pg_try_advisory_lock
    bigint, keyed by the schema and the flow)."""
    digest = hashlib.sha256(f"flowrun run\0{schema}\0{flow}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _schema_of_runners(db: Connection | psycopg.Cursor[tuple[Any, ...]]) -> str:
    """The schema the `runners` table is in: the lock namespace must follow the tables, not
    the search path's first schema (one named after the user, created later, would change
    `current_schema()` while the tables stay in `public`)."""
    row = db.execute(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'runners'::regclass"
    ).fetchone()
    assert row is not None
    return str(row[0])


def runner_space(schema: str) -> int:
    """The first key of the runners' advisory locks in one schema (advisory locks are per
    database already; each schema holds a ledger with runner ids of its own): a positive
    int4, as pg_locks shows it."""
    return zlib.crc32(f"flowrun runners\0{schema}".encode()) & 0x7FFFFFFF


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
