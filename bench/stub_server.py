"""A minimal WhatsApp-shaped stub for benchmarks: answers fast, checks nothing, counts.

Run: python bench/stub_server.py PORT. The sandbox checks requests strictly, which costs time;
this measures the client, not the server.
"""

from __future__ import annotations

import itertools
import sys

from aiohttp import web

COUNTER = itertools.count()


async def messages(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"messages": [{"id": f"gBGG{next(COUNTER)}"}]}, status=201)


async def media(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"media": [{"id": f"m{next(COUNTER)}"}]}, status=201)


async def count(_request: web.Request) -> web.Response:
    return web.json_response({"requests": next(COUNTER)})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/media", media)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
