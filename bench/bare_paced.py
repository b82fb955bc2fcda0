"""The paced baseline: a bare aiohttp loop on uvloop, held to a rate the plain way.

Run: python bench/bare_paced.py BASE_URL N WORKERS RATE. Prints messages/s (whole run).

What a competent engineer writes without thinking about CPU: WORKERS workers share one slot
counter; each takes the next slot (start + k / RATE), sleeps until it, and sends the next body
(the same bodies as bench/bare_aiohttp.py, so the same as flowrun's).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

import aiohttp
import uvloop
from bare_aiohttp import body


async def main(base: str, total: int, workers: int, rate: float) -> None:
    bodies = iter(range(total))
    headers = {"Authorization": "Bearer bench"}
    connector = aiohttp.TCPConnector(limit=workers)
    loop = asyncio.get_running_loop()
    slots = itertools.count()
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as session:
        start = loop.time()

        async def worker() -> None:
            for i in bodies:
                until = start + next(slots) / rate
                await asyncio.sleep(until - loop.time())
                async with session.post("/v1/messages", json=body(i)) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    print(f"{total / elapsed:.0f}")


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
