"""`flowrun plan` on the drip example (flows/drip.yaml) shows its timeline: on day 1 the
welcome is due now, the guide waits for an answer, the tip and the reminder wait for their time
(with the date); two days later, with the welcome sent to all and read by one, the tip is due
for that one only, and a run then does exactly that. The CLI in-process on a clock moved with
FLOWRUN_NOW; the runs are real ones against the sandbox (`--sandbox`, over loopback); the read
status is recorded in the ledger as the receiver records it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner import dialect as dialects
from runner.cli import cli
from runner.commands.checking import check
from runner.commands.outlook import outlook
from runner.ledger import SqliteLedger, Status
from runner.recipients import Recipient

REPO = Path(__file__).resolve().parent.parent
ALICE, BOB, JONAS = "15550100001", "15550100002", "49301234567"
LEDGER = "drip.sandbox.ledger.sqlite"
DAY_1 = "2026-12-01T16:00:00Z"  # 10:00 in Chicago, 17:00 in Berlin: inside 09:00-20:00
DAY_3 = "2026-12-03T16:00:00Z"
HELD_FOR_GOOD = "skipped (when: steps.welcome.status == 'read': false when due, for good)"


@pytest.fixture
def drip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped example, in a folder of its own (its ledgers are written beside it)."""
    shutil.copy(REPO / "flows" / "drip.yaml", tmp_path / "drip.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WA_TOKEN", "t")
    monkeypatch.setenv("WA_PHONE_NUMBER_ID", "106540352242922")
    monkeypatch.delenv("FLOWRUN_NOW", raising=False)
    return tmp_path


def plan(*args: str) -> str:
    result = CliRunner().invoke(cli, ["plan", "drip.yaml", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr
    return result.stdout


def section(out: str, title: str) -> dict[str, str]:
    """The rows under `title`: step → the rest, spaces squeezed."""
    lines = out.split(f"  {title}\n", 1)[1].splitlines()
    rows = {}
    for line in lines:
        if not line.startswith("    "):
            break
        key, rest = line.split(None, 1)
        rows[key] = " ".join(rest.split())
    return rows


def per_step(out: str) -> dict[str, str]:
    rows = section(out, "a run now, per step:")
    assert rows.pop("step") == "sent due now waiting skipped withheld"
    return rows


def run_with_sandbox(folder: Path, now: str = "") -> None:
    """`flowrun drip.yaml --sandbox`, as someone trying the example runs it (a process of its
    own: the run starts the sandbox and its ledger writer)."""
    env = {**os.environ, "FLOWRUN_NOW": now}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "drip.yaml", "--sandbox"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ", failed 0," in result.stdout


def read_welcome(folder: Path, customer: str, at: datetime) -> None:
    """The receiver records that `customer` read the welcome at `at` (a status webhook)."""
    with contextlib.closing(SqliteLedger.for_run(folder / LEDGER, "drip")) as ledger:
        record = ledger.history(customer)["welcome"]
    assert record.message_id is not None
    stamp = at.isoformat(timespec="seconds")
    with contextlib.closing(SqliteLedger.for_writer(folder / LEDGER)) as writer:
        writer.record_webhooks([Status(record.message_id, "read", stamp, customer)])


def test_day_one_shows_the_welcome_due_and_the_rest_waiting_with_dates(
    drip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWRUN_NOW", DAY_1)
    out = plan("--recipients", "1")
    assert "  recipients   3\n" in out
    assert "  due now      3\n" in out
    assert "  waiting      6 for their time (after:), 3 for an answer\n" in out
    assert "  next due     in 2 days, from 2026-12-03 16:00 UTC (step tip)\n" in out
    assert per_step(out) == {
        "welcome": "0 3 - 0 -",
        "guide": "0 0 3 for an answer 0 -",
        "tip": "0 0 3 for their time (after:) 0 -",
        "reminder": "0 0 3 for their time (after:) 0 -",
    }
    assert section(
        out,
        "due later, the earliest per step (FLOWRUN_NOW=+2d flowrun plan shows a run in two days):",
    ) == {
        "tip": "in 2 days, from 2026-12-03 16:00 UTC",
        "reminder": "in 7 days, from 2026-12-08 16:00 UTC",
    }
    # a when reading what the customer did is decided when its step is due: no count now
    assert "    tip              template   decided when due  when steps.welcome.status" in out
    assert f"# {ALICE} step welcome\n{{" in out  # due now: its body
    assert '"name": "drip_welcome"' in out
    assert f"# {ALICE} step guide: waits for the answer to step welcome\n" in out
    assert (
        f"# {ALICE} step tip: waits for its time (after:): in 2 days, from 2026-12-03 16:00 UTC\n"
    ) in out
    assert (
        f"# {ALICE} step reminder: waits for its time (after:): in 7 days, from"
        " 2026-12-08 16:00 UTC\n"
    ) in out
    assert not (drip / "drip.ledger.sqlite").exists()  # a plan creates no ledger


def test_two_days_later_the_tip_is_due_for_the_one_who_read_and_a_run_sends_it(
    drip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Day 0: the welcome goes to all three (a real run); Alice reads it an hour later. Plan
    on day 2 says: the guide expired unanswered, the tip is due for Alice only (Bob and Jonas
    had not read it: decided for good), the reminder waits 5 more days. A run on day 2 does
    exactly that, and plan then shows it sent."""
    run_with_sandbox(drip, DAY_1)
    read_welcome(drip, ALICE, datetime.fromisoformat(DAY_1) + timedelta(hours=1))
    monkeypatch.setenv("FLOWRUN_NOW", DAY_3)
    out = plan("--ledger", LEDGER, "--recipients", "3")
    assert "  due now      1\n  waiting      3 for their time (after:)\n" in out
    assert "  next due     in 5 days, from " in out
    assert "(step reminder)\n" in out
    assert per_step(out) == {
        "welcome": "3 0 - 0 -",
        "guide": "0 0 - 3 -",
        "tip": "0 1 - 2 -",
        "reminder": "0 0 3 for their time (after:) 0 -",
    }
    assert f"# {ALICE} step welcome: sent already (" in out
    assert f"# {ALICE} step guide: skipped (waited 2 days in vain)\n" in out
    assert f"# {ALICE} step tip\n{{" in out
    assert '"name": "drip_tip"' in out
    assert f"# {BOB} step tip: {HELD_FOR_GOOD}\n" in out
    assert f"# {JONAS} step tip: {HELD_FOR_GOOD}\n" in out
    assert f"# {JONAS} step reminder: waits for its time (after:): in 5 days, from " in out

    run_with_sandbox(drip, DAY_3)
    with contextlib.closing(SqliteLedger.for_run(drip / LEDGER, "drip")) as ledger:
        tips = {who: ledger.history(who)["tip"] for who in (ALICE, BOB, JONAS)}
    assert {who: (r.state, r.error_title) for who, r in tips.items()} == {
        ALICE: ("sent", None),
        BOB: ("skipped", "decided"),
        JONAS: ("skipped", "decided"),
    }
    after = per_step(plan("--ledger", LEDGER))
    assert after["tip"] == "1 0 - 2 -"
    assert after["reminder"] == "0 0 3 for their time (after:) 0 -"


def nine_to_eight_utc(recipient: Recipient, at: datetime) -> datetime | None:
    """Quiet hours 20:00-09:00 UTC for everyone: when the window opens, None if it is open."""
    del recipient
    if 9 <= at.hour < 20:
        return None
    morning = at.replace(hour=9, minute=0, second=0, microsecond=0)
    return morning if at.hour < 9 else morning + timedelta(days=1)


def test_quiet_hours_hold_what_is_due_and_move_when_a_wait_ends(drip: Path) -> None:
    """The hook the quiet-hours branch connects (`outlook(..., quiet=...)`): at 22:00 the
    welcome waits for 09:00 the next morning, and the tip behind it for the welcome to be sent;
    at 10:00 the welcome is due. A welcome sent at 18:30 UTC (a run then, inside everyone's
    real quiet hours: Chicago 12:30, Berlin 19:30) makes the tip due two days later at 18:30,
    inside the hook's hours too."""
    checked = check("drip.yaml")
    dialect = dialects.build(checked.target)
    ledger = drip / LEDGER
    night = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    found = outlook(checked.plan, dialect, ledger, night, quiet=nine_to_eight_utc)
    assert found.steps["welcome"].due == 0
    assert found.steps["welcome"].waits == {"quiet hours": 3}
    assert found.next_due() == (datetime(2026, 12, 2, 9, 0, tzinfo=UTC), "welcome")
    assert found.steps["tip"].waits == {"event": 3}  # its after: names the welcome

    morning = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    found = outlook(checked.plan, dialect, ledger, morning, quiet=nine_to_eight_utc)
    assert found.steps["welcome"].due == 3
    assert found.steps["tip"].earliest == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)

    run_with_sandbox(drip, "2026-12-01T18:30:00Z")
    day_2 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    found = outlook(checked.plan, dialect, ledger, day_2, quiet=nine_to_eight_utc)
    assert found.steps["welcome"].sent == 3
    assert found.steps["tip"].earliest == datetime(2026, 12, 3, 18, 30, tzinfo=UTC)
    assert found.steps["reminder"].earliest == datetime(2026, 12, 8, 18, 30, tzinfo=UTC)
