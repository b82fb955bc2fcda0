"""The result ledger: what happened to every message, and the memory that makes re-runs safe.

One SQLite file beside the flow (WAL mode, batched transactions). The executor talks to it only
through `Ledger`'s methods, so that another backend (PostgreSQL, for several runners sharing one
campaign) is one more class, not a change to the executor.

The guarantee it carries: a message is marked `sending` and committed *before* its request leaves.
A run that dies after that point leaves `sending` rows, which the next run turns into `uncertain`
(the API may or may not have the message) and never resends unless asked. No token, password or
header is ever stored: rows hold ids, states and the API's error fields only.

Tables (documented for people who query them, in README.md):
- messages(flow, step, recipient, state, message_id, http_status, error_code, error_title,
  error_details, attempts, first_attempt, last_attempt, body_hash)
- uploads(api, sha256, media_id, uploaded_at): `api` names the API (and phone number on Cloud)
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from . import statuses
from .errors import FlowrunError

State = Literal["sending", "sent", "failed", "skipped", "uncertain"]
DONE_STATES = ("sent", "skipped")  # never sent again
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    flow TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'failed', 'skipped', 'uncertain')),
    message_id TEXT,
    http_status INTEGER,
    error_code INTEGER,
    error_title TEXT,
    error_details TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt TEXT,
    last_attempt TEXT,
    body_hash TEXT,
    -- recipient before step: each recipient's rows are read with one index lookup
    PRIMARY KEY (flow, recipient, step)
) WITHOUT ROWID;
-- No secondary indexes: each would be updated twice per message (mark, outcome), a measured
-- 3% of a run's time; recover() and counts() scan the flow's rows, once per run.
DROP INDEX IF EXISTS messages_state;
DROP INDEX IF EXISTS messages_message_id;
CREATE TABLE IF NOT EXISTS uploads (
    api TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    media_id TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (api, sha256)
);
"""


class LedgerError(FlowrunError):
    """The ledger cannot be used: busy, unwritable, or not a flowrun ledger."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at one message ended in."""

    step: str
    recipient: str
    state: State
    message_id: str | None = None
    http_status: int | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_details: str | None = None
    attempts: int = 1


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Ledger:
    """A SQLite ledger for one flow, held by one run at a time."""

    def __init__(self, path: Path, flow: str, *, writer_only: bool = False) -> None:
        """`writer_only`: the ledger writer process's side (ledgerwriter.py), which writes for
        a run that holds the lock and does the reading."""
        self.path = path
        self.flow = flow
        self._lock = None if writer_only else _take_lock(path)
        try:
            # Two connections: writes (which a run makes in its writer process, so that commits
            # never stall sending) and reads (the run's own). WAL lets the reads go on while a
            # write commits.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed `sending` mark must survive power loss too, or a sent message
            # could later look unsent; group commits keep the number of fsyncs small.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA + statuses.SCHEMA)
            self._check_version()
            if not writer_only:
                self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._reader.execute("PRAGMA busy_timeout=10000")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise LedgerError(f"{path}: cannot use the ledger: {exc}") from None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {row[0]} is not {SCHEMA_VERSION}; "
                "use a flowrun of the version that wrote it, or a new --ledger"
            )

    def close(self) -> None:
        for name in ("_reader", "_db"):
            connection = getattr(self, name, None)
            if connection is not None:
                connection.close()
        if self._lock is not None:
            os.close(self._lock)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def recover(self) -> int:
        """Turn the `sending` rows a dead run left behind into `uncertain`; how many."""
        try:
            cursor = self._db.execute(
                "UPDATE messages SET state = 'uncertain' WHERE flow = ? AND state = 'sending'",
                (self.flow,),
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from None
        return cursor.rowcount

    def states(self) -> dict[tuple[str, str], State]:
        """(step, recipient) → state of every message this flow has a row for."""
        rows = self._reader.execute(
            "SELECT step, recipient, state FROM messages WHERE flow = ?", (self.flow,)
        )
        return {(step, recipient): state for step, recipient, state in rows}

    def state(self, step: str, recipient: str) -> State | None:
        row = self._reader.execute(
            "SELECT state FROM messages WHERE flow = ? AND step = ? AND recipient = ?",
            (self.flow, step, recipient),
        ).fetchone()
        return None if row is None else row[0]

    def recipient_states(self, recipient: str) -> dict[str, tuple[State, str | None]]:
        """step → (state, body hash) of one recipient's messages (one indexed query)."""
        rows = self._reader.execute(
            "SELECT step, state, body_hash FROM messages WHERE flow = ? AND recipient = ?",
            (self.flow, recipient),
        )
        return {step: (state, body_hash) for step, state, body_hash in rows}

    def other_flows(self) -> list[str]:
        """Flow names this ledger holds besides this one's (to notice a renamed flow)."""
        rows = self._reader.execute(
            "SELECT DISTINCT flow FROM messages WHERE flow != ? ORDER BY flow", (self.flow,)
        )
        return [name for (name,) in rows]

    def has_rows(self) -> bool:
        row = self._reader.execute(
            "SELECT 1 FROM messages WHERE flow = ? LIMIT 1", (self.flow,)
        ).fetchone()
        return row is not None

    def commit(self, outcomes: list[Outcome], marks: list[tuple[str, str, str]]) -> None:
        """Finished outcomes and new `sending` marks in one durable transaction (the executor's
        group commit)."""
        if not outcomes and not marks:
            return
        try:
            with self._transaction():
                self._write_outcomes(outcomes)
                self._write_marks(marks)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from None

    def _write_marks(self, items: Iterable[tuple[str, str, str]]) -> None:
        stamp = now()
        self._db.executemany(
            "INSERT INTO messages (flow, step, recipient, state, attempts, first_attempt,"
            " last_attempt, body_hash) VALUES (?, ?, ?, 'sending', 0, ?, ?, ?)"
            " ON CONFLICT (flow, step, recipient) DO UPDATE SET state = 'sending',"
            " last_attempt = excluded.last_attempt, body_hash = excluded.body_hash",
            [(self.flow, step, who, stamp, stamp, digest) for step, who, digest in items],
        )

    def _write_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        stamp = now()
        self._db.executemany(
            "INSERT INTO messages (flow, step, recipient, state, message_id, http_status,"
            " error_code, error_title, error_details, attempts, first_attempt, last_attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (flow, step, recipient) DO UPDATE SET state = excluded.state,"
            " message_id = excluded.message_id, http_status = excluded.http_status,"
            " error_code = excluded.error_code, error_title = excluded.error_title,"
            " error_details = excluded.error_details,"
            " attempts = messages.attempts + excluded.attempts,"
            " last_attempt = excluded.last_attempt",
            [
                (
                    self.flow,
                    o.step,
                    o.recipient,
                    o.state,
                    o.message_id,
                    o.http_status,
                    o.error_code,
                    o.error_title,
                    o.error_details,
                    o.attempts,
                    stamp,
                    stamp,
                )
                for o in outcomes
            ],
        )

    def media_id(
        self, api: str, sha256: str, max_age: timedelta | None = None, at: datetime | None = None
    ) -> str | None:
        """The media id this file was uploaded as, unless older than `max_age` at `at` (the
        Cloud API forgets media after 30 days: an older id would fail every message)."""
        row = self._reader.execute(
            "SELECT media_id, uploaded_at FROM uploads WHERE api = ? AND sha256 = ?",
            (api, sha256),
        ).fetchone()
        if row is None:
            return None
        media_id, uploaded_at = row
        if max_age is not None:
            try:
                uploaded = datetime.fromisoformat(uploaded_at)
            except ValueError:
                return None  # unreadable: upload again rather than trust it
            if (at or datetime.now(UTC)) - uploaded >= max_age:
                return None
        return str(media_id)

    def remember_upload(self, api: str, sha256: str, media_id: str) -> None:
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?)",
                    (api, sha256, media_id, now()),
                )
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from None

    def record_statuses(self, batch: list[statuses.Status]) -> None:
        """Delivery statuses from the webhooks (flowrun listen), in one durable transaction."""
        try:
            with self._transaction():
                statuses.apply(self._db, batch)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from None

    def counts(self) -> dict[str, int]:
        rows = self._reader.execute(
            "SELECT state, count(*) FROM messages WHERE flow = ? GROUP BY state", (self.flow,)
        )
        return dict(rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_rest: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _take_lock(path: Path) -> int:
    """An exclusive lock beside the ledger, held while a run uses it: two runs of one
    campaign at once would each think the other's `sending` rows were their own."""
    real = path.resolve()  # a symlink to the same ledger must meet the same lock
    lock_path = real.with_name(real.name + ".lock")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
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
