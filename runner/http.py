"""A lean HTTP/1.1 client for one API: keep-alive connections on asyncio protocols, responses
parsed by httptools (the parser uvicorn uses).

Why not aiohttp here: sending is flowrun's hot path, and measured against the same stub server,
one aiohttp request costs 55-60 us of CPU with uvloop where this costs 13 (bench/send_bench.py;
the profile in the performance issue put aiohttp at half of a run's time). What the WhatsApp APIs
need is small: POST, JSON or multipart bodies, small JSON answers, keep-alive, TLS, a timeout,
and an http:// proxy where the network has one (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, read as the
standard library reads them: runner/proxy.py). No redirects, cookies or compression (aiohttp as
flowrun used it had none of them either). The sandbox server is still aiohttp.

Through a proxy, an https API gets a CONNECT tunnel per connection (RFC 9110 §9.3.6) and TLS
over it with `loop.start_tls`, verified against the API's own certificate and host name: the
proxy sees only ciphertext. An http API gets absolute-form requests (`POST http://host/path`,
RFC 9112 §3.2.2) sent to the proxy. Without proxy variables the path is the one it always was.

Failures say whether the request can have reached the server: `ConnectFailed` (it cannot: safe
to send again; a proxy that cannot be reached or refuses the tunnel is one too) or `Lost` (no
answer came: it may have).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from .proxy import Proxy, proxy_for

# The APIs' answers are small (a sent message's is ~150 bytes, an error envelope ~500, an
# upload's ~50: docs/whatsapp-api.md#error-envelopes). An answer far past these is not the API's
# and is given up at once as Lost, instead of buffering what a hostile server sends: a 10 GB
# Content-Length once grew a run to 3 GB before its timeout.
MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024


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

    explicit = False  # kept open only when an answer says keep-alive (_ProxyConnection)

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._head_size = 0  # bytes received of the current answer's head
        self._body_size = 0
        self._overflow: str | None = None  # why the current answer is given up
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave like one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._headers_done:
            self._head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 (already handed over as the answer): what follows is no longer HTTP, so
            # the connection is of no further use.
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(Lost(f"the server's answer could not be read ({exc})"))
            self.close()
            return
        if not self._headers_done and self._head_size > MAX_HEAD:
            self._overflow = f"an answer whose head runs past flowrun's bound ({MAX_HEAD:,} bytes)"
        if self._overflow is not None:
            self._fail(Lost(self._overflow))
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
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            self._overflow = f"an answer of {int(length):,} bytes, past flowrun's bound"

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            self._overflow = f"an answer body past flowrun's bound ({MAX_BODY:,} bytes)"
        elif self._overflow is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._overflow is not None:
            return  # given up: data_received says so once feeding stops
        status = self.parser.get_status_code()
        headers, body = self._headers, b"".join(self._body)
        self._headers, self._body, self._headers_done = {}, [], False
        self._head_size = self._body_size = 0
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103): the real one follows
        waiter, self.waiter = self.waiter, None
        reply = Reply(status, headers, body)
        if not self.parser.should_keep_alive() or (self.explicit and not _says_kept(headers)):
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


class _ProxyConnection(_Connection):
    """A connection to an http proxy, kept for the next request only when the answer says
    `keep-alive`. An HTTP/1.1 connection persists unless a side says `close` (RFC 9112 §9.3),
    but tinyproxy closes every client connection after one answer without saying so: a request
    sent on it meanwhile would be lost, and its message reported uncertain though never sent."""

    explicit = True


class _Tunnel(asyncio.Protocol):
    """The plain connection to a proxy until it answers CONNECT; then TLS takes it over."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.extra = b""  # bytes after the answer: a proxy that starts the TLS stream itself
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            self.extra += data
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.extra = self._buffer[end + 4 :]
            self.answer.set_result(self._buffer[:end])
        elif len(self._buffer) > 65536:
            self.answer.set_exception(ConnectFailed("answered CONNECT with no end of head"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectFailed("closed the connection before answering"))


class Client:
    """Requests to one origin, over at most `limit` keep-alive connections; through the proxy
    the environment names for it (runner/proxy.py), decided once, here."""

    def __init__(self, base_url: str, limit: int, timeout: float, *, proxies: bool = True) -> None:
        """`proxies` False: connect directly whatever the environment says (the built-in
        sandbox, served by this very process on loopback)."""
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
        self.proxy = proxy_for(parts.scheme, self.host, self.port) if proxies else None
        # What every request starts with: origin-form to the API itself (or through a tunnel),
        # absolute-form (RFC 9112 §3.2.2) with the proxy's credentials to an http proxy.
        self._target = self.prefix
        self._fixed = f"Host: {self.host_header}\r\nUser-Agent: flowrun"
        self._through = ""  # said after a failure's cause
        if self.proxy is not None:
            self._through = f" (through the proxy {self.proxy})"
            if not self.https:
                self._target = f"http://{self.host_header}{self.prefix}"
                if self.proxy.authorization is not None:
                    self._fixed += f"\r\nProxy-Authorization: {self.proxy.authorization}"
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
            f"POST {self._target}{path} HTTP/1.1",
            self._fixed,
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return await self._exchange(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def get(self, path: str, headers: dict[str, str]) -> Reply:
        """A GET without a body (listing an account's templates), on the same connections,
        proxy and timeout as the posts."""
        head = [
            f"GET {self._target}{path} HTTP/1.1",
            self._fixed,
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return await self._exchange(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

    async def _exchange(self, data: bytes) -> Reply:
        """One request out, its answer back, over a kept-alive connection."""
        async with self._slots:
            connection = await self._acquire()
            loop = asyncio.get_running_loop()
            waiter = connection.exchange(data)
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                reply = await waiter
            except BaseException:
                connection.close()  # a late answer must not be taken for the next request's
                raise
            finally:
                timer.cancel()
                if not connection.closed:
                    self._idle.append(connection)
        if reply.status == 407 and self.proxy is not None and not self.https:
            # only a proxy answers 407 (RFC 9110 §15.5.8): the request went no further
            raise ConnectFailed(_refusal(self.proxy, 407, "Proxy Authentication Required"))
        return reply

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            connection = await asyncio.wait_for(self._open(), self.timeout)
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.timeout:g} s{self._through}") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS certificate (ssl.SSLError)
            raise ConnectFailed(f"{exc}{self._through}") from None
        self._live.add(connection)
        connection.gone.add_done_callback(lambda _: self._live.discard(connection))
        return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.proxy is None:
            _, connection = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self.https else None,
            )
            return connection
        try:
            if not self.https:
                _, proxied = await loop.create_connection(
                    _ProxyConnection, self.proxy.host, self.proxy.port
                )
                return proxied
            transport, tunnel = await loop.create_connection(
                _Tunnel, self.proxy.host, self.proxy.port
            )
        except OSError as exc:
            raise ConnectFailed(f"the proxy {self.proxy} cannot be reached: {exc}") from None
        try:
            return await self._tunnel(transport, tunnel, self.proxy)
        except BaseException:
            transport.close()
            raise

    async def _tunnel(
        self, transport: asyncio.Transport, tunnel: _Tunnel, proxy: Proxy
    ) -> _Connection:
        """CONNECT host:port (RFC 9110 §9.3.6), then TLS with the API over the tunnel: the
        certificate and host name checked are the API's, never the proxy's."""
        authority = f"{self.host if ':' not in self.host else f'[{self.host}]'}:{self.port}"
        head = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", "User-Agent: flowrun"]
        if proxy.authorization is not None:
            head.append(f"Proxy-Authorization: {proxy.authorization}")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            status, reason = _status_line(await tunnel.answer)
        except ConnectFailed as exc:
            raise ConnectFailed(f"the proxy {proxy} {exc}") from None
        if not 200 <= status < 300:
            raise ConnectFailed(_refusal(proxy, status, reason, authority))
        if tunnel.extra:
            raise ConnectFailed(f"the proxy {proxy} sent data before the tunnel was used")
        assert self._ssl is not None
        connection = _Connection()
        loop = asyncio.get_running_loop()
        tls = await loop.start_tls(transport, connection, self._ssl, server_hostname=self.host)
        if tls is None:  # typeshed allows it; asyncio and uvloop always give the transport
            raise ConnectFailed(f"TLS over the tunnel did not start{self._through}")
        connection.connection_made(tls)
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


def _says_kept(headers: dict[str, str]) -> bool:
    kept = headers.get("connection", "") + headers.get("proxy-connection", "")
    return "keep-alive" in kept.lower()


def _status_line(head: bytes) -> tuple[int, str]:
    """(status, reason) of an answer's head; a head that is not HTTP fails the connect."""
    version, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise ConnectFailed("answered CONNECT with something that is not HTTP")
    return int(code), reason.strip()[:100]


def _refusal(proxy: Proxy, status: int, reason: str, authority: str | None = None) -> str:
    """One line for a proxy's refusal, naming the proxy without credentials. A 401 to CONNECT
    is about the proxy's credentials too (no API has been asked yet): tinyproxy answers wrong
    ones with 401, where RFC 9110 §15.5.8 says 407."""
    answered = f"{proxy} answered {status} {reason}".rstrip()
    if status in (401, 407) and proxy.authorization is None:
        return (
            f"the proxy asks for credentials ({answered}): put them in its URL,"
            f" http://USER:PASSWORD@{proxy.url.removeprefix('http://')}"
        )
    if status in (401, 407):
        return f"the proxy refused the credentials ({answered})"
    return f"the proxy refused the tunnel to {authority} ({answered})"
