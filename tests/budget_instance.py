"""One app instance for the database-budget test: an I/O-bound load on PostgreSQL.

    python -m tests.budget_instance URL SECONDS USERS [autosize|static]

Prints one JSON line: how many statements ran, how many failed because the server
refused a connection, and the highest limit autosize set.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tortoise import Tortoise, connections

from poolwatch import Autosize, PoolWatch


async def main(url: str, seconds: float, users: int, mode: str) -> dict[str, object]:
    watch = PoolWatch()
    if mode == "autosize":
        watch.instrument_tortoise(
            autosize=Autosize(min=1, interval=0.25, budget_interval=0.5, budget_share=0.5)
        )
    else:
        watch.instrument_tortoise()
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    client = connections.get("default")
    done = refused = 0
    highest = 0
    deadline = time.monotonic() + seconds

    async def user() -> None:
        nonlocal done, refused
        while time.monotonic() < deadline:
            try:
                await client.execute_query("SELECT pg_sleep(0.02)")
                done += 1
            except Exception as exc:  # the refusal the test is about
                if "too many" not in str(exc):
                    raise
                refused += 1
                await asyncio.sleep(0.01)

    async def limits() -> None:
        nonlocal highest
        while True:
            sizer = watch.guards.sizers.get("default")
            if sizer is not None:
                highest = max(highest, sizer.limiter.limit)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(limits())
    try:
        await asyncio.gather(*(user() for _ in range(users)))
    finally:
        watcher.cancel()
        await Tortoise.close_connections()
        watch.uninstrument()
    return {"done": done, "refused": refused, "highest_limit": highest}


if __name__ == "__main__":
    url, seconds, users, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(asyncio.run(main(url, seconds, users, mode))))
