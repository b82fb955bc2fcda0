"""A first campaign without friction (issue 17): the run's own problems leave messages unsent,
not failed; progress after a resume; trying a flow against a running `flowrun sandbox`.

Real runs over loopback HTTP against the sandbox, with a real SQLite ledger."""

from __future__ import annotations

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
