"""`flowrun listen`: the webhook receiver that turns "accepted" into delivered, read or failed.

Point the WhatsApp webhook (Cloud: the app's Webhooks settings; On-Premises:
/v1/settings/application `webhooks.url`) at it, through whatever exposes it to the internet.
It takes status callbacks of both dialects on any path, checks Cloud signatures
(`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the app secret from WA_APP_SECRET)
and answers Meta's verification handshake (WA_VERIFY_TOKEN).

A callback is answered 200 only once its statuses are durable in the ledger (a group commit
for everything received meanwhile, a few milliseconds): a receiver that died after saying 200
would lose what Meta will not send again. A callback with a bad or missing signature is refused
(401) and counted, never recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from runner.ledger import Batcher, Status, open_for_writing
from runner.threadserver import serving

from . import callbacks


@dataclass
class Counts:
    callbacks: int = 0
    statuses: int = 0
    refused: int = 0  # bad or missing signature
    unreadable: int = 0  # not JSON


@dataclass
class Receiver:
    ledger: Path
    secret: str | None = field(default=None, repr=False)
    verify_token: str | None = field(default=None, repr=False)
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self._ledger = open_for_writing(str(self.ledger))
        self._batches: Batcher[Status] = Batcher(self._commit)

    async def _commit(self, batch: list[Status]) -> None:
        # In a thread: the commit's fsync must not stop the loop from taking callbacks
        await asyncio.to_thread(self._ledger.record_statuses, batch)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get("/{path:.*}", self._handshake)
        app.router.add_post("/{path:.*}", self._callback)
        return app

    async def _handshake(self, request: web.Request) -> web.Response:
        """Meta's GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=.. when the
        webhook is set up: echo the challenge if the token is ours."""
        query = request.query
        token = query.get("hub.verify_token", "")
        expected = self.verify_token
        if query.get("hub.mode") == "subscribe" and expected and _same(token, expected):
            return web.Response(text=query.get("hub.challenge", ""))
        return web.Response(status=403, text="verification failed")

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.counts.callbacks += 1
        if self.secret is not None and not callbacks.signature_ok(
            self.secret, body, request.headers.get("X-Hub-Signature-256")
        ):
            self.counts.refused += 1
            return web.Response(status=401, text="bad signature")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.counts.unreadable += 1
            return web.Response(status=400, text="not JSON")
        found = callbacks.parse(payload)
        if found:
            # answered once durable; a failed commit is a 500, and Meta sends it again
            await self._batches.write(*found)
        self.counts.statuses += len(found)
        return web.Response(text="ok")

    def close(self) -> None:
        self._ledger.close()


def _same(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), expected.encode())


def running(receiver: Receiver, host: str = "127.0.0.1", port: int = 0) -> Any:
    """The receiver in a thread of its own: a context giving its base URL (tests)."""
    return serving(receiver.app(), host, port)


def serve(receiver: Receiver, host: str, port: int) -> None:
    """`flowrun listen`: serve until interrupted."""
    web.run_app(receiver.app(), host=host, port=port, print=None, access_log=None)
