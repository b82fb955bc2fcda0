"""The ledger on a real SQLite file: states, crash recovery, the upload cache, the run lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runner.ledger import Ledger, LedgerError, Outcome


def test_outcomes_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "flow.ledger.sqlite"
    with Ledger(path, "onboarding") as ledger:
        ledger.commit([], [("welcome", "15550100001", "h1"), ("welcome", "15550100002", "h2")])
        ledger.commit(
            [
                Outcome("welcome", "15550100001", "sent", message_id="gBGG1", http_status=201),
                Outcome(
                    "welcome",
                    "15550100002",
                    "failed",
                    http_status=400,
                    error_code=1013,
                    error_title="User is not valid",
                    error_details="not on WhatsApp",
                ),
            ],
            [],
        )
        assert ledger.counts() == {"sent": 1, "failed": 1}
        assert ledger.state("welcome", "15550100001") == "sent"
    db = sqlite3.connect(path)
    row = db.execute(
        "SELECT state, message_id, attempts, body_hash, first_attempt IS NOT NULL"
        " FROM messages WHERE recipient = '15550100001'"
    ).fetchone()
    assert row == ("sent", "gBGG1", 1, "h1", 1)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sending_rows_of_a_dead_run_become_uncertain(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, "f") as ledger:
        ledger.commit([], [("1", "15550100001", "h")])
    with Ledger(path, "f") as ledger:
        assert ledger.recover() == 1
        assert ledger.states() == {("1", "15550100001"): "uncertain"}
        assert ledger.recover() == 0


def test_flows_share_a_ledger_without_mixing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, "a") as ledger:
        ledger.commit([Outcome("1", "15550100001", "sent", message_id="x")], [])
    with Ledger(path, "b") as ledger:
        assert ledger.states() == {}


def test_upload_cache(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite", "f") as ledger:
        assert ledger.media_id("http://127.0.0.1:1", "abc") is None
        ledger.remember_upload("http://127.0.0.1:1", "abc", "media-1")
        assert ledger.media_id("http://127.0.0.1:1", "abc") == "media-1"
        assert ledger.media_id("http://127.0.0.1:2", "abc") is None


def test_second_run_on_one_ledger_refuses(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, "f"):
        script = (
            "import sys; from pathlib import Path; from runner.ledger import Ledger, LedgerError\n"
            "try:\n    Ledger(Path(sys.argv[1]), 'f')\n"
            "except LedgerError as e:\n    print(e); sys.exit(2)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=False
        )
        assert other.returncode == 2
        assert "another flowrun is using this ledger" in other.stdout
    Ledger(path, "f").close()  # free again once the first run is done


def test_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot create the ledger here"):
        Ledger(tmp_path / "missing-folder" / "l.sqlite", "f")


def test_a_recipients_rows_are_an_index_lookup(tmp_path: Path) -> None:
    """Regression: the lookup once scanned the whole table, quadratic over a campaign."""
    path = tmp_path / "l.sqlite"
    Ledger(path, "f").close()
    db = sqlite3.connect(path)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT step, state FROM messages WHERE flow = ? AND recipient = ?",
        ("f", "1"),
    ).fetchall()
    detail = " ".join(row[-1] for row in plan)
    assert "SEARCH" in detail
    assert "recipient=?" in detail  # not just a search on flow=? and a scan of all its rows
