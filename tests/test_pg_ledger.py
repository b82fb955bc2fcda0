"""`flowrun FLOW --ledger postgresql://...` end to end (issue 16): real flowrun processes against
the sandbox over loopback, with the ledger in the session's real PostgreSQL (tests/pg.py).

The SQLite versions of these guarantees are in tests/test_hardening.py, whose kill helper is
reused here: the run finds the ledger through FLOWRUN_LEDGER, as a CI job would.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.ledger import shown
from runner.sandbox import SandboxState
from tests import pg
from tests.sandbox_helpers import APP_SECRET, listening, post, start, wait_until, write_flow
from tests.test_hardening import TWO_STEPS, kill_mid_run

# A template opens; the free-form note waits for the customer to write (their window).
HELLO_THEN_NOTE = (
    "  - name: hello\n    template: {name: hello_world, language: en_US}\n"
    "  - name: note\n    text: {body: thanks}\n"
)


def rows(url: str) -> dict[tuple[str, str], str]:
    """(recipient, step) → state, read with a connection of the test's own."""
    with psycopg.connect(url) as db:
        found: list[Any] = db.execute("SELECT recipient, step, state FROM messages").fetchall()
    return {(who, step): state for who, step, state in found}


def delivered(state: SandboxState) -> Counter[tuple[str, str]]:
    return Counter(
        (m["to"], "a" if m["text"]["body"].startswith("one") else "b") for m in state.inbox
    )


def test_a_run_on_postgresql_sends_once_and_a_second_checkout_sends_nothing(
    api: tuple[str, SandboxState],
    folder: Path,
    postgres: pg.Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, state = api
    url = postgres.fresh()
    write_flow(folder, base, TWO_STEPS, people=300, concurrency=8)
    first = start(folder, "--ledger", url)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "sent 600, failed 0" in out
    assert f"ledger: {shown(url)}" in out
    assert postgres.password not in out + err
    assert max(delivered(state).values()) == 1
    assert len(delivered(state)) == 600
    assert set(rows(url).values()) == {"sent"}
    assert not list(folder.glob("*.sqlite"))  # nothing was written beside the flow

    again = start(folder, "--ledger", url)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "nothing to send: 600 message(s) were sent before" in out
    assert len(state.inbox) == 600

    # another checkout of the playbook (another folder, a new machine), the same database,
    # found through the environment as a CI job finds it
    other = folder.parent / "second-checkout"
    other.mkdir()
    for name in ("flow.yaml", "people.csv"):
        shutil.copy(folder / name, other / name)
    monkeypatch.setenv("FLOWRUN_LEDGER", url)
    third = start(other)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "nothing to send" in out
    assert len(state.inbox) == 600
    assert postgres.password not in out + err
    assert not list(other.glob("*.sqlite"))


def test_kill_9_mid_run_on_postgresql_duplicates_nothing(
    api: tuple[str, SandboxState],
    folder: Path,
    postgres: pg.Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 twice in a 2,000-message run: the server drops the dead run's lock with its
    connection, the next run turns its `sending` rows uncertain (at most `concurrency`), and
    the last run completes without sending anything twice."""
    base, state = api
    url = postgres.fresh()
    monkeypatch.setenv("FLOWRUN_LEDGER", url)
    concurrency = 8
    write_flow(folder, base, TWO_STEPS, people=1000, concurrency=concurrency)
    post(f"{base}/sandbox/faults", {"latency": 0.005})
    for delay in (0.1, 0.3):
        kill_mid_run(folder, state, delay)
        in_doubt = Counter(rows(url).values())
        assert in_doubt["sending"] + in_doubt["uncertain"] <= 2 * concurrency
    final = start(folder)
    _out, err = final.communicate(timeout=120)
    assert final.returncode in (0, 1), err  # 1: some messages are uncertain (listed)
    assert "Traceback" not in err
    sent = delivered(state)
    assert max(sent.values()) == 1  # nothing reached the API twice
    ledger = rows(url)
    assert all(ledger[key] in ("sent", "uncertain") for key in sent)
    assert all(key in sent for key, what in ledger.items() if what == "sent")
    uncertain = [key for key, what in ledger.items() if what == "uncertain"]
    assert len(uncertain) <= 2 * concurrency  # two kills, each at most `concurrency` in doubt
    # every message is sent, or in doubt, or waits behind its recipient's first one in doubt
    assert set(ledger.values()) <= {"sent", "uncertain"}
    assert len(ledger) >= 2000 - len(uncertain)


def test_customers_heard_through_flowrun_listen_on_postgresql(
    api: tuple[str, SandboxState], folder: Path, postgres: pg.Postgres
) -> None:
    """`flowrun listen --ledger URL` records what customers write in the database; a one-pass
    run then sends the step that waited for them, and `--follow` does it as they write."""
    base, state = api
    url = postgres.fresh()
    post(f"{base}/sandbox/window", {"everyone_wrote": None, "window_errors": "sync"})
    write_flow(folder, base, HELLO_THEN_NOTE, people=2, kind="cloud", window="check")
    with listening(url) as port:
        post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": APP_SECRET})
        first = start(folder, "--ledger", url)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert "waiting 2" in out
        post(f"{base}/sandbox/inbound", {"from": "15550100000", "text": "hi"})
        wait_until(lambda: rows(url).get(("15550100000", "note")) == "waiting")
        wait_until(lambda: _inbound(url) == 1)
        second = start(folder, "--ledger", url)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert rows(url)[("15550100000", "note")] == "sent"
        follow = start(folder, "--ledger", url, "--follow")
        try:
            post(f"{base}/sandbox/inbound", {"from": "15550100001", "text": "me too"})
            wait_until(lambda: rows(url).get(("15550100001", "note")) == "sent", 30)
        finally:
            follow.terminate()
            _out, err = follow.communicate(timeout=30)
    assert postgres.password not in err
    assert state.refused == []


def _inbound(url: str) -> int:
    with psycopg.connect(url) as db:
        found: Any = db.execute("SELECT count(*) FROM inbound").fetchone()
    return int(found[0])
