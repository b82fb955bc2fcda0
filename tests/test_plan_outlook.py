"""`flowrun plan` says what a run now would do with the customers' conversations (due, waiting
and why, withheld and why), from the flow's ledger and the CSV's `last_inbound_at`; `flowrun
validate` warns, at the step, about a free-form step that nobody's window can be open for.
Real files and a real SQLite ledger written as the receiver writes it; the CLI in-process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.ledger import Inbound, Preference, SqliteLedger

BUSINESS = "106540352242922"
ANN, BOB, CAROL, DAN, EVE = (f"1555010000{i}" for i in range(1, 6))
NOW = datetime.now(UTC)
STEPS = """\
  - name: hello
    template: {name: hello_world, language: en_US}
  - name: note
    text: {body: "See you, {{ recipient.name }}"}
  - name: pick
    text: {body: "Here it is"}
    when: steps.hello.button == 'yes'
"""


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_TOKEN", "t")


def ago(hours: float) -> str:
    return (NOW - timedelta(hours=hours)).isoformat(timespec="seconds")


def write_flow(folder: Path, steps: str, people: dict[str, str], settings: str = "") -> Path:
    """A Cloud flow on the sandbox's business number; `people`: phone → last_inbound_at."""
    rows = "".join(f"{phone},P{phone[-1]},{wrote}\n" for phone, wrote in people.items())
    (folder / "people.csv").write_text("phone,name,last_inbound_at\n" + rows, "utf-8")
    flow = folder / "flow.yaml"
    flow.write_text(
        "version: 1\nname: t\napi:\n"
        f'  phone_number_id: "{BUSINESS}"\n'
        "  token: '{{ env.WA_TOKEN }}'\n"
        f"{settings}recipients: {{csv: people.csv}}\nmessages:\n{steps}",
        "utf-8",
    )
    return flow


def heard(folder: Path, *items: Inbound | Preference, name: str = "flow.ledger.sqlite") -> None:
    """What the receiver would have recorded from the webhooks (by default in the flow's own
    ledger)."""
    path = folder / name
    SqliteLedger.for_run(path, "t").close()
    with SqliteLedger.for_writer(path) as ledger:
        ledger.record_webhooks(list(items))


def text(customer: str, words: str, at: str) -> Inbound:
    return Inbound(f"wamid.{customer}.{at}", BUSINESS, customer, at, "text", words)


def flowrun(folder: Path, *args: str) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def table(out: str) -> dict[str, str]:
    """The `a run now, per step` rows: step → the rest, spaces squeezed."""
    lines = out.split("  a run now, per step:\n", 1)[1].splitlines()[1:]
    rows = {}
    for line in lines:
        if not line.startswith("    "):
            break
        key, rest = line.split(None, 1)
        rows[key] = " ".join(rest.split())
    return rows


def test_plan_counts_what_waits_and_what_is_withheld(tmp_path: Path) -> None:
    """Ann said STOP (nothing goes), Bob stopped marketing and never wrote (no template; the
    text waits for him to write), Carol wrote an hour ago (the ledger), Dan's CSV says 30 hours
    ago (closed), Eve's CSV says an hour ago; `pick` reads the answer to `hello`."""
    people = {ANN: "", BOB: "", CAROL: "", DAN: ago(30), EVE: ago(1)}
    write_flow(tmp_path, STEPS, people)
    heard(
        tmp_path,
        text(ANN, "Stop", ago(2)),
        Preference(BUSINESS, BOB, ago(3), "stop"),
        text(CAROL, "hi there", ago(1)),
    )
    code, out, err = flowrun(tmp_path, "plan", "flow.yaml", "--recipients", "5")
    assert code == 0, err
    assert "  recipients   5\n  messages     10 (0 skipped by when)\n" in out  # render's view
    assert "  due now      5\n" in out
    assert "  waiting      4 for the customer to write, 2 for an answer\n" in out
    assert "  withheld     3 asked to stop, 1 stopped marketing (templates)\n" in out
    assert "  window       open now for 3 of 5 (24 h from their last message; ledger" in out
    assert "CSV last_inbound_at for 2)" in out
    assert table(out) == {  # sent before, due now, waiting, skipped, withheld
        "hello": "0 3 - 0 1 asked to stop, 1 stopped marketing (templates)",
        "note": "0 2 2 for the customer to write 0 1 asked to stop",
        "pick": "0 0 2 for the customer to write, 2 for an answer 0 1 asked to stop",
    }
    assert f"# {ANN} step hello: withheld (wrote 'Stop' on {ago(2)})\n" in out
    assert f"# {BOB} step hello: withheld (stopped marketing messages on {ago(3)})\n" in out
    assert f"# {BOB} step note: waits for the customer to write\n" in out
    assert f"# {CAROL} step note\n{{" in out  # its body: due now
    assert f"# {CAROL} step pick: waits for the answer to step hello\n" in out
    assert f"# {DAN} step note: waits for the customer to write\n" in out
    assert out.count("\n# 1555") == 15  # every step of every sample recipient, once


def test_plan_reads_the_ledger_named_by_option_and_trusts_window_open(tmp_path: Path) -> None:
    write_flow(tmp_path, STEPS, {ANN: "", BOB: ""}, settings="settings:\n  window: open\n")
    heard(tmp_path, text(ANN, "STOP", ago(1)), name="elsewhere.sqlite")
    code, out, err = flowrun(tmp_path, "plan", "flow.yaml")
    assert code == 0, err
    assert "  withheld     0\n" in out  # no ledger beside the flow: nobody wrote
    assert "  due now      4\n  waiting      2 for an answer\n" in out  # Bob and Ann's `pick`
    assert "  window       trusted: settings.window: open says every recipient wrote" in out
    assert not (tmp_path / "flow.ledger.sqlite").exists()  # a plan creates no ledger
    code, out, err = flowrun(tmp_path, "plan", "flow.yaml", "--ledger", "elsewhere.sqlite")
    assert code == 0, err
    assert "  due now      2\n  waiting      1 for an answer\n" in out
    assert "  withheld     3 asked to stop\n" in out


FREE_FIRST = """\
  - name: note
    text: {body: "Hi {{ recipient.name }}"}
  - name: pic
    image: {link: "https://cdn.example.com/a.jpg"}
  - name: hello
    template: {name: hello_world, language: en_US}
  - name: after
    text: {body: "Bye"}
"""


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": warning: " in line]


def test_validate_warns_at_a_free_form_step_nobody_can_get(tmp_path: Path) -> None:
    """No source says anyone's window is open: each free-form step before the first template
    is warned about, at its kind key, with the fix; the flow is still valid (exit 0). A
    customer who is not a recipient, or who wrote 30 hours ago, changes nothing."""
    write_flow(tmp_path, FREE_FIRST, {ANN: "", BOB: ago(30)})
    heard(tmp_path, text(CAROL, "hi", ago(1)), text(ANN, "hi", ago(30)))
    code, out, err = flowrun(tmp_path, "validate", "flow.yaml")
    assert code == 0, err
    assert out == (
        "flow.yaml: ok: 2 recipients, 4 steps, 8 messages (0 skipped by when), 0 files to upload\n"
    )
    assert warnings(err) == [
        "flow.yaml:9:5: warning: step 'note' is a text message, and no recipient has written"
        " in the last 24 hours: WhatsApp refuses it (only templates reach them), so a run keeps"
        " it waiting until they write",
        "flow.yaml:11:5: warning: step 'pic' is an image message, and no recipient has written"
        " in the last 24 hours: WhatsApp refuses it (only templates reach them), so a run keeps"
        " it waiting until they write",
    ]  # `after` follows a template: an answer to it opens the window
    lines = (tmp_path / "flow.yaml").read_text("utf-8").splitlines()
    assert lines[8].startswith("    text:")  # 9:5
    assert lines[10].startswith("    image:")  # 11:5
    assert "  hint: put a template step before it, or set settings.window: open" in err


@pytest.mark.parametrize("source", ["window open", "csv", "ledger", "template first"])
def test_validate_does_not_warn_when_a_window_can_be_open(tmp_path: Path, source: str) -> None:
    people = {ANN: "", BOB: ago(1) if source == "csv" else ""}
    settings = "settings:\n  window: open\n" if source == "window open" else ""
    steps = FREE_FIRST
    if source == "template first":
        steps = "  - template: {name: hello_world, language: en_US}\n" + FREE_FIRST
    write_flow(tmp_path, steps, people, settings)
    if source == "ledger":
        heard(tmp_path, text(BOB, "hi", ago(23)))
    code, out, err = flowrun(tmp_path, "validate", "flow.yaml")
    assert code == 0, err
    assert ": ok: " in out
    assert warnings(err) == []


def test_an_invalid_flow_exits_2_without_the_window_warning(tmp_path: Path) -> None:
    write_flow(tmp_path, FREE_FIRST + "  - text: {body: '{{ recipient.nope }}'}\n", {ANN: ""})
    code, out, err = flowrun(tmp_path, "validate", "flow.yaml")
    assert code == 2
    assert out == ""
    assert "nope" in err
    assert warnings(err) == []
