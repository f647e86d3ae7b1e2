"""One cell of the matrix, in a process of its own: one stack, one wiring, one setup.

    python -m tests.stacks.cell STACK WIRING SETUP URL [--workers N] [--requests N]

Wirings, as apps wire poolwatch:

* ``import``: the engine, the PoolWatch and the instrumentation made before any event
  loop runs (module level, what most apps do);
* ``loop``: all of it inside the running loop (a lifespan handler);
* ``thread``: made in a worker thread while the loop runs (a sync startup hook, a lazily
  built engine in a sync dependency);
* ``fork``: made at import in a parent that touched the database, then used in a forked
  child (gunicorn's preload; SQLAlchemy's ``dispose(close=False)`` recipe in the child).

Setups: ``control`` (no poolwatch, the pool sized by hand within the login's limit),
``poolwatch`` (the same pool, with an acquire timeout and leak detection) and ``autosize``
(the pool created far past the login's limit, autosize keeping it within).

``workers`` concurrent clients send ``requests`` requests each through the ASGI app (a
share of them abandoned mid-flight, which cancels the app's task where it stands); under
autosize they go on until the limit has grown (autosize saw them queue), within a cap.
Prints one JSON line: what the clients saw, the app's errors, the driver's counts and
poolwatch's gauges once traffic stopped, and autosize's limits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from typing import Any

import httpx

from poolwatch import Autosize, PoolWatch
from tests.metrics_helpers import value
from tests.stacks.app import StackApp, error_kind
from tests.stacks.stacks import LOGIN_LIMIT, POOL_CEILING, STATIC_POOL, Stack, stack

CAP = 60.0  # seconds: the longest a cell's traffic goes on waiting for autosize to grow
ABANDON = 0.1  # share of requests the client abandons within 20 ms
AUTOSIZE_MIN = 2
MIX = (("read", 45), ("order", 25), ("reject", 10), ("slow", 20))


class _Unretrieved(logging.Handler):
    """Counts asyncio's "exception was never retrieved" reports."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "never retrieved" in record.getMessage():
            self.count += 1


def _autosize(chosen: Stack, setup: str) -> Autosize | None:
    if setup != "autosize":
        return None
    # Where the budget is not read (MySQL, SQLite), the README says to set it by hand.
    return Autosize(min=AUTOSIZE_MIN, budget=None if chosen.budget_read else LOGIN_LIMIT - 2)


class Cell:
    """The app, the PoolWatch (if any) and what the run saw."""

    def __init__(self, chosen: Stack, wiring: str, setup: str, url: str) -> None:
        self.stack, self.wiring, self.setup = chosen, wiring, setup
        pool_max = POOL_CEILING if setup == "autosize" else STATIC_POOL
        self.app = StackApp(chosen, url, pool_max)
        self.watch = (
            None if setup == "control" else PoolWatch(acquire_timeout=10.0, leak_threshold=30.0)
        )
        self.autosize = _autosize(chosen, setup)
        self.statuses: Counter[str] = Counter()
        self.peak_limit = 0

    def wire(self) -> None:
        """Make the engine and instrument it (where the wiring says to call this)."""
        self.app.make_engine()
        if self.watch is not None:
            self.app.instrument(self.watch, self.autosize)

    def limit(self) -> int | None:
        if self.watch is None:
            return None
        return self.watch.guards.limit_of(self.app.pool)

    def grown(self) -> bool:
        """Whether traffic may stop: autosize (where it sizes a pool) has grown the limit."""
        if self.autosize is None or not self.stack.pooled:
            return True
        return self.peak_limit > AUTOSIZE_MIN

    async def serve(self, workers: int, requests: int) -> dict[str, Any]:
        if self.wiring == "loop":
            self.wire()
        elif self.wiring == "thread":
            await asyncio.to_thread(self.wire)
        await self.app.start()
        started = time.monotonic()
        try:
            transport = httpx.ASGITransport(app=self.app.asgi, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                await asyncio.gather(
                    *(self._client(http, random.Random(i), requests) for i in range(workers))
                )
                seconds = time.monotonic() - started
                return await self._judge(http, seconds)
        finally:
            try:
                # Bounded: a pool that lost connections (the control's, on some drivers)
                # waits for them forever as it closes.
                await asyncio.wait_for(self.app.stop(), 10)
            except TimeoutError:
                print("the pool did not close within 10 s", file=sys.stderr)
            if self.watch is not None:
                self.watch.uninstrument()

    async def _client(self, http: httpx.AsyncClient, rng: random.Random, requests: int) -> None:
        names = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        deadline = time.monotonic() + CAP
        sent = 0
        while sent < requests or (not self.grown() and time.monotonic() < deadline):
            kind = rng.choices(names, weights)[0]
            item = rng.randint(1, 50)
            method, path = {
                "read": ("GET", f"/api/v1/items/{item}"),
                "order": ("POST", f"/api/v1/orders?item_id={item}"),
                "reject": ("POST", f"/api/v1/orders?item_id={item}&reject=1"),
                "slow": ("GET", "/api/v1/reports/slow"),
            }[kind]
            abandon = rng.random() < ABANDON
            try:
                response = await asyncio.wait_for(
                    http.request(method, path), rng.uniform(0, 0.02) if abandon else CAP
                )
                self.statuses[str(response.status_code)] += 1
            except TimeoutError:
                self.statuses["abandoned" if abandon else "client timeout"] += 1
            except Exception as exc:  # the transport's: as much an app error as a 500
                self.app.errors[error_kind(exc)] += 1
            sent += 1
            limit = self.limit()
            if limit is not None:
                self.peak_limit = max(self.peak_limit, limit)

    async def _settle(self) -> tuple[int, int]:
        """The driver's counts once abandoned requests (threads, cleanups) are done."""
        deadline = time.monotonic() + 15
        used, idle = self.app.driver_counts()
        while used and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            used, idle = self.app.driver_counts()
        return used, idle

    async def _judge(self, http: httpx.AsyncClient, seconds: float) -> dict[str, Any]:
        used, idle = await self._settle()
        result: dict[str, Any] = {
            "stack": self.stack.name,
            "wiring": self.wiring,
            "setup": self.setup,
            "seconds": round(seconds, 2),
            "statuses": dict(self.statuses),
            "errors": dict(self.app.errors),
            "driver": {"used": used, "idle": idle},
        }
        watch = self.watch
        if watch is None:
            return result
        registry, pool = watch.registry, self.app.pool
        await http.get("/metrics")  # a scrape through the app, as Prometheus does
        result["gauges"] = {
            "used": value(registry, "db_client_connection_count", pool=pool, state="used"),
            "idle": value(registry, "db_client_connection_count", pool=pool, state="idle"),
            "pending": value(registry, "db_client_connection_pending_requests", pool=pool),
            "drift": value(registry, "poolwatch_pool_drift", pool=pool),
        }
        result["internal_errors"] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "poolwatch_internal_errors_total"
        )
        if self.autosize is not None and self.stack.pooled:
            result["peak_limit"] = self.peak_limit
            result["budget_read_errors"] = value(
                registry, "poolwatch_autosize_budget_read_errors_total", pool=pool
            )
            sizer = watch.guards.sizers.get(pool)
            result["budget_read"] = sizer is not None and sizer.budget is not None
        return result


def _run(cell: Cell, workers: int, requests: int) -> dict[str, Any]:
    unretrieved = _Unretrieved()
    logging.getLogger("asyncio").addHandler(unretrieved)
    result = asyncio.run(cell.serve(workers, requests))
    gc.collect()  # futures nobody retrieved are reported as they are collected
    result["unretrieved"] = unretrieved.count
    return result


def _touch(cell: Cell) -> None:
    """What a preloading parent does at import: use the database once (create tables,
    check the connection), leaving a connection in its pool."""
    if cell.stack.orm == "tortoise":
        return  # Tortoise connects in the worker's lifespan (RegisterTortoise)

    async def ping() -> None:
        await cell.app.start()

    if cell.stack.sync:
        cell.app._ping()
    else:
        asyncio.run(ping())


def _forked(cell: Cell, workers: int, requests: int) -> dict[str, Any]:
    _touch(cell)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(reading)
        try:
            cell.app.after_fork()
            payload = json.dumps(_run(cell, workers, requests)).encode()
        except BaseException as exc:
            payload = json.dumps({"crash": f"{type(exc).__name__}: {exc}"}).encode()
        with os.fdopen(writing, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data or b'{"crash": "the worker sent nothing"}')
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stacks.cell")
    parser.add_argument("stack")
    parser.add_argument("wiring", choices=("import", "loop", "thread", "fork"))
    parser.add_argument("setup", choices=("control", "poolwatch", "autosize"))
    parser.add_argument("url")
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    cell = Cell(stack(args.stack), args.wiring, args.setup, args.url)
    if args.wiring in ("import", "fork"):
        cell.wire()  # module level: no loop runs yet
    if args.wiring == "fork":
        result = _forked(cell, args.workers, args.requests)
    else:
        result = _run(cell, args.workers, args.requests)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
