"""A lean HTTP/1.1 client for one API: keep-alive connections on asyncio protocols, responses
parsed by httptools (the parser uvicorn uses).

Why not aiohttp here: sending is flowrun's hot path, and measured against the same stub server,
one aiohttp request costs 55-60 us of CPU with uvloop where this costs 13 (bench/send_bench.py;
the profile in the performance issue put aiohttp at half of a run's time). What the WhatsApp APIs
need is small: POST, JSON or multipart bodies, small JSON answers, keep-alive, TLS, a timeout.
No redirects, cookies, proxies or compression (aiohttp as flowrun used it had none of them
either). The sandbox server is still aiohttp.

Failures say whether the request can have reached the server: `ConnectFailed` (it cannot: safe
to send again) or `Lost` (no answer came: it may have).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    pass


class ConnectFailed(HttpError):
    """No connection could be made: the request was never sent."""


class Lost(HttpError):
    """The request was sent (or may have been), but no complete answer came."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave like one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Lost(f"the server's answer could not be read ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and self._ends_with_connection():
            self.on_message_complete()  # a body without a length ends where the connection does
        self._fail(Lost("the connection closed before the answer"))
        if not self.gone.done():
            self.gone.set_result(None)

    def _ends_with_connection(self) -> bool:
        return (
            "content-length" not in self._headers
            and "chunked" not in self._headers.get("transfer-encoding", "").lower()
        )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, body = self._headers, b"".join(self._body)
        self._headers, self._body, self._headers_done = {}, [], False
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103): the real one follows
        waiter, self.waiter = self.waiter, None
        reply = Reply(status, headers, body)
        if not self.parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def exchange(self, data: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def _fail(self, error: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """Requests to one origin, over at most `limit` keep-alive connections."""

    def __init__(self, base_url: str, limit: int, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.https else 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.limit = limit
        self.timeout = timeout
        self._ssl = ssl.create_default_context() if self.https else None
        self._idle: collections.deque[_Connection] = collections.deque()
        # A slot per request in flight: a request takes an idle connection or makes one, so
        # there are never more connections than slots; the semaphore does the waking (a failed
        # connect or a cancelled waiter passes its turn on).
        self._slots = asyncio.Semaphore(limit)
        self._live: set[_Connection] = set()  # not closed yet (closing ones included)

    async def post(
        self, path: str, body: bytes, content_type: str, headers: dict[str, str]
    ) -> Reply:
        head = [
            f"POST {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host_header}",
            "User-Agent: flowrun",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            connection = await self._acquire()
            loop = asyncio.get_running_loop()
            waiter = connection.exchange(data)
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                return await waiter
            except BaseException:
                connection.close()  # a late answer must not be taken for the next request's
                raise
            finally:
                timer.cancel()
                if not connection.closed:
                    self._idle.append(connection)

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.https else None,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS certificate (ssl.SSLError)
            raise ConnectFailed(str(exc)) from None
        self._live.add(connection)
        connection.gone.add_done_callback(lambda _: self._live.discard(connection))
        return connection

    async def close(self) -> None:
        """Close every connection and wait until they are closed (a transport left to the
        garbage collector warns, and with uvloop may outlive its loop)."""
        connections = list(self._live)
        for connection in connections:
            connection.close()
        self._idle.clear()
        if connections:
            await asyncio.wait([c.gone for c in connections], timeout=5)


def _expire(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(Lost("no answer within the timeout"))
