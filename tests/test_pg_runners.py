"""Several runs of one flow on one PostgreSQL ledger (issue 16, item 2): the store's side.

Runners claim recipients, a live runner's claims and `sending` rows are never touched, a dead
one's are taken over, and a writer whose runner was fenced writes nothing. Each test talks to
the session's real server (tests/pg.py); a runner that dies is a real process killed with
SIGKILL, so the server, not the test, decides that its lock is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.executor import SHARE_EVERY, TAKE_OVER_EVERY
from runner.ledger import (
    Batch,
    LedgerError,
    Mark,
    Outcome,
    PostgresLedger,
    SqliteLedger,
    open_for_run,
)
from runner.ledger.pg_schema import INITIAL
from runner.ledger.postgres import older_run_key, runner_space
from runner.sandbox import SandboxState
from tests import pg
from tests.sandbox_helpers import (
    APP_SECRET,
    children,
    listening,
    post,
    start,
    wait_until,
    write_flow,
)
from tests.test_hardening import TWO_STEPS, gone
from tests.test_pg_ledger import HELLO_THEN_NOTE, delivered, rows

PHONES = [f"1555010{n:04d}" for n in range(8)]


@pytest.fixture
def url(postgres: pg.Postgres) -> str:
    return postgres.fresh()


@pytest.fixture
def runs(url: str) -> Iterator[list[PostgresLedger]]:
    """Runs opened in a test, closed at its end."""
    opened: list[PostgresLedger] = []
    yield opened
    for ledger in opened:
        ledger.close()


def run_of(url: str, runs: list[PostgresLedger], flow: str = "f") -> PostgresLedger:
    ledger = open_for_run(url, flow)
    assert isinstance(ledger, PostgresLedger)
    runs.append(ledger)
    return ledger


def query(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        return db.execute(sql, args).fetchall()


def writer_of(url: str, run: PostgresLedger) -> PostgresLedger:
    """The run's writer process's side, as runner/ledger/writer.py opens it."""
    return PostgresLedger.for_writer(url, run.flow, run.runner)


def _locked(url: str, survivor: PostgresLedger) -> bool:
    """Whether a runner other than `survivor` still holds its lock."""
    assert survivor.runner is not None
    return _locked_but(url, survivor.runner)


def _locked_but(url: str, runner: int) -> bool:
    """Whether a runner other than `runner` holds its lock (the server drops a dead one's a
    moment after its connection closes)."""
    held = query(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
        " AND objid::bigint <> %s AND classid::bigint = %s",
        runner,
        runner_space(query(url, "SELECT current_schema()")[0][0]),
    )
    return bool(held[0][0])


def marks(*phones: str, step: str = "a") -> Batch:
    return Batch(marks=[Mark(step, phone, "h") for phone in phones])


@contextlib.contextmanager
def doomed_run(
    url: str, claim: list[str], mark: list[str], flow: str = "f"
) -> Iterator[subprocess.Popen[str]]:
    """A run in a process of its own: it claims `claim`, marks `mark` through its writer's
    connection, says `ready`, and waits to be killed."""
    script = (
        "import sys, time\n"
        "from runner.ledger import Batch, Mark, PostgresLedger, open_for_run\n"
        "url, claim, mark = sys.argv[1], sys.argv[2].split(','), sys.argv[3].split(',')\n"
        "run = open_for_run(url, sys.argv[4])\n"
        "run.claim(claim)\n"
        "writer = PostgresLedger.for_writer(url, sys.argv[4], run.runner)\n"
        "writer.commit(Batch(marks=[Mark('a', p, 'h') for p in mark if p]))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, url, ",".join(claim), ",".join(mark), flow],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        process.kill()
        process.communicate()


def test_runs_of_one_flow_share_its_recipients(url: str, runs: list[PostgresLedger]) -> None:
    first, second = run_of(url, runs), run_of(url, runs)
    assert first.runner != second.runner
    assert first.claim(PHONES[:4]) == dict.fromkeys(PHONES[:4], True)
    # the second run gets only those nobody holds, and a claim it holds is not "new" again
    assert second.claim(PHONES[2:6]) == dict.fromkeys(PHONES[4:6], True)
    assert second.claim(PHONES[4:6]) == {}
    # another flow on the same database has recipients of its own
    assert run_of(url, runs, "other").claim(PHONES[:2]) == dict.fromkeys(PHONES[:2], True)


def test_runs_alive_are_counted_to_share_the_rate(url: str, runs: list[PostgresLedger]) -> None:
    first = run_of(url, runs)
    assert first.running() == 1
    second = run_of(url, runs)
    run_of(url, runs, "other flow")
    assert first.running() == second.running() == 2
    # a follower sends little: the runs in their pass keep the rate; it shares theirs
    second.following()
    assert (first.running(), second.running()) == (1, 2)
    second.close()
    assert first.running() == 1


def test_a_live_runs_sending_rows_are_never_recovered(url: str, runs: list[PostgresLedger]) -> None:
    first = run_of(url, runs)
    first.claim(PHONES[:1])
    writer = writer_of(url, first)
    writer.commit(marks(PHONES[0]))
    second = run_of(url, runs)
    assert second.recover() == 0
    assert second.orphans() == set()
    assert second.states() == {("a", PHONES[0]): "sending"}
    writer.close()


def test_a_killed_runs_recipients_are_taken_over(url: str, runs: list[PostgresLedger]) -> None:
    """kill -9: the server drops its lock with its connection; the next runner to look fences
    it, turns its in-flight marks uncertain and takes the recipients it had not got through."""
    survivor = run_of(url, runs)
    with doomed_run(url, claim=PHONES[:5], mark=PHONES[:2]) as doomed:
        assert (survivor.recover(), survivor.orphans()) == (0, set())  # alive: nothing to take
        assert survivor.claim(PHONES) == dict.fromkeys(PHONES[5:], True)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    # the server notices the closed connection, and drops the lock, a moment later
    wait_until(lambda: not _locked(url, survivor))
    assert survivor.recover() == 2
    assert {phone for phone, _run in survivor.orphans()} == set(PHONES[:5])
    assert survivor.claim(PHONES[:5]) == dict.fromkeys(PHONES[:5], False)  # (rows may exist)
    assert set(survivor.states().values()) == {"uncertain"}
    [(ended, fenced)] = query(
        url, "SELECT ended_at IS NOT NULL, fenced FROM runners WHERE id <> %s", survivor.runner
    )
    assert (ended, fenced) == (True, True)
    # taken once: what is taken is this run's now
    assert (survivor.recover(), survivor.orphans()) == (0, set())
    # a run after these finds those claims of a run that ended: not new (rows may exist)
    survivor.close()
    assert run_of(url, runs).claim(PHONES[:1]) == {PHONES[0]: False}


def test_recipients_a_run_got_through_are_not_taken_over(
    url: str, runs: list[PostgresLedger]
) -> None:
    """A run stopped (Ctrl-C, --limit) ends cleanly: what it served stays done; the rest is
    taken over by a run still going, without waiting for a next run."""
    first, second = run_of(url, runs), run_of(url, runs)
    first.claim(PHONES[:4])
    first.served(PHONES[:3])
    assert second.recover() == 0  # (at its start: it sees the first one alive)
    first.close()
    [(ended, fenced)] = query(
        url, "SELECT ended_at IS NOT NULL, fenced FROM runners WHERE id = %s", first.runner
    )
    assert (ended, fenced) == (True, False)
    assert second.orphans() == {(PHONES[3], first.runner)}


def test_a_fenced_runs_writer_writes_nothing(url: str, runs: list[PostgresLedger]) -> None:
    """A run whose connection was lost long enough to be taken over must not write after the
    run that took over: its writer refuses every batch from then on."""
    doomed = run_of(url, runs)
    doomed.claim(PHONES[:1])
    writer = writer_of(url, doomed)
    writer.commit(marks(PHONES[0]))
    # its lock goes with its connection (a network cut, or kill -9 of the run alone)
    assert doomed._reader is not None
    doomed._reader.close()
    survivor = run_of(url, runs)
    assert survivor.recover() == 1
    assert survivor.claim(PHONES[:1]) == {PHONES[0]: False}
    late = Batch(outcomes=[Outcome("a", PHONES[0], "sent", message_id="wamid.late")])
    with pytest.raises(LedgerError, match="another runner to take its recipients over"):
        writer.commit(late)
    assert survivor.states() == {("a", PHONES[0]): "uncertain"}
    writer.close()


def test_a_ledger_of_schema_1_is_migrated_and_its_sending_rows_recovered(url: str) -> None:
    """Rows of an older flowrun hold no runner: a `sending` one is a dead run's."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(INITIAL.encode())
        db.execute("UPDATE flowrun_schema SET version = 1")
        db.execute(
            "INSERT INTO messages (flow, step, recipient, state) VALUES ('f', 'a', %s, 'sending')",
            (PHONES[0],),
        )
    with open_for_run(url, "f") as run:
        assert run.recover() == 1
        assert run.claim(PHONES[:1]) == {PHONES[0]: True}
    assert query(url, "SELECT state FROM messages") == [("uncertain",)]


def test_a_sqlite_run_serves_everyone(tmp_path: Path) -> None:
    """The file admits one run: every recipient is its own, nothing is taken over."""
    with SqliteLedger.for_run(tmp_path / "l.sqlite", "f") as run:
        assert run.runner is None
        assert run.running() == 1
        assert run.claim(PHONES[:3]) == dict.fromkeys(PHONES[:3], True)
        run.served(PHONES[:3])
        assert run.orphans() == set()


def test_runs_registered_say_who_ran_where(url: str, runs: list[PostgresLedger]) -> None:
    """An operator reads `runners` with psql: which host and process, since when."""
    run = run_of(url, runs)
    assert run._reader is not None
    keepalive = run._reader.execute("SHOW tcp_keepalives_idle").fetchone()
    assert keepalive == ("30",)  # a vanished machine is found out within a minute
    [(host, pid, ended)] = query(
        url, "SELECT host, pid, ended_at FROM runners WHERE id = %s", run.runner
    )
    assert (host, pid, ended) == (os.uname().nodename, os.getpid(), None)


# End to end: real flowrun processes sharing one campaign, against the sandbox over loopback.

PEOPLE = 5000


ONE_STEP = "  - name: a\n    text: {body: 'one {{ recipient.name }}'}\n"


def _checkouts(
    folder: Path,
    base: str,
    concurrency: int,
    *,
    people: int = PEOPLE,
    steps: str = TWO_STEPS,
    rate: str = "100000/s",
) -> tuple[Path, Path]:
    """The playbook in two folders, as two machines would hold it."""
    write_flow(folder, base, steps, people=people, concurrency=concurrency, rate=rate)
    other = folder / "second-machine"
    other.mkdir()
    for name in ("flow.yaml", "people.csv"):
        shutil.copy(folder / name, other / name)
    return folder, other


def _sent(out: str) -> int:
    found = re.search(r"sent ([\d,]+), failed", out)
    assert found, out
    return int(found.group(1).replace(",", ""))


@pytest.mark.slow
def test_two_runners_at_once_send_every_message_exactly_once(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    base, state = api
    url = postgres.fresh()
    post(f"{base}/sandbox/faults", {"latency": 0.005})  # both run for a while, side by side
    checkouts = _checkouts(folder, base, concurrency=8)
    runners = [start(where, "--ledger", url) for where in checkouts]
    results = [runner.communicate(timeout=300) for runner in runners]
    for runner, (_out, err) in zip(runners, results, strict=True):
        assert runner.returncode == 0, err
    shares = [_sent(out) for out, _err in results]
    assert sum(shares) == 2 * PEOPLE
    assert min(shares) > 0, shares  # both worked
    assert any("served by another run of this flow" in err for _out, err in results)
    sent = delivered(state)
    assert len(sent) == 2 * PEOPLE
    assert max(sent.values()) == 1  # exactly once
    assert set(rows(url).values()) == {"sent"}
    assert postgres.password not in "".join(out + err for out, err in results)


@pytest.mark.slow
def test_kill_9_of_one_runner_the_other_finishes_its_recipients(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    """The dead runner leaves at most its concurrency uncertain; the survivor serves the
    recipients it had claimed and not got through; a re-run sends nothing twice."""
    base, state = api
    url = postgres.fresh()
    concurrency = 8
    post(f"{base}/sandbox/faults", {"latency": 0.01})
    doomed_folder, survivor_folder = _checkouts(folder, base, concurrency)
    doomed = start(doomed_folder, "--ledger", url)
    survivor = start(survivor_folder, "--ledger", url)
    wait_until(lambda: len(state.inbox) > 2000, 60)
    writers = children(doomed.pid)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert doomed.returncode == -signal.SIGKILL  # it was still sending
    gone(writers)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode in (0, 1), err  # 1: the dead one's in-flight are uncertain
    assert "Traceback" not in err
    assert "of a run that ended before it got through them were served by this one" in err
    ledger = rows(url)
    uncertain = {key for key, what in ledger.items() if what == "uncertain"}
    assert len(uncertain) <= concurrency
    # the campaign is finished: every message sent, or in doubt, or held behind one in doubt
    doubtful = {who for who, _step in uncertain}
    for i in range(PEOPLE):
        phone = f"1555010{i:04d}"
        for step in ("a", "b"):
            assert ledger.get((phone, step)) == "sent" or phone in doubtful, (phone, step)
    sent = delivered(state)
    assert max(sent.values()) == 1  # nothing reached the API twice
    assert all(ledger[key] in ("sent", "uncertain") for key in sent)

    again = start(folder, "--ledger", url)
    out, err = again.communicate(timeout=120)
    assert again.returncode in (0, 1), err
    assert max(delivered(state).values()) == 1
    assert _sent(out) == 0  # what is uncertain waits for --retry-uncertain; the rest was sent
    assert rows(url) == ledger


@pytest.mark.slow
def test_two_runners_keep_the_flows_rate_together(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    """The API's rate limit is the phone number's: two runs of a flow at `rate: 200/s` send
    200 a second between them, not 400. Measured at the sandbox while both run and know of
    each other (the second from its start, the first within SHARE_EVERY of it); a slow
    machine can only lower the rate, so the bound never fails for noise."""
    base, state = api
    url = postgres.fresh()
    people = 2000
    checkouts = _checkouts(folder, base, 8, people=people, rate="200/s", steps=ONE_STEP)
    wall_minus_monotonic = time.time() - time.monotonic()
    first = start(checkouts[0], "--ledger", url)
    wait_until(lambda: len(state.inbox) > 0, 30)
    second = start(checkouts[1], "--ledger", url)
    for runner in (first, second):
        _out, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
    assert len(delivered(state)) == people

    def monotonic(stamp: str) -> float:
        return datetime.fromisoformat(stamp).timestamp() - wall_minus_monotonic

    [(joined, first_end)] = query(
        url, "SELECT max(started_at), min(ended_at) FROM runners WHERE ended_at IS NOT NULL"
    )
    both = (monotonic(joined) + SHARE_EVERY + 0.1, monotonic(first_end) - 0.1)
    arrivals = [at for at in state.received if both[0] <= at <= both[1]]
    seconds = both[1] - both[0]
    assert seconds >= 1.0, "the runs did not run side by side long enough to measure"
    rate = len(arrivals) / seconds
    assert rate <= 200 * 1.15, f"{rate:.0f} msg/s between two runs of a flow at 200/s"


@pytest.mark.slow
def test_a_follower_takes_over_the_waiting_recipients_of_one_that_died(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    """Two `--follow` runs hold a campaign's waiting recipients between them (two hosts, for
    the day one fails); kill -9 one, and the other serves its recipients as they write."""
    base, state = api
    url = postgres.fresh()
    post(f"{base}/sandbox/window", {"everyone_wrote": None, "window_errors": "sync"})
    write_flow(
        folder, base, HELLO_THEN_NOTE, people=400, kind="cloud", window="check", rate="100/s"
    )
    with listening(url) as port:
        post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": APP_SECRET})
        doomed = start(folder, "--ledger", url, "--follow")
        survivor = start(folder, "--ledger", url, "--follow")
        try:
            wait_until(lambda: len(state.inbox) == 400, 60)  # every hello; every note waits
            wait_until(lambda: len(_waiting(url)) == 400)
            holders = _holders(url)
            assert len(set(holders.values())) == 2  # both took a share
            runner = _runner_of(url, doomed.pid)
            theirs = sorted(p for p, who in holders.items() if who == runner)
            doomed.send_signal(signal.SIGKILL)
            doomed.communicate(timeout=30)
            post(f"{base}/sandbox/inbound", {"from": theirs[0], "text": "hi"})
            # taken over within TAKE_OVER_EVERY (10 s), then served as they wrote
            wait_until(lambda: rows(url).get((theirs[0], "note")) == "sent", 40)
        finally:
            survivor.terminate()
            _out, err = survivor.communicate(timeout=30)
    assert "of a run that ended before it got through them" in err
    assert max(delivered_to(state).values()) == 1


def _state(url: str, phone: str, step: str) -> str | None:
    """A message's state, None before the run created the tables."""
    try:
        return rows(url).get((phone, step))
    except psycopg.errors.UndefinedTable:
        return None


def _waiting(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT recipient FROM messages WHERE state = 'waiting'")


def _holders(url: str) -> dict[str, int]:
    return {
        phone: int(runner) for phone, runner in query(url, "SELECT recipient, runner FROM claims")
    }


def _runner_of(url: str, pid: int) -> int:
    [(runner,)] = query(url, "SELECT id FROM runners WHERE pid = %s", pid)
    return int(runner)


def delivered_to(state: SandboxState) -> Counter[tuple[str, str]]:
    return Counter((m["to"], m.get("type", "")) for m in state.inbox)


# Races found in review: each of these failed on an earlier version of the store.


def _waits_for_a_lock(url: str, ledger: PostgresLedger) -> bool:
    assert ledger._db is not None
    pid = ledger._db.info.backend_pid
    rows = query(url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", pid)
    return bool(rows) and rows[0][0] == "Lock"


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def go() -> None:
        try:
            out["value"] = call()
        except Exception as exc:  # (the test says which)
            out["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def test_a_live_runs_claim_is_never_taken(url: str, runs: list[PostgresLedger]) -> None:
    """B's claim takes its snapshot, then waits for a row lock (here held by T). Meanwhile C
    starts (its `runners` row is newer than B's snapshot) and claims X from a run that ended.
    When B reaches X, READ COMMITTED checks its WHERE again on X's newest version (held by C),
    but a subquery still sees B's snapshot, where C does not exist: a test for "no live
    runner holds it" took X from live C, and both served X. A claim now needs positive
    evidence that its holder ended."""
    w, x = PHONES[0], PHONES[1]
    ended = run_of(url, runs)
    ended.claim([w, x])
    ended.close()
    b = run_of(url, runs)
    with psycopg.connect(url) as t:  # (not autocommit: T holds W's row until it commits)
        t.execute("SELECT 1 FROM claims WHERE recipient = %s FOR UPDATE", (w,))
        thread, out = _in_thread(lambda: b.claim([w, x]))
        wait_until(lambda: _waits_for_a_lock(url, b) or not thread.is_alive())
        c = run_of(url, runs)  # a run starting now, on another machine
        c_serves_x = x in c.claim([x])
        t.commit()
    thread.join(10)
    assert "error" not in out, out
    b_claimed = out["value"]
    assert isinstance(b_claimed, dict)
    holder = query(url, "SELECT runner FROM claims WHERE recipient = %s", x)[0][0]
    assert (x in b_claimed, c_serves_x) in ((True, False), (False, True))  # exactly one
    assert holder == (b.runner if x in b_claimed else c.runner)


def test_claims_and_served_never_deadlock(url: str, runs: list[PostgresLedger]) -> None:
    """`claim` locks its batch in phone order; `served` (one implicit transaction: executemany
    pipelines) locked in the order recipients got through, and the two deadlocked (T only
    stretches the interleaving): the run died with "deadlock detected"."""
    a, b, c = PHONES[0], PHONES[1], PHONES[2]
    holder = run_of(url, runs)
    holder.claim([a, b, c])
    other = run_of(url, runs)
    with psycopg.connect(url) as t:
        t.execute("SELECT 1 FROM claims WHERE recipient = %s FOR UPDATE", (c,))
        first, out = _in_thread(lambda: holder.served([b, c, a]))
        wait_until(lambda: _waits_for_a_lock(url, holder) or not first.is_alive())
        second, out2 = _in_thread(lambda: other.claim([a, b]))
        wait_until(lambda: _waits_for_a_lock(url, other) or not second.is_alive())
        t.commit()
    first.join(20)
    second.join(20)
    assert [o["error"] for o in (out, out2) if "error" in o] == []


def test_a_run_of_the_flowrun_before_runners_is_never_run_beside(
    url: str, runs: list[PostgresLedger]
) -> None:
    """The flowrun before several runners held the flow's run lock exclusively and knows no
    claims: a run of this one beside it would turn its live `sending` rows uncertain and serve
    its recipients too. Each refuses to start beside the other."""
    schema = query(url, "SELECT current_schema()")[0][0]
    key = older_run_key(schema, "f")
    with psycopg.connect(url, autocommit=True) as older:  # an older run, going
        older.execute("SELECT pg_advisory_lock(%s)", (key,))
        with pytest.raises(LedgerError, match="a run of an older flowrun is going on flow 'f'"):
            run_of(url, runs)
        run_of(url, runs, "another flow").close()  # other flows are not held
        older.execute("SELECT pg_advisory_unlock(%s)", (key,))
    run_of(url, runs)
    with psycopg.connect(url, autocommit=True) as older:  # an older run, starting now
        taken = older.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert taken == (False,)


def test_the_lock_space_is_the_schema_of_the_tables(
    postgres: pg.Postgres, runs: list[PostgresLedger]
) -> None:
    """With the default search_path ("$user", public), a schema named after the user, created
    after the ledger, becomes current_schema() while the tables stay in public: a run that
    derived its lock namespace from current_schema() looked for live runners elsewhere, found
    none, and fenced a live run."""
    url = postgres.fresh_database()
    first = run_of(url, runs)
    first.claim(PHONES[:2])
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{pg.USER}"')
    second = run_of(url, runs)  # the same URL, the same tables
    second.recover()
    [(fenced,)] = query(url, "SELECT fenced FROM runners WHERE id = %s", first.runner)
    assert not fenced


@pytest.mark.slow
def test_a_run_for_one_recipient_does_not_hold_a_dead_runs_recipients(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    """A killed run held 5 recipients. An `--only` run (a test send, kept going by --follow
    while its one recipient waits) took all 5 over after its pass, served none (not its
    own), and held them while it followed: a full run beside it sent them nothing. It takes
    over only its own recipients now."""
    base, state = api
    url = postgres.fresh()
    post(f"{base}/sandbox/window", {"everyone_wrote": None, "window_errors": "sync"})
    write_flow(folder, base, HELLO_THEN_NOTE, people=8, kind="cloud", window="check")
    only = start(folder, "--ledger", url, "--only", "+1 555 010 0007", "--follow")
    try:
        wait_until(lambda: _state(url, PHONES[7], "note") == "waiting", 30)
        with doomed_run(url, claim=PHONES[:5], mark=[], flow="t") as doomed:
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
        # the follower's next look for orphans (every TAKE_OVER_EVERY) finds the 5
        wait_until(lambda: not _locked_but(url, _runner_of(url, only.pid)), 20)
        time.sleep(TAKE_OVER_EVERY + 1)
        full = start(folder, "--ledger", url)
        _out, err = full.communicate(timeout=60)
        assert full.returncode == 0, err
        hellos = {to for to, kind in delivered_to(state) if kind == "template"}
        assert hellos == set(PHONES), err
    finally:
        only.terminate()
        only.communicate(timeout=30)
