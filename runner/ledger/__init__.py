"""The ledger: what happened to every message, and the memory that makes re-runs safe.

This package owns every byte of SQL in flowrun. The rest of flowrun sees the records
(records.py), a store's methods (`RunLedger`: what a run reads and writes), the group commit
(batcher.py) and the reader for reports (reading.py). SQLite is the store today (sqlite.py,
schema.py), or PostgreSQL (postgres.py, pg_schema.py) for campaigns run from CI or cron;
both have the same methods, and the ledger tests run against each.

Where a flow's ledger lives is decided here too (`default_path`), and which store a location
means (`open_for_run`, `open_for_writing`: a postgresql:// URL, or a file path).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from .batcher import Batcher, GroupCommit
from .locations import is_postgres, shown
from .postgres import PostgresLedger
from .reading import LedgerReader
from .records import (
    DONE_STATES,
    RANK,
    SETTLED_RANK,
    Batch,
    Inbound,
    LedgerError,
    Mark,
    Outcome,
    Preference,
    State,
    Status,
    StepRecord,
    Uploaded,
    now,
)
from .sqlite import SqliteLedger

__all__ = [
    "DONE_STATES",
    "RANK",
    "SETTLED_RANK",
    "Batch",
    "Batcher",
    "GroupCommit",
    "Inbound",
    "LedgerError",
    "LedgerReader",
    "LedgerWrites",
    "Mark",
    "Outcome",
    "PostgresLedger",
    "Preference",
    "RunLedger",
    "SqliteLedger",
    "State",
    "Status",
    "StepRecord",
    "Store",
    "Uploaded",
    "default_path",
    "is_postgres",
    "now",
    "open_for_customers",
    "open_for_run",
    "open_for_writing",
    "shown",
]

Store = SqliteLedger | PostgresLedger


class RunLedger(Protocol):
    """What a run needs of its ledger. Writes go through `GroupCommit` (started with
    `location` and `flow`), which commits `Batch`es in a process of its own."""

    @property
    def flow(self) -> str: ...

    @property
    def location(self) -> str:
        """How people and the writer process find it: a path, or a URL without its password."""

    @property
    def runner(self) -> int | None:
        """This run's id among the runners sharing the campaign (PostgreSQL), for its writer."""

    def recover(self) -> int:
        """`sending` rows of a dead run → `uncertain`; how many."""

    def claim(self, recipients: Sequence[str]) -> dict[str, bool]:
        """Those of these recipients this run serves now (the rest are another live run's):
        phone → whether nobody ever claimed them before (so nothing of theirs is on record)."""

    def running(self) -> int:
        """Runs of the flow alive now, this one included (they share its rate)."""

    def served(self, recipients: Sequence[str]) -> None:
        """These got through this run: another run need not take them over."""

    def orphans(self) -> set[tuple[str, int]]:
        """Recipients of runs that ended since this one started, before getting through
        them, with the run that held each (`recover` first): this run claims those that are
        its own."""

    def following(self) -> None:
        """This run is past its pass, following: it leaves the flow's rate to passing runs."""

    def recipient_states(self, recipient: str) -> dict[str, tuple[State, str | None]]: ...

    def history(self, recipient: str) -> dict[str, StepRecord]: ...

    def inbound_since(self, business: str, received: str) -> list[tuple[str, str, str]]: ...

    def statuses_since(self, received: str) -> list[tuple[str, str, str]]: ...

    def other_flows(self) -> list[str]: ...

    def has_rows(self) -> bool: ...

    def counts(self) -> dict[str, int]: ...

    def failure_of(self, step: str, recipient: str) -> tuple[int | None, str | None]: ...

    def has_heard(self, business: str) -> bool: ...

    def heard_from(
        self, business: str, customer: str
    ) -> tuple[list[Inbound], list[Preference]]: ...

    def media_id(
        self, api: str, sha256: str, max_age: timedelta | None = None, at: datetime | None = None
    ) -> str | None: ...

    def close(self) -> None: ...


class LedgerWrites(Protocol):
    """The writing side: the run's writer process commits batches, the receiver statuses."""

    def commit(self, batch: Batch) -> None: ...

    def record_webhooks(self, heard: Sequence[Status | Inbound | Preference]) -> None: ...

    def close(self) -> None: ...


# The one place a store is chosen by where the ledger is.


def open_for_run(location: str | Path, flow: str) -> Store:
    """A run's ledger, locked against a second run of it: a postgresql:// URL (its password
    kept out of sight: locations.py), or a file path."""
    if is_postgres(location):
        return PostgresLedger.for_run(str(location), flow)
    return SqliteLedger.for_run(Path(location), flow)


def open_for_customers(location: str | Path) -> Store:
    """What customers said, to read and to add to (`flowrun contacts`), beside any run."""
    if is_postgres(location):
        return PostgresLedger.for_customers(str(location))
    return SqliteLedger.for_customers(Path(location))


def open_for_writing(location: str, flow: str = "", runner: int | None = None) -> LedgerWrites:
    """The writing side of a ledger: the run's writer process (writing as the run's `runner`
    on PostgreSQL), or the webhook receiver (which takes no lock: a run may hold it, and
    statuses are no run's rows)."""
    if is_postgres(location):
        return PostgresLedger.for_writer(location, flow, runner)
    return SqliteLedger.for_writer(Path(location), flow)


def default_path(flow_path: Path, sandbox: bool) -> Path:
    """Beside the flow, named after it; sandbox runs keep their own, so that trying a flow on
    the sandbox never marks a real customer's message as sent."""
    suffix = ".sandbox.ledger.sqlite" if sandbox else ".ledger.sqlite"
    return flow_path.with_name(flow_path.stem + suffix)
