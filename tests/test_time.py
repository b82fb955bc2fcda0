"""Flows across time, against the sandbox over loopback, on a clock moved with FLOWRUN_NOW (the
whole program, and the processes it starts, read it): a step `after: 2d` waits on day 1 and
goes on day 2; `after: {step, event: read}` follows the read statuses; a `when` that reads the
history is decided when its step is due, for good."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from runner import clock
from runner.ledger import Inbound, SqliteLedger, Status
from runner.sandbox import PHONE_NUMBER_ID, SandboxState
from tests.sandbox_helpers import (
    APP_SECRET,
    flowrun,
    ledger_rows,
    listening,
    post,
    start,
    wait_until,
    write_flow,
)

ANN, BOB, CAROL = "15550100000", "15550100001", "15550100002"
SECRET = APP_SECRET
WELCOME = """\
  - name: welcome
    template: {name: hello_world, language: en_US}
"""


def sent_to(state: SandboxState) -> dict[str, int]:
    found: dict[str, int] = {}
    for message in state.inbox:
        found[message["to"]] = found.get(message["to"], 0) + 1
    return found


def rows(folder: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    return {(r[0], r[1]): (r[2], r[5]) for r in ledger_rows(folder)}


def on_day(monkeypatch: pytest.MonkeyPatch, offset: str) -> None:
    """Run the next flowrun as if `offset` (e.g. +2d) later."""
    monkeypatch.setenv("FLOWRUN_NOW", offset)


def read(folder: Path, customer: str, later: timedelta = timedelta()) -> None:
    """The receiver records that `customer` read the welcome `later` than now (a status
    webhook)."""
    day = (clock.now() + later).isoformat(timespec="seconds")
    with contextlib.closing(SqliteLedger.for_run(folder / "flow.ledger.sqlite", "t")) as ledger:
        record = ledger.history(customer)["welcome"]
    assert record.message_id is not None
    with contextlib.closing(SqliteLedger.for_writer(folder / "flow.ledger.sqlite")) as writer:
        writer.record_webhooks([Status(record.message_id, "read", day, customer)])


def test_a_step_after_two_days_goes_on_day_two(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    steps = WELCOME + (
        "  - name: tip\n    after: 2d\n    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=2, kind="cloud")
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    assert sent_to(state) == {ANN: 1, BOB: 1}
    assert "2 step(s) wait for their time (after:)" in err
    assert "next message due" in err
    assert rows(folder)[("tip", ANN)][0] == "waiting"
    on_day(monkeypatch, "+1d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 1, BOB: 1}  # day 1: not yet
    on_day(monkeypatch, "+2d")
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    assert sent_to(state) == {ANN: 2, BOB: 2}
    assert "next message due" not in err
    on_day(monkeypatch, "+9d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 2, BOB: 2}  # each once, whatever the schedule of runs


def test_a_when_on_history_is_decided_when_due_for_good(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tip two days later for those who read the welcome by then: Ann read it on day 1 and
    gets it; Bob read it on day 3, after the tip was due, and never gets it."""
    base, state = api
    steps = WELCOME + (
        "  - name: tip\n"
        "    after: {step: welcome, wait: 2d}\n"
        "    when: steps.welcome.status == 'read'\n"
        "    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=2, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    read(folder, ANN, timedelta(hours=8))
    on_day(monkeypatch, "+2d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 2, BOB: 1}
    assert rows(folder)[("tip", BOB)] == ("skipped", "decided")
    read(folder, BOB, timedelta(days=3))
    on_day(monkeypatch, "+9d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 2, BOB: 1}


def test_a_step_after_a_read_follows_the_status_webhooks(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """The sandbox tells `flowrun listen` (its own process, as in production) that some of the
    welcomes were read and the others failed; the next run sends the tip to the readers."""
    base, state = api
    steps = WELCOME + (
        "  - name: tip\n"
        "    after: {step: welcome, event: read}\n"
        "    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=6, kind="cloud")
    with listening(folder / "flow.ledger.sqlite") as port:
        post(
            f"{base}/sandbox/webhook",
            {"url": f"http://127.0.0.1:{port}/", "secret": SECRET, "fail_share": 0.5, "seed": "t"},
        )
        code, _, err = flowrun("flow.yaml")
        assert code == 0, err
        assert "6 step(s) wait for what their after: names" in err
        assert rows(folder)[("tip", ANN)] == ("waiting", "event")
        decided = json.loads(urllib.request.urlopen(f"{base}/sandbox/webhook").read())
        readers = {m["to"] for m in state.inbox if decided[m["id"]] == "read"}
        assert 0 < len(readers) < 6
        wait_until(lambda: _settled_statuses(folder) == 6)
        assert flowrun("flow.yaml")[0] == 0
    assert {to for to, count in sent_to(state).items() if count == 2} == readers


def _settled_statuses(folder: Path) -> int:
    with contextlib.closing(sqlite3.connect(folder / "flow.ledger.sqlite")) as db:
        return int(
            db.execute(
                "SELECT count(*) FROM statuses WHERE status IN ('read', 'failed')"
            ).fetchone()[0]
        )


def test_a_reminder_for_those_who_had_not_read_it_when_due(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`when: steps.welcome.status != 'read'`: Ann read it in time and never gets the reminder;
    Bob had not and gets it, once, though he reads the welcome later."""
    base, state = api
    steps = WELCOME + (
        "  - name: reminder\n"
        "    after: {step: welcome, wait: 2d}\n"
        "    when: steps.welcome.status != 'read'\n"
        "    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=2, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    read(folder, ANN, timedelta(hours=3))
    on_day(monkeypatch, "+2d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 1, BOB: 2}
    read(folder, BOB, timedelta(days=3))
    on_day(monkeypatch, "+9d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 1, BOB: 2}
    assert rows(folder)[("reminder", ANN)] == ("skipped", "decided")


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ("2 days", "'2 days' is not a duration: write a number and a unit"),
        ("{step: nope}", "no earlier step is named 'nope'"),
        ("{step: tip}", "step 'tip' waits for itself"),
        ("{step: welcome, event: opened}", "event must be 'sent', 'delivered', 'read' or"),
        ("[2d]", "after is a duration (2d) or {step: NAME, event: read, wait: 1h}"),
    ],
)
def test_a_time_mistake_is_a_located_error(folder: Path, after: str, message: str) -> None:
    steps = WELCOME + (
        f"  - name: tip\n    after: {after}\n    template: {{name: hello_world, language: en_US}}\n"
    )
    write_flow(folder, "http://127.0.0.1:9", steps, people=1, kind="cloud")
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    text = (folder / "flow.yaml").read_text("utf-8").splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.strip().startswith("after:"))
    assert f"flow.yaml:{line}:" in err, err
    assert message in err, err


def test_a_bad_clock_is_one_line(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_flow(folder, "http://127.0.0.1:9", WELCOME, people=1, kind="cloud")
    monkeypatch.setenv("FLOWRUN_NOW", "tomorrow")
    code, _, err = flowrun("flow.yaml")
    assert code == 2
    assert err.strip().splitlines() == [
        "FLOWRUN_NOW=tomorrow: write an offset (+2d, -1h) or a time with its zone"
        " (2026-12-03T09:00:00Z)"
    ]


def test_follow_wakes_for_a_timer(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--follow` sends a step `after: 2s` when its time comes, then ends (nothing waits)."""
    base, state = api
    steps = WELCOME + (
        "  - name: tip\n    after: 2s\n    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=2, kind="cloud")
    process = start(folder, "--follow")
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert sent_to(state) == {ANN: 2, BOB: 2}


@pytest.mark.slow
def test_kill_9_during_follow_with_timers_pending_then_a_rerun(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """`--follow` holds 200 recipients' second step for 1 s and sends them as their timers
    fire; kill -9 in the middle. A re-run sends nothing twice, loses nothing (every timer
    that fired before or after is sent once), and leaves at most `concurrency` uncertain."""
    base, state = api
    post(f"{base}/sandbox/faults", {"latency": 0.02})
    steps = WELCOME + (
        "  - name: tip\n    after: 1s\n    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=200, kind="cloud", rate="300/s")
    process = start(folder, "--follow")
    try:
        wait_until(lambda: len(state.inbox) >= 260, 60)  # all welcomes, some tips
    finally:
        process.kill()
        process.communicate()
    time.sleep(1.1)  # every timer is due now
    code, _, err = flowrun("flow.yaml")
    assert code in (0, 1), err  # 1: uncertain ones are held
    per_recipient = sent_to(state)
    assert all(count <= 2 for count in per_recipient.values()), "a message went twice"
    states = [r[2] for r in ledger_rows(folder)]
    assert states.count("uncertain") <= 4
    assert states.count("sent") + states.count("uncertain") == 400, "a step was lost"


def test_a_reminder_for_those_who_did_not_answer_within_a_week(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With after:, a when reading an answer does not wait for it: it is decided when due."""
    base, state = api
    steps = WELCOME + (
        "  - name: reminder\n"
        "    after: {step: welcome, wait: 7d}\n"
        "    when: not steps.welcome.answered\n"
        "    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=2, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    with contextlib.closing(SqliteLedger.for_writer(folder / "flow.ledger.sqlite")) as writer:
        stamp = (clock.now() + timedelta(days=1)).isoformat(timespec="seconds")
        writer.record_webhooks([Inbound("wamid.in", PHONE_NUMBER_ID, ANN, stamp, "text", "Hi")])
    on_day(monkeypatch, "+7d")
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state) == {ANN: 1, BOB: 2}
    assert rows(folder)[("reminder", ANN)] == ("skipped", "decided")


QUIET = """\
version: 1
name: t
{api}settings:
  rate: 100000/s
  per_recipient_interval: 0
  send_between: "{window}"
  timezone: America/New_York
recipients: {{csv: people.csv}}
messages:
  - name: hello
    template: {{name: hello_world, language: en_US}}
"""
BERLIN, TOKYO, NEW_YORK = "49301234567", "15550100001", "15550100002"
PEOPLE = (
    "phone,timezone\n"
    "+49 30 1234567,\n"  # Berlin, from the number's country
    "+1 555 010 0001,Asia/Tokyo\n"  # from the column
    "+1 555 010 0002,\n"  # a number no zone is known for: the flow's
)


@pytest.mark.parametrize(
    "case",
    [
        # 08:30 UTC: 09:30 in Berlin, 17:30 in Tokyo, 03:30 in New York (opens 14:00 UTC)
        (
            "09:00-20:00",
            "2026-12-01T08:30:00Z",
            {BERLIN, TOKYO},
            "2026-12-01T14:00:00Z",
            {NEW_YORK},
        ),
        # across midnight, 23:30 UTC: 00:30 in Berlin; 08:30 in Tokyo and 18:30 in New York
        # are outside; New York opens at 22:00 (03:00 UTC), Tokyo at 22:00 (13:00 UTC)
        ("22:00-06:00", "2026-12-01T23:30:00Z", {BERLIN}, "2026-12-02T03:00:00Z", {NEW_YORK}),
    ],
)
def test_quiet_hours_in_three_time_zones(
    api: tuple[str, SandboxState],
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str, set[str], str, set[str]],
) -> None:
    """(send_between, now, sent then, a later time, sent by then)"""
    from tests.sandbox_helpers import api_section

    window, now, first, later, then = case
    base, state = api
    (folder / "flow.yaml").write_text(
        QUIET.format(api=api_section(base, "cloud"), window=window), "utf-8"
    )
    (folder / "people.csv").write_text(PEOPLE, "utf-8")
    monkeypatch.setenv("FLOWRUN_NOW", now)
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    assert set(sent_to(state)) == first
    assert "wait for the recipient's morning" in err
    assert rows(folder)[("hello", NEW_YORK)] == ("waiting", "quiet hours")
    monkeypatch.setenv("FLOWRUN_NOW", later)
    assert flowrun("flow.yaml")[0] == 0
    assert set(sent_to(state)) == first | then
