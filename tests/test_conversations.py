"""Conversations against the sandbox over loopback, with the 24-hour window enforced as the real
API does: a customer who wrote lately gets every step; one who did not gets the template, and
the free-form steps wait until they write; a tapped quick reply picks the branch; a waiting step
expires and the flow goes on. What customers say reaches the ledger as in production: signed
webhooks from the sandbox to flowrun's receiver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from runner.ledger import SqliteLedger
from runner.sandbox import SandboxState
from tests.sandbox_helpers import (
    APP_SECRET,
    flowrun,
    free_port,
    ledger_rows,
    listening,
    post,
    start,
    wait_until,
    write_flow,
)

ANN, BOB, CAROL = "15550100000", "15550100001", "15550100002"  # write_flow's people
WELCOME = """\
  - name: welcome
    template:
      name: hello_world
      language: en_US
  - name: note
    text: {body: "Thanks for writing, {{ recipient.name }}"}
"""
SECRET = APP_SECRET


@pytest.fixture
def closed(api: tuple[str, SandboxState], folder: Path) -> Iterator[tuple[str, SandboxState]]:
    """The sandbox refusing free-form messages outside the window (at once, as with no webhook
    to hear a later refusal), and `flowrun listen` recording what its customers say in the
    ledger, in a process of its own as in production (in this one, a run's closing of the
    ledger file would drop the receiver's SQLite locks: sqlite.py, _take_lock)."""
    base, _state = api
    post(f"{base}/sandbox/window", {"window_errors": "sync", "everyone_wrote": None})
    ledger = folder / "flow.ledger.sqlite"
    SqliteLedger.for_run(ledger, "t").close()
    with listening(ledger) as port:
        post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
        yield api


def writes(
    base: str, customer: str, text: str = "Hello", hours_ago: float = 0, **more: object
) -> None:
    """A customer message, as the sandbox's customer sends it (webhook to the receiver)."""
    body = {"from": customer, "at": time.time() - hours_ago * 3600, **more}
    if "button" not in more:
        body["text"] = text
    post(f"{base}/sandbox/inbound", body)


def sent_to(state: SandboxState) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in state.inbox:
        found.setdefault(message["to"], []).append(message["type"])
    return found


def rows(folder: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(step, recipient) → (state, why)"""
    return {(r[0], r[1]): (r[2], r[5]) for r in ledger_rows(folder)}


def heard(folder: Path, customers: int) -> None:
    """Wait until the receiver recorded this many customer messages."""

    def recorded() -> bool:
        with contextlib.closing(SqliteLedger.for_customers(folder / "flow.ledger.sqlite")) as db:
            return sum(len(db.heard_from(b, c)[0]) for b, c in _who(db)) >= customers

    wait_until(recorded)


def _who(db: SqliteLedger) -> list[tuple[str, str]]:
    from runner.sandbox import PHONE_NUMBER_ID

    return [(PHONE_NUMBER_ID, c) for c in db.customers_heard(PHONE_NUMBER_ID)]


def test_free_form_steps_wait_for_the_customer_to_write(
    closed: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = closed
    write_flow(folder, base, WELCOME, people=3, kind="cloud", window="check")
    writes(base, ANN, hours_ago=1)  # within the window
    writes(base, CAROL, hours_ago=30)  # too long ago
    heard(folder, 2)
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err  # waiting is not failing
    assert sent_to(state) == {ANN: ["template", "text"], BOB: ["template"], CAROL: ["template"]}
    assert "sent 4, failed 0" in out
    assert "2 step(s) wait for the customer to write" in err
    assert "the first wait for a customer gives up " in err  # 7 days on: expires' default
    found = rows(folder)
    assert found[("note", BOB)][0] == "waiting"
    assert found[("note", BOB)][1] == "window"
    assert state.refused == []  # nothing was ever sent to a closed window

    code, out, _ = flowrun("flow.yaml")  # nobody wrote: nothing to do, no churn
    assert code == 0
    assert "sent 0" in out
    writes(base, BOB, "hi")
    heard(folder, 3)
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state)[BOB] == ["template", "text"]
    assert CAROL not in {m["to"] for m in state.inbox if m["type"] == "text"}
    assert state.refused == []


def test_a_tapped_quick_reply_picks_the_branch(
    closed: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = closed
    steps = """\
  - name: welcome
    template:
      name: welcome_choice
      language: en_US
      buttons: [{quick_reply: brochure}, {quick_reply: later}]
  - name: brochure
    when: steps.welcome.button == 'brochure'
    text: {body: "Here is the brochure"}
  - name: later
    when: steps.welcome.button == 'later'
    text: {body: "We will write again next month"}
"""
    write_flow(folder, base, steps, people=3, kind="cloud", window="check")
    code, _out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "3 step(s) wait for an answer" in err
    welcome = {m["to"]: m["id"] for m in state.inbox}
    tap = {"payload": "brochure", "text": "Send the brochure"}
    writes(base, ANN, button=tap, context=welcome[ANN])
    writes(base, BOB, button={"payload": "later", "text": "Later"}, context=welcome[BOB])
    heard(folder, 2)
    assert flowrun("flow.yaml")[0] == 0
    texts = {m["to"]: m["text"]["body"] for m in state.inbox if m["type"] == "text"}
    assert texts == {ANN: "Here is the brochure", BOB: "We will write again next month"}
    found = rows(folder)
    assert found[("later", ANN)] == ("skipped", "decided")  # answered: decided for good
    assert found[("brochure", CAROL)] == ("waiting", "answer")
    assert state.refused == []


def test_a_waiting_step_expires_and_the_flow_goes_on(
    closed: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = closed
    steps = WELCOME.replace("  - name: note\n", "  - name: note\n    expires: 1s\n") + (
        "  - name: reminder\n    template: {name: hello_world, language: en_US}\n"
    )
    write_flow(folder, base, steps, people=1, kind="cloud", window="check")
    assert flowrun("flow.yaml")[0] == 0
    assert rows(folder)[("note", ANN)][0] == "waiting"
    time.sleep(1.1)
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    assert rows(folder)[("note", ANN)] == ("skipped", "expired")
    assert sent_to(state)[ANN] == ["template", "template"]  # the reminder went
    writes(base, ANN)  # too late: an expired step stays skipped
    heard(folder, 1)
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state)[ANN] == ["template", "template"]


@pytest.mark.closed_windows
@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_window_the_flow_trusts_wrongly_makes_the_step_wait(
    closed: tuple[str, SandboxState], folder: Path, how: str
) -> None:
    """`window: open` states everyone wrote; the API's 131047 (at once, or as a failed status
    after a 200) says otherwise for one customer: their step waits instead of failing, and
    the next run does not try again until they write."""
    base, state = closed
    post(f"{base}/sandbox/window", {"window_errors": how})
    write_flow(folder, base, WELCOME, people=2, kind="cloud", window="open")
    writes(base, ANN, hours_ago=2)
    heard(folder, 1)
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    if how == "async":
        wait_until(lambda: _delivery_failed(folder, BOB))
        code, _out, err = flowrun("flow.yaml")
        assert code == 0, err
    assert rows(folder)[("note", BOB)][0] == "waiting"
    refused = len(state.refused)
    assert refused == 1
    assert flowrun("flow.yaml")[0] == 0
    assert len(state.refused) == refused  # not tried again while the window is closed
    writes(base, BOB)
    heard(folder, 2)
    assert flowrun("flow.yaml")[0] == 0
    assert rows(folder)[("note", BOB)][0] == "sent"
    assert len(state.refused) == refused


def _got_both(state: SandboxState, customer: str) -> bool:
    return sent_to(state).get(customer) == ["template", "text"]


def _delivery_failed(folder: Path, customer: str) -> bool:
    with contextlib.closing(SqliteLedger.for_run(folder / "flow.ledger.sqlite", "t")) as ledger:
        record = ledger.history(customer).get("note")
    return record is not None and record.delivery == "failed"


def test_a_csv_column_says_who_wrote_lately(closed: tuple[str, SandboxState], folder: Path) -> None:
    base, state = closed
    write_flow(folder, base, WELCOME, people=2, kind="cloud", window="check")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    csv = folder / "people.csv"
    csv.write_text(
        f"phone,name,lang,last_inbound_at\n+1 555 010 0000,P0,en,{stamp}\n+1 555 010 0001,P1,de,\n",
        "utf-8",
    )
    # the sandbox knows it too (the CRM's chats happened on WhatsApp), without the ledger
    post(f"{base}/sandbox/webhook", {})
    writes(base, ANN, hours_ago=600 / 3600)
    code, _, err = flowrun("flow.yaml")
    assert code == 0, err
    assert sent_to(state) == {ANN: ["template", "text"], BOB: ["template"]}


def test_an_unreadable_last_inbound_at_is_a_located_error(folder: Path) -> None:
    write_flow(folder, "http://127.0.0.1:9", WELCOME, people=1, kind="cloud")
    (folder / "people.csv").write_text(
        "phone,name,lang,last_inbound_at\n+1 555 010 0000,P0,en,yesterday\n"
        "+1 555 010 0001,P1,en,2026-11-30 10:00\n",
        "utf-8",
    )
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    lines = err.splitlines()
    assert any(
        line.startswith("people.csv:2:1: last_inbound_at: 'yesterday' is not a time")
        for line in lines
    ), err
    assert any(
        line.startswith("people.csv:3:1: last_inbound_at:") and "time zone" in line
        for line in lines
    ), err


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("steps.nope.button == 'x'", "no earlier step is named 'nope'"),
        ("steps.note.button == 'x'", "step 'note' reads its own answer"),
        (
            "steps.welcome.state == 'read'",
            "steps.welcome.state: a step offers button, reply, answered, status, sent_at",
        ),
        ("steps[recipient.name].button", "steps is read here in a way flowrun cannot check"),
    ],
)
def test_when_reads_only_earlier_steps_answers(folder: Path, when: str, message: str) -> None:
    steps = WELCOME.replace("  - name: note\n", f'  - name: note\n    when: "{when}"\n')
    write_flow(folder, "http://127.0.0.1:9", steps, people=1, kind="cloud")
    code, _, err = flowrun("validate", "flow.yaml")
    assert code == 2
    text = (folder / "flow.yaml").read_text("utf-8").splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.strip().startswith("when:"))
    assert f"flow.yaml:{line}:11: {message}" in err, err


def test_follow_sends_a_waiting_step_seconds_after_the_customer_writes(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--follow --listen PORT`: the customer's reply reaches the run's receiver as a signed
    webhook, and the step that waited for it goes out; the run ends once nothing waits."""
    base, state = api
    post(f"{base}/sandbox/window", {"window_errors": "sync", "everyone_wrote": None})
    write_flow(folder, base, WELCOME, people=2, kind="cloud", window="check")
    port = free_port()
    monkeypatch.setenv("WA_APP_SECRET", SECRET)
    post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
    process = start(folder, "--follow", "--listen", str(port))
    try:
        wait_until(lambda: len(state.inbox) == 2)  # the two templates
        for customer in (ANN, BOB):
            writes(base, customer, "Yes please")
            written = time.monotonic()
            wait_until(partial(_got_both, state, customer))
            assert time.monotonic() - written < 10  # a hang guard; the note says how fast
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "following 2 recipient(s) who wait" in err
    assert state.refused == []


@pytest.mark.slow
def test_kill_9_during_follow_then_a_rerun_sends_nothing_twice(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customers answer while `--follow` sends the steps that waited for them; kill -9 in the
    middle. The next run sends nothing twice and leaves at most `concurrency` uncertain."""
    base, state = api
    post(f"{base}/sandbox/window", {"window_errors": "sync", "everyone_wrote": None})
    post(f"{base}/sandbox/faults", {"latency": 0.02})
    post(f"{base}/sandbox/customers", {"reply_share": 1.0, "delay": 0.05, "seed": "kill"})
    write_flow(folder, base, WELCOME, people=300, kind="cloud", window="check", rate="400/s")
    port = free_port()
    monkeypatch.setenv("WA_APP_SECRET", SECRET)
    post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
    process = start(folder, "--follow", "--listen", str(port))
    try:
        wait_until(lambda: sum(m["type"] == "text" for m in state.inbox) >= 60, 60)
    finally:
        process.kill()
        process.communicate()
    post(f"{base}/sandbox/customers", {})
    post(f"{base}/sandbox/webhook", {})
    # the callbacks to the dead receiver give up (Meta's retries, shortened): none left behind
    wait_until(lambda: not state.leftover and not state.customers.tasks, 30)
    code, _, err = flowrun("flow.yaml")
    assert code in (0, 1), err  # 1: uncertain ones are held
    sent = [(m["to"], m["type"]) for m in state.inbox]
    assert len(sent) == len(set(sent)), "a message went twice"
    states = [r[2] for r in ledger_rows(folder)]
    assert states.count("uncertain") <= 4  # write_flow's concurrency
    assert "sending" not in states
    assert state.refused == []  # every note went to an open window
