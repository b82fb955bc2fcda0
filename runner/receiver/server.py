"""`flowrun listen`: the webhook receiver that turns "accepted" into delivered, read or failed.

Point the WhatsApp webhook (Cloud: the app's Webhooks settings; On-Premises:
/v1/settings/application `webhooks.url`) at it, through whatever exposes it to the internet.
It takes status callbacks of both dialects on any path, checks Cloud signatures
(`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the app secret from WA_APP_SECRET)
and answers Meta's verification handshake (WA_VERIFY_TOKEN).

A callback is answered 200 only once its statuses are durable in the ledger (a group commit
for everything received meanwhile, a few milliseconds): a receiver that died after saying 200
would lose what Meta will not send again. A callback with a bad or missing signature is refused
(401) and counted, never recorded; one with values that cannot be right (callbacks.Invalid) is
refused on its own (400) before the shared commit, which it would otherwise fail for everyone.

It faces the internet, so its memory, time and connections are bounded (guard.py says how and
why); what can be refused before a body is read is refused first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from runner.errors import FlowrunError
from runner.ledger import Batcher, Inbound, Preference, Status, open_for_writing, shown

from . import callbacks
from .callbacks import Heard
from .guard import BACKLOG, GuardedServer, Limits, raise_open_files_limit

SHUTDOWN_WITHIN = 10.0  # seconds for callbacks being answered to finish when it stops


@dataclass
class Counts:
    callbacks: int = 0
    statuses: int = 0
    messages: int = 0  # from customers
    preferences: int = 0  # customers' marketing stops and resumes
    refused: int = 0  # bad or missing signature
    unreadable: int = 0  # not JSON
    invalid: int = 0  # values out of range (callbacks.Invalid)
    too_large: int = 0  # over Limits.large_body (413)
    busy: int = 0  # large, while Limits.large_at_once others were read (503)
    cut_short: int = 0  # the sender hung up before its body was in
    too_slow: int = 0  # closed: no whole request within Limits.receive_within
    for_room: int = 0  # closed to make room for a new connection
    malformed: int = 0  # not HTTP, or a body whose encoding is broken (400)

    def tally(self, heard: list[Heard]) -> None:
        for item in heard:
            if isinstance(item, Status):
                self.statuses += 1
            elif isinstance(item, Inbound):
                self.messages += 1
            elif isinstance(item, Preference):
                self.preferences += 1

    def summary(self) -> str:
        """The receiver's last line."""
        line = (
            f"received {self.callbacks:,} callbacks, {self.statuses:,} statuses,"
            f" {self.messages:,} customer messages, {self.preferences:,} preferences;"
            f" refused {self.refused:,} (signature), {self.unreadable:,} (not JSON),"
            f" {self.invalid:,} (invalid values)"
        )
        others = [
            (self.too_large, "too large"),
            (self.busy, "busy"),
            (self.cut_short, "cut short"),
            (self.too_slow, "too slow"),
            (self.for_room, "closed for room"),
            (self.malformed, "malformed"),
        ]
        shown = [f"{count:,} {what}" for count, what in others if count]
        return line + ("; " + ", ".join(shown) if shown else "")


class _Refused(Exception):
    """A callback answered without being read (whole): its status and its word."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


@dataclass
class Receiver:
    ledger: Path | str  # a file, or a postgresql:// URL (shown without its password)
    secret: str | None = field(default=None, repr=False)
    verify_token: str | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=Limits)
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self._ledger = open_for_writing(str(self.ledger))
        self._batches: Batcher[Heard] = Batcher(self._commit)
        self._large_free = self.limits.large_at_once
        self._guard: GuardedServer | None = None

    async def _commit(self, batch: list[Heard]) -> None:
        # In a thread: the commit's fsync must not stop the loop from taking callbacks
        await asyncio.to_thread(self._ledger.record_webhooks, batch)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        guard = self._guard
        assert guard is not None
        guard.reading(request.protocol)
        cut_short = False
        try:
            if request.method == "POST":
                return await self._callback(request, guard)
            guard.received(request.protocol)
            if request.method in ("GET", "HEAD"):
                return self._handshake(request)
            return web.Response(status=405, text="POST callbacks, GET the handshake")
        except _Refused as refused:
            return web.Response(status=refused.status, text=refused.text)
        except (ConnectionError, asyncio.IncompleteReadError):
            cut_short = True  # the sender hung up, or the guard closed it (counted there)
            return web.Response(status=400, text="cut short")  # nobody is there to read it
        finally:
            closed_by_guard = guard.answered(request.protocol)
            if cut_short and not closed_by_guard:
                self.counts.cut_short += 1

    def _handshake(self, request: web.BaseRequest) -> web.Response:
        """Meta's GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=.. when the
        webhook is set up: echo the challenge if the token is ours."""
        query = request.query
        token = query.get("hub.verify_token", "")
        expected = self.verify_token
        if query.get("hub.mode") == "subscribe" and expected and _same(token, expected):
            return web.Response(text=query.get("hub.challenge", ""))
        return web.Response(status=403, text="verification failed")

    async def _callback(self, request: web.BaseRequest, guard: GuardedServer) -> web.Response:
        self.counts.callbacks += 1
        signature = request.headers.get("X-Hub-Signature-256")
        if self.secret is not None and not callbacks.looks_signed(signature):
            self.counts.refused += 1
            raise _Refused(401, "bad signature")  # before a byte of the body is read
        body = await self._read(request)
        guard.received(request.protocol)
        if self.secret is not None and not callbacks.signature_ok(self.secret, body, signature):
            self.counts.refused += 1
            return web.Response(status=401, text="bad signature")
        try:
            found = callbacks.parse(orjson.loads(body))
        except orjson.JSONDecodeError:
            self.counts.unreadable += 1
            return web.Response(status=400, text="not JSON")
        except callbacks.Invalid as exc:
            self.counts.invalid += 1
            return web.Response(status=400, text=str(exc))
        if found:
            # answered once durable; a failed commit is a 500, and Meta sends it again
            await self._batches.write(*found)
        self.counts.tally(found)
        return web.Response(text="ok")

    async def _read(self, request: web.BaseRequest) -> bytes:
        """The body, never more than the limits allow in memory (guard.py): a length over
        them is refused before reading, a body without one as soon as it grows past them."""
        limits = self.limits
        length = request.content_length
        if length is not None and length > limits.large_body:
            self.counts.too_large += 1
            raise _Refused(413, f"over {limits.large_body:,} bytes")
        large = False
        if length is not None and length > limits.body:
            large = self._take_large()
        if request.headers.get("Expect", "").lower() == "100-continue":
            # the sender waits for this before its body (as aiohttp's router would answer)
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        body = bytearray()
        try:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limits.body and not large:
                    large = self._take_large()
                if len(body) > limits.large_body:
                    self.counts.too_large += 1
                    raise _Refused(413, f"over {limits.large_body:,} bytes")
        except (RequestPayloadError, HttpProcessingError):
            self.counts.malformed += 1  # a broken chunked encoding, say
            raise _Refused(400, "malformed body") from None
        finally:
            if large:
                self._large_free += 1
        return bytes(body)

    def _take_large(self) -> bool:
        """One of the few places for a body over Limits.body, or 503 (Meta retries)."""
        if self._large_free <= 0:
            self.counts.busy += 1
            raise _Refused(503, "busy: send it again later")
        self._large_free -= 1
        return True

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listening on host:port (its errors: OSError)."""
        loop = asyncio.get_running_loop()
        self._guard = GuardedServer(self._handle, self.limits, self.counts)
        return await loop.create_server(self._guard, host, port, backlog=BACKLOG)

    async def stop(self, server: asyncio.Server) -> None:
        """Stop taking connections, let callbacks being answered finish, close the rest."""
        server.close()
        if self._guard is not None:
            await self._guard.shutdown(SHUTDOWN_WITHIN)
        await server.wait_closed()
        await self._batches.close()

    def banner(self, host: str, port: int) -> str:
        """What it says once it listens."""
        checked = (
            "signatures checked" if self.secret else "signatures NOT checked: set WA_APP_SECRET"
        )
        return (
            f"listening on http://{host}:{port} for status webhooks ({checked});"
            f" ledger: {shown(str(self.ledger))}"
        )

    def close(self) -> None:
        self._ledger.close()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@contextlib.contextmanager
def running(receiver: Receiver, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The receiver in a thread of its own: a context giving its base URL (tests)."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(receiver.start(host, port))
    bound = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="flowrun-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{bound}"
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(server), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def serve(
    receiver: Receiver,
    host: str,
    port: int,
    ready: Callable[[], None],
    lifeline: IO[bytes] | None = None,
) -> None:
    """`flowrun listen`: serve until SIGINT or SIGTERM or, with a `lifeline`, until that pipe
    from the process that started this one closes (it ended, however it ended). `ready` is
    called once the port is taken; a port that cannot be taken is one FlowrunError."""
    raise_open_files_limit()
    asyncio.run(_serve(receiver, host, port, ready, lifeline))


async def _serve(
    receiver: Receiver,
    host: str,
    port: int,
    ready: Callable[[], None],
    lifeline: IO[bytes] | None,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        server = await receiver.start(host, port)
    except OSError as exc:  # asyncio's own text repeats the address: the system's says it
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise FlowrunError(f"cannot listen on {host}:{port}: {reason}") from None
    stopping = loop.create_future()

    def stop() -> None:
        if not stopping.done():
            stopping.set_result(None)

    if lifeline is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_reader(lifeline.fileno(), lambda: _on_lifeline(lifeline, stop))
    ready()
    try:
        await stopping
    finally:
        if lifeline is not None:
            loop.remove_reader(lifeline.fileno())
        await receiver.stop(server)


def _on_lifeline(lifeline: IO[bytes], stop: Callable[[], None]) -> None:
    """Nothing is ever written to it: readable means closed (end of file), or junk to drop."""
    try:
        data = os.read(lifeline.fileno(), 4096)
    except OSError:
        data = b""
    if not data:
        stop()
