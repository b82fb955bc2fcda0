"""How flowrun talks HTTP, behind one small class; the engine is chosen by measurement.

Measured on loopback at concurrency 32 against the same stub (executor and performance issues,
bench/send_bench.py): a bare httpx.AsyncClient loop about 600 msg/s (its pool slows as
concurrency grows, encode/httpx#3215), a bare aiohttp loop about 11,000 (55-60 us of CPU a
request), flowrun's own keep-alive client on httptools (http.py) 13 us a request, which took
all of flowrun from 0.67 to 0.95 of the bare aiohttp loop. Everything else in flowrun sees only
`Transport` and the two failure kinds below, so the engine can change without touching the
executor.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from .http import Client, ConnectFailed, Lost, Reply


def public_url(url: str) -> str:
    """The URL without credentials or query (`https://user:pw@host/x?key=..` → `https://host/x`):
    the form that may be shown in messages and stored in the ledger."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class Upload:
    """One media upload request: a raw body (On-Premises) or a multipart form (Cloud)."""

    path: str
    data: bytes
    mime: str
    form: dict[str, str] | None = None  # extra form fields; None: send `data` as the raw body
    filename: str = "file"


class NotDelivered(Exception):
    """The request never reached the server (connection refused, DNS, ...): safe to retry."""


class MaybeDelivered(Exception):
    """The request left, but no answer came (timeout, connection dropped): the API may have it."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    data: Any  # parsed JSON, or None
    retry_after: float | None


class Transport(Protocol):
    """What the executor and the dialects need of HTTP: JSON posts, uploads, a token to send.
    `HttpTransport` is the real one; tests may put one in memory here."""

    def use_token(self, token: str) -> None:
        """Send `token` from now on (after an On-Premises login)."""

    async def post_json(self, path: str, body: bytes) -> Response:
        """POST an already encoded JSON body."""
        ...

    async def post(
        self,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response: ...

    async def upload(self, upload: Upload) -> Response: ...


class HttpTransport:
    """Transport over flowrun's own HTTP client (http.py), to one API origin."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        concurrency: int,
        *,
        proxies: bool = True,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._proxies = proxies
        # The token is kept here, and nowhere else (None: a login gives it, see use_token).
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._limit = concurrency + 2  # + uploads
        self._client: Client | None = None

    async def __aenter__(self) -> HttpTransport:
        self._client = Client(self._base, self._limit, self._timeout, proxies=self._proxies)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    def use_token(self, token: str) -> None:
        """Send `token` from now on (after an On-Premises login)."""
        self._auth = {"Authorization": f"Bearer {token}"}

    async def post_json(self, path: str, body: bytes) -> Response:
        """POST an already encoded JSON body (encoded once: it is also hashed for the ledger)."""
        return await self.post(path, body, "application/json")

    async def post(
        self,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response:
        assert self._client is not None
        try:
            reply = await self._client.post(path, body, content_type, headers or self._auth)
        except ConnectFailed as exc:
            raise NotDelivered(f"cannot connect to {public_url(self._base)}: {exc}") from None
        except Lost as exc:
            raise MaybeDelivered(str(exc)) from None
        return _response(reply)

    async def get(self, path: str) -> Response:
        """GET `path` (with its query) from the API: reading, never sending, so either failure
        is only a failure (`NotDelivered`, `MaybeDelivered` as for a post)."""
        assert self._client is not None
        try:
            reply = await self._client.get(path, self._auth)
        except ConnectFailed as exc:
            raise NotDelivered(f"cannot connect to {public_url(self._base)}: {exc}") from None
        except Lost as exc:
            raise MaybeDelivered(str(exc)) from None
        return _response(reply)

    async def upload(self, upload: Upload) -> Response:
        """A media upload: the raw file as the body, or a multipart form around it."""
        if upload.form is None:
            return await self.post(upload.path, upload.data, upload.mime)
        boundary = uuid.uuid4().hex
        body = _multipart(boundary, upload)
        return await self.post(upload.path, body, f"multipart/form-data; boundary={boundary}")


def _response(reply: Reply) -> Response:
    """The answer's JSON (None if it has none or it is not JSON) and its Retry-After."""
    try:
        payload = orjson.loads(reply.body) if reply.body else None
    except orjson.JSONDecodeError:
        payload = None
    return Response(reply.status, payload, _retry_after(reply.headers.get("retry-after")))


def _multipart(boundary: str, upload: Upload) -> bytes:
    """RFC 7578 form data: the form's fields, then the file."""
    assert upload.form is not None
    parts = []
    for name, value in upload.form.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    filename = upload.filename.replace('"', "")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {upload.mime}\r\n\r\n"
    )
    return "".join(parts).encode() + upload.data + f"\r\n--{boundary}--\r\n".encode()


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: a number of seconds, or an HTTP date
    (RFC 9110 §10.2.3), counted from now; never negative. Unreadable: None (the backoff)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" reads as naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
