"""An aiohttp application served from a background thread: how the sandbox, the webhook
receiver and the tests run a real HTTP server inside another program."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web


@contextlib.contextmanager
def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, **runner: Any
) -> Iterator[str]:
    """`app` on host:port (0: a free port) while in use: its base URL. Extra arguments go to
    aiohttp's AppRunner (keepalive_timeout, ...); `ssl_context` goes to the site."""
    context = runner.pop("ssl_context", None)
    loop = asyncio.new_event_loop()
    app_runner = web.AppRunner(app, access_log=None, **runner)
    loop.run_until_complete(app_runner.setup())
    site = web.TCPSite(app_runner, host, port, ssl_context=context)
    loop.run_until_complete(site.start())
    bound = app_runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="flowrun-server", daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://{host}:{bound}"
    finally:
        asyncio.run_coroutine_threadsafe(app_runner.cleanup(), loop).result(timeout=10)
        # closed connections finish closing on the loop's next turns: give them those
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
