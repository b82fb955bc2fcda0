"""The HTTP engine, behind one small class: aiohttp, chosen by measurement.

On loopback at concurrency 32 (executor issue): aiohttp 11,000 msg/s, httpx over an aiohttp
transport 3,200, httpx.AsyncClient 520 (its pool slows as concurrency grows, encode/httpx#3215).
Everything else in flowrun sees only `Transport.post` and the two failure kinds below, so the
engine can change without touching the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .dialect import Upload


def public_url(url: str) -> str:
    """The URL without credentials or query (`https://user:pw@host/x?key=..` → `https://host/x`):
    the form that may be shown in messages and stored in the ledger."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class NotDelivered(Exception):
    """The request never reached the server (connection refused, DNS, ...): safe to retry."""


class MaybeDelivered(Exception):
    """The request left, but no answer came (timeout, connection dropped): the API may have it."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    data: Any  # parsed JSON, or None
    retry_after: float | None


class Transport:
    def __init__(self, base_url: str, token: str | None, timeout: float, concurrency: int) -> None:
        self._base = base_url.rstrip("/")
        # The token is kept here, and nowhere else (None: a login gives it, see use_token).
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connector_limit = concurrency + 2  # + uploads
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=self._connector_limit)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def use_token(self, token: str) -> None:
        """Send `token` from now on (after an On-Premises login)."""
        assert self._session is not None
        self._session.headers["Authorization"] = f"Bearer {token}"

    async def post(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | aiohttp.FormData | None = None,
        content_type: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        assert self._session is not None
        if content_type:
            headers = {**(headers or {}), "Content-Type": content_type}
        try:
            async with self._session.post(
                self._base + path, json=json, data=data, headers=headers
            ) as response:
                try:
                    payload = orjson.loads(await response.read())
                except orjson.JSONDecodeError:
                    payload = None
                return Response(response.status, payload, _retry_after(response.headers))
        except aiohttp.ClientConnectorError as exc:
            where = public_url(self._base)
            raise NotDelivered(f"cannot connect to {where}: {exc.os_error}") from None
        except TimeoutError:
            raise MaybeDelivered("no answer within the timeout") from None
        except aiohttp.ClientError as exc:
            raise MaybeDelivered(
                f"connection lost before the answer ({type(exc).__name__})"
            ) from None

    async def post_json(self, path: str, body: bytes) -> Response:
        """POST an already encoded JSON body (encoded once: it is also hashed for the ledger)."""
        return await self.post(path, data=body, headers=_JSON)

    async def upload(self, upload: Upload) -> Response:
        """A media upload: the raw file as the body, or a multipart form around it."""
        if upload.form is None:
            return await self.post(upload.path, data=upload.data, content_type=upload.mime)
        form = aiohttp.FormData()
        for name, value in upload.form.items():
            form.add_field(name, value)
        form.add_field("file", upload.data, filename=upload.filename, content_type=upload.mime)
        return await self.post(upload.path, data=form)


_JSON = {"Content-Type": "application/json"}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from this API; the backoff applies instead
