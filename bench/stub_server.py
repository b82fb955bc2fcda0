"""A minimal WhatsApp-shaped stub for benchmarks: answers fast, checks nothing, counts.

Run: python bench/stub_server.py PORT [--latency SECONDS [--jitter SECONDS]]. The sandbox checks
requests strictly, which costs time; this measures the client, not the server.

--latency: every message is answered that long after it arrived, like a real API far away
(bench/paced_bench.py: 250 ms), give or take up to --jitter (uniformly: a real API's answers
do not come back in the rhythm the requests left in). The wait is a sleep on the event loop,
never a block: a thousand requests a second means 250 waiting at once, each costing a timer.
The stub notes when each message arrived (`GET /times` hands them over and forgets them:
the paced benchmark measures the rate it received) and how late each answer left compared
with the latency asked for (a stub falling behind would show there first).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time

from aiohttp import web

COUNTER = itertools.count()
ARRIVALS: list[float] = []  # time.monotonic() of each message received since the last /times
LATE: list[float] = []  # seconds each answer left after its due time, since the last /times
LATENCY = web.AppKey("latency", float)
JITTER = web.AppKey("jitter", float)


async def messages(request: web.Request) -> web.Response:
    arrived = time.monotonic()
    ARRIVALS.append(arrived)
    await request.read()
    latency = request.app[LATENCY]
    if request.app[JITTER]:
        latency += random.uniform(-request.app[JITTER], request.app[JITTER])
    if latency:
        await asyncio.sleep(latency)
        LATE.append(time.monotonic() - arrived - latency)
    return web.json_response({"messages": [{"id": f"gBGG{next(COUNTER)}"}]}, status=201)


async def media(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"media": [{"id": f"m{next(COUNTER)}"}]}, status=201)


async def count(_request: web.Request) -> web.Response:
    return web.json_response({"requests": next(COUNTER)})


async def times(_request: web.Request) -> web.Response:
    """Arrival times of the messages since the last call, and how late the answers were."""
    arrivals, late = ARRIVALS[:], LATE[:]
    ARRIVALS.clear()
    LATE.clear()
    return web.json_response({"arrivals": arrivals, "late": late})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds, give or take")
    args = parser.parse_args()
    app = web.Application()
    app[LATENCY] = args.latency
    app[JITTER] = min(args.jitter, args.latency)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/media", media)
    app.router.add_get("/count", count)
    app.router.add_get("/times", times)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
