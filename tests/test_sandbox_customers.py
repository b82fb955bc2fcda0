"""The sandbox's customers over real loopback HTTP: the 24-hour customer service window
(free-form refused as the APIs refuse it, templates always pass), customer messages injected
by hand, and simulated customers who reply, tap a quick reply or send STOP, received as
signed webhooks by a small receiver of the test's own (not flowrun's)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runner import sandbox
from runner.sandbox import NAMESPACE, PHONE_NUMBER_ID, SandboxState, running
from runner.threadserver import serving
from tests.sandbox_helpers import flowrun, wait_until, write_flow
from tests.test_sandbox import call

SECRET = "sandbox-customers-secret"
ANN, BOB = "15550100001", "15550100002"
PAYLOADS = ("brochure", "later")  # what our launch_offer bodies give its two quick replies
LABELS = ("Tell me more", "Not now")  # the sandbox's launch_offer button labels
WINDOW_TEXT = "more than 24 hours have passed since the customer last replied"


class Receiver:
    """A webhook endpoint: keeps what is signed with SECRET, refuses (401) and counts the rest."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.forged = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            self.forged += 1
            return web.Response(status=401)
        self.got.append(json.loads(body))
        return web.Response()

    def values(self) -> list[dict[str, Any]]:
        """Each callback's value: Cloud's `entry[].changes[].value` (with its `field`), or an
        On-Premises body as it is."""
        found = []
        for payload in list(self.got):
            if "entry" not in payload:
                found.append(payload)
                continue
            assert payload["object"] == "whatsapp_business_account"
            for entry in payload["entry"]:
                found.extend({**c["value"], "field": c["field"]} for c in entry["changes"])
        return found

    def messages(self) -> list[dict[str, Any]]:
        return [m for value in self.values() for m in value.get("messages", [])]

    def statuses(self) -> list[dict[str, Any]]:
        return [s for value in self.values() for s in value.get("statuses", [])]


@pytest.fixture
def api() -> Iterator[tuple[str, SandboxState]]:
    with running() as server:
        yield server


@pytest.fixture
def receiver(api: tuple[str, SandboxState]) -> Iterator[tuple[str, Receiver]]:
    """The webhook endpoint, on a server of its own; it closes only once the sandbox has told
    it everything (a callback cut off mid-way would leave its connection to the collector)."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    with serving(app) as url:
        yield f"{url}/hook", hook
        state = api[1]
        wait_until(
            lambda: not state.customers.tasks and not (state.webhook and state.webhook.tasks)
        )


def send_url(base: str, dialect: str) -> str:
    return (
        f"{base}/v23.0/{PHONE_NUMBER_ID}/messages" if dialect == "cloud" else f"{base}/v1/messages"
    )


def body(dialect: str, to: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    message = {"recipient_type": "individual", "to": to, "type": kind, kind: obj}
    return {"messaging_product": "whatsapp", **message} if dialect == "cloud" else message


def text(dialect: str, to: str, words: str = "hello") -> dict[str, Any]:
    return body(dialect, to, "text", {"body": words})


def launch_offer(dialect: str, to: str) -> dict[str, Any]:
    """The sandbox's `launch_offer` template, its quick replies given PAYLOADS."""
    language: dict[str, str] = {"code": "en_US"}
    template: dict[str, Any] = {"name": "launch_offer", "language": language}
    if dialect == "onprem":
        template["namespace"] = NAMESPACE
        language["policy"] = "deterministic"
    video = {"type": "video", "video": {"link": "https://cdn.example.com/launch.mp4"}}
    template["components"] = [
        {"type": "header", "parameters": [video]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ann"}]},
        *(
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": str(index),
                "parameters": [{"type": "payload", "payload": payload}],
            }
            for index, payload in enumerate(PAYLOADS)
        ),
    ]
    return body(dialect, to, "template", template)


def send(base: str, dialect: str, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, answer, _ = call(send_url(base, dialect), message)
    return status, answer


def control(base: str, path: str, spec: Any = None) -> dict[str, Any]:
    """A /sandbox/ control request that must succeed: POST `spec`, or GET without one."""
    status, answer, _ = call(
        f"{base}/sandbox/{path}", spec, method="GET" if spec is None else "POST"
    )
    assert status == 200, answer
    return answer


def error_code(dialect: str, answer: dict[str, Any]) -> int:
    return int(answer["error"]["code"] if dialect == "cloud" else answer["errors"][0]["code"])


ACCEPTED = {"cloud": 200, "onprem": 201}
WINDOW_CODE = {"cloud": 131047, "onprem": 470}


@pytest.mark.parametrize("dialect", ["cloud", "onprem"])
def test_free_form_needs_a_customer_who_wrote_within_24_hours(
    api: tuple[str, SandboxState], dialect: str
) -> None:
    """With enforcement on (the default), and no webhook to hear an asynchronous refusal, a
    free-form message to a closed window is refused at once (400, 131047 / 470); a template
    always passes and opens nothing; the customer's own message opens the window, by its
    timestamp."""
    base, state = api

    assert send(base, dialect, launch_offer(dialect, ANN))[0] == ACCEPTED[dialect]
    status, answer = send(base, dialect, text(dialect, ANN))  # the template opened nothing
    assert (status, error_code(dialect, answer)) == (400, WINDOW_CODE[dialect])
    details = (
        answer["error"]["error_data"]["details"]
        if dialect == "cloud"
        else answer["errors"][0]["details"]
    )
    assert WINDOW_TEXT in details
    image = body(dialect, ANN, "image", {"link": "https://cdn.example.com/a.jpg"})
    assert send(base, dialect, image)[0] == 400  # media is free-form too

    injected = control(base, "inbound", {"from": ANN, "text": "hi there"})
    assert injected["delivered"] is None  # no webhook: the window moved all the same
    assert send(base, dialect, text(dialect, ANN))[0] == ACCEPTED[dialect]
    assert send(base, dialect, image)[0] == ACCEPTED[dialect]

    now = time.time()
    control(base, "inbound", {"from": BOB, "text": "old", "at": now - 30 * 3600})
    assert send(base, dialect, text(dialect, BOB))[0] == 400  # wrote 30 hours ago
    assert send(base, dialect, launch_offer(dialect, BOB))[0] == ACCEPTED[dialect]
    control(base, "inbound", {"from": BOB, "text": "recent", "at": now - 3600})
    assert send(base, dialect, text(dialect, BOB))[0] == ACCEPTED[dialect]  # 1 hour ago
    # an older message arriving late does not shorten the window
    control(base, "inbound", {"from": BOB, "text": "older", "at": now - 40 * 3600})
    assert send(base, dialect, text(dialect, BOB))[0] == ACCEPTED[dialect]

    window = control(base, "window")
    assert [(r["to"], r["type"], r["how"]) for r in window["refused"]] == [
        (ANN, "text", "sync"),
        (ANN, "image", "sync"),
        (BOB, "text", "sync"),
    ]
    opened = {w["wa_id"]: w for w in window["windows"]}
    assert opened[BOB]["last_wrote"] == int(now - 3600)
    assert opened[BOB]["open_until"] == int(now - 3600) + 24 * 3600
    assert all(w["open"] and w["number"] == PHONE_NUMBER_ID for w in opened.values())
    kinds = [m["type"] for m in state.inbox]
    assert kinds == ["template", "text", "image", "template", "text", "text"]


@pytest.mark.parametrize("dialect", ["cloud", "onprem"])
def test_enforcement_is_on_by_default_and_only_a_switch_test_turns_it_off(
    api: tuple[str, SandboxState], dialect: str
) -> None:
    """On by default, as on the real APIs, also for `flowrun sandbox` and `--sandbox` (both
    build a fresh SandboxState). {"enforce": false} exists for this test of the switch only:
    no test may use it to make a flow pass."""
    base, _ = api
    assert SandboxState().enforce_window is True
    assert control(base, "window")["enforce"] is True
    assert send(base, dialect, text(dialect, ANN))[0] == 400
    assert control(base, "window", {"enforce": False})["enforce"] is False
    assert send(base, dialect, text(dialect, ANN))[0] == ACCEPTED[dialect]
    assert control(base, "window", {"enforce": True})["enforce"] is True
    assert send(base, dialect, text(dialect, ANN))[0] == 400
    assert [r["to"] for r in control(base, "window")["refused"]] == [ANN, ANN]


@pytest.mark.parametrize("dialect", ["cloud", "onprem"])
def test_an_audience_that_wrote_opens_every_window_for_24_hours(
    api: tuple[str, SandboxState], dialect: str
) -> None:
    """{"everyone_wrote": t}: every customer counts as having written at t (what a flow's
    `settings.window: open` states), through the same window rule as a message of their own:
    open until t + 24 h, closed after; a template opens nothing; a later message of a
    customer's own moves their window further; null forgets the statement."""
    base, _ = api
    now = time.time()
    answer = control(base, "window", {"everyone_wrote": now - 3600})  # an hour ago
    assert (answer["everyone_wrote"], answer["enforce"]) == (int(now - 3600), True)
    assert send(base, dialect, text(dialect, ANN))[0] == ACCEPTED[dialect]
    assert send(base, dialect, text(dialect, "15550109999"))[0] == ACCEPTED[dialect]  # anyone

    control(base, "window", {"everyone_wrote": now - 25 * 3600})  # 25 hours ago: closed
    assert control(base, "window")["everyone_wrote"] == int(now - 25 * 3600)
    assert send(base, dialect, launch_offer(dialect, ANN))[0] == ACCEPTED[dialect]
    assert send(base, dialect, text(dialect, ANN))[0] == 400  # the template opened nothing
    control(base, "inbound", {"from": BOB, "text": "hi", "at": now - 2 * 3600})
    assert send(base, dialect, text(dialect, BOB))[0] == ACCEPTED[dialect]  # his own, later
    (bob,) = control(base, "window")["windows"]
    assert (bob["wa_id"], bob["last_wrote"], bob["open"]) == (BOB, int(now - 2 * 3600), True)

    # a customer's own message older than the audience's does not shorten the window
    control(base, "window", {"everyone_wrote": now - 3600})
    (bob,) = control(base, "window")["windows"]
    assert (bob["last_wrote"], bob["open_until"]) == (int(now - 3600), int(now - 3600) + 86400)

    assert control(base, "window", {"everyone_wrote": None})["everyone_wrote"] is None
    assert send(base, dialect, text(dialect, ANN))[0] == 400
    assert send(base, dialect, text(dialect, BOB))[0] == ACCEPTED[dialect]  # his own still counts
    refused = [(r["to"], r["type"]) for r in control(base, "window")["refused"]]
    assert refused == [(ANN, "text"), (ANN, "text")]


def test_the_audience_stays_when_the_inbox_is_cleared(api: tuple[str, SandboxState]) -> None:
    """DELETE /sandbox/inbox forgets what customers did, not what the sandbox was told about
    its audience (a setting, like enforcement)."""
    base, state = api
    control(base, "window", {"everyone_wrote": time.time() - 60})
    assert call(f"{base}/sandbox/inbox", method="DELETE")[0] == 200
    assert state.customers.everyone_wrote is not None
    assert send(base, "cloud", text("cloud", ANN))[0] == 200


@pytest.mark.parametrize("dialect", ["cloud", "onprem"])
def test_with_a_webhook_a_closed_window_fails_after_the_send(
    api: tuple[str, SandboxState], receiver: tuple[str, Receiver], dialect: str
) -> None:
    """As Meta mostly does it: the send is accepted with an id, then a signed `failed` status
    says 131047 / 470 (never `sent`: it was not). `window_errors: sync` forces the 400."""
    base, _ = api
    url, hook = receiver
    control(base, "webhook", {"url": url, "secret": SECRET, "delay": 0})

    status, answer = send(base, dialect, text(dialect, ANN))
    assert status == ACCEPTED[dialect]
    message_id = answer["messages"][0]["id"]
    wait_until(lambda: len(hook.statuses()) == 1)
    (failed,) = hook.statuses()
    assert (failed["id"], failed["status"], failed["recipient_id"]) == (message_id, "failed", ANN)
    (error,) = failed["errors"]
    assert error["code"] == WINDOW_CODE[dialect]
    if dialect == "cloud":
        assert error["title"] == "Re-engagement message"
        assert WINDOW_TEXT in error["error_data"]["details"]
        (value,) = hook.values()
        assert value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    else:
        assert WINDOW_TEXT in error["title"]
    assert control(base, "webhook") == {message_id: "failed"}
    assert control(base, "window")["refused"][0]["id"] == message_id

    control(base, "window", {"window_errors": "sync"})
    assert send(base, dialect, text(dialect, ANN))[0] == 400
    assert hook.forged == 0


def test_injected_messages_reach_the_webhook_in_the_real_shapes(
    api: tuple[str, SandboxState], receiver: tuple[str, Receiver]
) -> None:
    """Cloud: text, a template quick-reply tap (with the id of our message), a marketing
    stop (`user_preferences`, its timestamp an integer); On-Premises: the bare `messages`."""
    base, _ = api
    url, hook = receiver
    control(base, "webhook", {"url": url, "secret": SECRET})
    at = int(time.time()) - 7200

    said = control(base, "inbound", {"from": ANN, "text": "hello", "name": "Ann", "at": at})
    assert said["delivered"] is True
    tap = {"payload": "brochure", "text": "Tell me more"}
    control(base, "inbound", {"from": ANN, "button": tap, "context": "wamid.OURS"})
    control(base, "inbound", {"from": BOB, "user_preferences": "stop"})
    control(base, "inbound", {"from": BOB, "text": "hallo", "dialect": "onprem"})
    assert len(hook.got) == 4
    assert hook.forged == 0

    cloud_text = hook.got[0]
    assert set(cloud_text) == {"object", "entry"}
    (entry,) = cloud_text["entry"]
    (change,) = entry["changes"]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {
        "display_phone_number": "15550783881",
        "phone_number_id": PHONE_NUMBER_ID,
    }
    assert value["contacts"] == [{"profile": {"name": "Ann"}, "wa_id": ANN}]
    assert value["messages"] == [
        {
            "from": ANN,
            "id": said["id"],
            "timestamp": str(at),
            "type": "text",
            "text": {"body": "hello"},
        }
    ]
    assert said["id"].startswith("wamid.")

    button = hook.messages()[1]
    assert button["type"] == "button"
    assert button["button"] == tap
    assert button["context"] == {"from": "15550783881", "id": "wamid.OURS"}

    preferences = hook.values()[2]
    assert preferences["field"] == "user_preferences"
    assert "messages" not in preferences
    (preference,) = preferences["user_preferences"]
    assert preference["wa_id"] == BOB
    assert (preference["category"], preference["value"]) == ("marketing_messages", "stop")
    assert preference["detail"] == "User requested to stop marketing messages"
    assert isinstance(preference["timestamp"], int)

    onprem = hook.got[3]
    assert set(onprem) == {"contacts", "messages"}
    (message,) = onprem["messages"]
    assert (message["from"], message["type"], message["text"]) == (BOB, "text", {"body": "hallo"})
    assert onprem["contacts"][0]["wa_id"] == BOB

    opened = {w["wa_id"]: w["last_wrote"] for w in control(base, "window")["windows"]}
    assert opened[ANN] > at  # the tap came after the text, and refreshed the window
    assert opened[BOB] >= preference["timestamp"]  # the On-Premises text, not the preference
    actions = control(base, "customers")["actions"]
    assert [(a["type"], a["source"]) for a in actions] == [
        ("text", "injected"),
        ("button", "injected"),
        ("user_preferences", "injected"),
        ("text", "injected"),
    ]


def test_a_preference_change_is_no_message(api: tuple[str, SandboxState]) -> None:
    """A `user_preferences` stop or resume does not open the window: only messages do."""
    base, _ = api
    control(base, "inbound", {"from": ANN, "user_preferences": "resume"})
    assert send(base, "cloud", text("cloud", ANN))[0] == 400
    assert control(base, "window")["windows"] == []


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"text": "hi"}, "'from' must be a WhatsApp id"),
        ({"from": "+1 555", "text": "hi"}, "'from' must be a WhatsApp id"),
        ({"from": ANN, "text": "hi", "user_preferences": "stop"}, "exactly one of"),
        ({"from": ANN, "text": ""}, "text must be a non-empty string"),
        ({"from": ANN, "button": {"payload": "x", "text": "X"}}, "needs context"),
        ({"from": ANN, "button": {"payload": "x"}, "context": "w"}, "button must be"),
        ({"from": ANN, "user_preferences": "maybe"}, "'stop' or 'resume'"),
        ({"from": ANN, "user_preferences": "stop", "dialect": "onprem"}, "only on the Cloud"),
        ({"from": ANN, "text": "hi", "at": time.time() + 3600}, "not in the future"),
        ({"from": ANN, "text": "hi", "at": "yesterday"}, "at must be a number"),
        ({"from": ANN, "text": "hi", "mood": "happy"}, "unknown fields ['mood']"),
    ],
)
def test_an_inbound_no_customer_could_send_is_refused(
    api: tuple[str, SandboxState], spec: dict[str, Any], reason: str
) -> None:
    status, answer, _ = call(f"{api[0]}/sandbox/inbound", spec)
    assert status == 400
    assert reason in answer["error"]
    assert api[1].customers.actions == []


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"tap_share": 1.5}, "tap_share must be between 0 and 1"),
        ({"tap_share": 0.7, "stop_share": 0.5}, "at most 1"),
        ({"texts": []}, "texts must be a list"),
        ({"delay": -1}, "delay must be between"),
        ({"reply": 0.3}, "unknown fields ['reply']"),
    ],
)
def test_a_simulation_that_cannot_be_is_refused(
    api: tuple[str, SandboxState], spec: dict[str, Any], reason: str
) -> None:
    status, answer, _ = call(f"{api[0]}/sandbox/customers", spec)
    assert status == 400
    assert reason in answer["error"]
    assert api[1].customers.simulation is None


def test_a_window_setting_that_cannot_be_is_refused(api: tuple[str, SandboxState]) -> None:
    base, state = api
    status, answer, _ = call(f"{base}/sandbox/window", {"enforce": "yes"})
    assert (status, answer) == (400, {"error": "enforce must be true or false"})
    status, answer, _ = call(f"{base}/sandbox/window", {"window_errors": "later"})
    assert (status, answer) == (400, {"error": "window_errors must be one of auto, async, sync"})
    for wrote, reason in [
        ("yesterday", "everyone_wrote must be unix seconds or null"),
        (True, "everyone_wrote must be unix seconds or null"),
        (time.time() + 3600, "everyone_wrote must be unix seconds, not in the future"),
    ]:
        status, answer, _ = call(f"{base}/sandbox/window", {"everyone_wrote": wrote})
        assert (status, answer) == (400, {"error": reason})
    status, answer, _ = call(f"{base}/sandbox/window", {"everyone": 1})
    assert (status, answer) == (400, {"error": "unknown fields ['everyone']"})
    assert (state.enforce_window, state.window_errors) == (True, "auto")
    assert state.customers.everyone_wrote is None


@pytest.mark.parametrize("dialect", ["cloud", "onprem"])
def test_simulated_customers_tap_the_quick_replies_they_got(
    api: tuple[str, SandboxState], receiver: tuple[str, Receiver], dialect: str
) -> None:
    """tap_share 1.0: every recipient of the template taps one of its quick replies, once,
    after it was delivered: the payload our body gave that button, its label, and the id of
    our message as context. The tap opens the window: a free-form follow-up is accepted."""
    base, _ = api
    url, hook = receiver
    control(base, "webhook", {"url": url, "secret": SECRET, "delay": 0})
    control(base, "customers", {"tap_share": 1.0, "delay": 0.05, "seed": "x"})
    people = [f"1555020{i:04d}" for i in range(6)]
    sent = {}
    for person in people:
        status, answer = send(base, dialect, launch_offer(dialect, person))
        assert status == ACCEPTED[dialect]
        sent[person] = answer["messages"][0]["id"]

    wait_until(lambda: len(hook.messages()) == len(people))
    wait_until(lambda: sum(s["status"] == "read" for s in hook.statuses()) == len(people))
    taps = {m["from"]: m for m in hook.messages()}
    assert set(taps) == set(people)
    for person, tap in taps.items():
        assert tap["type"] == "button"
        assert tap["context"]["id"] == sent[person]
        index = PAYLOADS.index(tap["button"]["payload"])
        assert tap["button"]["text"] == LABELS[index]
        if dialect == "cloud":
            assert tap["id"].startswith("wamid.")
    assert {tap["button"]["payload"] for tap in taps.values()} == set(PAYLOADS)  # both, over 6
    arrived = hook.values()
    for person in people:  # nobody acts on what was not delivered
        delivered = [
            i
            for i, value in enumerate(arrived)
            for s in value.get("statuses", [])
            if s["status"] == "delivered" and s["recipient_id"] == person
        ]
        tapped = [
            i
            for i, value in enumerate(arrived)
            for m in value.get("messages", [])
            if m["from"] == person
        ]
        assert delivered[0] < tapped[0]

    for person in people:  # the taps opened their windows; a text has nothing to tap
        assert send(base, dialect, text(dialect, person))[0] == ACCEPTED[dialect]
    wait_until(lambda: sum(s["status"] == "read" for s in hook.statuses()) == 2 * len(people))
    time.sleep(0.2)  # the simulated customers' delay, and more
    assert len(hook.messages()) == len(people)
    actions = control(base, "customers")["actions"]
    assert sorted(a["from"] for a in actions) == people  # once each, recipients only
    assert all(a["source"] == "simulated" and a["delivered"] is True for a in actions)
    assert control(base, "window")["refused"] == []
    assert hook.forged == 0


def test_simulated_customers_send_stop(
    api: tuple[str, SandboxState], receiver: tuple[str, Receiver]
) -> None:
    """stop_share 1.0: every recipient writes "STOP", a plain text (no context), whatever
    they got; a message that failed is never delivered, so nobody acts on it."""
    base, _ = api
    url, hook = receiver
    control(base, "webhook", {"url": url, "secret": SECRET, "delay": 0})
    control(base, "customers", {"stop_share": 1.0, "delay": 0})
    send(base, "cloud", launch_offer("cloud", ANN))
    control(base, "window", {"everyone_wrote": time.time() - 3600})
    send(base, "cloud", text("cloud", BOB))  # everyone wrote an hour ago: free-form goes out
    control(base, "window", {"everyone_wrote": None})
    send(base, "cloud", text("cloud", "15550100003"))  # refused later: never delivered
    wait_until(lambda: len(hook.messages()) == 2)
    wait_until(lambda: any(s["status"] == "failed" for s in hook.statuses()))
    time.sleep(0.1)
    stops = sorted(hook.messages(), key=lambda m: m["from"])
    assert [(m["from"], m["type"], m["text"]) for m in stops] == [
        (ANN, "text", {"body": "STOP"}),
        (BOB, "text", {"body": "STOP"}),
    ]
    assert all("context" not in m for m in stops)


def act(seed: str, people: int = 40) -> list[tuple[str, str, str]]:
    """What simulated customers do with one template each, on a fresh sandbox (no webhook:
    a message counts as delivered at once)."""
    with running() as (base, state):
        spec = {"reply_share": 0.3, "tap_share": 0.3, "stop_share": 0.2, "delay": 0, "seed": seed}
        control(base, "customers", spec)
        for i in range(people):
            send(base, "cloud", launch_offer("cloud", f"1555030{i:04d}"))
        wait_until(lambda: not state.customers.tasks)  # every decided customer has acted
        actions = control(base, "customers")["actions"]
    return sorted((a["from"], a["type"], a.get("payload") or a["text"]) for a in actions)


def test_simulated_customers_are_reproducible() -> None:
    """The same seed and the same messages: the same customers do the same things. About
    the asked shares of them act: 30% reply, 30% tap, 20% stop, 20% do nothing."""
    first = act("x")
    assert first == act("x")
    assert first != act("y")
    kinds = [kind if text != "STOP" else "stop" for _, kind, text in first]
    assert 20 <= len(first) <= 40
    assert {"text", "button", "stop"} <= set(kinds)
    replies = {text for _, kind, text in first if kind == "text" and text != "STOP"}
    assert replies <= {"Yes please", "Hi!"}


def test_reset_forgets_customers_and_stops_those_about_to_act(
    api: tuple[str, SandboxState], receiver: tuple[str, Receiver]
) -> None:
    """DELETE /sandbox/inbox: windows, customers' actions, refusals and the simulation are
    gone, and a customer about to act does not; the enforcement switch and webhook stay."""
    base, state = api
    url, hook = receiver
    control(base, "webhook", {"url": url, "secret": SECRET, "delay": 0})
    control(base, "inbound", {"from": ANN, "text": "hi"})
    send(base, "cloud", text("cloud", BOB))  # refused (asynchronously)
    control(base, "customers", {"reply_share": 1.0, "delay": 0.3})
    send(base, "cloud", text("cloud", ANN))
    wait_until(lambda: any(s["status"] == "delivered" for s in hook.statuses()))
    assert call(f"{base}/sandbox/inbox", method="DELETE")[0] == 200
    time.sleep(0.5)
    assert len(hook.messages()) == 1  # the injected one; the reply never came
    assert control(base, "customers") == {"simulation": None, "actions": []}
    window = control(base, "window")
    assert (window["windows"], window["refused"], window["enforce"]) == ([], [], True)
    status, answer = send(base, "cloud", text("cloud", ANN))  # the window was forgotten too
    assert status == 200
    wait_until(lambda: any(s["id"] == answer["messages"][0]["id"] for s in hook.statuses()))
    assert hook.statuses()[-1]["status"] == "failed"
    assert not state.customers.tasks


@pytest.mark.parametrize("kind", ["cloud", "onprem"])
def test_a_sandbox_run_has_the_audience_its_flow_states(
    folder: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """`flowrun FLOW --sandbox` starts its sandbox enforcing the window; a flow that states
    every recipient wrote in the last 24 hours (`settings.window: open`) gets that audience
    (they wrote an hour ago), so its free-form steps go out; a flow that states nothing
    (`window: check`) gets customers who never wrote: no free-form message is sent."""
    states: list[SandboxState] = []
    state_for = sandbox.state_for

    def keep(flow: Any) -> SandboxState:
        states.append(state_for(flow))
        return states[-1]

    monkeypatch.setattr(sandbox, "state_for", keep)
    write_flow(folder, "https://wa.example.com", "  - text: {body: hi}\n", people=3, kind=kind)
    code, out, err = flowrun("flow.yaml", "--sandbox")
    assert (code, err) == (0, "")
    assert "sent 3, failed 0" in out
    wrote = states[-1].customers.everyone_wrote
    assert wrote is not None
    assert 3500 <= time.time() - wrote <= 3700
    assert (states[-1].enforce_window, states[-1].refused) == (True, [])

    write_flow(folder, "https://wa.example.com", "  - text: {body: hi}\n", people=3, kind=kind)
    flow = folder / "flow.yaml"
    flow.write_text(flow.read_text("utf-8").replace("window: open", "window: check"), "utf-8")
    (folder / "flow.sandbox.ledger.sqlite").unlink()
    _code, out, _err = flowrun("flow.yaml", "--sandbox")
    assert "sent 0," in out
    assert states[-1].customers.everyone_wrote is None
    assert states[-1].inbox == []  # nothing free-form reached a customer who never wrote
