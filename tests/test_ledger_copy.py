"""`flowrun ledger copy SRC DST` (issue 16, item 4): a history moved from SQLite to PostgreSQL and
back keeps every row; a destination that holds rows is refused; after a real run's ledger is
copied to PostgreSQL, a run on it sends nothing again, and `flowrun report --ledger URL` says
what the report of the file said. PostgreSQL is the session's real server
(tests/pg.py), a fresh schema per test."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.ledger import (
    Batch,
    Inbound,
    LedgerError,
    Mark,
    Outcome,
    Preference,
    SqliteLedger,
    State,
    Status,
    Uploaded,
    open_for_run,
    shown,
)
from runner.ledger.copy import copy_ledger
from runner.ledger.schema import TABLES, VERSION
from runner.sandbox import SandboxState
from tests import pg
from tests.sandbox_helpers import run_flowrun, start, write_flow
from tests.test_hardening import TWO_STEPS
from tests.test_ledger import legacy_ledger

Dump = dict[str, list[tuple[Any, ...]]]


def _normal(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """statuses.billable is 0/1 in SQLite and a boolean in PostgreSQL: the same fact."""
    return tuple(int(v) if isinstance(v, bool) else v for v in row)


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((_normal(r) for r in rows), key=repr)


def sqlite_dump(path: Path) -> Dump:
    """Every table's rows, in TABLES' columns, ordered: read with a connection of the test's."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {
            t: _sorted(db.execute(f"SELECT {', '.join(c)} FROM {t}").fetchall())
            for t, c in TABLES.items()
        }


def pg_dump(url: str) -> Dump:
    with psycopg.connect(url) as db:
        return {
            t: _sorted(db.execute(f"SELECT {', '.join(c)} FROM {t}").fetchall())
            for t, c in TABLES.items()
        }


def filled_ledger(path: Path, people: int = 40) -> None:
    """A SQLite ledger with rows in every table, written through the store's own methods: two
    flows, every message state, uploads, statuses (billable or not), inbound, preferences."""
    with SqliteLedger.for_writer(path, "welcome") as ledger:
        states: tuple[State, ...] = ("sent", "failed", "skipped", "uncertain", "waiting")
        outcomes = [
            Outcome("a", f"1555010{i:04d}", states[i % 5], f"wamid.{i}", 200, None, None, None)
            for i in range(people)
        ]
        outcomes.append(Outcome("b", "15550100001", "failed", None, 400, 131026, "Undeliverable"))
        ledger.commit(
            Batch(
                marks=[Mark("c", "15550100002", "h" * 64)],  # a dead run's `sending` row
                outcomes=outcomes,
                uploads=[Uploaded("cloud:1065", hashlib.sha256(b"x").hexdigest(), "media.1")],
                preferences=[
                    Preference("1065", "15550100003", "2026-11-30T10:00:00+00:00", "stop")
                ],
            )
        )
        ledger.record_webhooks(
            [
                Status("wamid.0", "delivered", "2026-11-30T10:01:00+00:00", "15550100000",
                       category="marketing", billable=True),
                Status("wamid.5", "failed", "2026-11-30T10:02:00+00:00", "15550100005",
                       code=131047, title="Re-engagement message", details="window"),
                Status("wamid.10", "read", "2026-11-30T10:03:00+00:00", billable=False),
                Inbound("in.1", "1065", "15550100000", "2026-11-30T10:04:00+00:00", "button",
                        "Yes", "YES", "wamid.0"),
                Inbound("in.2", "1065", "15550100007", "2026-11-30T10:05:00+00:00", "text",
                        "stop please"),
                Preference("1065", "15550100008", "2026-11-30T10:06:00+00:00", "resume"),
            ]
        )  # fmt: skip
    with SqliteLedger.for_writer(path, "other") as ledger:
        ledger.commit(Batch(outcomes=[Outcome("only", "15550109999", "sent", "wamid.o")]))


def test_every_row_survives_sqlite_to_postgresql_and_back(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    source = tmp_path / "laptop.sqlite"
    filled_ledger(source)
    before = sqlite_dump(source)
    assert all(before.values()), "every table holds rows"
    url = postgres.fresh()

    there = copy_ledger(str(source), url)
    assert there.rows == {table: len(rows) for table, rows in before.items()}
    assert there.destination == shown(url)
    assert postgres.password not in there.destination
    assert pg_dump(url) == before

    back = tmp_path / "back.sqlite"
    again = copy_ledger(url, str(back))
    assert again.rows == there.rows
    assert sqlite_dump(back) == before
    assert sqlite_dump(source) == before  # the source was only read
    with contextlib.closing(sqlite3.connect(back)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (VERSION,)
    # the copy is a ledger the stores use as is: the dead run's mark turns uncertain
    with SqliteLedger.for_run(back, "welcome") as ledger:
        assert ledger.recover() == 1
        assert ledger.history("15550100000")["a"].delivery == "delivered"


def test_a_destination_holding_rows_is_refused_and_left_alone(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    source = tmp_path / "laptop.sqlite"
    filled_ledger(source, people=5)
    url = postgres.fresh()
    copy_ledger(str(source), url)
    held = pg_dump(url)

    result = CliRunner().invoke(cli, ["ledger", "copy", str(source), url])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{shown(url)}: already holds rows (messages 8,")
    assert "nothing was copied" in lines[0]
    assert postgres.password not in result.output
    assert pg_dump(url) == held

    # a SQLite destination holding a single status (a receiver wrote it) is refused too
    other = tmp_path / "other.sqlite"
    with SqliteLedger.for_writer(other) as receiver:
        receiver.record_webhooks([Status("wamid.x", "sent", "2026-11-30T10:00:00+00:00")])
    with pytest.raises(LedgerError, match=r"already holds rows \(statuses 1\)"):
        copy_ledger(url, str(other))
    assert sqlite_dump(other)["messages"] == []


def test_a_copy_into_a_ledger_a_run_is_using_is_refused(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    """A run on a new PostgreSQL ledger trusts that a recipient nobody claimed has no rows; a
    history copied in under it would be sent again. Once the run ends, the copy goes in."""
    source = tmp_path / "laptop.sqlite"
    filled_ledger(source, people=2)
    url = postgres.fresh()
    running = pytest.raises(LedgerError, match="a flowrun is running on this ledger")
    with open_for_run(url, "f"), running:
        copy_ledger(str(source), url)
    assert pg_dump(url)["messages"] == []
    copy_ledger(str(source), url)
    assert len(pg_dump(url)["messages"]) == len(sqlite_dump(source)["messages"])


def test_sources_are_only_read_and_an_older_sqlite_ledger_is_migrated_in_a_copy(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    old = tmp_path / "old.sqlite"
    legacy_ledger(old, with_statuses=False)
    written = old.read_bytes()
    url = postgres.fresh()
    copied = copy_ledger(str(old), url)
    assert copied.rows["messages"] == 1
    assert old.read_bytes() == written  # not migrated in place
    assert pg_dump(url)["messages"][0][:5] == ("f", "hello", "15550100001", "sent", "wamid.OLD")

    # a URL that is no ledger yet is not made one by reading it
    empty = postgres.fresh()
    with pytest.raises(LedgerError, match="not a flowrun ledger"):
        copy_ledger(empty, str(tmp_path / "new.sqlite"))
    with psycopg.connect(empty) as db:
        assert db.execute("SELECT to_regclass('messages')").fetchone() == (None,)
    with pytest.raises(LedgerError, match="no ledger here"):
        copy_ledger(str(tmp_path / "absent.sqlite"), postgres.fresh())


def test_a_run_after_copying_its_ledger_to_postgresql_sends_nothing_again(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    base, state = api
    write_flow(folder, base, TWO_STEPS, people=100, concurrency=8)
    first = start(folder)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "sent 200, failed 0" in out
    assert len(state.inbox) == 200

    url = postgres.fresh()
    copying = run_flowrun(folder, "ledger", "copy", "flow.ledger.sqlite", url)
    assert copying.returncode == 0, copying.stderr
    assert f"copied flow.ledger.sqlite -> {shown(url)}" in copying.stdout
    assert "messages 200," in copying.stdout
    assert postgres.password not in copying.stdout + copying.stderr

    again = start(folder, "--ledger", url)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "nothing to send: 200 message(s) were sent before" in out
    assert len(state.inbox) == 200

    # the report reads the PostgreSQL ledger as it reads the file it came from
    on_file = run_flowrun(folder, "report", "flow.yaml")
    on_pg = run_flowrun(folder, "report", "flow.yaml", "--ledger", url)
    assert on_pg.returncode == 0, on_pg.stderr
    assert on_pg.stdout.splitlines()[0] == f"ledger: {shown(url)}"
    assert on_pg.stdout.splitlines()[1:] == on_file.stdout.splitlines()[1:]
    assert "sent" in on_pg.stdout
    assert postgres.password not in on_pg.stdout + on_pg.stderr
    rows_pg = run_flowrun(folder, "report", "flow.yaml", "--ledger", url, "--csv")
    rows_file = run_flowrun(folder, "report", "flow.yaml", "--csv")
    assert rows_pg.stdout == rows_file.stdout
    assert len(rows_pg.stdout.splitlines()) == 201
