"""`flowrun report`'s layout (runner/commands/report.py) on a ledger written through the store:
no run, no server, a fraction of a second."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from runner.commands.report import summary_lines, write_rows
from runner.ledger import Batch, LedgerError, Mark, Outcome, SqliteLedger, Status

AT = "2026-12-01T10:00:00+00:00"


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "l.sqlite"
    sent = [Outcome("hello", f"1555010000{i}", "sent", message_id=f"wamid.{i}") for i in range(4)]
    refused = [
        Outcome(
            "hello",
            f"1555020000{i}",
            "failed",
            http_status=400,
            error_code=131026,
            error_title="Message undeliverable",
        )
        for i in range(7)
    ]
    with SqliteLedger.for_run(path, "f") as run:
        run.commit(Batch(marks=[Mark("bye", "15550300000", "h")]))  # a run died here
        run.commit(Batch(outcomes=[*sent, *refused]))
        run.commit(Batch(outcomes=[Outcome("bye", "15550100000", "skipped", attempts=0)]))
    with SqliteLedger.for_writer(path) as receiver:
        receiver.record_webhooks(
            [
                Status("wamid.0", "read", AT),
                Status("wamid.1", "delivered", AT),
                Status("wamid.2", "failed", AT, code=131049, title="Ecosystem engagement"),
            ]
        )
    return path


def test_the_summary(ledger: Path) -> None:
    lines = summary_lines(ledger, "f")
    assert lines[0] == f"ledger: {ledger}"
    table = {line.split()[0]: line.split()[1:] for line in lines[2:4]}
    assert table == {
        "f/bye": ["0", "0", "1", "0", "1", "0"],
        "f/hello": ["4", "7", "0", "0", "0", "0"],
    }
    failures = lines[lines.index("failures:") + 1]
    assert failures.startswith("  7x HTTP 400, error 131026, Message undeliverable: 15550200000,")
    assert failures.endswith(", ...")  # five recipients named, then the rest implied
    assert "  15550300000 (bye)" in lines
    delivery = lines.index(
        "delivery (from status webhooks; 'sent' = accepted, nothing more heard):"
    )
    assert lines[delivery + 2].split() == ["f/hello", "0", "1", "1", "1", "1"]
    assert lines[-1] == "  failed 1x: error 131049, Ecosystem engagement"


def test_no_messages_yet(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    assert summary_lines(path, "f") == [f"ledger: {path}", "no messages recorded yet"]


def test_rows_as_csv_and_jsonl(ledger: Path) -> None:
    out = io.StringIO()
    write_rows(ledger, "f", "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 13
    read = next(row for row in rows if row["message_id"] == "wamid.0")
    assert (read["delivery"], read["read_at"]) == ("read", AT)
    out = io.StringIO()
    write_rows(ledger, None, "jsonl", out)
    failed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(1 for row in failed if row["delivery_error"] == "Ecosystem engagement") == 1


def test_not_a_ledger_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database", "utf-8")
    with pytest.raises(LedgerError, match="not a flowrun ledger"):
        summary_lines(path, None)
