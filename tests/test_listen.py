"""`flowrun listen`: status webhooks of both dialects recorded in the ledger, whatever their
order and however often they come; forged ones refused."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runner.commands.report import summary_lines, write_rows
from runner.http import Client
from runner.ledger import Batch, Mark, Outcome, SqliteLedger
from runner.receiver import Receiver, running
from runner.receiver.callbacks import sign
from runner.sandbox import SandboxState
from tests.sandbox_helpers import post as sandbox_post
from tests.sandbox_helpers import start, wait_until, write_flow

SECRET = "app-secret-for-tests"


def cloud(*statuses: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "statuses": list(statuses)}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


def status(message_id: str, what: str, at: int, code: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": message_id, "status": what, "timestamp": str(at)}
    item["recipient_id"] = "15550100001"
    if code is not None:
        item["errors"] = [{"code": code, "title": "Receiver Incapable"}]
    return item


def post(url: str, payload: Any, secret: str | None = SECRET, raw: bytes | None = None) -> int:
    body = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, body, method="POST")
    request.add_header("Content-Type", "application/json")
    if secret is not None:
        request.add_header("X-Hub-Signature-256", sign(secret, body))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the connection
        return int(error.code)


def table(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT message_id, status, error_code, sent_at, delivered_at, read_at, failed_at"
            " FROM statuses ORDER BY message_id"
        ).fetchall()


def callbacks() -> list[dict[str, Any]]:
    """Each message's statuses, one callback each: 40 delivered and read, 10 failed."""
    out = []
    for i in range(50):
        mid = f"wamid.M{i:03d}"
        out.append(cloud(status(mid, "sent", 1000 + i)))
        if i < 40:
            out += [cloud(status(mid, "delivered", 2000 + i)), cloud(status(mid, "read", 3000 + i))]
        else:
            out.append(cloud(status(mid, "failed", 2500 + i, 131026)))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_shuffled_and_repeated_callbacks_give_the_same_ledger(tmp_path: Path, seed: int) -> None:
    ordered, shuffled = tmp_path / "ordered.sqlite", tmp_path / "shuffled.sqlite"
    for path in (ordered, shuffled):
        SqliteLedger.for_run(path, "f").close()
    mixed = callbacks() * 3  # Meta retries for a day: each comes again
    random.Random(seed).shuffle(mixed)
    for path, sequence in ((ordered, callbacks()), (shuffled, mixed)):
        receiver = Receiver(path, SECRET)
        with running(receiver) as url:
            assert all(post(f"{url}/webhook", payload) == 200 for payload in sequence)
        receiver.close()
    assert table(shuffled) == table(ordered)
    rows = table(ordered)
    assert rows[0] == (
        "wamid.M000",
        "read",
        None,
        "1970-01-01T00:16:40+00:00",
        "1970-01-01T00:33:20+00:00",
        "1970-01-01T00:50:00+00:00",
        None,
    )
    assert rows[45][1:3] == ("failed", 131026)


def test_forged_or_missing_signatures_are_refused_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    receiver = Receiver(path, SECRET)
    payload = cloud(status("wamid.X", "read", 5))
    with running(receiver) as url:
        assert post(url, payload, secret="not-the-secret") == 401
        assert post(url, payload, secret=None) == 401
        body = json.dumps(payload).encode()
        tampered = body.replace(b"read", b"sent")
        request = urllib.request.Request(url, tampered, method="POST")
        request.add_header("X-Hub-Signature-256", sign(SECRET, body))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert post(url, None, raw=b"{not json") == 400
        assert table(path) == []
        assert post(url, payload) == 200
    assert receiver.counts.refused == 3
    assert [row[:2] for row in table(path)] == [("wamid.X", "read")]


def test_the_verification_handshake(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    receiver = Receiver(path, SECRET, verify_token="tok")
    with running(receiver) as url:
        query = "hub.mode=subscribe&hub.challenge=12345&hub.verify_token="
        with urllib.request.urlopen(f"{url}/webhook?{query}tok", timeout=10) as answer:
            assert answer.read() == b"12345"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/webhook?{query}wrong", timeout=10)
        refused.value.close()
        assert refused.value.code == 403


def test_a_status_before_its_message_is_kept_and_matched(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with SqliteLedger.for_run(path, "f") as ledger:
        ledger.commit(
            Batch(marks=[Mark("hello", "15550100001", "h")])
        )  # the webhook beats the outcome
        receiver = Receiver(path, SECRET)
        with running(receiver) as url:
            assert post(url, cloud(status("wamid.EARLY", "delivered", 10))) == 200
        receiver.close()
        ledger.commit(
            Batch(outcomes=[Outcome("hello", "15550100001", "sent", message_id="wamid.EARLY")])
        )
    lines = summary_lines(path, "f")
    funnel = lines[lines.index(next(x for x in lines if x.startswith("delivery"))) + 2]
    assert funnel.split() == ["f/hello", "0", "1", "0", "0", "0"]


async def storm(url: str, connections: int, prefix: str, what: str) -> list[int]:
    """3,000 signed callbacks at once over `connections` connections (flowrun's own HTTP
    client); the status answered to each."""
    client = Client(url, connections, 30)

    async def one(i: int) -> int:
        body = json.dumps(cloud(status(f"{prefix}{i}", what, i))).encode()
        headers = {"X-Hub-Signature-256": sign(SECRET, body)}
        return (await client.post("/", body, "application/json", headers)).status

    try:
        return list(await asyncio.gather(*(one(i) for i in range(3000))))
    finally:
        await client.close()


class Collect:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)


def test_a_callback_storm_loses_nothing(tmp_path: Path) -> None:
    """3,000 callbacks from 50 connections at once: every one answered 200, every status
    recorded (each answer comes only once its status is durable)."""
    path = tmp_path / "l.sqlite"
    with SqliteLedger.for_run(path, "f") as ledger:
        sent = [Outcome("s", f"1555{i:07d}", "sent", message_id=f"wamid.S{i}") for i in range(3000)]
        ledger.commit(Batch(outcomes=sent))
    receiver = Receiver(path, SECRET)

    with running(receiver) as url:
        answers = asyncio.run(storm(url, 50, "wamid.S", "delivered"))
    receiver.close()
    assert answers == [200] * 3000
    assert len(table(path)) == 3000
    out = Collect()
    write_rows(path, "f", "csv", out)  # type: ignore[arg-type]
    assert out.text.splitlines()[0].endswith(
        "delivery,delivered_at,read_at,delivery_error_code,delivery_error,pricing_category,"
        "reply,button"
    )
    assert out.text.count(",delivered,") == 3000


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_run_with_listen_records_what_the_api_decided(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole loop on one machine: the sandbox accepts, then calls back (signed) with
    delivered and read, or failed for a quarter; `flowrun FLOW --listen` ends with the
    ledger holding exactly what the sandbox decided."""
    base, _ = api
    port = free_port()
    steps = "  - name: a\n    text: {body: one}\n  - name: b\n    text: {body: two}\n"
    write_flow(folder, base, steps, people=40, kind="cloud")
    webhook = {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "fail_share": 0.25}
    sandbox_post(f"{base}/sandbox/webhook", {**webhook, "delay": 0.02})
    monkeypatch.setenv("WA_APP_SECRET", SECRET)
    process = start(folder, "--listen", str(port))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    with urllib.request.urlopen(f"{base}/sandbox/webhook", timeout=10) as answer:
        decided = json.loads(answer.read())
    assert len(decided) == 80
    recorded = {row[0]: row[1] for row in table(folder / "flow.ledger.sqlite")}
    assert recorded == decided
    assert 5 < list(decided.values()).count("failed") < 35
    assert "received" in out  # the receiver's own summary
    lines = summary_lines(folder / "flow.ledger.sqlite", "t")
    assert any(line.startswith("delivery (from status webhooks") for line in lines)


@pytest.mark.slow  # an attack of several seconds: CI runs it
def test_a_callback_storm_during_a_run_stalls_no_send(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 callbacks for other messages hit the receiver while a run sends 800 messages:
    the run goes through (the receiver is a process of its own) and nothing is lost."""
    base, state = api
    port = free_port()
    write_flow(folder, base, "  - text: {body: hi}\n", people=800, kind="cloud")
    sandbox_post(f"{base}/sandbox/faults", {"latency": 0.02})  # a run of several seconds
    sandbox_post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
    monkeypatch.setenv("WA_APP_SECRET", SECRET)
    process = start(folder, "--listen", str(port))
    wait_until(lambda: len(state.inbox) > 0)

    answers = asyncio.run(storm(f"http://127.0.0.1:{port}", 20, "wamid.OTHER", "read"))
    assert process.poll() is None  # the storm came and went while the run was sending
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert answers == [200] * 3000
    assert len(state.inbox) == 800
    rows = table(folder / "flow.ledger.sqlite")
    assert sum(1 for row in rows if row[0].startswith("wamid.OTHER")) == 3000
    ours = [row for row in rows if not row[0].startswith("wamid.OTHER")]
    assert [row[1] for row in ours] == ["read"] * 800


def test_failed_is_final_and_odd_signatures_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    receiver = Receiver(path, SECRET)
    with running(receiver) as url:
        assert post(url, cloud(status("wamid.F", "failed", 2, 131026))) == 200
        assert post(url, {"statuses": [status("wamid.F", "deleted", 3)]}) == 200
        body = json.dumps(cloud(status("wamid.G", "read", 4))).encode()
        request = urllib.request.Request(url, body, method="POST")
        request.add_header("X-Hub-Signature-256", "sha256=" + "é" * 64)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 401  # refused, not a 500
    receiver.close()
    assert [row[:2] for row in table(path)] == [("wamid.F", "failed")]


def test_customers_messages_and_preferences_are_recorded_once(tmp_path: Path) -> None:
    """What customers say (a reply, a quick-reply tap, a marketing stop) is kept with its own
    time, once, however often Meta sends it: the window, opt-outs and replies come from it."""
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "messages": [
            {
                "from": "15550100001",
                "id": "wamid.TAP",
                "timestamp": "1750000000",
                "type": "button",
                "button": {"payload": "brochure", "text": "Brochure"},
                "context": {"from": "15550783881", "id": "wamid.OURS"},
            }
        ],
    }
    stop = {
        "messaging_product": "whatsapp",
        "metadata": value["metadata"],
        "user_preferences": [
            {"wa_id": "15550100002", "category": "marketing_messages", "value": "stop",
             "timestamp": 1750000100, "detail": "User requested to stop marketing messages"},
        ],
    }  # fmt: skip
    payloads = [
        {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": v}]}]}
        for v in (value, stop)
    ]
    receiver = Receiver(path, SECRET)
    with running(receiver) as url:
        for payload in payloads * 3:  # Meta's retries
            assert post(url, payload) == 200
    receiver.close()
    assert (receiver.counts.messages, receiver.counts.preferences) == (3, 3)
    with sqlite3.connect(path) as db:
        inbound = db.execute(
            "SELECT business, customer, at, kind, text, payload, context FROM inbound"
        ).fetchall()
        preferences = db.execute("SELECT business, customer, value, at FROM preferences").fetchall()
    assert inbound == [
        ("106540352242922", "15550100001", "2025-06-15T15:06:40+00:00", "button", "Brochure",
         "brochure", "wamid.OURS"),
    ]  # fmt: skip
    assert preferences == [
        ("106540352242922", "15550100002", "stop", "2025-06-15T15:08:20+00:00"),
    ]
