"""`flowrun FLOW` against the sandbox over real loopback HTTP, with a real SQLite ledger."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from runner.sandbox import PHONE_NUMBER_ID, TOKEN, SandboxState
from tests.conftest import REPO
from tests.sandbox_helpers import (
    children,
    count,
    flowrun,
    ledger_rows,
    post,
    query,
    start,
    wait_until,
    write_flow,
)

STEPS = """\
  - name: hello
    image: {file: assets/welcome.jpg, caption: "Hi {{ recipient.name }}"}
  - name: note
    text: {body: "See you, {{ recipient.name }}"}
    when: recipient.lang == 'en'
"""


def test_sends_everything_once(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=3)
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "flow.yaml: sent 4, failed 0, skipped 2, uncertain 0, uploads 1" in out
    assert "ledger: flow.ledger.sqlite" in out
    [media_id] = state.media
    alice = [
        {k: v for k, v in m.items() if k != "id"} for m in state.inbox if m["to"] == "15550100001"
    ]
    assert alice == [
        {
            "recipient_type": "individual",
            "to": "15550100001",
            "type": "image",
            "image": {"id": media_id, "caption": "Hi P1"},
        },
        {
            "recipient_type": "individual",
            "to": "15550100001",
            "type": "text",
            "text": {"body": "See you, P1"},
        },
    ]
    assert len(state.inbox) == 4
    rows = ledger_rows(folder)
    assert [r[:3] for r in rows if r[1] == "15550100000"] == [
        ("hello", "15550100000", "sent"),
        ("note", "15550100000", "skipped"),
    ]
    # a re-run sends nothing and uploads nothing
    code, out, _ = flowrun("flow.yaml")
    assert code == 0
    assert "nothing to send: 4 message(s) were sent before" in out
    assert len(state.inbox) == 4
    assert len(state.media) == 1


def test_steps_in_order_per_recipient(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=9)
    assert flowrun("flow.yaml")[0] == 0
    for phone in {m["to"] for m in state.inbox if m["type"] == "text"}:
        kinds = [m["type"] for m in state.inbox if m["to"] == phone]
        assert kinds == ["image", "text"]


def test_a_file_used_by_many_is_uploaded_once(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - sticker: {file: assets/wave.webp}\n", people=1000)
    code, _out, err = flowrun("flow.yaml", "--concurrency", "32")
    assert code == 0, err
    assert len(state.inbox) == 1000
    assert len(state.media) == 1
    assert len({m["sticker"]["id"] for m in state.inbox}) == 1


def test_limit_and_only(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=10)
    assert flowrun("flow.yaml", "--limit", "3")[0] == 0
    assert [m["to"] for m in state.inbox] == ["15550100000", "15550100001", "15550100002"]
    assert flowrun("flow.yaml", "--only", "+1 555 010 0007")[0] == 0
    assert [m["to"] for m in state.inbox][3:] == ["15550100007"]
    code, _out, err = flowrun("flow.yaml", "--only", "+1 555 999 0000")
    assert code == 2
    assert "--only +1 555 999 0000: flow.yaml has no recipient with this phone" in err
    code, _out, err = flowrun("flow.yaml", "--only", "hello")
    assert code == 2
    assert "--only: 'hello' is not a phone number" in err


def test_429_with_retry_after_is_waited_for(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=1)
    post(f"{base}/sandbox/faults", {"status": {"code": 429, "count": 2, "retry_after": 0.2}})
    started = time.monotonic()
    code, _out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert time.monotonic() - started >= 0.4
    assert len(state.inbox) == 1
    assert ledger_rows(folder) == [("#1", "15550100000", "sent", 201, None, None, 3)]


def test_400_fails_that_recipient_only(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: one}\n  - text: {body: two}\n", people=2)
    post(f"{base}/sandbox/faults", {"fail_recipients": {"15550100001": 1013}})
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "failed 1x: HTTP 400, error 1013, User is not valid: injected failure" in err
    assert ledger_rows(folder) == [
        ("#1", "15550100000", "sent", 201, None, None, 1),
        ("#2", "15550100000", "sent", 201, None, None, 1),
        ("#1", "15550100001", "failed", 400, 1013, "User is not valid", 1),
        ("#2", "15550100001", "skipped", None, None, "blocked", 0),
    ]
    # fixed on the API's side: --retry-failed sends the failed step and then the blocked one
    post(f"{base}/sandbox/faults", {})
    assert flowrun("flow.yaml")[0] == 1  # held without the flag
    assert flowrun("flow.yaml", "--retry-failed")[0] == 0
    assert [m["text"]["body"] for m in state.inbox if m["to"] == "15550100001"] == ["one", "two"]


def test_bad_token_stops_the_run(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _state = api
    monkeypatch.setenv("WA_TOKEN", "expired-secret-value")
    write_flow(folder, base, "  - text: {body: hi}\n", people=200)
    code, out, err = flowrun("flow.yaml")
    assert code == 1
    assert "the API refused the credentials (HTTP 401, error 1005" in err
    assert len([r for r in ledger_rows(folder) if r[2] == "failed"]) <= 4  # not 200
    assert "expired-secret-value" not in out + err
    db = (folder / "flow.ledger.sqlite").read_bytes()
    assert b"expired-secret-value" not in db


def test_missing_token_is_an_error_for_a_run(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_flow(folder, api[0], "  - text: {body: hi}\n", people=1)
    monkeypatch.delenv("WA_TOKEN")
    code, _, err = flowrun("flow.yaml")
    assert code == 2
    assert "flow.yaml:6:10: environment variable WA_TOKEN is not set" in err


def test_readme_sandbox_run(tmp_path: Path) -> None:
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("*.sqlite*"))
    command = [sys.executable, "-m", "runner", "flows/onboarding.yaml", "--sandbox"]
    first = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert first.returncode == 0, first.stderr
    # the welcome template goes to all five; the rest waits for their answer (nobody wrote)
    assert "sent 5, failed 0, skipped 0, waiting 5, uncertain 0, uploads 1" in first.stdout
    assert "ledger: flows/onboarding.sandbox.ledger.sqlite" in first.stdout
    assert "warning" not in first.stderr  # the sandbox needs none of the flow's secrets
    assert "5 step(s) wait for the customer to write" in first.stderr
    # --follow: the sandbox's customers answer (tap, reply or STOP), the rest follows; it
    # ends once nothing waits
    # (each --sandbox run starts a new sandbox, whose customers answer what it delivers: a
    # fresh ledger, as someone trying the flow for the first time)
    for stale in (tmp_path / "flows").glob("*.sqlite*"):
        stale.unlink()
    follow = subprocess.run(
        [*command, "--follow"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert follow.returncode == 0, follow.stderr
    summary = follow.stdout.splitlines()[-2]
    assert "failed 0" in summary, follow.stdout
    assert "waiting" not in summary, follow.stdout
    assert "sent before" not in follow.stderr  # what it sent itself is not "an earlier run's"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "report",
            "flows/onboarding.yaml",
            "--ledger",
            "flows/onboarding.sandbox.ledger.sqlite",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "conversations" in report


def start_slow_run(
    api: tuple[str, SandboxState],
    folder: Path,
    messages: str,
    *,
    people: int,
    latency: float,
    wait_for: int,
) -> subprocess.Popen[str]:
    """A real `flowrun` process against a sandbox answering after `latency` seconds, returned
    once the sandbox has accepted `wait_for` messages: mid-run, ready for a signal."""
    base, state = api
    write_flow(folder, base, messages, people=people)
    post(f"{base}/sandbox/faults", {"latency": latency})
    process = start(folder)
    wait_until(lambda: len(state.inbox) >= wait_for, 30)
    return process


def test_sigkill_then_rerun_sends_nothing_twice(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    two_steps = "  - text: {body: one}\n  - text: {body: two}\n"
    process = start_slow_run(api, folder, two_steps, people=400, latency=0.005, wait_for=100)
    process.kill()
    process.communicate(timeout=10)
    assert query(folder, "PRAGMA integrity_check") == [("ok",)]
    sending = count(folder, "state = 'sending'")
    assert sending <= 4  # concurrency
    post(f"{base}/sandbox/faults", {})
    again = start(folder)
    _out, err = again.communicate(timeout=60)
    assert again.returncode in (0, 1), err
    keys = [(m["to"], m["text"]["body"]) for m in state.inbox]
    assert len(keys) == len(set(keys)), "a message was sent twice"
    counts = dict(query(folder, "SELECT state, count(*) FROM messages GROUP BY state"))
    assert counts.get("uncertain", 0) == sending
    # their step 2 waits until the uncertain step 1 is settled
    held = count(folder, "state = 'uncertain' AND step = '#1'")
    assert counts["sent"] + counts.get("uncertain", 0) + held == 800
    # every sent row is in the inbox; an uncertain one may or may not be
    assert counts["sent"] <= len(keys) <= counts["sent"] + counts.get("uncertain", 0)


def test_sigint_exits_130_and_leaves_nothing_uncertain(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    one_step = "  - text: {body: one}\n"
    process = start_slow_run(api, folder, one_step, people=2000, latency=0.005, wait_for=50)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in out
    states = dict(query(folder, "SELECT state, count(*) FROM messages GROUP BY state"))
    assert set(states) == {"sent"}
    assert states["sent"] == len(state.inbox)
    post(f"{base}/sandbox/faults", {})
    rest = start(folder)
    rest.communicate(timeout=60)
    assert rest.returncode == 0
    assert len(state.inbox) == 2000
    assert len({m["to"] for m in state.inbox}) == 2000


def test_report(api: tuple[str, SandboxState], folder: Path) -> None:
    base, _ = api
    write_flow(folder, base, "  - text: {body: one}\n  - text: {body: two}\n", people=3)
    post(f"{base}/sandbox/faults", {"fail_recipients": {"15550100001": 1013}})
    flowrun("flow.yaml")
    code, out, _ = flowrun("report", "flow.yaml")
    assert code == 0
    assert out.splitlines()[2:] == [
        "  t/#1                     2         1         0         0         0         0",
        "  t/#2                     2         0         1         0         0         0",
        "failures:",
        "  1x HTTP 400, error 1013, User is not valid: 15550100001",
    ]
    code, out, _ = flowrun("report", "--ledger", "flow.ledger.sqlite", "--csv")
    lines = out.splitlines()
    assert lines[0].startswith("flow,step,recipient,state,message_id,http_status,error_code")
    assert len(lines) == 7
    assert lines[3].startswith("t,#1,15550100001,failed,,400,1013,User is not valid,")
    code, out, _ = flowrun("report", "flow.yaml", "--jsonl")
    assert json.loads(out.splitlines()[0])["state"] == "sent"
    assert flowrun("report", "--ledger", "nope.sqlite")[0] == 2


def test_what_plan_shows_is_what_is_sent(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("WA_PHONE_NUMBER_ID", PHONE_NUMBER_ID)
    text = (REPO / "flows" / "onboarding.yaml").read_text("utf-8")
    text = text.replace("api:\n", f"api:\n  base_url: {base}\n")
    text = text.replace("settings:\n", "settings:\n  per_recipient_interval: 0\n  window: open\n")
    # every step for everyone (branches on answers are another test's: test_conversations.py)
    text = "\n".join(t for t in text.splitlines() if "when: steps." not in t)
    (folder / "onboarding.yaml").write_text(text, "utf-8")
    shutil.copy(REPO / "flows" / "contacts.csv", folder)
    planned = flowrun("plan", "onboarding.yaml", "--jsonl")[1]
    code, _out, err = flowrun("onboarding.yaml")
    assert code == 0, err
    for media_id, mime in state.media.items():
        name = {"image/jpeg": "welcome.jpg", "video/mp4": "tour.mp4"}.get(mime)
        name = name or {"application/pdf": "prices.pdf", "image/webp": "wave.webp"}[mime]
        planned = planned.replace(f"@upload:{name}", media_id)
    sent = [{k: v for k, v in m.items() if k != "id"} for m in state.inbox]
    key = lambda b: (b["to"], json.dumps(b, sort_keys=True))  # noqa: E731
    assert sorted(sent, key=key) == sorted(map(json.loads, planned.splitlines()), key=key)
    kinds = {"template", "image", "video", "document", "sticker", "audio", "text"}
    assert {b["type"] for b in sent} == kinds


def test_timeout_after_sending_is_uncertain_not_resent(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: one}\n", people=1, timeout=0.3)
    post(f"{base}/sandbox/faults", {"slow": 1})
    code, out, _ = flowrun("flow.yaml")
    assert code == 1
    assert "uncertain 1" in out
    assert ledger_rows(folder)[0][2] == "uncertain"
    post(f"{base}/sandbox/faults", {})
    wait_until(lambda: len(state.inbox) == 1)  # the slow answer lands: the API did get it
    assert flowrun("flow.yaml")[0] == 1  # held, not resent
    assert len(state.inbox) == 1
    assert flowrun("flow.yaml", "--retry-uncertain")[0] == 0
    assert len(state.inbox) == 2


def test_a_streak_of_failures_stops_the_run(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: one}\n", people=300)
    failing = {f"1555010{i:04d}": 1013 for i in range(300)}
    post(f"{base}/sandbox/faults", {"fail_recipients": failing})
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "messages in a row failed (the last: HTTP 400, error 1013" in err
    assert 100 <= len(ledger_rows(folder)) < 300
    assert state.inbox == []


def read_until(stream: IO[str], text: str) -> str:
    """The lines a process writes to `stream`, up to the first that holds `text` (or all of
    them, should none)."""
    lines = []
    for line in iter(stream.readline, ""):
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


def test_second_sigint_stops_at_once(api: tuple[str, SandboxState], folder: Path) -> None:
    one_step = "  - text: {body: one}\n"
    process = start_slow_run(api, folder, one_step, people=200, latency=0.3, wait_for=8)
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    said = read_until(process.stderr, "flowrun: stopping:")  # the first Ctrl-C was taken
    assert "(Ctrl-C again to stop at once)" in said
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 130, err
    assert "stopped at once" in err
    assert query(folder, "PRAGMA integrity_check") == [("ok",)]
    sending = count(folder, "state = 'sending'")
    assert sending <= 4  # what was in flight becomes uncertain on the next run, nothing more


def test_a_token_with_a_line_break_is_refused(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_flow(folder, api[0], "  - text: {body: hi}\n", people=1)
    monkeypatch.setenv("WA_TOKEN", "abc\ndef")
    code, _, err = flowrun("flow.yaml")
    assert code == 2
    assert "flow.yaml:6:10: the token is empty or holds a control character" in err
    assert "abc" not in err
    monkeypatch.setenv("WA_TOKEN", TOKEN + "\n")  # read from a file with its newline: fine
    assert flowrun("flow.yaml")[0] == 0


def test_a_ledger_that_cannot_be_written_stops_the_run_cleanly(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a failed commit killed a worker, and with every worker dead the run hung
    on its full queue. Here the disk 'fills up' on the third commit (tests/failing_writer.py)."""
    from runner.ledger import GroupCommit

    monkeypatch.setattr(GroupCommit, "COMMAND", (sys.executable, "-m", "tests.failing_writer"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    write_flow(folder, api[0], "  - text: {body: hi}\n", people=50)
    signal.alarm(30)  # a hang fails the test instead of blocking the suite
    try:
        code, _, err = flowrun("flow.yaml", "--concurrency", "2")
    finally:
        signal.alarm(0)
    assert code == 2
    assert (
        err.strip().splitlines()[-1].endswith("cannot write the ledger: database or disk is full")
    )
    # sent: exactly the messages whose mark was durable (two commits of at most `concurrency`
    # marks each); nothing after the failure
    sending = query(folder, "SELECT recipient FROM messages WHERE state IN ('sending', 'sent')")
    assert sorted(m["to"] for m in api[1].inbox) == sorted(row[0] for row in sending)
    assert len(sending) <= 2 * 2


def test_the_ledger_writer_dying_stops_the_run_cleanly(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=200)
    post(f"{base}/sandbox/faults", {"latency": 0.01})
    process = start(folder)
    wait_until(lambda: len(state.inbox) >= 10)
    [writer] = children(process.pid)
    os.kill(writer, signal.SIGKILL)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert "the ledger writer stopped unexpectedly" in err
    assert "Traceback" not in err
    sent = len(state.inbox)
    assert start(folder).communicate(timeout=60) is not None  # the next run finishes the job
    assert count(folder, "state = 'sent'") + count(folder, "state = 'uncertain'") == 200
    assert len(state.inbox) - sent + count(folder, "state = 'uncertain'") <= 200


def test_ctrl_c_does_not_wait_out_a_long_retry_after(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: one}\n", people=3)
    post(f"{base}/sandbox/faults", {"status": {"code": 429, "count": 100, "retry_after": 120}})
    process = start(folder)
    wait_until(lambda: state.requests >= 1)
    # refused with "come back in two minutes": on record as failed until then, everyone waits
    wait_until(lambda: count(folder, "state = 'failed'") >= 1)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert time.monotonic() - started < 10
    states = query(folder, "SELECT state, error_title FROM messages")
    # refused or never tried, so nothing is uncertain: the next run sends them all
    assert states
    assert set(states) == {("skipped", "interrupted")}
    post(f"{base}/sandbox/faults", {})
    assert start(folder).communicate(timeout=30) is not None
    assert sorted(m["to"] for m in state.inbox) == ["15550100000", "15550100001", "15550100002"]


def test_edited_and_renamed_flows(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    flow = write_flow(folder, base, "  - name: hi\n    text: {body: one}\n", people=2)
    assert flowrun("flow.yaml")[0] == 0
    flow.write_text(flow.read_text("utf-8").replace("body: one", "body: uno"), "utf-8")
    code, _out, err = flowrun("flow.yaml")
    assert code == 0
    assert "2 message(s) sent before read differently in the flow now" in err
    assert len(state.inbox) == 2
    flow.write_text(flow.read_text("utf-8").replace("name: t\n", "name: t2\n"), "utf-8")
    code, _, err = flowrun("flow.yaml")
    assert code == 2
    assert "holds messages of flow 't' but none of 't2'" in err
    assert len(state.inbox) == 2
    code, _, err = flowrun("flow.yaml", "--ledger", "flow.ledger.sqlite")
    assert code == 0  # chosen on purpose: a warning, and the flow runs as a new one
    assert "warning: flow.ledger.sqlite holds messages of flow 't'" in err
    assert len(state.inbox) == 4


@pytest.mark.parametrize("table", ["messages", "meta"])
def test_a_damaged_ledger_is_one_line_not_a_crash(
    api: tuple[str, SandboxState], folder: Path, table: str
) -> None:
    """Malformed pages (a disk fault, a copy taken mid-write) once ended in exit 3 and a crash
    log; now one line that says what to do, and nothing sent on the damaged ledger's word.
    The page damaged is the named table's first (where it is depends on the schema)."""
    base, state = api
    write_flow(folder, base, STEPS, people=30)
    assert flowrun("flow.yaml")[0] == 0
    sent = len(state.inbox)
    [(page,)] = query(folder, f"SELECT rootpage FROM sqlite_master WHERE name = '{table}'")
    with open(folder / "flow.ledger.sqlite", "r+b") as ledger:
        ledger.seek(4096 * (page - 1) + 8)
        ledger.write(bytes(range(256)) * 8)
    commands = [["flow.yaml"], ["report", "flow.yaml"], ["report", "flow.yaml", "--csv"]]
    for command in commands if table == "messages" else commands[:1]:  # report reads no meta
        code, _, err = flowrun(*command)
        assert code == 2, (command, err)
        assert "the ledger is damaged (database disk image is malformed)" in err
        assert "sqlite3 flow.ledger.sqlite .recover" in err
        assert "internal error" not in err
    assert len(state.inbox) == sent


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "flows").glob("*.yaml")))
def test_every_example_runs_against_the_sandbox(tmp_path: Path, name: str) -> None:
    """Each shipped example, as someone trying it would: nothing fails and nothing is sent to
    a closed window (the sandbox refuses those as WhatsApp does); what needs the customer's
    answer waits for it."""
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("*.sqlite*"))
    command = [sys.executable, "-m", "runner", f"flows/{name}", "--sandbox"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert ", failed 0," in result.stdout
    assert "warning" not in result.stderr
    assert "after the API said so" not in result.stderr  # no free-form to a closed window
