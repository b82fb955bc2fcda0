"""Both API dialects against the sandbox: the bodies each sends, uploads and their cache, and
what each classified error code makes flowrun do."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runner import executor
from runner.dialect import Verdict
from runner.dialect.cloud import Cloud
from runner.dialect.onprem import OnPrem
from runner.ledger import Batch, SqliteLedger, Uploaded
from runner.pacing import Pacer
from runner.sandbox import NAMESPACE, PHONE_NUMBER_ID, SandboxState
from runner.sandbox import server as sandbox_module
from runner.sandbox.checks import check_message
from tests.sandbox_helpers import (
    count,
    flowrun,
    ledger_rows,
    login_flow,
    post,
    query,
    start,
    wait_until,
    write_flow,
)

DIALECTS = ("cloud", "onprem")

EVERY_KIND = """\
  - name: welcome
    template:
      name: onboarding_welcome
      language: "{{ 'de' if recipient.lang == 'de' else 'en_US' }}"
      header: {image: {file: assets/welcome.jpg}}
      body: ["{{ recipient.name }}", "{{ recipient.lang }}"]
      buttons: [{url: "go/{{ recipient.name }}"}]
  - name: offer
    template:
      name: launch_offer
      language: en_US
      header: {video: {link: "https://cdn.example.com/v.mp4"}}
      body: ["{{ recipient.name }}"]
      buttons: [{quick_reply: "yes"}, {quick_reply: "no", index: 1}]
  - name: update
    template:
      name: order_update
      language: en_US
      header: {text: "Order for {{ recipient.name }}"}
      body: [shipped]
      buttons: [{quick_reply: track}]
  - name: pic
    image: {link: "https://cdn.example.com/{{ recipient.lang }}.jpg", caption: Hi}
  - name: clip
    video: {file: assets/tour.mp4, caption: Tour}
  - name: doc
    document: {id: f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68, filename: a.pdf, caption: Prices}
  - name: sound
    audio: {file: assets/hello.ogg}
  - name: wave
    sticker: {file: assets/wave.webp}
  - name: note
    text: {body: "Bye {{ recipient.name }}: https://example.com", preview_url: true}
"""


def expected_bodies(kind: str, media: dict[str, str]) -> list[dict[str, Any]]:
    """What the API must receive for recipient P0 (de), written out by hand per dialect."""

    def body(message_type: str, content: dict[str, Any]) -> dict[str, Any]:
        if message_type == "template" and kind == "onprem":
            content = {
                "namespace": NAMESPACE,
                **content,
                "language": {"policy": "deterministic", **content["language"]},
            }
        wrapper = {"messaging_product": "whatsapp"} if kind == "cloud" else {}
        return {
            **wrapper,
            "recipient_type": "individual",
            "to": "15550100000",
            "type": message_type,
            message_type: content,
        }

    def button(sub_type: str, index: str, parameter: dict[str, str]) -> dict[str, Any]:
        return {"type": "button", "sub_type": sub_type, "index": index, "parameters": [parameter]}

    def text(value: str) -> dict[str, str]:
        return {"type": "text", "text": value}

    return [
        body(
            "template",
            {
                "name": "onboarding_welcome",
                "language": {"code": "de"},
                "components": [
                    {
                        "type": "header",
                        "parameters": [{"type": "image", "image": {"id": media["image/jpeg"]}}],
                    },
                    {"type": "body", "parameters": [text("P0"), text("de")]},
                    button("url", "0", text("go/P0")),
                ],
            },
        ),
        body(
            "template",
            {
                "name": "launch_offer",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "header",
                        "parameters": [
                            {"type": "video", "video": {"link": "https://cdn.example.com/v.mp4"}}
                        ],
                    },
                    {"type": "body", "parameters": [text("P0")]},
                    button("quick_reply", "0", {"type": "payload", "payload": "yes"}),
                    button("quick_reply", "1", {"type": "payload", "payload": "no"}),
                ],
            },
        ),
        body(
            "template",
            {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "header", "parameters": [text("Order for P0")]},
                    {"type": "body", "parameters": [text("shipped")]},
                    button("quick_reply", "0", {"type": "payload", "payload": "track"}),
                ],
            },
        ),
        body("image", {"link": "https://cdn.example.com/de.jpg", "caption": "Hi"}),
        body("video", {"id": media["video/mp4"], "caption": "Tour"}),
        body(
            "document",
            {
                "id": "f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68",
                "filename": "a.pdf",
                "caption": "Prices",
            },
        ),
        body("audio", {"id": media["audio/ogg"]}),
        body("sticker", {"id": media["image/webp"]}),
        body("text", {"body": "Bye P0: https://example.com", "preview_url": True}),
    ]


def sent(state: SandboxState) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "id"} for m in state.inbox]


@pytest.mark.parametrize("kind", DIALECTS)
def test_the_same_flow_sends_each_dialects_bodies(
    api: tuple[str, SandboxState], folder: Path, kind: str
) -> None:
    base, state = api
    write_flow(folder, base, EVERY_KIND, people=1, kind=kind)
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 9, failed 0" in out
    media = {mime: media_id for media_id, mime in state.media.items()}
    assert sent(state) == expected_bodies(kind, media)
    if kind == "cloud":
        assert all(m["id"].startswith("wamid.") for m in state.inbox)
        assert all(media_id.isdigit() for media_id in media.values())
    ids = {row[0] for row in query(folder, "SELECT message_id FROM messages")}
    assert ids == {m["id"] for m in state.inbox}


def test_uploads_are_cached_per_dialect_and_phone_number(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    steps = "  - image: {file: assets/welcome.jpg}\n"
    for kind in (*DIALECTS, "cloud"):
        write_flow(folder, base, steps, people=1, kind=kind)
        text = (folder / "flow.yaml").read_text("utf-8").replace("name: t", f"name: t-{kind}")
        (folder / "flow.yaml").write_text(text, "utf-8")
        assert flowrun("flow.yaml", "--ledger", "shared.sqlite")[0] == 0
    # the second cloud run found its upload; each dialect has its own
    assert state.uploads == 2
    with sqlite3.connect(folder / "shared.sqlite") as db:
        keys = sorted(row[0] for row in db.execute("SELECT api FROM uploads"))
    assert keys == [f"cloud:{base}/{PHONE_NUMBER_ID}", base]
    other = Cloud(base, "v23.0", "999")
    assert other.upload_key != Cloud(base, "v23.0", PHONE_NUMBER_ID).upload_key


def test_a_cached_media_id_ages_out(tmp_path: Path) -> None:
    """The clock is moved, not waited for: the Cloud API forgets media after 30 days."""
    with SqliteLedger.for_run(tmp_path / "l.sqlite", "t") as ledger:
        ledger.commit(Batch(uploads=[Uploaded("k", "sha", "id-1")]))
        ttl = Cloud("http://x", "v23.0", "1").media_ttl
        assert ttl is not None
        assert ttl < timedelta(days=30)  # a margin, so that a long run never meets the end
        soon = datetime.now(UTC) + ttl - timedelta(minutes=1)
        assert ledger.media_id("k", "sha", ttl, at=soon) == "id-1"
        assert ledger.media_id("k", "sha", ttl, at=soon + timedelta(minutes=2)) is None
        assert ledger.media_id("k", "sha", None, at=soon + timedelta(days=400)) == "id-1"
        assert OnPrem("http://x").media_ttl is None  # On-Premises ids name files: no expiry


def test_an_old_upload_is_uploaded_again_on_the_next_run(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    steps = "  - image: {file: assets/welcome.jpg}\n"
    write_flow(folder, base, steps, people=1, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    write_flow(folder, base, steps, people=2, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    assert state.uploads == 1  # cached
    month_ago = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    with sqlite3.connect(folder / "flow.ledger.sqlite") as db:
        db.execute("UPDATE uploads SET uploaded_at = ?", (month_ago,))
    write_flow(folder, base, steps, people=3, kind="cloud")
    assert flowrun("flow.yaml")[0] == 0
    assert state.uploads == 2
    ids = [m["image"]["id"] for m in state.inbox]
    assert ids[0] == ids[1] != ids[2]
    assert ids[2] in state.media


@pytest.mark.parametrize("kind", DIALECTS)
def test_a_dead_media_id_is_uploaded_again_once(
    api: tuple[str, SandboxState], folder: Path, kind: str
) -> None:
    base, state = api
    steps = "  - image: {file: assets/welcome.jpg}\n  - text: {body: after}\n"
    write_flow(folder, base, steps, people=1, kind=kind)
    assert flowrun("flow.yaml")[0] == 0
    post(f"{base}/sandbox/media/expire", {})  # the API forgot it before the ledger did
    write_flow(folder, base, steps, people=6, kind=kind)
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 10, failed 0" in out
    assert state.uploads == 2  # one upload again, shared by every message that met the dead id
    assert len(state.inbox) == 12
    assert count(folder, "state = 'sent'") == 12


def test_throughput_errors_slow_the_run_and_retry(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=8, kind="cloud")
    post(f"{base}/sandbox/faults", {"status": {"code": 400, "error": 130429, "count": 3}})
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 8, failed 0" in out
    assert "the API asked to slow down 3 time(s)" in err
    assert sorted(m["to"] for m in state.inbox) == [f"1555010{i:04d}" for i in range(8)]


@pytest.mark.parametrize(
    "backoff",
    [
        pytest.param(0.5, id="back-off 0.5 s"),
        pytest.param(None, id="real back-off", marks=pytest.mark.slow),
    ],
)
def test_pair_rate_delays_only_that_recipient(
    api: tuple[str, SandboxState],
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    backoff: float | None,
) -> None:
    """Error 131056 (too many messages to one recipient): that recipient waits the pair
    back-off, 6 s (Meta's pair rate), while the others go on. Shortened unless slow tests
    run: only the order of the run and the wait being the back-off's are checked."""
    if backoff is not None:
        monkeypatch.setattr(executor, "PAIR_BACKOFF", backoff)
    base, state = api
    steps = "  - name: a\n    text: {body: one}\n  - name: b\n    text: {body: two}\n"
    write_flow(folder, base, steps, people=4, kind="cloud")
    slow = "15550100001"
    post(f"{base}/sandbox/faults", {"fail_recipients": {slow: {"error": 131056, "count": 1}}})
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 8, failed 0" in out
    order = [m["to"] for m in state.inbox]
    assert order[-2:] == [slow, slow]  # everyone else went on meanwhile
    waited = state.received[order.index(slow)] - state.received[0]
    assert waited >= (backoff or 6.0) - 0.05  # refused with the first ones, then the back-off
    assert "the API asked to slow down" not in err  # the run as a whole was not slowed
    rows = query(folder, f"SELECT step, attempts FROM messages WHERE recipient = '{slow}'")
    assert sorted(rows) == [("a", 2), ("b", 1)]


def test_one_recipients_messages_are_spaced_others_go_meanwhile(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    steps = "".join(f"  - name: s{i}\n    text: {{body: '{i}'}}\n" for i in range(3))
    write_flow(folder, base, steps, people=4, kind="cloud", per_recipient_interval=0.25)
    code, _out, err = flowrun("flow.yaml")
    assert code == 0, err
    times: dict[str, list[float]] = {}
    for message, at in zip(state.inbox, state.received, strict=True):
        times.setdefault(message["to"], []).append(at)
    for sent_at in times.values():
        gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
        assert min(gaps) >= 0.24, gaps  # the interval, never less
    # while one recipient waits, the others are served: all first steps before any second
    bodies = [m["text"]["body"] for m in state.inbox]
    assert bodies == ["0"] * 4 + ["1"] * 4 + ["2"] * 4


@pytest.mark.parametrize(("kind", "code"), [("cloud", 131047), ("onprem", 470)])
def test_outside_the_24_hour_window_the_step_waits(
    api: tuple[str, SandboxState], folder: Path, kind: str, code: int
) -> None:
    """The API's word that the window is closed (whatever the flow trusted): the step waits
    for the customer to write, with the refusal on record; no failure, nothing blocked."""
    base, state = api
    steps = "  - name: a\n    text: {body: one}\n  - name: b\n    text: {body: two}\n"
    write_flow(folder, base, steps, people=2, kind=kind)
    post(f"{base}/sandbox/faults", {"fail_recipients": {"15550100001": code}})
    exit_code, out, err = flowrun("flow.yaml")
    assert exit_code == 0, err
    assert "waiting 1," in out
    assert "1 step(s) wait for the customer to write (1 after the API said so)" in err
    rows = [row[:6] for row in ledger_rows(folder) if row[1] == "15550100001"]
    assert rows == [("a", "15550100001", "waiting", 400, code, "window")]
    assert len(state.inbox) == 2  # the other recipient got both


def test_an_expired_cloud_token_stops_the_run(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=5, kind="cloud")
    post(f"{base}/sandbox/tokens/expire", {})
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "the API refused the credentials (HTTP 401, error 190" in err
    assert "check what the flow's api.token reads" in err
    assert state.inbox == []
    assert count(folder, "state = 'sent'") == 0


def test_onprem_logs_in_and_again_when_the_session_ends(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("WA_PASSWORD", "sandbox")
    login_flow(folder, base, people=60)
    post(f"{base}/sandbox/faults", {"latency": 0.01})

    def expire_midway() -> None:
        wait_until(lambda: len(state.inbox) >= 10)
        post(f"{base}/sandbox/tokens/expire", {})

    watcher = threading.Thread(target=expire_midway)
    watcher.start()
    code, out, err = flowrun("flow.yaml")
    watcher.join()
    assert code == 0, err
    assert "sent 60, failed 0" in out
    assert state.logins == 2  # at the start, and once when the session ended
    assert len({m["to"] for m in state.inbox}) == len(state.inbox) == 60


def test_onprem_gives_up_when_the_login_is_refused(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("WA_PASSWORD", "wrong")
    login_flow(folder, base, people=2)
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "the API refused the login (HTTP 401, error 1005" in err
    assert "wrong" not in err
    assert state.inbox == []


@pytest.mark.parametrize(
    ("kind", "status", "code", "verdict"),
    [
        ("cloud", 400, 130429, Verdict.THROTTLED),
        ("cloud", 400, 80007, Verdict.THROTTLED),
        ("cloud", 429, None, Verdict.THROTTLED),
        ("cloud", 400, 131056, Verdict.PAIR_RATE),
        ("cloud", 400, 131047, Verdict.WINDOW_CLOSED),
        ("cloud", 401, 190, Verdict.AUTH),
        ("cloud", 400, 190, Verdict.AUTH),
        ("cloud", 400, 131053, Verdict.MEDIA_GONE),
        ("cloud", 500, 131000, Verdict.RETRY),
        ("cloud", 503, None, Verdict.RETRY),
        ("cloud", 400, 131026, Verdict.FAIL),
        ("cloud", 400, 100, Verdict.FAIL),
        ("onprem", 429, 1015, Verdict.THROTTLED),
        ("onprem", 400, 1006, Verdict.MEDIA_GONE),
        ("onprem", 400, 470, Verdict.WINDOW_CLOSED),
        ("onprem", 401, 1005, Verdict.AUTH),
        ("onprem", 503, 1011, Verdict.RETRY),
        ("onprem", 400, 1013, Verdict.FAIL),
    ],
)
def test_error_codes_are_classified(
    kind: str, status: int, code: int | None, verdict: Verdict
) -> None:
    dialect = Cloud("http://x", "v23.0", "1") if kind == "cloud" else OnPrem("http://x")
    error: dict[str, Any] = {"message": "m", "error_data": {"details": "d"}}
    if code is not None:
        error["code"] = code
    data = {"error": error} if kind == "cloud" else {"errors": [{**error, "title": "m"}]}
    failure = dialect.failure(status, data)
    assert (failure.verdict, failure.code) == (verdict, code)


@pytest.mark.parametrize(
    ("api", "steps", "expected"),
    [
        (
            "cloud",
            "  - audio: {link: 'https://x.example/a.ogg', provider: {name: cdn}}\n",
            "flow.yaml:16:46: provider is only for the On-Premises API",
        ),
        (
            "onprem-no-namespace",
            "  - template: {name: hello_world, language: en_US}\n",
            "flow.yaml:15:5: template messages on the On-Premises API need api.template_namespace",
        ),
        (
            "cloud",
            "  - template: {name: Hello World, language: en_US}\n",
            "flow.yaml:16:22: name: must be lower-case letters, digits and underscores,"
            " got 'Hello World'",
        ),
        (
            "cloud",
            "  - template: {name: hi, language: '{{ recipient.name }}'}\n",
            "flow.yaml:16:36: 'P0' is not a language code like en_US or de (first for the"
            " recipient at people.csv:2:1)",
        ),
        (
            "cloud",
            '  - template: {name: hi, language: en, body: ["a\\nb"]}\n',
            "flow.yaml:16:47: template parameter holds a line break, a tab or more than 4 spaces"
            " in a row (first for the recipient at people.csv:2:1)",
        ),
        (
            "cloud",
            "  - template: {name: hi, language: en, header: {image: {id: x}, text: y}}\n",
            "flow.yaml:16:40: a header has exactly one of image, video, document, text,"
            " location (found image and text)",
        ),
        (
            "cloud",
            "  - template: {name: hi, language: en, buttons: [{url: a}, {url: b, index: 0}]}\n",
            "flow.yaml:16:5: two buttons have the same index",
        ),
    ],
)
def test_dialect_and_template_rules_are_located(
    folder: Path, api: str, steps: str, expected: str
) -> None:
    kind = api.split("-", maxsplit=1)[0]
    write_flow(folder, "https://wa.example.com", steps, people=1, kind=kind)
    if api == "onprem-no-namespace":
        text = (folder / "flow.yaml").read_text("utf-8")
        text = text.replace(f"  template_namespace: {NAMESPACE}\n", "")
        (folder / "flow.yaml").write_text(text, "utf-8")
    code, _out, err = flowrun("validate", "flow.yaml")
    assert code == 2
    assert err.splitlines()[0] == expected, (folder / "flow.yaml").read_text("utf-8")


def sending_rows_seen_by_the_api(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[int]:
    """Each time the sandbox takes a message, how many rows the ledger holds as `sending`."""
    seen: list[int] = []

    def counting(body: Any, media: dict[str, str], dialect: str, **options: Any) -> None:
        seen.append(count(folder, "state = 'sending'"))
        check_message(body, media, dialect, **options)

    monkeypatch.setattr(sandbox_module, "check_message", counting)
    return seen


@pytest.mark.parametrize("kind", DIALECTS)
def test_sending_again_after_an_upload_keeps_marks_within_the_slots(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Review finding: a message sent again after its media id was found dead left its slot
    with its `sending` mark, so a kill -9 could leave more uncertain rows than `concurrency`."""
    base, _ = api
    steps = "  - image: {file: assets/welcome.jpg}\n"
    write_flow(folder, base, steps, people=1, kind=kind)
    assert flowrun("flow.yaml")[0] == 0
    post(f"{base}/sandbox/media/expire", {})
    write_flow(folder, base, steps, people=5, kind=kind, concurrency=1)
    seen = sending_rows_seen_by_the_api(monkeypatch, folder)
    assert flowrun("flow.yaml")[0] == 0
    assert seen
    assert max(seen) == 1, seen


def test_sending_again_after_a_login_keeps_marks_within_the_slots(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("WA_PASSWORD", "sandbox")
    login_flow(folder, base, people=30, concurrency=2)
    seen = sending_rows_seen_by_the_api(monkeypatch, folder)
    authorize = sandbox_module._authorize

    def session_ends_once(request: Any) -> None:
        if len(state.inbox) == 10 and state.logins == 1:
            state.tokens.clear()
        authorize(request)

    monkeypatch.setattr(sandbox_module, "_authorize", session_ends_once)
    code, _out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert state.logins == 2
    assert max(seen) <= 2, seen


def test_ctrl_c_while_an_upload_waits_to_retry_is_prompt(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    write_flow(folder, base, "  - image: {file: assets/welcome.jpg}\n", people=3, kind="cloud")
    post(f"{base}/sandbox/faults", {"status": {"code": 429, "count": 3, "retry_after": 60}})
    process = start(folder)
    wait_until(lambda: state.requests >= 1)
    time.sleep(0.3)
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert time.monotonic() - began < 10
    assert count(folder, "state IN ('sending', 'uncertain', 'failed')") == 0


def test_a_failed_upload_is_tried_again_by_the_next_message(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    steps = "  - image: {file: assets/welcome.jpg}\n"
    write_flow(folder, base, steps, people=3, kind="cloud", concurrency=1, retries=0)
    post(f"{base}/sandbox/faults", {"status": {"code": 400, "count": 1, "error": 131009}})
    code, out, _err = flowrun("flow.yaml")
    assert code == 1
    # the first two recipients (served together) share the failed try; the third tries again
    # (the two are not failed but not sent, issue 17: the next run sends them)
    assert "sent 1, failed 0" in out
    assert count(folder, "state = 'skipped' AND error_title = 'not sent'") == 2
    assert state.uploads == 1


def test_what_the_api_accepted_is_on_disk_while_the_recipient_waits(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    steps = "  - name: a\n    text: {body: one}\n  - name: b\n    text: {body: two}\n"
    write_flow(folder, base, steps, people=1, kind="cloud", per_recipient_interval=30)
    process = start(folder)
    wait_until(lambda: bool(state.inbox))
    # on disk well before the next step, 30 s later (the flush delay is 0.5 s)
    wait_until(lambda: query(folder, "SELECT step, state FROM messages") == [("a", "sent")], 10)
    assert process.poll() is None  # the recipient is still waiting for its next step
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert len(state.inbox) == 1


def test_a_burst_of_throttled_answers_halves_the_rate_once() -> None:
    now = [0.0]
    pacer = Pacer(80.0, clock=lambda: now[0])
    for _ in range(16):  # the answers of 16 requests that were in flight together
        pacer.throttled(1.0)
    assert pacer.rate == 40.0
    assert pacer.throttles == 16
    assert pacer.delay() == pytest.approx(1.0)  # everyone waits the pause out
    now[0] = 2.0
    pacer.throttled(1.0)  # a new refusal after the pause: slower again
    assert pacer.rate == 20.0
    now[0] = 8.0
    pacer.delay()
    assert pacer.rate == 25.0  # climbing back after a quiet spell, a quarter at a time
