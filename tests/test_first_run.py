"""A first campaign without friction (issue 17): the run's own problems leave messages unsent,
not failed; progress after a resume; trying a flow against a running `flowrun sandbox`.

Real runs over loopback HTTP against the sandbox, with a real SQLite ledger."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox import TOKEN, SandboxState
from runner.sandbox.server import Faults
from tests.sandbox_helpers import (
    count,
    flowrun,
    ledger_rows,
    post,
    query,
    wait_until,
    write_flow,
)

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


def test_base_url_sends_to_a_running_sandbox(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--base-url` (or FLOWRUN_BASE_URL) replaces the flow's api.base_url for one run, with
    the flow's own credentials; the run keeps a ledger of its own (the sandbox's), so trying
    a flow never marks a real message as sent."""
    base, state = api
    write_flow(folder, "https://graph.example.com", "  - text: {body: hi}\n", people=3)
    code, out, err = flowrun("flow.yaml", "--base-url", base, "--limit", "1")
    assert code == 0, err
    assert "sent 1, failed 0" in out
    assert "ledger: flow.sandbox.ledger.sqlite" in out
    assert not (folder / "flow.ledger.sqlite").exists()
    monkeypatch.setenv("FLOWRUN_BASE_URL", base + "/")
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 2, failed 0" in out  # the same ledger: the first one is not sent again
    assert [m["to"] for m in state.inbox] == ["15550100000", "15550100001", "15550100002"]
    code, out, _err = flowrun("report", "flow.yaml", "--sandbox")
    assert code == 0
    assert "t/#1" in out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--base-url", "ftp://127.0.0.1:1"], "--base-url ftp://127.0.0.1:1: "),
        (["--base-url", "http://127.0.0.1:1", "--sandbox"], "--base-url and --sandbox"),
    ],
)
def test_a_base_url_that_cannot_be_used_is_one_line(
    api: tuple[str, SandboxState], folder: Path, args: list[str], said: str
) -> None:
    write_flow(folder, api[0], "  - text: {body: hi}\n", people=1)
    code, _out, err = flowrun("flow.yaml", *args)
    assert code == 2
    assert said in err
    assert len(err.strip().splitlines()) == 1
    assert api[1].inbox == []


def control(url: str, method: str = "POST", raw: bytes | None = None) -> tuple[int, Any]:
    """A control request to the sandbox (its answer's status and JSON), as curl would send it."""
    request = urllib.request.Request(url, data=raw, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def test_faults_are_cleared_as_documented(api: tuple[str, SandboxState]) -> None:
    """`POST /sandbox/faults {}`, a POST with no body (curl -X POST) and DELETE all clear
    them; GET shows them; a typo or a wrong value is refused in one line, not a 500."""
    base, state = api
    faults = json.dumps({"status": {"code": 500, "count": 9}, "latency": 0.01}).encode()
    clears: list[tuple[str, bytes | None]] = [("POST", b"{}"), ("POST", None), ("DELETE", None)]
    for method, raw in clears:
        assert control(f"{base}/sandbox/faults", raw=faults)[0] == 200
        assert control(f"{base}/sandbox/faults", method="GET")[1]["status"]["count"] == 9
        assert control(f"{base}/sandbox/faults", method, raw)[0] == 200
        assert state.faults == Faults()
        assert control(f"{base}/sandbox/faults", method="GET")[1]["status"]["count"] == 0
    assert control(f"{base}/sandbox/faults", raw=b'{"latncy": 1}') == (
        400,
        {"error": "unknown fields ['latncy']; known: drop, fail_recipients, latency, slow, status"},
    )
    status, answer = control(f"{base}/sandbox/faults", raw=b'{"status": {"code": "x"}}')
    assert status == 400
    assert answer["error"].startswith("status.code must be a number")


def test_an_expired_cloud_token_can_be_renewed(api: tuple[str, SandboxState], folder: Path) -> None:
    """`POST /sandbox/tokens/expire` ended every token for good on Cloud (no login there):
    it now answers with a renewed token, and `POST /sandbox/tokens/restore` makes
    sandbox-token work again, as a person who fixed their token would see; the run then
    sends what the refused one left (nothing failed: issue 17, item 6)."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=5, kind="cloud")
    status, renewed = control(f"{base}/sandbox/tokens/expire", raw=b"{}")
    assert status == 200
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "the API refused the credentials (HTTP 401, error 190" in err
    assert count(folder, "state = 'failed'") == 0
    assert renewed["token"] in state.tokens  # the renewed one works at once
    assert control(f"{base}/sandbox/tokens/restore", raw=b"{}") == (200, {"token": TOKEN})
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 5, failed 0" in out


def test_a_client_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`flowrun sandbox` printed a traceback when a client disconnected before its request's
    body had come (a run stopped, a timeout): at most one line now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "sandbox", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _answers(port))
        for path in ("/v1/messages", "/v1/media"):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    "Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\npartial".encode()
                )
        wait_until(lambda: _answers(port))  # still serving
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=20)
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 2, err


def _answers(port: int) -> bool:
    try:
        return control(f"http://127.0.0.1:{port}/sandbox/inbox", method="GET")[0] == 200
    except OSError:
        return False


def test_recipients_when_chooses_the_rows_a_flow_is_for(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """`recipients: {csv: FILE, when: ...}`: one condition for the whole flow instead of a
    `when:` on every step; the rows it leaves out get nothing and leave nothing in the ledger."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n  - text: {body: bye}\n", people=4)
    flow = folder / "flow.yaml"
    flow.write_text(
        flow.read_text("utf-8").replace(
            "recipients: {csv: people.csv}",
            "recipients: {csv: people.csv, when: \"recipient.lang == 'en'\"}",
        ),
        "utf-8",
    )
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert {m["to"] for m in state.inbox} == {"15550100001", "15550100003"}  # lang en
    assert "sent 4, failed 0, skipped 0" in out
    assert {row[1] for row in ledger_rows(folder)} == {"15550100001", "15550100003"}


def test_a_broken_recipients_when_is_located(folder: Path) -> None:
    write_flow(folder, "http://127.0.0.1:9", "  - text: {body: hi}\n", people=2)
    flow = folder / "flow.yaml"
    text = flow.read_text("utf-8")
    flow.write_text(
        text.replace(
            "recipients: {csv: people.csv}",
            "recipients: {csv: people.csv, when: recipient.lnag == 'en'}",
        ),
        "utf-8",
    )
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    assert "recipient has no field 'lnag'; did you mean 'lang'?" in err


def test_validate_strict_fails_a_flow_with_warnings(folder: Path) -> None:
    write_flow(folder, "http://127.0.0.1:9", "  - text: {body: hi}\n", people=2)
    (folder / "people.csv").write_text("phone\n+1 555 010 0001\n+1 555 010 0001\n", "utf-8")
    assert flowrun("validate", "flow.yaml")[0] == 0  # a phone listed twice: a warning
    code, _, err = flowrun("validate", "--strict", "flow.yaml")
    assert code == 2
    assert "warning(s), which --strict counts as errors" in err


def test_a_new_ledger_in_ci_is_refused_unless_meant(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fresh CI checkouts of one playbook each sent every message (issue 16): in CI a run
    on a ledger that does not exist yet is refused with the fix; --new-ledger means it."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=2)
    monkeypatch.setenv("CI", "true")
    code, _, err = flowrun("flow.yaml")
    assert code == 2
    assert "a new, empty ledger in CI: every message would be sent as if for the first time" in err
    assert "FLOWRUN_LEDGER=postgresql://" in err
    assert state.inbox == []
    assert flowrun("flow.yaml", "--new-ledger")[0] == 0
    assert len(state.inbox) == 2
    assert flowrun("flow.yaml")[0] == 0  # the ledger exists now: an ordinary run
    assert flowrun("flow.yaml", "--sandbox")[0] == 0  # a try is never refused


def test_dry_run_limit_shows_that_many_recipients(folder: Path) -> None:
    """`flowrun FLOW --dry-run --limit N` used to ignore --limit (issue 17)."""
    write_flow(folder, "http://127.0.0.1:9", "  - text: {body: hi}\n", people=5)
    code, out, err = flowrun("flow.yaml", "--dry-run", "--limit", "4")
    assert code == 0, err
    assert "First 4 recipient(s)" in out
    assert out.count("# 1555010") == 4
