"""Which ledger a command uses, the same way for every command: `--ledger`, else
`FLOWRUN_LEDGER`, else the file beside the flow.

Why one place: a team that keeps its campaign in PostgreSQL sets FLOWRUN_LEDGER once (a CI
secret, README "Running from CI and cron"); if `plan`, `--dry-run` or `report` then read the
empty file beside the flow while the run writes the database, they say every message is still
due, and someone acts on it. Runs and reads sent elsewhere than the flow's API (`--sandbox`,
`--base-url`) keep their own ledger: a try never reads or marks the real campaign.

The read-only commands (plan, preview, report, a run's messaging-limit check) read a
PostgreSQL ledger from a temporary SQLite snapshot (runner/ledger/copy.py `sqlite_snapshot`
says why), named by its URL without the password.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from runner.ledger import default_path, is_postgres, shown
from runner.ledger.copy import sqlite_snapshot

ENVIRONMENT = "FLOWRUN_LEDGER"


def chosen(option: str | None, *, elsewhere: bool = False) -> str | None:
    """--ledger, else FLOWRUN_LEDGER (a postgresql:// URL, or a path), else None (the default
    file beside the flow). `elsewhere`: a run or read of the sandbox or --base-url, which keeps
    its own ledger unless --ledger names one."""
    if option:
        return option
    if elsewhere:
        return None
    return os.environ.get(ENVIRONMENT) or None


def location_of(flow_path: Path, option: str | None, *, sandbox: bool = False) -> str | Path:
    """The ledger of the flow at `flow_path`: chosen, else its file (its sandbox one)."""
    return chosen(option, elsewhere=sandbox) or default_path(flow_path, sandbox)


def named(location: str | Path) -> str:
    """How people see a ledger: a path, or a URL without its password."""
    return shown(location) if isinstance(location, str) and is_postgres(location) else str(location)


@contextlib.contextmanager
def readable(location: str | Path) -> Iterator[tuple[Path, str]]:
    """A file the read-only reader opens, and the ledger's name for people: a PostgreSQL
    ledger as a temporary snapshot, named without its password; a file as it is (it may not
    exist yet: nobody wrote)."""
    if is_postgres(location):
        with sqlite_snapshot(str(location)) as path:
            yield path, named(location)
        return
    yield Path(location), str(location)
