"""Opt-outs honoured on every path: a customer who wrote a stop word gets nothing more from the
number, one who stopped marketing gets no template; a resume word undoes a stop; retries do not
get around it. Runs against the sandbox over loopback, with what customers said recorded in the
ledger as the receiver records it."""

from __future__ import annotations

from pathlib import Path

from runner.ledger import Inbound, Preference, SqliteLedger
from runner.sandbox import PHONE_NUMBER_ID, SandboxState
from tests.sandbox_helpers import flowrun, ledger_rows, post, write_flow

STEPS = """\
  - name: hello
    template: {name: hello_world, language: en_US}
  - name: note
    text: {body: "See you, {{ recipient.name }}"}
"""
ALICE, BOB = "15550100001", "15550100002"  # P1 and P2 of write_flow's people


def heard(folder: Path, *items: Inbound | Preference) -> None:
    """What the receiver would have recorded from the webhooks."""
    with SqliteLedger.for_writer(folder / "flow.ledger.sqlite") as ledger:
        ledger.record_webhooks(list(items))


def text(customer: str, words: str, at: str) -> Inbound:
    return Inbound(f"wamid.{customer}.{at}", PHONE_NUMBER_ID, customer, at, "text", words)


def sent_to(state: SandboxState) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in state.inbox:
        found.setdefault(message["to"], []).append(message["type"])
    return found


def test_a_stop_word_stops_everything_and_a_resume_word_undoes_it(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=3, kind="cloud")
    SqliteLedger.for_run(folder / "flow.ledger.sqlite", "t").close()
    heard(folder, text(ALICE, " Stop! ", "2026-11-30T10:00:00+00:00"))
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err  # not sending to who asked to stop is no failure
    assert ALICE not in sent_to(state)
    assert sent_to(state)[BOB] == ["template", "text"]
    assert "sent 4, failed 0, skipped 2" in out
    assert "2 message(s) not sent: their customers asked to stop" in err
    rows = {(r[0], r[1]): r for r in ledger_rows(folder)}
    assert rows[("hello", ALICE)][2] == "skipped"
    assert rows[("hello", ALICE)][5] == "opted out"
    heard(folder, text(ALICE, "START", "2026-11-30T11:00:00+00:00"))
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state)[ALICE] == ["template", "text"]


def test_a_marketing_stop_withholds_templates_only(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=2, kind="cloud")
    SqliteLedger.for_run(folder / "flow.ledger.sqlite", "t").close()
    heard(folder, Preference(PHONE_NUMBER_ID, ALICE, "2026-11-30T10:00:00+00:00", "stop"))
    assert flowrun("flow.yaml")[0] == 0
    assert sent_to(state)[ALICE] == ["text"]  # a template counts as marketing: withheld


def test_a_retry_does_not_get_around_a_stop(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=2, kind="cloud")
    post(f"{base}/sandbox/faults", {"fail_recipients": {ALICE: 131026}})
    assert flowrun("flow.yaml")[0] == 1  # Alice's template failed
    post(f"{base}/sandbox/faults", {})
    heard(folder, text(ALICE, "СТОП", "2026-11-30T10:00:00+00:00"))
    before = len(state.inbox)
    code, _, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 0, err
    assert len(state.inbox) == before  # nothing to Alice, and Bob had everything
    assert {r[1]: r[5] for r in ledger_rows(folder) if r[0] == "hello"}[ALICE] == "opted out"


def test_a_flows_own_stop_words_and_other_numbers_customers(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=3, kind="cloud", opt_out_keywords='["halt"]')
    SqliteLedger.for_run(folder / "flow.ledger.sqlite", "t").close()
    heard(
        folder,
        text(ALICE, "HALT", "2026-11-30T10:00:00+00:00"),
        text(BOB, "STOP", "2026-11-30T10:00:00+00:00"),  # not this flow's stop word
        Inbound("wamid.other", "999", "15550100000", "2026-11-30T10:00:00+00:00", "text", "halt"),
    )
    assert flowrun("flow.yaml")[0] == 0
    assert ALICE not in sent_to(state)
    assert sent_to(state)[BOB] == ["template", "text"]
    assert sent_to(state)["15550100000"] == ["template", "text"]  # it wrote to another number


def test_131050_records_the_marketing_stop_and_no_later_run_sends_a_template(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """The API's own word that the customer stopped marketing: not a failure (exit 0), never
    retried, recorded, and the next run does not even ask."""
    base, state = api
    write_flow(folder, base, STEPS, people=2, kind="cloud")
    # (the sandbox refuses her next message only: a real API refuses templates only)
    post(f"{base}/sandbox/faults", {"fail_recipients": {ALICE: {"error": 131050, "count": 1}}})
    code, out, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 0, err
    assert "1 message(s) not sent: their customers asked to stop" in err
    assert "failed 0" in out
    assert sent_to(state)[ALICE] == ["text"]  # the free-form step still went
    row = {(r[0], r[1]): r for r in ledger_rows(folder)}[("hello", ALICE)]
    assert (row[2], row[5]) == ("skipped", "opted out")
    requests = state.requests
    assert flowrun("flow.yaml", "--retry-failed")[0] == 0
    assert state.requests == requests  # Alice's template is not asked for again


def test_what_a_customer_says_through_the_webhooks_is_honoured_by_the_next_run(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """End to end: the sandbox's customers write (a STOP, a marketing stop) as signed webhooks
    of Meta's shapes, the receiver records them in the flow's ledger, the next run honours them."""
    from runner.receiver import Receiver, running

    base, state = api
    write_flow(folder, base, STEPS, people=3, kind="cloud")
    ledger = folder / "flow.ledger.sqlite"
    SqliteLedger.for_run(ledger, "t").close()
    receiver = Receiver(ledger, "app-secret")
    with running(receiver) as url:
        post(f"{base}/sandbox/webhook", {"url": url, "secret": "app-secret"})
        post(f"{base}/sandbox/inbound", {"from": ALICE, "text": "Stop"})
        post(f"{base}/sandbox/inbound", {"from": BOB, "user_preferences": "stop"})
    receiver.close()
    assert (receiver.counts.messages, receiver.counts.preferences) == (1, 1)
    post(f"{base}/sandbox/webhook", {})
    assert flowrun("flow.yaml")[0] == 0
    assert ALICE not in sent_to(state)
    assert sent_to(state)[BOB] == ["text"]
    assert sent_to(state)["15550100000"] == ["template", "text"]


def test_an_imported_opt_out_list_is_honoured_and_listed(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """A business brings its suppression list; the run honours it; `contacts` lists who is
    withheld and why, as the run decides it."""
    base, state = api
    write_flow(folder, base, STEPS, people=3, kind="cloud")
    (folder / "suppressed.csv").write_text("Phone;name\n+1 (555) 010-0001;Alice\n", "utf-8")
    code, out, err = flowrun("contacts", "flow.yaml", "--import", "suppressed.csv")
    assert code == 0, err
    assert "suppressed.csv: 1 opt-out(s) added to flow.ledger.sqlite" in out
    when = "2026-11-30T10:00:00+00:00"
    heard(folder, Preference(PHONE_NUMBER_ID, BOB, when, "stop"))
    assert flowrun("flow.yaml")[0] == 0
    assert ALICE not in sent_to(state)
    code, out, _ = flowrun("contacts", "flow.yaml")
    lines = out.splitlines()
    assert lines[0].startswith(f"{ALICE}  no everything: on the business's opt-out list since ")
    assert (
        lines[1] == f"{BOB}  no marketing: stopped marketing messages on 2026-11-30T10:00:00+00:00"
    )
    assert lines[2] == "2 customer(s) opted out"


def test_a_bad_phone_in_an_opt_out_list_imports_nothing(
    folder: Path, api: tuple[str, SandboxState]
) -> None:
    base, _ = api
    write_flow(folder, base, STEPS, people=1, kind="cloud")
    (folder / "suppressed.csv").write_text("phone\n+15550100001\n07911 123456\n", "utf-8")
    code, _, err = flowrun("contacts", "flow.yaml", "--import", "suppressed.csv")
    assert code == 2
    assert err.startswith("suppressed.csv:3:1: phone '07911 123456' has no country code")
    assert flowrun("contacts", "flow.yaml")[0] == 2  # no ledger: nothing was written
