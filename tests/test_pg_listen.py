"""A run's own receiver on a PostgreSQL ledger (issue 16): `flowrun FLOW --listen PORT` and
`--sandbox --follow` with `--ledger postgresql://...`, as real processes against the sandbox
over loopback and the session's real PostgreSQL (tests/pg.py), whose URL carries a password.

The receiver is a child process (runner/receiver/process.py): its command line, readable by
everyone (`ps`, /proc/PID/cmdline), names the ledger without the password, which reaches it in
its environment (PGPASSWORD), readable by its own user only. The SQLite versions of these runs
are in tests/test_listen.py and tests/test_executor.py (test_readme_sandbox_run).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.ledger import shown
from runner.receiver.process import _child_ledger
from runner.sandbox import SandboxState
from tests import pg
from tests.conftest import REPO
from tests.sandbox_helpers import (
    APP_SECRET,
    children,
    free_port,
    post,
    start,
    wait_until,
    write_flow,
)


def select(url: str, sql: str) -> list[Any]:
    """Rows of `sql`, read with a connection of the test's own."""
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()


def _proc(pid: int, name: str) -> bytes:
    """/proc/PID/NAME, or nothing if the process is gone meanwhile."""
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / name).read_bytes()
    return b""


RECEIVER = b"runner.receiver.process"  # the run's receiver child
WRITER = b"runner.ledger.writer"  # the run's ledger writer (runner/ledger/batcher.py)


def _child(run: int, module: bytes) -> int | None:
    """The run's child process running `module`, once it is started."""
    for pid in children(run):
        if module in _proc(pid, "cmdline"):
            return pid
    return None


def test_a_run_with_listen_on_postgresql_records_every_status(
    api: tuple[str, SandboxState],
    folder: Path,
    postgres: pg.Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger found through FLOWRUN_LEDGER, as CI finds it; the sandbox tells each
    message's statuses a second after accepting it, so the run ends with every final status in
    the database only if it waited for them on PostgreSQL (await_statuses) with its receiver
    still recording. No process's command line holds the password meanwhile."""
    base, state = api
    url = postgres.fresh()
    port = free_port()
    steps = "  - name: a\n    text: {body: one}\n  - name: b\n    text: {body: two}\n"
    write_flow(folder, base, steps, people=40, kind="cloud")
    post(f"{base}/sandbox/faults", {"latency": 0.01})
    webhook = {"url": f"http://127.0.0.1:{port}/", "secret": APP_SECRET, "fail_share": 0.25}
    post(f"{base}/sandbox/webhook", {**webhook, "delay": 1.0})
    monkeypatch.setenv("WA_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("FLOWRUN_LEDGER", url)
    run = start(folder, "--listen", str(port))
    try:
        # the receiver starts before the first message, the writer as sending starts
        wait_until(lambda: None not in (_child(run.pid, RECEIVER), _child(run.pid, WRITER)))
        receiver = _child(run.pid, RECEIVER)
        assert receiver is not None
        command_lines = [_proc(pid, "cmdline") for pid in (run.pid, *children(run.pid))]
        receiver_line = _proc(receiver, "cmdline").split(b"\0")
        receiver_env = _proc(receiver, "environ").split(b"\0")
    finally:
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    password = postgres.password.encode()
    assert sum(RECEIVER in line or WRITER in line for line in command_lines) == 2
    assert all(password not in line for line in command_lines)
    assert shown(url).encode() in receiver_line  # the ledger, named without its password
    assert b"PGPASSWORD=" + password in receiver_env  # ... which comes this way
    assert postgres.password not in out + err

    assert "sent 80, failed 0" in out
    assert f"listening on http://127.0.0.1:{port}" in out
    assert f"ledger: {shown(url)}" in out
    assert "received" in out  # the receiver's own summary, once the run is over
    with urllib.request.urlopen(f"{base}/sandbox/webhook", timeout=10) as answer:
        decided = json.loads(answer.read())
    assert len(decided) == 80
    recorded = dict(select(url, "SELECT message_id, status FROM statuses"))
    assert recorded == decided  # every final status, none missing
    assert 5 < list(decided.values()).count("failed") < 35
    sent = select(url, "SELECT m.message_id FROM messages m WHERE m.state = 'sent'")
    assert {message_id for (message_id,) in sent} == set(decided)
    assert not list(folder.glob("*.sqlite*"))  # nothing beside the flow
    assert len(state.inbox) == 80


def test_the_receiver_child_gets_the_password_in_its_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command `listening` builds: a URL given with its password (in the user part or a
    `password=` parameter) is named without it; a file ledger is passed as it is."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for url in (
        "postgresql://flowrun:s3cret%2Fpw@127.0.0.1:5432/ledger?sslmode=disable",
        "postgresql://flowrun@127.0.0.1:5432/ledger?password=s3cret%2Fpw&sslmode=disable",
    ):
        ledger, env = _child_ledger(url)
        assert ledger == "postgresql://flowrun@127.0.0.1:5432/ledger?sslmode=disable"
        assert env is not None
        assert env["PGPASSWORD"] == "s3cret/pw"
    assert _child_ledger(Path("flows/x.ledger.sqlite")) == ("flows/x.ledger.sqlite", None)


def test_sandbox_follow_on_postgresql_plays_the_flow_end_to_end(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    """`flowrun flows/onboarding.yaml --sandbox --follow --ledger URL`: the sandbox's customers
    tap, reply or say STOP to the run's receiver, which records it in the database; the run
    follows until nothing waits, as it does on a file ledger (tests/test_executor.py,
    test_readme_sandbox_run)."""
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("*.sqlite*"))
    url = postgres.fresh()
    command = [sys.executable, "-m", "runner", "flows/onboarding.yaml", "--sandbox", "--follow"]
    follow = subprocess.run(
        [*command, "--ledger", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert follow.returncode == 0, follow.stderr
    assert postgres.password not in follow.stdout + follow.stderr
    summary = follow.stdout.splitlines()[-2]
    assert summary.startswith("flows/onboarding.yaml: sent "), follow.stdout
    assert "failed 0" in summary, follow.stdout
    assert "waiting" not in summary, follow.stdout
    assert f"ledger: {shown(url)}" in follow.stdout
    assert not list((tmp_path / "flows").glob("*.sqlite*"))  # all of it in the database

    states = dict(select(url, "SELECT state, count(*) FROM messages GROUP BY state"))
    assert set(states) <= {"sent", "skipped"}, states
    heard = select(url, "SELECT customer FROM inbound UNION SELECT customer FROM preferences")
    assert len(heard) == 5  # every customer answered the welcome, recorded by the receiver
    assert select(url, "SELECT count(*) FROM statuses WHERE status = 'read'")[0][0] > 5
    # the branches the answers chose: a tap on "tour" or "prices" sent that step to its customer
    sent = set(select(url, "SELECT recipient, step FROM messages WHERE state = 'sent'"))
    taps = select(url, "SELECT customer, payload FROM inbound WHERE payload IS NOT NULL")
    assert all((customer, payload) in sent for customer, payload in taps), (taps, sent)
    assert {step for _, step in sent} >= {"welcome", "wave"}
