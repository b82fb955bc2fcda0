"""The sandbox's customers: when each last wrote (the 24-hour customer service window), and
customers who write on request, as signed webhooks of the real shapes.

- The window (docs/whatsapp-api.md#customer-service-window): per business number and customer,
  opened or refreshed only by a message *from the customer*, until its timestamp + 24 h. A
  template the business sends never opens it. The server asks `window_open` before it takes
  a free-form message (server.py `_window_closed`, when enforcement is on: the default).
- A whole audience that wrote (POST /sandbox/window {"everyone_wrote": <unix seconds>}): every
  customer counts as having written at that time, so the window is open until then + 24 h,
  unless a later message of the customer's own moves it further. It is what a flow's
  `settings.window: open` states ("every recipient wrote in the last 24 hours"), simulated;
  it goes through `window_open` like any message, and templates still open nothing.
- Simulated customers (POST /sandbox/customers): once a message of ours is delivered, a share
  of its recipients act after `delay` seconds: STOP, a tap on one of the template's quick
  replies (the payload our body gave it, `context.id` = our message), or a text reply. Who
  does what is decided from the seed, our message id and the customer, like the status
  outcomes (webhooks.py), so a run can be repeated; each customer acts at most once per
  message.
- Injected messages (POST /sandbox/inbound): one given customer message now, or one that says
  it was written at `at` (unix seconds); it moves the window as a real one would, by its own
  timestamp, and goes to the webhook if one is configured.

Shapes and their sources: docs/whatsapp-api.md#incoming-message-shapes and
#user-preferences-webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from runner import clock

from .checks import quick_replies
from .webhooks import DISPLAY_PHONE_NUMBER, Webhook, envelope

WINDOW = 24 * 3600  # seconds a customer's message keeps the window open
STOP = "STOP"
PREFERENCE_DETAILS = {
    "stop": "User requested to stop marketing messages",
    "resume": "User requested to resume marketing messages",
}
DIALECTS = ("cloud", "onprem")


class Refused(ValueError):
    """A control request the sandbox cannot act on: its one-line reason, answered 400."""


@dataclass(frozen=True)
class Simulation:
    """What simulated customers do with a delivered message (shares of its recipients)."""

    reply_share: float = 0.0
    tap_share: float = 0.0  # of recipients of a template with quick replies
    stop_share: float = 0.0
    delay: float = 0.2  # seconds after `delivered`
    texts: tuple[str, ...] = ("Yes please", "Hi!")
    seed: str = "flowrun"

    @classmethod
    def parse(cls, spec: Any) -> Simulation:
        if not isinstance(spec, dict):
            raise Refused("the body must be a JSON object")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise Refused(f"unknown fields {sorted(unknown)}")
        shares = {name: _number(spec, name, 0.0) for name in _SHARES}
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise Refused(f"{name} must be between 0 and 1, not {share:g}")
        if sum(shares.values()) > 1:
            raise Refused("reply_share + tap_share + stop_share must be at most 1")
        delay = _number(spec, "delay", 0.2)
        if not 0 <= delay <= 3600:
            raise Refused("delay must be between 0 and 3600 seconds")
        texts = spec.get("texts", list(cls.texts))
        if not isinstance(texts, list) or not texts or not all(_text(t) for t in texts):
            raise Refused("texts must be a list of non-empty strings")
        return cls(**shares, delay=delay, texts=tuple(texts), seed=str(spec.get("seed", "flowrun")))


_SHARES = ("reply_share", "tap_share", "stop_share")
_INBOUND_FIELDS = ("from", "text", "button", "user_preferences", "context", "at", "name", "dialect")


@dataclass(frozen=True)
class Inbound:
    """One message (or preference change) from a customer to the business number."""

    wa_id: str
    kind: str  # text | button | user_preferences
    timestamp: int
    text: str | None = None  # text: the body; button: the label tapped
    payload: str | None = None  # button: the quick reply's payload
    context: str | None = None  # the id of our message it answers
    preference: str | None = None  # user_preferences: stop | resume
    name: str | None = None  # the customer's profile name

    @classmethod
    def parse(cls, spec: Any, now: float) -> tuple[Inbound, str]:
        """POST /sandbox/inbound's body: the message and the dialect of its webhook."""
        if not isinstance(spec, dict):
            raise Refused("the body must be a JSON object")
        unknown = set(spec) - set(_INBOUND_FIELDS)
        if unknown:
            raise Refused(f"unknown fields {sorted(unknown)}")
        wa_id = spec.get("from")
        if not isinstance(wa_id, str) or not wa_id.isdigit() or not 7 <= len(wa_id) <= 15:
            raise Refused(f"'from' must be a WhatsApp id (7 to 15 digits), not {wa_id!r}")
        dialect = spec.get("dialect", "cloud")
        if dialect not in DIALECTS:
            raise Refused(f"dialect must be 'cloud' or 'onprem', not {dialect!r}")
        kinds = [kind for kind in ("text", "button", "user_preferences") if kind in spec]
        if len(kinds) != 1:
            raise Refused("give exactly one of text, button and user_preferences")
        at = _number(spec, "at", now)
        if not 0 <= at <= now + 60:  # a minute for clocks that disagree
            raise Refused("'at' must be unix seconds, not in the future")
        name = spec.get("name")
        if name is not None and not _text(name):
            raise Refused("name must be a non-empty string")
        common = {"wa_id": wa_id, "timestamp": int(at), "name": name}
        return cls._of_kind(kinds[0], spec, dialect, common), dialect

    @classmethod
    def _of_kind(cls, kind: str, spec: dict[str, Any], dialect: str, common: Any) -> Inbound:
        context = spec.get("context")
        if context is not None and not _text(context):
            raise Refused("context must be the id of our message it answers")
        if kind == "text":
            if not _text(spec["text"]):
                raise Refused("text must be a non-empty string")
            return cls(kind="text", text=spec["text"], context=context, **common)
        if kind == "button":
            button = spec["button"]
            if not isinstance(button, dict) or not all(
                _text(button.get(key)) for key in ("payload", "text")
            ):
                raise Refused('button must be {"payload": ..., "text": ...}')
            if context is None:
                raise Refused("a button tap needs context: the id of the template tapped")
            return cls(
                kind="button",
                text=button["text"],
                payload=button["payload"],
                context=context,
                **common,
            )
        if dialect != "cloud":
            raise Refused("user_preferences webhooks exist only on the Cloud API")
        if spec["user_preferences"] not in PREFERENCE_DETAILS or context is not None:
            raise Refused("user_preferences must be 'stop' or 'resume' (and takes no context)")
        return cls(kind="user_preferences", preference=spec["user_preferences"], **common)

    @property
    def is_message(self) -> bool:
        """A message opens the window; a preference change is no message."""
        return self.kind != "user_preferences"


def _number(spec: dict[str, Any], name: str, default: float) -> float:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused(f"{name} must be a number")
    return float(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


@dataclass
class Customers:
    """The sandbox's customers: who wrote when, what the simulated ones do, what all did."""

    # (business number, wa id) -> the timestamp of the customer's last message
    wrote_at: dict[tuple[str, str], int] = field(default_factory=dict)
    # every customer wrote at this time (unix seconds), if the audience is declared so
    everyone_wrote: int | None = None
    simulation: Simulation | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)  # what customers did, in order
    acted: set[tuple[str, str]] = field(default_factory=set)  # (our message id, wa id)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    ids: Iterator[int] = field(default_factory=itertools.count)
    webhook: Callable[[], Webhook | None] = lambda: None  # where their messages go, if anywhere

    def window_open(self, number: str, wa_id: str, now: float) -> bool:
        """Whether a free-form message from `number` may reach `wa_id` at `now`: the one
        place that decides it (docs/whatsapp-api.md#customer-service-window)."""
        last = self.last_wrote(number, wa_id)
        return last is not None and now < last + WINDOW

    def last_wrote(self, number: str, wa_id: str) -> int | None:
        """When the customer last wrote: their own latest message, or the time the whole
        audience is declared to have written (`everyone_wrote`), whichever is later."""
        known = [
            t for t in (self.wrote_at.get((number, wa_id)), self.everyone_wrote) if t is not None
        ]
        return max(known, default=None)

    def windows(self, now: float) -> list[dict[str, Any]]:
        """Each customer who wrote a message of their own (their window counts
        `everyone_wrote` too); GET /sandbox/window shows `everyone_wrote` beside."""
        found = []
        for number, wa_id in sorted(self.wrote_at):
            last = self.last_wrote(number, wa_id)
            assert last is not None
            found.append(
                {
                    "number": number,
                    "wa_id": wa_id,
                    "last_wrote": last,
                    "open_until": last + WINDOW,
                    "open": self.window_open(number, wa_id, now),
                }
            )
        return found

    async def inject(self, inbound: Inbound, number: str, dialect: str) -> dict[str, Any]:
        """One given customer message, now: the window moves, the webhook hears it."""
        return await self._write(inbound, number, dialect, "injected")

    def delivered(self, message_id: str, number: str, body: dict[str, Any], dialect: str) -> None:
        """A message of ours reached its recipient: a simulated customer may act on it."""
        simulation = self.simulation
        key = (message_id, body["to"])
        if simulation is None or key in self.acted:
            return
        inbound = self._decide(simulation, message_id, body)
        if inbound is None:
            return
        self.acted.add(key)
        task = asyncio.ensure_future(self._act(simulation.delay, inbound, number, dialect))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reset(self) -> None:
        """Forget every customer, and stop those about to act. `everyone_wrote` stays: it is
        a setting of the sandbox (like enforcement), not something a customer did."""
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.wrote_at.clear()
        self.simulation = None
        self.actions.clear()
        self.acted.clear()

    @staticmethod
    def _decide(simulation: Simulation, message_id: str, body: dict[str, Any]) -> Inbound | None:
        """STOP, a tap or a reply, or nothing: the same for the same seed, message and
        customer. The shares are consecutive bands of one draw, so they never overlap."""
        wa_id = body["to"]
        digest = hashlib.sha256(f"{simulation.seed}:{message_id}:{wa_id}".encode()).digest()
        draw = int.from_bytes(digest[:4], "big") / 2**32
        if draw < simulation.stop_share:
            return Inbound(wa_id, "text", 0, text=STOP)
        draw -= simulation.stop_share
        if draw < simulation.tap_share:
            buttons = quick_replies(body)
            if not buttons:  # nothing to tap: this customer does nothing
                return None
            payload, label = buttons[digest[4] % len(buttons)]
            return Inbound(wa_id, "button", 0, text=label, payload=payload, context=message_id)
        draw -= simulation.tap_share
        if draw < simulation.reply_share:
            return Inbound(
                wa_id, "text", 0, text=simulation.texts[digest[5] % len(simulation.texts)]
            )
        return None

    async def _act(self, delay: float, inbound: Inbound, number: str, dialect: str) -> None:
        await asyncio.sleep(delay)
        now = Inbound(**{**asdict(inbound), "timestamp": int(clock.now().timestamp())})
        await self._write(now, number, dialect, "simulated")

    async def _write(
        self, inbound: Inbound, number: str, dialect: str, source: str
    ) -> dict[str, Any]:
        if inbound.is_message:
            key = (number, inbound.wa_id)
            self.wrote_at[key] = max(inbound.timestamp, self.wrote_at.get(key, 0))
        message_id = self._message_id(dialect)
        action = {
            "id": message_id,
            "from": inbound.wa_id,
            "type": inbound.kind,
            "timestamp": inbound.timestamp,
            **{
                key: value
                for key in ("text", "payload", "context", "preference")
                if (value := getattr(inbound, key)) is not None
            },
            "source": source,
            "dialect": dialect,
            "number": number,
            "delivered": None,  # whether the webhook answered 200 (None: no webhook)
        }
        self.actions.append(action)
        webhook = self.webhook()
        if webhook is not None:
            payload = envelope(dialect, number, *_value(inbound, message_id))
            action["delivered"] = await webhook.post(payload)
        return action

    def _message_id(self, dialect: str) -> str:
        number = next(self.ids)
        if dialect == "cloud":
            return "wamid." + base64.b64encode(f"SANDBOXIN{number:010d}".encode()).decode()
        return f"ABGG{number:012d}"


def _value(inbound: Inbound, message_id: str) -> tuple[dict[str, Any], str]:
    """The webhook value and field for a customer's message or preference change
    (docs/whatsapp-api.md#incoming-message-shapes, #user-preferences-webhooks)."""
    profile = inbound.name or f"Customer {inbound.wa_id[-4:]}"
    contacts = [{"profile": {"name": profile}, "wa_id": inbound.wa_id}]
    if inbound.kind == "user_preferences":
        preference = {
            "wa_id": inbound.wa_id,
            "detail": PREFERENCE_DETAILS[str(inbound.preference)],
            "category": "marketing_messages",
            "value": inbound.preference,
            "timestamp": inbound.timestamp,  # an integer here, unlike a message's
        }
        return {"contacts": contacts, "user_preferences": [preference]}, "user_preferences"
    message: dict[str, Any] = {
        "from": inbound.wa_id,
        "id": message_id,
        "timestamp": str(inbound.timestamp),
        "type": inbound.kind,
    }
    if inbound.context is not None:
        message["context"] = {"from": DISPLAY_PHONE_NUMBER, "id": inbound.context}
    if inbound.kind == "button":
        message["button"] = {"payload": inbound.payload, "text": inbound.text}
    else:
        message["text"] = {"body": inbound.text}
    return {"contacts": contacts, "messages": [message]}, "messages"
