"""The sandbox's status callbacks: what a real API tells a webhook after accepting a message.

For each accepted message the sandbox decides (reproducibly, from its seed and the message id)
whether it is delivered and read, or fails with a real error code, and after `delay` seconds
POSTs `sent` then `delivered` and `read` (or `failed`) to the configured URL, in the dialect's
shape, signed like the Cloud API (`X-Hub-Signature-256`). Callbacks that are not answered 200
are tried again, as Meta does. Configured with POST /sandbox/webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runner.receiver.callbacks import sign

# Real reasons a message fails after it was accepted (Cloud code, On-Premises code, title).
FAILURES = (
    (131026, 1026, "Message undeliverable"),
    (131053, 1006, "Media upload error"),
    (131047, 470, "Re-engagement message"),
)


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
            return "failed", digest[4] % len(FAILURES)
        return "read", None

    def accepted(self, message_id: str, to: str, dialect: str) -> None:
        final, failure = self.outcome(message_id)
        self.decided[message_id] = final
        task = asyncio.ensure_future(self._tell(message_id, to, dialect, final, failure))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _tell(
        self, message_id: str, to: str, dialect: str, final: str, failure: int | None
    ) -> None:
        await asyncio.sleep(self.delay)
        steps = ["sent", "failed"] if final == "failed" else ["sent", "delivered", "read"]
        async with aiohttp.ClientSession() as session:
            for step in steps:
                item: dict[str, Any] = {
                    "id": message_id,
                    "status": step,
                    "timestamp": str(int(time.time())),
                    "recipient_id": to,
                }
                if step == "failed" and failure is not None:
                    cloud_code, onprem_code, title = FAILURES[failure]
                    code = cloud_code if dialect == "cloud" else onprem_code
                    item["errors"] = [{"code": code, "title": title}]
                await self._post(session, _payload(dialect, item))

    async def _post(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Hub-Signature-256"] = sign(self.secret, body)
        for attempt in range(6):
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1 * 2**attempt)


def _payload(dialect: str, item: dict[str, Any]) -> dict[str, Any]:
    if dialect != "cloud":
        return {"statuses": [item]}
    value = {"messaging_product": "whatsapp", "statuses": [item]}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "sandbox", "changes": [{"field": "messages", "value": value}]}],
    }
