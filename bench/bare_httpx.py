"""The other baseline: a bare httpx.AsyncClient loop sending the same bodies, and nothing else.

Run: python bench/bare_httpx.py BASE_URL N WORKERS. Prints messages/s.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from bare_aiohttp import body


async def main(base: str, total: int, workers: int) -> None:
    bodies = iter(range(total))
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    headers = {"Authorization": "Bearer bench"}
    async with httpx.AsyncClient(base_url=base, limits=limits, headers=headers) as client:

        async def worker() -> None:
            for i in bodies:
                response = await client.post("/v1/messages", json=body(i))
                response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    print(f"{total / elapsed:.0f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
