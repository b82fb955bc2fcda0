"""A first campaign without friction (issue 17): the run's own problems leave messages unsent,
not failed; progress after a resume; trying a flow against a running `flowrun sandbox`.

Real runs over loopback HTTP against the sandbox, with a real SQLite ledger."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from runner.sandbox import TOKEN, SandboxState
from tests.sandbox_helpers import count, flowrun, ledger_rows, post, query, write_flow

IMAGE_THEN_TEXT = "  - image: {file: assets/welcome.jpg}\n  - text: {body: 'hi'}\n"


def test_a_wrong_token_fails_no_message(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API refused the run's credentials, not its messages: the messages in flight when
    the 401s came are not sent yet, and a plain run with the right token sends them all."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=40, concurrency=8)
    monkeypatch.setenv("WA_TOKEN", "a-wrong-token")
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "the API refused the credentials (HTTP 401, error 1005" in err
    assert count(folder, "state = 'failed'") == 0
    refused = query(folder, "SELECT state, error_title, error_details FROM messages")
    assert refused  # those in flight when the 401 came: on record, not sent
    assert {row[:2] for row in refused} == {("skipped", "not sent")}
    assert all("credentials" in row[2] for row in refused)
    monkeypatch.setenv("WA_TOKEN", TOKEN)
    code, out, err = flowrun("flow.yaml")  # no --retry-failed
    assert code == 0, err
    assert "sent 40, failed 0" in out
    assert len({m["to"] for m in state.inbox}) == len(state.inbox) == 40


def test_a_failed_upload_fails_no_message(api: tuple[str, SandboxState], folder: Path) -> None:
    """The upload failed (the API's 500s outlasted its retries): the image messages never
    reached the API, so they stay unsent (their recipients' later steps wait behind them), the
    run says so and exits 1, and the next plain run sends everything."""
    base, state = api
    write_flow(folder, base, IMAGE_THEN_TEXT, people=3, retries=1)
    post(f"{base}/sandbox/faults", {"status": {"code": 500, "count": 2}})
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert state.inbox == []
    assert count(folder, "state = 'failed'") == 0
    rows = {(r[0], r[2], r[5]) for r in ledger_rows(folder)}
    assert rows == {("#1", "skipped", "not sent"), ("#2", "skipped", "blocked")}
    assert "3 message(s) not sent: the upload of assets/welcome.jpg failed" in err
    assert "the next run sends them" in err
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 6, failed 0" in out
    assert len(state.inbox) == 6


def test_a_message_the_api_refused_stays_failed(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """The line between the two: a 4xx on the message itself is the message's failure."""
    base, _state = api
    write_flow(folder, base, IMAGE_THEN_TEXT, people=2)
    post(f"{base}/sandbox/faults", {"fail_recipients": {"15550100001": 1013}})
    code, _out, _err = flowrun("flow.yaml")
    assert code == 1
    assert query(folder, "SELECT step, state FROM messages WHERE recipient = '15550100001'") == [
        ("#1", "failed"),
        ("#2", "skipped"),
    ]


def test_a_resumed_run_says_what_was_sent_before(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=10)
    assert flowrun("flow.yaml", "--limit", "3")[0] == 0
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "flow.yaml: 3 message(s) were sent before, by an earlier run; not sent again" in out
    assert "flow.yaml: sent 7, failed 0" in out
    assert len(state.inbox) == 10


def test_report_calls_a_message_in_flight_sending_everywhere(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """A row marked `sending` (in flight now, or left by a run killed hard) was counted in
    the `sending` column and listed under `uncertain`: one word for it, in both places."""
    base, _state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=3)
    post(f"{base}/sandbox/faults", {"fail_recipients": {"15550100002": 131026}})
    flowrun("flow.yaml")
    with contextlib.closing(sqlite3.connect(folder / "flow.ledger.sqlite")) as db, db:
        db.execute("UPDATE messages SET state = 'sending' WHERE recipient = '15550100001'")
        db.execute("UPDATE messages SET state = 'uncertain' WHERE recipient = '15550100002'")
    code, out, _err = flowrun("report", "flow.yaml")
    assert code == 0
    lines = out.splitlines()
    header = lines[1].split()
    assert header[-2:] == ["sending", "waiting"]
    assert lines[2].split()[header.index("sending")] == "1"
    assert lines[2].split()[header.index("uncertain")] == "1"
    uncertain = lines.index(
        "uncertain (the API may or may not have them; --retry-uncertain sends them again):"
    )
    assert lines[uncertain + 1] == "  15550100002 (#1)"
    sending = lines.index(
        "sending (in flight: a run is sending them now; if none is, a run was stopped hard"
        " and the next run counts them uncertain):"
    )
    assert lines[sending + 1] == "  15550100001 (#1)"
