"""The ledger package on real files: the store's methods, migrations, the writer's wire format,
the group commit, the run lock and the reader reports use.

The store tests take a `store` fixture (or `location`) so that every backend runs the same
tests: SQLite, and PostgreSQL on a real server the session starts (tests/pg.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.ledger import (
    Batch,
    Batcher,
    GroupCommit,
    Inbound,
    LedgerError,
    LedgerReader,
    Mark,
    Outcome,
    Preference,
    SqliteLedger,
    Status,
    Store,
    Uploaded,
    default_path,
    is_postgres,
    open_for_run,
    open_for_writing,
    shown,
)
from runner.ledger.pg_schema import PG_VERSION
from runner.ledger.schema import VERSION
from runner.ledger.wire import batch_from_wire, to_wire
from tests import pg

OpenStore = Callable[[str], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger of the parametrised backend: a file, or a new database on the session's
    PostgreSQL (its URL holds a password)."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    server: pg.Postgres = request.getfixturevalue("postgres")
    return server.fresh()


@pytest.fixture
def store(location: str) -> Iterator[OpenStore]:
    """Opens a run's ledger of the given flow on the fresh store (chosen by its location, as
    flowrun chooses it); every one opened is closed at the end."""
    opened: list[Store] = []

    def open_store(flow: str) -> Store:
        ledger = open_for_run(location, flow)
        opened.append(ledger)
        return ledger

    yield open_store
    for ledger in opened:
        ledger.close()


def query_ledger(location: str, sql: str) -> list[tuple[Any, ...]]:
    """Read a ledger of either backend as a person would, with a connection of its own."""
    if is_postgres(location):
        with psycopg.connect(location) as db:
            return db.execute(sql).fetchall()
    with contextlib.closing(sqlite3.connect(location)) as lite:
        return lite.execute(sql).fetchall()


def marks(*who: str, step: str = "welcome") -> Batch:
    return Batch(marks=[Mark(step, phone, f"h{phone[-1]}") for phone in who])


def test_outcomes_are_recorded(store: OpenStore) -> None:
    ledger = store("onboarding")
    ledger.commit(marks("15550100001", "15550100002"))
    sent = Outcome("welcome", "15550100001", "sent", message_id="gBGG1", http_status=201)
    failed = Outcome(
        "welcome", "15550100002", "failed", http_status=400, error_code=1013, error_title="x"
    )
    ledger.commit(Batch(outcomes=[sent, failed]))
    assert ledger.counts() == {"sent": 1, "failed": 1}
    assert ledger.recipient_states("15550100001") == {"welcome": ("sent", "h1")}
    assert ledger.recipient_states("15550100002") == {"welcome": ("failed", "h2")}
    assert ledger.has_rows()


def test_attempts_add_up_and_a_mark_keeps_the_first_attempt(
    store: OpenStore, location: str
) -> None:
    ledger = store("f")
    ledger.commit(marks("15550100001"))
    ledger.commit(Batch(outcomes=[Outcome("welcome", "15550100001", "failed")]))
    ledger.commit(marks("15550100001"))
    ledger.commit(Batch(outcomes=[Outcome("welcome", "15550100001", "sent", message_id="m")]))
    [(attempts, state, first, last)] = query_ledger(
        location, "SELECT attempts, state, first_attempt, last_attempt FROM messages"
    )
    assert (attempts, state) == (2, "sent")
    assert first <= last


def test_sending_rows_of_a_dead_run_become_uncertain(store: OpenStore) -> None:
    first = store("f")
    first.commit(marks("15550100001"))
    first.close()
    again = store("f")
    assert again.recover() == 1
    assert again.states() == {("welcome", "15550100001"): "uncertain"}
    assert again.recover() == 0


def test_flows_share_a_ledger_without_mixing(store: OpenStore) -> None:
    a = store("a")
    a.commit(Batch(outcomes=[Outcome("1", "15550100001", "sent", message_id="x")]))
    a.close()
    b = store("b")
    assert b.states() == {}
    assert not b.has_rows()
    assert b.other_flows() == ["a"]


def test_upload_cache_per_api_and_its_age(store: OpenStore) -> None:
    ledger = store("f")
    assert ledger.media_id("http://127.0.0.1:1", "abc") is None
    ledger.commit(Batch(uploads=[Uploaded("http://127.0.0.1:1", "abc", "media-1")]))
    assert ledger.media_id("http://127.0.0.1:1", "abc") == "media-1"
    assert ledger.media_id("http://127.0.0.1:2", "abc") is None
    later = datetime.now(UTC) + timedelta(days=2)
    assert ledger.media_id("http://127.0.0.1:1", "abc", timedelta(days=1), at=later) is None
    assert ledger.media_id("http://127.0.0.1:1", "abc", timedelta(days=3), at=later) == "media-1"


def test_statuses_move_forward_only_and_keep_their_first_time(
    store: OpenStore, location: str
) -> None:
    run = store("f")
    run.commit(Batch(outcomes=[Outcome("s", "15550100001", "sent", message_id="wamid.A")]))
    receiver = open_for_writing(location)
    try:
        read = Status("wamid.A", "read", "2026-01-01T00:00:03+00:00", recipient="15550100001")
        receiver.record_webhooks([read])
        receiver.record_webhooks(
            [
                Status("wamid.A", "delivered", "2026-01-01T00:00:02+00:00"),
                Status("wamid.A", "delivered", "2026-01-01T00:00:01+00:00"),  # earlier repeat
                Status("wamid.B", "sent", "2026-01-01T00:00:04+00:00", "1555", billable=True),
            ]
        )
    finally:
        receiver.close()
    step = run.history("15550100001")["s"]
    assert step.delivery == "read"
    assert step.delivered_at == "2026-01-01T00:00:01+00:00"
    assert step.read_at == "2026-01-01T00:00:03+00:00"
    assert [m for _who, m, _at in run.statuses_since("2000")] == ["wamid.A", "wamid.B"]
    assert run.statuses_since("9999") == []


def test_what_customers_said_is_read_back_per_customer_and_by_arrival(
    store: OpenStore, location: str
) -> None:
    run = store("f")
    assert not run.has_heard("biz")
    first = Inbound("wamid.IN1", "biz", "15550100001", "2026-01-01T00:00:05+00:00", "text", "hi")
    tap = Inbound("wamid.IN2", "biz", "15550100001", "2026-01-01T00:00:06+00:00", "button", "Yes")
    stop = Preference("biz", "15550100002", "2026-01-01T00:00:07+00:00", "stop")
    receiver = open_for_writing(location)
    try:
        receiver.record_webhooks([tap, first, stop])
        receiver.record_webhooks([first, stop])  # Meta repeats itself: nothing changes
    finally:
        receiver.close()
    assert run.has_heard("biz")
    assert not run.has_heard("other")
    assert run.heard_from("biz", "15550100001") == ([first, tap], [])
    assert run.heard_from("biz", "15550100002") == ([], [stop])
    assert run.customers_heard("biz") == ["15550100001", "15550100002"]
    arrived = run.inbound_since("biz", "2000")
    assert sorted(m for _who, m, _at in arrived) == ["wamid.IN1", "wamid.IN2"]
    assert run.inbound_since("other", "2000") == []
    assert run.inbound_since("biz", "9999") == []


def test_a_failure_and_its_time_are_read_back(store: OpenStore) -> None:
    ledger = store("f")
    failed = Outcome("s", "15550100001", "failed", http_status=400, error_code=131049)
    ledger.commit(Batch(outcomes=[failed], preferences=[Preference("b", "c", "t", "stop")]))
    code, at = ledger.failure_of("s", "15550100001")
    assert code == 131049
    assert at is not None
    assert ledger.failure_of("s", "15550100009") == (None, None)
    assert ledger.heard_from("b", "c") == ([], [Preference("b", "c", "t", "stop")])


def test_records_cross_the_writer_pipe_by_name() -> None:
    batch = Batch(
        [Mark("s", "1", "h")],
        [Outcome("s", "1", "failed", error_code=131026, error_title="t", attempts=2)],
        [Uploaded("api", "sha", "id")],
        [Preference("1", "2", "2026-01-01T00:00:00+00:00", "stop")],
    )
    wire = to_wire(batch)
    assert wire["outcomes"][0]["error_code"] == 131026  # a name, not a position
    assert batch_from_wire(wire) == batch
    wire["outcomes"][0]["surprise"] = 1
    with pytest.raises(TypeError):
        batch_from_wire(wire)


def legacy_ledger(path: Path, with_statuses: bool) -> None:
    """A ledger as flowrun wrote it before schema versions: user_version 0, meta schema 1."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE messages (flow TEXT NOT NULL, step TEXT NOT NULL, recipient TEXT NOT NULL,"
        " state TEXT NOT NULL, message_id TEXT, http_status INTEGER, error_code INTEGER,"
        " error_title TEXT, error_details TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
        " first_attempt TEXT, last_attempt TEXT, body_hash TEXT,"
        " PRIMARY KEY (flow, recipient, step)) WITHOUT ROWID;"
        "CREATE TABLE uploads (api TEXT NOT NULL, sha256 TEXT NOT NULL, media_id TEXT NOT NULL,"
        " uploaded_at TEXT NOT NULL, PRIMARY KEY (api, sha256));"
        "INSERT INTO messages (flow, step, recipient, state, message_id, attempts)"
        " VALUES ('f', 'hello', '15550100001', 'sent', 'wamid.OLD', 1);"
    )
    if with_statuses:
        db.execute(
            "CREATE TABLE statuses (message_id TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " rank INTEGER NOT NULL, recipient TEXT, error_code INTEGER, error_title TEXT,"
            " error_details TEXT, sent_at TEXT, delivered_at TEXT, read_at TEXT,"
            " failed_at TEXT, received_at TEXT NOT NULL) WITHOUT ROWID"
        )
    db.commit()
    db.close()


@pytest.mark.parametrize("with_statuses", [False, True])
def test_a_ledger_from_before_schema_versions_keeps_working(
    tmp_path: Path, with_statuses: bool
) -> None:
    path = tmp_path / "old.sqlite"
    legacy_ledger(path, with_statuses)
    with LedgerReader(path) as reader:  # read-only: works before any migration
        assert [c.count for c in reader.state_counts("f")] == [1]
    with SqliteLedger.for_run(path, "f") as ledger:
        assert ledger.recipient_states("15550100001") == {"hello": ("sent", None)}
    with SqliteLedger.for_writer(path) as receiver:
        receiver.record_webhooks([Status("wamid.OLD", "delivered", "2026-01-01T00:00:00+00:00")])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (VERSION,)
    assert db.execute("SELECT status FROM statuses").fetchall() == [("delivered",)]
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_a_ledger_from_a_newer_flowrun_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    SqliteLedger.for_run(path, "f").close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="written by a newer flowrun"):
        SqliteLedger.for_run(path, "f")


def test_a_database_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crm.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not a flowrun ledger"):
        SqliteLedger.for_run(path, "f")
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["customers"]
    db.close()


def test_the_ledger_file_is_durable_wal(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_second_run_on_one_ledger_file_refuses(tmp_path: Path) -> None:
    """A SQLite ledger takes one run at a time (PostgreSQL's runs share one: test_pg_runners)."""
    location = str(tmp_path / "ledger.sqlite")
    with open_for_run(location, "f"):
        script = (
            "import sys\n"
            "from runner.ledger import LedgerError, open_for_run\n"
            "try:\n    open_for_run(sys.argv[1], 'f')\n"
            "except LedgerError as e:\n    print(e); sys.exit(2)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", script, location], capture_output=True, text=True, check=False
        )
        assert other.returncode == 2
        assert "another flowrun is using this ledger" in other.stdout
        # the receiver works beside a run
        open_for_writing(location).close()
    open_for_run(location, "f").close()  # free again once the first run is done


def test_a_postgresql_ledger_from_a_newer_flowrun_is_refused(postgres: pg.Postgres) -> None:
    url = postgres.fresh()
    open_for_run(url, "f").close()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE flowrun_schema SET version = version + 1")
    with pytest.raises(LedgerError, match="written by a newer flowrun"):
        open_for_run(url, "f")


def test_a_postgresql_database_of_another_program_is_refused(postgres: pg.Postgres) -> None:
    url = postgres.fresh()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE messages (id integer)")
    with pytest.raises(LedgerError, match="not a flowrun ledger"):
        open_for_run(url, "f")
    with psycopg.connect(url, autocommit=True) as db:
        tables = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema")
        assert [name for (name,) in tables] == ["messages"]


def test_two_runners_migrating_at_once_migrate_once(postgres: pg.Postgres) -> None:
    """CI jobs of two pushes may start together on a new database."""
    url = postgres.fresh()
    script = (
        "import sys\nfrom runner.ledger import open_for_writing\n"
        "open_for_writing(sys.argv[1]).close()\n"
    )
    runners = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for runner in runners:
        _out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
    assert query_ledger(url, "SELECT version FROM flowrun_schema") == [(PG_VERSION,)]


def test_the_password_is_never_shown(
    postgres: pg.Postgres, capfd: pytest.CaptureFixture[str]
) -> None:
    """The location people see is the URL without its password; the writer process gets the
    password in its environment, never on its command line (which `ps` shows everyone), and
    a refused password is reported without it."""
    url = postgres.fresh_database()
    password = postgres.password
    assert password in url
    with open_for_run(url, "f") as ledger:
        assert password not in ledger.location
        assert ledger.location == url.replace(f":{password}@", "@")

        async def through_the_writer() -> list[str]:
            commits = await GroupCommit.start(ledger.location, "f")
            command = Path(f"/proc/{commits._writer.pid}/cmdline").read_bytes()
            await commits.mark("s", "15550100001", "h")
            await commits.close()
            return command.decode().split("\0")

        command = asyncio.run(through_the_writer())
        assert ledger.location in command
        assert not any(password in part for part in command)
        assert ledger.states() == {("s", "15550100001"): "sending"}
    wrong = url.replace(password, "not-" + password)
    with pytest.raises(LedgerError) as refused:
        open_for_run(wrong, "f")
    assert "password authentication failed" in str(refused.value)
    assert password not in str(refused.value)
    keyed = url.replace(f":{password}@", "@") + f"?password={password}&sslmode=disable"
    assert shown(keyed) == url.replace(f":{password}@", "@") + "?sslmode=disable"
    assert password not in capfd.readouterr().err


def test_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot create the ledger here"):
        SqliteLedger.for_run(tmp_path / "missing-folder" / "l.sqlite", "f")


def test_no_ledger_to_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger here; run the flow first"):
        LedgerReader(tmp_path / "nothing.sqlite")


def test_a_recipients_rows_are_an_index_lookup(tmp_path: Path) -> None:
    """Regression: the lookup once scanned the whole table, quadratic over a campaign."""
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    db = sqlite3.connect(path)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT step, state FROM messages WHERE flow = ? AND recipient = ?",
        ("f", "1"),
    ).fetchall()
    detail = " ".join(row[-1] for row in plan)
    assert "SEARCH" in detail
    assert "recipient=?" in detail  # not just a search on flow=? and a scan of all its rows


def test_default_ledger_sits_beside_the_flow(tmp_path: Path) -> None:
    flow = tmp_path / "flows" / "onboarding.yaml"
    assert default_path(flow, sandbox=False) == flow.with_name("onboarding.ledger.sqlite")
    assert default_path(flow, sandbox=True) == flow.with_name("onboarding.sandbox.ledger.sqlite")


def test_the_batcher_commits_what_gathers_while_one_commit_runs() -> None:
    """One commit in flight; everything written meanwhile goes in the next one, together."""
    committed: list[list[int]] = []

    async def commit(batch: list[int]) -> None:
        committed.append(batch)
        await asyncio.sleep(0.01)

    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(commit)
        first = asyncio.ensure_future(batcher.write(0))
        await asyncio.sleep(0)  # the first commit is under way
        await asyncio.gather(first, *(batcher.write(i) for i in range(1, 6)))
        batcher.add(99)  # nobody waits: committed at close (or within FLUSH_AFTER)
        await batcher.close()

    asyncio.run(scenario())
    assert committed == [[0], [1, 2, 3, 4, 5], [99]]


def test_a_failed_commit_reaches_its_waiters_and_the_next_batch_tries_again() -> None:
    calls = [0]

    async def commit(batch: list[int]) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise LedgerError("disk full")

    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(commit)
        with pytest.raises(LedgerError, match="disk full"):
            await batcher.write(1)
        await batcher.write(2)  # the receiver's case: Meta sends the refused one again

    asyncio.run(scenario())
    assert calls[0] == 2


def test_a_hard_link_to_the_ledger_meets_the_same_lock(tmp_path: Path) -> None:
    """Two names of one file are one ledger: a second run through a hard link would send
    everything the first is sending (issue: hardening round 2, item 5)."""
    path = tmp_path / "l.sqlite"
    with SqliteLedger.for_run(path, "f"):
        (tmp_path / "other-name.sqlite").hardlink_to(path)
        (tmp_path / "symlinked.sqlite").symlink_to(path)
        for name in ("other-name.sqlite", "symlinked.sqlite"):
            with pytest.raises(LedgerError, match="another flowrun is using this ledger"):
                SqliteLedger.for_run(tmp_path / name, "f")
    SqliteLedger.for_run(tmp_path / "other-name.sqlite", "f").close()


def test_a_stray_wal_file_is_never_merged_into_the_ledger(tmp_path: Path) -> None:
    """A `-wal` beside the ledger that belongs to another database: opening failed, and
    closing the connection checkpointed the stranger's pages into the ledger (and deleted the
    wal), so the ledger could not be saved by moving the wal away. The file is now looked at
    read-only first, and nothing is written when it does not look like a flowrun ledger."""
    path = tmp_path / "a.sqlite"
    with SqliteLedger.for_run(path, "f") as ledger:
        ledger.commit(Batch(outcomes=[Outcome("s", "15550100001", "sent", message_id="m")]))
    other = sqlite3.connect(tmp_path / "b.sqlite")
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("PRAGMA wal_autocheckpoint=0")
    other.execute("CREATE TABLE other (x)")
    other.executemany("INSERT INTO other VALUES (?)", [(bytes(100),) for _ in range(200)])
    other.commit()
    (tmp_path / "a.sqlite-wal").write_bytes((tmp_path / "b.sqlite-wal").read_bytes())
    other.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=r"a.sqlite-wal .* move it away"):
        SqliteLedger.for_run(path, "f")
    assert path.read_bytes() == before
    (tmp_path / "a.sqlite-wal").rename(tmp_path / "stray-wal")
    (tmp_path / "a.sqlite-shm").unlink(missing_ok=True)
    with SqliteLedger.for_run(path, "f") as ledger:
        assert ledger.recipient_states("15550100001") == {"s": ("sent", None)}
