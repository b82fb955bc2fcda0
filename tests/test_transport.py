"""What the HTTP engine lets out of the process, and what it reads from answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from aiohttp import web

from runner import threadserver
from runner.transport import HttpTransport, Response, public_url


def test_public_url_drops_credentials_and_query() -> None:
    assert public_url("https://user:pw@wa.example.com:8443/api?key=s3cret") == (
        "https://wa.example.com:8443/api"
    )
    assert public_url("http://127.0.0.1:8480") == "http://127.0.0.1:8480"


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    """RFC 9110 §10.2.3: Retry-After is seconds or an HTTP date; a date in the past is now."""
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    answers = [soon, "Wed, 21 Oct 2015 07:28:00 GMT", "7", "-3", "in a while"]

    async def busy(request: web.Request) -> web.Response:
        value = answers[int(request.query["i"])]
        return web.json_response({}, status=503, headers={"Retry-After": value})

    application = web.Application()
    application.router.add_post("/busy", busy)

    async def go(base: str) -> list[Response]:
        async with HttpTransport(base, "t", 5, 1) as transport:
            return [await transport.post_json(f"/busy?i={i}", b"{}") for i in range(5)]

    with threadserver.serving(application) as base:
        waits = [response.retry_after for response in asyncio.run(go(base))]
    assert waits[0] is not None
    assert 25 < waits[0] <= 30  # the date has whole seconds; the request took some time
    assert waits[1:] == [0.0, 7.0, 0.0, None]
