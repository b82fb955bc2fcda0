"""Every command reads the ledger a run writes (issue 16): with FLOWRUN_LEDGER set once, as a
CI job sets it, `plan`, `--dry-run`, `preview`, `report`, `contacts` and `listen` use the
PostgreSQL ledger, never the empty file beside the flow (which would say that every message is
still due). Real flowrun processes, the session's real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from runner.ledger import shown
from runner.sandbox import SandboxState
from tests import pg
from tests.sandbox_helpers import free_port, run_flowrun, start, write_flow
from tests.test_hardening import TWO_STEPS


def due_now(done: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"due now +([\d,]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return int(found.group(1).replace(",", ""))


def test_commands_read_the_ledger_flowrun_ledger_names(
    api: tuple[str, SandboxState],
    folder: Path,
    postgres: pg.Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _state = api
    url = postgres.fresh()
    monkeypatch.setenv("FLOWRUN_LEDGER", url)
    write_flow(folder, base, TWO_STEPS, people=20)
    assert due_now(run_flowrun(folder, "plan", "flow.yaml")) == 40  # nothing sent yet
    run = start(folder)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "sent 40, failed 0" in out
    said = []
    for command in (["plan", "flow.yaml"], ["flow.yaml", "--dry-run"]):
        done = run_flowrun(folder, *command)
        assert done.returncode == 0, done.stderr
        assert due_now(done) == 0, command  # the database's history, not a new file
        said.append(done.stdout + done.stderr)
    report = run_flowrun(folder, "report", "flow.yaml")
    assert report.returncode == 0, report.stderr
    assert shown(url) in report.stdout
    assert re.search(r"\bt/a +20 +0 ", report.stdout), report.stdout
    assert re.search(r"\bt/b +20 +0 ", report.stdout), report.stdout
    preview = run_flowrun(folder, "preview", "flow.yaml", "-o", "p.html")
    assert preview.returncode == 0, preview.stderr
    assert f"ledger {shown(url)}" in (folder / "p.html").read_text("utf-8")
    # a business's own opt-out list goes into the database, and is listed from it
    (folder / "stop.csv").write_text("phone\n+1 555 010 0003\n", "utf-8")
    imported = run_flowrun(folder, "contacts", "flow.yaml", "--import", "stop.csv")
    assert imported.returncode == 0, imported.stderr
    assert f"1 opt-out(s) added to {shown(url)}" in imported.stdout
    with psycopg.connect(url) as db:
        assert db.execute("SELECT customer FROM preferences").fetchall() == [("15550100003",)]
    listed = run_flowrun(folder, "contacts", "flow.yaml")
    assert listed.returncode == 0, listed.stderr
    assert "15550100003" in listed.stdout
    said += [report.stdout, report.stderr, preview.stdout, imported.stdout, listed.stdout]
    assert not any(postgres.password in text for text in said)
    assert not list(folder.glob("*.sqlite*"))  # no command wrote or read a file beside the flow
    # the sandbox keeps its own ledger: a try never reads the campaign's
    assert due_now(run_flowrun(folder, "flow.yaml", "--sandbox", "--dry-run")) == 40


def test_a_run_on_postgresql_warns_over_the_messaging_limit(
    api: tuple[str, SandboxState],
    folder: Path,
    postgres: pg.Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warning a run on a file ledger gives (tests/test_marketing.py), on the database."""
    base, state = api
    state.customers.everyone_wrote = None  # nobody wrote: every template is business-initiated
    monkeypatch.setenv("FLOWRUN_LEDGER", postgres.fresh())
    hello = "  - name: hello\n    template: {name: hello_world, language: en_US}\n"
    write_flow(folder, base, hello, people=300, kind="cloud", window="check", messaging_limit=250)
    run = start(folder)
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    warning = "warning: 300 recipient(s) would get a template now outside their 24-hour window"
    assert sum(warning in line for line in err.splitlines()) == 1


def test_flowrun_listen_records_into_flowrun_ledger(
    postgres: pg.Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.fresh()
    monkeypatch.setenv("FLOWRUN_LEDGER", url)
    port = free_port()
    command = [sys.executable, "-m", "runner", "listen", "--port", str(port)]
    with subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as listener:
        try:
            assert listener.stdout is not None
            banner = listener.stdout.readline()
        finally:
            listener.terminate()
            listener.communicate(timeout=30)
    assert f"ledger: {shown(url)}" in banner
    assert postgres.password not in banner
