"""The baseline: a bare aiohttp loop sending the same bodies flowrun would, and nothing else.

Run: python bench/bare_aiohttp.py BASE_URL N WORKERS. Prints messages/s.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp


def body(i: int) -> dict[str, object]:
    name = f"P{i}"
    return {
        "recipient_type": "individual",
        "to": f"1555{i // 10000:03d}{i % 10000:04d}",
        "type": "image",
        "image": {"link": f"https://cdn.example.com/{name}.jpg", "caption": f"Hi {name}"},
    }


async def main(base: str, total: int, workers: int) -> None:
    bodies = iter(range(total))
    headers = {"Authorization": "Bearer bench"}
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as session:

        async def worker() -> None:
            for i in bodies:
                async with session.post("/v1/messages", json=body(i)) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    print(f"{total / elapsed:.0f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
