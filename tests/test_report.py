"""`flowrun report`'s layout (runner/commands/report.py) on a ledger written through the store:
no run, no server, a fraction of a second."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from runner.commands.report import summary_lines, write_rows
from runner.contacts import IMPORTED
from runner.ledger import (
    Batch,
    Inbound,
    LedgerError,
    LedgerReader,
    Mark,
    Outcome,
    Preference,
    SqliteLedger,
    Status,
)
from runner.untrusted import printable
from tests.sandbox_helpers import flowrun, write_flow
from tests.test_ledger import legacy_ledger

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


# What customers did after each step. The ledger's clock is set per commit (the store stamps
# each row with `now()`), so that steps go minutes apart, as in a campaign.
A, B, C, D, E = (f"1555040000{i}" for i in range(5))


def at(clock: str) -> str:
    return f"2026-12-01T{clock}+00:00"


def sent(step: str, *recipients: str) -> list[Outcome]:
    return [Outcome(step, who, "sent", message_id=f"wamid.{step}.{who}") for who in recipients]


def waiting(step: str, reason: str, *recipients: str) -> list[Outcome]:
    why = f"waits ({reason})"
    return [
        Outcome(step, who, "waiting", error_title=reason, error_details=why, attempts=0)
        for who in recipients
    ]


def tap(message_id: str, who: str, clock: str, button: tuple[str, str], step: str) -> Inbound:
    """A quick-reply tap: `button` is (payload, title)."""
    payload, title = button
    context = f"wamid.{step}.{who}"
    return Inbound(message_id, "106540352242922", who, at(clock), "button", title, payload, context)


def text(message_id: str, who: str, clock: str, body: str) -> Inbound:
    return Inbound(message_id, "106540352242922", who, at(clock), "text", body)


def conversation(path: Path, monkeypatch: pytest.MonkeyPatch, flow: str = "f") -> None:
    """welcome to all five at 10:00 (E's refused by a `failed` status), brochure to A and B at
    10:10; C and D wait for brochure, A for last; then what each customer did."""
    with SqliteLedger.for_run(path, flow) as run, monkeypatch.context() as clock:
        clock.setattr("runner.ledger.sqlite.now", lambda: at("10:00:00.000"))
        run.commit(Batch(outcomes=sent("welcome", A, B, C, D, E)))
        clock.setattr("runner.ledger.sqlite.now", lambda: at("10:10:00.400"))
        outcomes = [*sent("brochure", A, B), *waiting("brochure", "window", C)]
        outcomes += [*waiting("brochure", "answer", D), *waiting("last", "answer", A)]
        run.commit(Batch(outcomes=outcomes))
    heard: list[Status | Inbound | Preference] = [
        text("in.0", A, "09:00:00", "hello before anything"),  # before welcome: no step
        tap("in.1", A, "10:05:00", ("brochure", "Tell me more"), "welcome"),
        tap("in.2", A, "10:06:00", ("brochure", "Tell me more"), "welcome"),  # twice: one person
        text("in.3", A, "10:20:00", "thanks"),  # after brochure: brochure's
        tap("in.4", B, "10:09:00", ("later", "Not now"), "welcome"),
        text("in.5", B, "10:09:59", "ok"),  # a second before brochure went: the clock slack
        text("in.6", C, "10:30:00", " Stop! "),  # C's brochure waits: welcome's
        Inbound("in.7", "", D, at("10:03:00"), "image"),
        text("in.8", E, "10:02:00", "STOP"),  # E never had welcome: no step's
        text("in.9", "15559999999", "10:02:00", "STOP"),  # not a recipient of the flow
        tap("in.10", B, "10:40:00", ("brochure", "Tell me more"), "welcome"),  # a late tap
        Status("wamid.welcome." + E, "failed", at("10:00:05"), code=131047, title="Re-engage"),
        Preference("106540352242922", D, at("10:04:00"), "stop"),
        Preference("106540352242922", A, at("10:50:00"), "stop", IMPORTED),  # the business's
    ]
    with SqliteLedger.for_writer(path) as receiver:
        receiver.record_webhooks(heard)


def test_what_customers_did_after_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.sqlite"
    conversation(path, monkeypatch)
    lines = summary_lines(path, "f")
    start = lines.index(
        "conversations (what customers did after each step, until their next step was sent):"
    )
    assert lines[start + 1 :] == [
        "  flow/step   sent   replied  opted out  waiting             taps",
        "  f/brochure     2  2 (100%)          0  answer 1, window 1  -",
        "  f/last         0         0          0  answer 1            -",
        "  f/welcome      5   4 (80%)          2  -                   brochure 2, later 1",
        "  waiting: window = until the customer writes; answer = until they answer an earlier step",
    ]


def test_each_rows_reply_and_button(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.sqlite"
    conversation(path, monkeypatch)
    out = io.StringIO()
    write_rows(path, "f", "csv", out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == [*LedgerReader.columns, "reply", "button"]  # appended, in order
    answers = {(row[1], row[2]): (row[-2], row[-1]) for row in rows[1:]}
    assert answers == {
        ("welcome", A): ("Tell me more", "brochure"),
        ("brochure", A): ("thanks", ""),
        ("last", A): ("", ""),
        ("welcome", B): ("Not now", "later"),  # the first tap, not the later one
        ("brochure", B): ("ok", ""),
        ("welcome", C): ("Stop!", ""),
        ("brochure", C): ("", ""),
        ("welcome", D): ("[image]", ""),
        ("brochure", D): ("", ""),
        ("welcome", E): ("", ""),  # refused by a failed status: what E wrote answers nothing
    }
    out = io.StringIO()
    write_rows(path, "f", "jsonl", out)
    first = json.loads(out.getvalue().splitlines()[2])
    assert (first["step"], first["reply"], first["button"]) == (
        "welcome",
        "Tell me more",
        "brochure",
    )


def conversation_row(out: str, label: str) -> list[str]:
    """The cells of a step's row in the conversations table."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("conversations"))
    return next(line.split() for line in lines[start:] if line.split()[0] == label)


def test_the_flows_stop_words_and_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`report FLOW` reads what customers wrote with the flow's own stop words (they replace
    the defaults); `--ledger` alone, with the defaults."""
    monkeypatch.chdir(tmp_path)
    steps = "  - name: welcome\n    text: {body: hi}\n"
    write_flow(tmp_path, "http://127.0.0.1:9", steps, opt_out_keywords='["basta"]')
    conversation(tmp_path / "flow.ledger.sqlite", monkeypatch, flow="t")
    code, out, err = flowrun("report", "flow.yaml")
    assert code == 0, err
    welcome = conversation_row(out, "t/welcome")
    assert welcome == [  # D's marketing stop; " Stop! " is no stop word here
        "t/welcome",
        "5",
        "4",
        "(80%)",
        "1",
        "-",
        "brochure",
        "2,",
        "later",
        "1",
    ]
    code, out, _ = flowrun("report", "--ledger", "flow.ledger.sqlite")
    welcome = conversation_row(out, "t/welcome")
    assert welcome[4] == "2"  # " Stop! " is a default stop word
    code, out, _ = flowrun("report", "flow.yaml", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(row["step"], row["button"]) for row in rows if row["button"]} == {
        ("welcome", "brochure"),
        ("welcome", "later"),
    }


def test_every_flow_in_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a FLOW, each flow's steps count the customers' messages that follow them."""
    path = tmp_path / "l.sqlite"
    conversation(path, monkeypatch)
    with SqliteLedger.for_run(path, "g") as run, monkeypatch.context() as clock:
        clock.setattr("runner.ledger.sqlite.now", lambda: at("10:30:00.000"))
        run.commit(Batch(outcomes=[Outcome("welcome", B, "sent", message_id="wamid.g.1")]))
    out = "\n".join(summary_lines(path, None))
    assert conversation_row(out, "g/welcome") == ["g/welcome", "1", "1", "(100%)", "0", "-", "-"]
    assert conversation_row(out, "f/welcome")[1:4] == ["5", "4", "(80%)"]


def test_a_ledger_from_before_customers_were_heard(tmp_path: Path) -> None:
    """A ledger no flowrun has opened since schema 3 (no inbound, no preferences): read-only,
    it is not migrated; nothing was heard, nothing waits, and the rows' answers are empty."""
    path = tmp_path / "old.sqlite"
    legacy_ledger(path, with_statuses=False)
    lines = summary_lines(path, None)
    assert lines[2].split() == ["f/hello", "1", "0", "0", "0", "0", "0"]
    assert not any(line.startswith("conversations") for line in lines)
    out = io.StringIO()
    write_rows(path, None, "csv", out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["message_id"], row["reply"], row["button"]) == ("wamid.OLD", "", "")


def test_what_customers_typed_reaches_no_terminal_and_no_spreadsheet(tmp_path: Path) -> None:
    """A payload and a reply are the customer's (or anyone's who can post a webhook): printed
    printable, written to CSV as text, never a formula."""
    path = tmp_path / "l.sqlite"
    with SqliteLedger.for_run(path, "f") as run:
        run.commit(Batch(outcomes=sent("welcome", A)))
    later = "2999-01-01T00:00:00+00:00"
    hostile = '\x1b[2J=HYPERLINK("http://evil.example/")'
    with SqliteLedger.for_writer(path) as receiver:
        receiver.record_webhooks(
            [Inbound("in.1", "", A, later, "button", "=1+1", hostile, f"wamid.welcome.{A}")]
        )
    summary = "\n".join(summary_lines(path, "f"))
    assert "\x1b" not in summary
    assert '=HYPERLINK("http://evil.example/") 1' in summary
    out = io.StringIO()
    write_rows(path, "f", "csv", out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["reply"], row["button"]) == ("'=1+1", "'" + printable(hostile))
    assert "\x1b" not in row["button"]


# `report FLOW` as a new user meets it (issue 17): after `flowrun FLOW --sandbox`, for a
# spreadsheet, steps in the flow's order.
STEPS = (
    "  - name: zeta\n    text: {body: 'hi {{ recipient.name }}'}\n"
    "  - name: alpha\n    text: {body: b}\n"
)


def test_report_after_a_sandbox_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_flow(tmp_path, "http://127.0.0.1:9", STEPS, people=2)
    code, out, err = flowrun("report", "flow.yaml")
    assert code == 2
    assert (
        err.strip()
        == (
            f"flowrun: {tmp_path / 'flow.ledger.sqlite'}: no ledger here; run the flow first"
            " (flowrun flow.yaml, or flowrun flow.yaml --sandbox to try it), or name one with"
            " --ledger"
        )
        or "--sandbox to try it" in err
    ), err
    code, _, err = flowrun("report", "flow.yaml", "--sandbox")
    assert code == 2
    assert "no sandbox ledger here; try the flow first with flowrun flow.yaml --sandbox" in err
    code, out, err = flowrun("flow.yaml", "--sandbox")
    assert code == 0, err
    code, out, err = flowrun("report", "flow.yaml")
    assert code == 0, err
    sandbox = "flow.sandbox.ledger.sqlite"
    assert err.splitlines() == [f"report: reading the sandbox ledger {sandbox} (no real run yet)"]
    assert out.splitlines()[0] == f"ledger: {sandbox}"
    # the flow's order, not the alphabet's
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["t/zeta", "t/alpha"]
    code, explicit, err = flowrun("report", "flow.yaml", "--sandbox")
    assert (code, explicit, err) == (0, out, "")


def test_report_csv_for_a_spreadsheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o FILE, --excel (a byte order mark, ids as text), the recipient's own columns joined
    by WhatsApp id, and no cell a spreadsheet would run as a formula."""
    monkeypatch.chdir(tmp_path)
    write_flow(tmp_path, "http://127.0.0.1:9", STEPS, people=2)
    (tmp_path / "people.csv").write_text(
        "phone,name,lang\n"
        '+44 (0)7700 900101,=HYPERLINK("http://evil.example/"),en\n'
        "\n"
        "447700900102,@Bob,de\n"
        "447700900101,Again,de\n",  # a duplicate: the first row is the recipient
        "utf-8",
    )
    assert flowrun("flow.yaml", "--sandbox")[0] == 0
    code, out, err = flowrun("report", "flow.yaml", "--csv", "--excel", "-o", "out.csv")
    assert (code, out) == (0, ""), err
    assert "reading the sandbox ledger" in err
    raw = (tmp_path / "out.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [(row["recipient"], row["step"]) for row in rows] == [
        ('="447700900101"', "zeta"),
        ('="447700900101"', "alpha"),
        ('="447700900102"', "zeta"),
        ('="447700900102"', "alpha"),
    ]
    first, _, second, _ = rows
    assert (first["csv_line"], first["phone"], first["name"], first["lang"]) == (
        "2",
        "'+44 (0)7700 900101",
        '\'=HYPERLINK("http://evil.example/")',
        "en",
    )
    assert (second["csv_line"], second["phone"], second["name"]) == (
        "4",
        '="447700900102"',
        "'@Bob",
    )
    # without --excel: ids as digits, no byte order mark, to stdout
    code, out, _ = flowrun("report", "flow.yaml", "--csv")
    assert not out.startswith("\ufeff")
    plain = list(csv.DictReader(io.StringIO(out)))
    assert (plain[0]["recipient"], plain[0]["phone"]) == ("447700900101", "'+44 (0)7700 900101")
    code, out, _ = flowrun("report", "flow.yaml", "--jsonl")
    assert json.loads(out.splitlines()[2])["name"] == "@Bob"


def test_the_recipients_columns_of_a_large_csv(tmp_path: Path) -> None:
    """100,000 recipients: one string each, in a dict by phone."""
    import tracemalloc

    from runner.commands.report import recipient_columns
    from runner.loader import load_flow

    write_flow(tmp_path, "http://127.0.0.1:9", STEPS, people=0)
    rows = "".join(
        f"+1 555 {i // 10000:03d} {i % 10000:04d},Person {i},en\n" for i in range(100_000)
    )
    (tmp_path / "people.csv").write_text("phone,name,lang\n" + rows, "utf-8")
    tracemalloc.start()
    people = recipient_columns(load_flow(tmp_path / "flow.yaml"))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert people is not None
    assert people.cells("15550099999") == ("100001", "+1 555 009 9999", "Person 99999", "en")
    assert size < 25_000_000, size
