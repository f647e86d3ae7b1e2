"""Per-request cost of HTTP metrics middleware, in process: the ASGI app called directly.

    python benchmarks/middleware.py [--rounds 15] [--requests 3000]

No server and no socket: ``await app(scope, receive, send)`` with a minimal HTTP scope
(a fresh dict per request, as a server makes one), a ``receive`` that returns an empty
body and a ``send`` that drops the messages. What is left is the framework, the
middleware and the endpoint, so the overhead of a middleware is its setup's µs per
request minus bare FastAPI's. Each round builds every setup's app afresh (see
:mod:`apps`), checks one response, warms it up, times ``--requests`` requests and undoes
the instrumentation, in turn (interleaved); figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import MutableMapping
from time import perf_counter
from typing import Any

from _timing import Samples, Table, Target, interleave_async, ratio, spread
from apps import ENDPOINTS, SETUP_NAMES, SETUPS, build_app, paths

__all__ = ["bench_in_process"]

WARMUP = 300
Message = MutableMapping[str, Any]

_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}
_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _BODY


async def _drop(message: Message) -> None:
    return None


async def _check(app: Any, path: str) -> None:
    """One request, answered 200: a setup that fails is not timed."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app({**_SCOPE, "path": path, "raw_path": path.encode()}, _receive, send)
    if not sent or sent[0].get("status") != 200:
        raise RuntimeError(f"GET {path} answered {sent[:1]!r}")


async def _time(app: Any, targets: list[tuple[str, bytes]], requests: int) -> float:
    """Seconds for ``requests`` requests, cycling through ``targets``."""
    count = len(targets)
    started = perf_counter()
    for i in range(requests):
        path, raw = targets[i % count]
        await app({**_SCOPE, "path": path, "raw_path": raw}, _receive, _drop)
    return perf_counter() - started


async def _samples(endpoint: str, rounds: int, requests: int) -> Samples:
    targets = [(path, path.encode()) for path in paths(endpoint)]

    async def run(setup: str) -> float:
        app, undo = build_app(setup)
        try:
            await _check(app, targets[0][0])
            await _time(app, targets, WARMUP)
            return await _time(app, targets, requests) / requests
        finally:
            undo()

    return await interleave_async(SETUPS, rounds, run)


def bench_in_process(rounds: int, requests: int) -> Table:
    """Section 1a: µs per request and overhead over bare FastAPI, both endpoints."""
    table = Table(
        "1a. Per request, middleware only, in process (direct ASGI call)",
        ["endpoint", "setup", "µs/request", "overhead µs", "ratio vs bare", "spread", "target"],
    )
    for endpoint, label in ENDPOINTS.items():
        samples = asyncio.run(_samples(endpoint, rounds, requests))
        us = {setup: statistics.median(values) * 1e6 for setup, values in samples.items()}
        overhead = {setup: us[setup] - us["bare"] for setup in SETUPS}
        budget = overhead["instrumentator"] / 2
        for setup in SETUPS:
            target = None
            if setup.startswith("poolwatch"):
                goal = f"overhead < ½ instrumentator's ({budget:.1f} µs)"
                target = Target(goal, overhead[setup] < budget)
            table.add(
                label,
                SETUP_NAMES[setup],
                f"{us[setup]:.1f}",
                "-" if setup == "bare" else f"{overhead[setup]:+.1f}",
                f"{ratio(samples, setup, 'bare'):.3f}x",
                spread(samples, setup, "bare"),
                target=target,
            )
    table.notes.append(
        f"Median of {rounds} interleaved rounds of {requests} requests per setup; each round "
        "builds the app afresh and warms it up."
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    print(bench_in_process(args.rounds, args.requests).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
