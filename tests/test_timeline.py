"""runner/timeline.py: when a recipient's step is due, what it waits for, when a wait gives up:
plain functions of the ledger's rows and the clock (no ledger, no network here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.conversation import WAITS_EVENT, WAITS_TIME, Window
from runner.errors import Location
from runner.ledger import Inbound, StepRecord
from runner.loader import load_flow
from runner.plan import Plan, compile_plan
from runner.recipients import Recipient
from runner.timeline import Timeline

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
ANN = Recipient("15550100000", {"phone": "15550100000"}, Location("f", 1, 1))


def plan(tmp_path: Path, steps: str) -> Plan:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "version: 1\napi: {phone_number_id: '1', token: '{{ env.WA_TOKEN }}'}\n"
        "recipients: [{phone: '+1 555 010 0000'}]\nmessages:\n"
        "  - name: welcome\n    template: {name: hello_world, language: en_US}\n" + steps,
        "utf-8",
    )
    return compile_plan(load_flow(flow))


def at(hours: float) -> str:
    return (NOW + timedelta(hours=hours)).isoformat(timespec="milliseconds")


def line(p: Plan, history: dict[str, StepRecord], inbound: list[Inbound] | None = None) -> Timeline:
    return Timeline(ANN, p.steps, history, inbound or [], Window(), NOW)


def test_after_a_duration_counts_from_the_last_message_sent(tmp_path: Path) -> None:
    p = plan(tmp_path, "  - name: tip\n    after: 2d\n    text: {body: hi}\n")
    tip = p.steps[1]
    sent = {"welcome": StepRecord("sent", at=at(-1))}
    held = line(p, sent).gate(tip)
    assert held is not None
    assert (held.reason, held.until) == (WAITS_TIME, NOW + timedelta(days=2, hours=-1))
    later = {"welcome": StepRecord("sent", at=at(-49))}
    assert line(p, later).gate(tip) is None  # due: its when and window are looked at now


def test_a_first_step_after_a_duration_counts_from_when_it_first_waited(tmp_path: Path) -> None:
    p = plan(tmp_path, "")
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        flow.read_text("utf-8").replace("  - name: welcome\n", "  - name: welcome\n    after: 1h\n")
    )
    p = compile_plan(load_flow(flow))
    welcome = p.steps[0]
    fresh = line(p, {}).gate(welcome)
    assert fresh is not None
    assert fresh.until == NOW + timedelta(hours=1)
    waiting = {"welcome": StepRecord("waiting", at=at(-0.5), since=at(-2), error_title="time")}
    assert line(p, waiting).gate(welcome) is None


def test_after_a_read_waits_for_the_status_then_for_its_wait(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        "  - name: tip\n    after: {step: welcome, event: read, wait: 1h}\n    text: {body: hi}\n",
    )
    tip = p.steps[1]
    unread = {"welcome": StepRecord("sent", at=at(-5), delivery="delivered")}
    held = line(p, unread).gate(tip)
    assert held is not None
    assert (held.reason, held.on) == (WAITS_EVENT, "welcome")
    read = {"welcome": StepRecord("sent", at=at(-5), delivery="read", read_at=at(-0.5))}
    held = line(p, read).gate(tip)
    assert held is not None
    assert held.until == NOW + timedelta(minutes=30)


def test_after_a_reply_counts_from_the_reply(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        "  - name: tip\n    after: {step: welcome, event: replied, wait: 2h}\n"
        "    text: {body: hi}\n",
    )
    sent = {"welcome": StepRecord("sent", at=at(-5))}
    reply = Inbound("wamid.r", "1", ANN.phone, at(-3), "text", "hello")
    assert line(p, sent, [reply]).gate(p.steps[1]) is None  # 3 h ago + 2 h: due
    early = Inbound("wamid.e", "1", ANN.phone, at(-6), "text", "before")  # before we wrote
    held = line(p, sent, [early]).gate(p.steps[1])
    assert held is not None
    assert held.reason == WAITS_EVENT


def test_a_wait_for_the_customer_gives_up_from_the_later_of_sent_and_due(tmp_path: Path) -> None:
    p = plan(tmp_path, "  - name: tip\n    after: 8d\n    expires: 3d\n    text: {body: hi}\n")
    tip = p.steps[1]
    sent = {"welcome": StepRecord("sent", at=at(-24 * 9))}
    # due a day ago (sent 9 days ago + 8): gives up 3 days after it became due, not after sent
    assert line(p, sent).deadline(tip) == NOW - timedelta(days=1) + timedelta(days=3)


def test_settled_steps_are_never_held(tmp_path: Path) -> None:
    p = plan(tmp_path, "  - name: tip\n    after: 2d\n    text: {body: hi}\n")
    for record in (
        StepRecord("sent", at=at(-1)),
        StepRecord("skipped", error_title="expired"),
        StepRecord("skipped", error_title="decided"),
        StepRecord("failed"),
    ):
        history = {"welcome": StepRecord("sent", at=at(-1)), "tip": record}
        assert line(p, history).gate(p.steps[1]) is None, record
