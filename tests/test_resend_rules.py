"""Refusals that --retry-failed must not simply repeat: Meta's per-user marketing limit (131049)
is not lifted for 24 hours, and a number in one of Meta's experiments (130472) never takes the
message (issue: conversations, item 6). Against the sandbox, over loopback."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.sandbox import SandboxState
from tests.sandbox_helpers import flowrun, post, query, write_flow

STEPS = "  - name: hello\n    template: {name: hello_world, language: en_US}\n"
ALICE = "15550100001"


def to_alice(state: SandboxState) -> int:
    return sum(1 for message in state.inbox if message["to"] == ALICE)


def test_the_per_user_marketing_limit_is_not_retried_within_24_hours(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=2, kind="cloud")
    post(f"{base}/sandbox/faults", {"fail_recipients": {ALICE: {"error": 131049, "count": 1}}})
    code, _, err = flowrun("flow.yaml")
    assert code == 1
    assert "131049" in err
    code, _, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 1  # still held: not sent again yet
    assert to_alice(state) == 0
    assert "1 message(s) refused by Meta's per-user marketing limit wait until" in err
    day_ago = (datetime.now(UTC) - timedelta(hours=25)).isoformat(timespec="milliseconds")
    with sqlite3.connect(folder / "flow.ledger.sqlite") as db:
        db.execute("UPDATE messages SET last_attempt = ? WHERE recipient = ?", (day_ago, ALICE))
    code, _, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 0, err
    assert to_alice(state) == 1


def test_a_number_in_an_experiment_is_never_retried(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=2, kind="cloud")
    post(f"{base}/sandbox/faults", {"fail_recipients": {ALICE: {"error": 130472, "count": 1}}})
    assert flowrun("flow.yaml")[0] == 1
    code, _, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 1
    assert to_alice(state) == 0
    assert "will not take it" in err
    assert query(folder, f"SELECT state FROM messages WHERE recipient = '{ALICE}'") == [("failed",)]
