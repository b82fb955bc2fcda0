"""The receiver's bounds: what keeps it answering real callbacks, in little memory, while
anyone on the internet holds connections open against it.

A status callback is about 1–2 KB and done in milliseconds
(docs/whatsapp-api.md#status-webhooks); an attacker's connection is slow, large or many. So:
- **Body.** Up to `Limits.body` (64 KB, ~30 times the largest status callback) is read on any
  connection. Meta documents webhook payloads "up to 3MB"
  (https://developers.facebook.com/docs/whatsapp/cloud-api/guides/set-up-webhooks), so a
  larger one is not refused outright: up to `Limits.large_body` (3 MB) is read on at most
  `Limits.large_at_once` connections at once; a further one is answered 503 before it is read,
  and Meta sends it again later (it retries for days: docs/whatsapp-api.md#webhook-delivery).
  Beyond 3 MB: 413. What can be checked before reading is checked first (server.py).
- **Time.** A connection must deliver a whole request (headers and body) within
  `Limits.receive_within` seconds (10) of opening or of its last answer; otherwise it is closed.
  That also ends idle keep-alive connections after 10 s (a sender reconnects).
- **Connections.** At most 1,000, and below the open-files limit (raised to its hard limit at
  start where allowed) with room for the ledger's files and the listening backlog. When full,
  a new connection makes room by closing the one that has gone longest without delivering a
  request: a real callback, done in milliseconds, always gets in; a slow one goes.
- **aiohttp's own.** Request line and each header at most 2 KB, 32 headers, no lingering after
  an early answer (the rest of a refused body is not read), no decompression (Meta sends plain
  JSON; a compressed body could grow in memory past every bound above), no access log.

Worst case measured (a `flowrun listen` with 1,000 connections, each holding 30 headers of
2 KB, or each 64 KB of body): under 200 MB; the attacks in tests/test_receiver_hardening.py
(700 connections holding bodies, 1,100 slow ones) keep it under 90 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

BODY = 64 * 1024
LARGE_BODY = 3 * 1024 * 1024
LARGE_AT_ONCE = 4
RECEIVE_WITHIN = 10.0  # seconds
MAX_CONNECTIONS = 1_000
BACKLOG = 128  # the listening queue; asyncio accepts up to this many sockets in one go
SPARE_FILES = BACKLOG + 32  # + the ledger (database, -wal, -shm), the loop, pipes, stdio

# aiohttp's RequestHandler options (aiohttp/web_protocol.py): see the module's docstring
AIOHTTP_OPTIONS: dict[str, Any] = {
    "max_line_size": 2048,
    "max_field_size": 2048,
    "max_headers": 32,
    "lingering_time": 0,
    "read_bufsize": 16 * 1024,
    "auto_decompress": False,
    "keepalive_timeout": RECEIVE_WITHIN,
    "access_log": None,
}


@dataclass(frozen=True, slots=True)
class Limits:
    body: int = BODY
    large_body: int = LARGE_BODY
    large_at_once: int = LARGE_AT_ONCE
    receive_within: float = RECEIVE_WITHIN
    connections: int | None = None  # None: from the open-files limit


def raise_open_files_limit() -> None:
    """The soft open-files limit up to the hard one (a process may, unprivileged): more
    connections before the cap. Where it cannot be raised, the cap follows the lower limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connection_cap(limits: Limits) -> int:
    """Connections held at once: below the files this process may still open, less a spare
    for the ledger and for sockets accepted before the cap closes one (asyncio accepts up to a
    backlog's worth in one go: at the limit that fails, and it stops accepting for a second)."""
    if limits.connections is not None:
        return limits.connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - _open_files() - SPARE_FILES))


def _open_files() -> int:
    try:
        return len(os.listdir("/dev/fd"))
    except OSError:
        return 16


class ClosedCounts(Protocol):
    """Where the guard counts the connections it closed, and requests that are not HTTP."""

    too_slow: int  # no whole request within Limits.receive_within
    for_room: int  # the longest-owing one, for a new connection
    malformed: int  # aiohttp could not parse it (answered 400 by aiohttp)


class _Connection(RequestHandler):
    """aiohttp's connection, quiet about requests that are not HTTP.

    aiohttp logs each with its traceback at ERROR (`handle_error` in web_protocol.py): on the
    internet that is anyone's to trigger, a line each. They are counted instead; any other
    exception (a bug in flowrun) is still logged."""

    __slots__ = ("_counts",)

    def __init__(self, manager: web.Server, counts: ClosedCounts, **options: Any) -> None:
        super().__init__(manager, **options)
        self._counts = counts

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            self._counts.malformed += 1
            return
        super().log_exception(*args, **kw)


class GuardedServer(web.Server):
    """aiohttp's low-level server, with each connection owing a whole request within
    `receive_within` seconds and at most `connection_cap` of them.

    The seam is aiohttp's own: web.Server is the protocol factory `loop.create_server` calls
    for each connection, and every connection reports to it when made and lost
    (`connection_made`, `connection_lost` in aiohttp/web_server.py). The request handler says
    when a request is in (`received`) and answered (`answered`)."""

    def __init__(self, handler: Any, limits: Limits, closed: ClosedCounts) -> None:
        super().__init__(handler, **AIOHTTP_OPTIONS)
        self.limits = limits
        self.cap = connection_cap(limits)
        self.closed = closed
        self._live: set[RequestHandler] = set()
        # connections owing a request, the longest-owing first, each with its deadline timer
        self._owing: dict[RequestHandler, asyncio.TimerHandle] = {}
        self._reading: set[RequestHandler] = set()  # a handler is reading their body
        self._closed_while_reading: set[RequestHandler] = set()

    def __call__(self) -> RequestHandler:
        return _Connection(self, self.closed, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._live.add(handler)
        self._owe(handler)
        while len(self._live) > self.cap:
            oldest = next(iter(self._owing))
            if oldest is handler:  # everyone else is being answered: they finish in ms
                break
            self.closed.for_room += 1
            self._close(oldest)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._live.discard(handler)
        self._settle(handler)
        super().connection_lost(handler, exc)

    def reading(self, handler: RequestHandler) -> None:
        """A handler has started on this connection's request and reads its body."""
        self._reading.add(handler)

    def received(self, handler: RequestHandler) -> None:
        """The whole request is in: no deadline and no closing for room while it is answered
        (a commit, milliseconds)."""
        self._settle(handler)
        self._reading.discard(handler)

    def answered(self, handler: RequestHandler) -> bool:
        """The request is answered; the connection owes the next one from now. Whether the
        guard closed it while its body was read (so the handler does not count it again)."""
        self._reading.discard(handler)
        closed_by_guard = handler in self._closed_while_reading
        self._closed_while_reading.discard(handler)
        if handler in self._live:
            self._owe(handler)
        return closed_by_guard

    def _owe(self, handler: RequestHandler) -> None:
        self._settle(handler)
        within = self.limits.receive_within
        self._owing[handler] = self._loop.call_later(within, self._expire, handler)

    def _settle(self, handler: RequestHandler) -> None:
        timer = self._owing.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler: RequestHandler) -> None:
        self._owing.pop(handler, None)
        self.closed.too_slow += 1
        self._close(handler)

    def _close(self, handler: RequestHandler) -> None:
        """Close at once (abort: the socket is freed without waiting to flush anything)."""
        self._settle(handler)
        self._live.discard(handler)
        if handler in self._reading:
            self._closed_while_reading.add(handler)
        if handler.transport is not None:
            handler.transport.abort()
        handler.force_close()
