"""The sandbox's webhook callbacks: what a real API tells a webhook after accepting a message,
and what it tells it when a customer writes.

For each accepted message the sandbox decides (reproducibly, from its seed and the message id)
whether it is delivered and read, or fails with a real error code, and after `delay` seconds
POSTs `sent` then `delivered` and `read` (or `failed`) to the configured URL, in the dialect's
shape, signed like the Cloud API (`X-Hub-Signature-256`). A free-form message the sandbox
accepted outside the customer service window only fails (131047 / 470), as Meta reports it
after a 200 (docs/whatsapp-api.md#customer-service-window). Callbacks that are not answered
200 are tried again, as Meta does. Configured with POST /sandbox/webhook.

Customers' messages (customers.py) go out through the same `Webhook.post`, in the shapes of
docs/whatsapp-api.md#incoming-message-shapes, wrapped by `envelope` like the statuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runner import clock
from runner.receiver.callbacks import sign

from .checks import WINDOW_DETAILS

# The sandbox's one business number as webhooks name it: Meta's example WhatsApp Business
# Account and display number, which go with the example phone number id the sandbox serves
# (docs/whatsapp-api.md#incoming-message-shapes).
WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"

# Real reasons a message fails after it was accepted (Cloud code, On-Premises code, title).
# The last is the customer service window's, decided by the window itself (server.py), never
# at random: a random "re-engagement" to a customer who just wrote would contradict it.
FAILURES = (
    (131026, 1026, "Message undeliverable"),
    (131053, 1006, "Media upload error"),
    (131047, 470, "Re-engagement message"),
)
WINDOW_FAILURE = len(FAILURES) - 1


@dataclass
class Webhook:
    url: str
    secret: str | None = field(default=None, repr=False)
    delay: float = 0.05
    fail_share: float = 0.0  # part of the messages that fail after being accepted
    seed: str = "flowrun"
    decided: dict[str, str] = field(default_factory=dict)  # message id -> final status
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def outcome(self, message_id: str) -> tuple[str, int | None]:
        """("read", None), or ("failed", index into FAILURES): the same for the same id."""
        digest = hashlib.sha256(f"{self.seed}:{message_id}".encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 < self.fail_share:
            return "failed", digest[4] % WINDOW_FAILURE
        return "read", None

    def accepted(
        self,
        message_id: str,
        to: str,
        dialect: str,
        number: str,
        *,
        window_closed: bool = False,
        on_delivered: Callable[[], None] | None = None,
    ) -> None:
        """Tell the webhook what became of an accepted message; `on_delivered` runs once its
        `delivered` status was told (a customer can act on it from then on)."""
        final, failure = ("failed", WINDOW_FAILURE) if window_closed else self.outcome(message_id)
        self.decided[message_id] = final
        told = Told(message_id, to, dialect, number, failure, window_closed, on_delivered)
        self.spawn(self._tell(told))

    def spawn(self, work: Any) -> None:
        """Run `work` in the background, kept until done (a dropped task may be collected)."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _tell(self, told: Told) -> None:
        await asyncio.sleep(self.delay)
        if told.window_closed:  # never sent, so never `sent`: it only fails
            steps = ["failed"]
        elif told.failure is not None:
            steps = ["sent", "failed"]
        else:
            steps = ["sent", "delivered", "read"]
        async with aiohttp.ClientSession() as session:
            for step in steps:
                await self._post(session, envelope(told.dialect, told.number, _status(told, step)))
                if step == "delivered" and told.on_delivered is not None:
                    told.on_delivered()

    async def post(self, payload: dict[str, Any]) -> bool:
        """POST one callback, signed, tried again as Meta does: whether it was answered 200."""
        async with aiohttp.ClientSession() as session:
            return await self._post(session, payload)

    async def _post(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Hub-Signature-256"] = sign(self.secret, body)
        for attempt in range(6):
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1 * 2**attempt)
        return False


@dataclass(frozen=True)
class Told:
    """One accepted message whose statuses are being told."""

    message_id: str
    to: str
    dialect: str
    number: str
    failure: int | None
    window_closed: bool
    on_delivered: Callable[[], None] | None


def _status(told: Told, step: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": told.message_id,
        "status": step,
        "timestamp": str(int(clock.now().timestamp())),
        "recipient_id": told.to,
    }
    if step == "failed" and told.failure is not None:
        cloud_code, onprem_code, title = FAILURES[told.failure]
        if told.dialect == "cloud":
            error: dict[str, Any] = {"code": cloud_code, "title": title}
            if told.window_closed:
                error.update(message=title, error_data={"details": WINDOW_DETAILS})
        else:  # On-Premises: the sentence is the title (docs/whatsapp-api.md#on-premises-errors)
            error = {"code": onprem_code, "title": WINDOW_DETAILS if told.window_closed else title}
        item["errors"] = [error]
    return {"statuses": [item]}


def envelope(
    dialect: str, number: str, value: dict[str, Any], field_name: str = "messages"
) -> dict[str, Any]:
    """A callback's body: On-Premises sends `value` as it is; Cloud wraps it in
    `entry[].changes[]` with the business number's metadata and the webhook field
    (`messages` for statuses and customers' messages, `user_preferences`)."""
    if dialect != "cloud":
        return value
    metadata = {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": number}
    change = {
        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
        "field": field_name,
    }
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [change]}]}
