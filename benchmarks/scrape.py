"""Per-scrape cost of poolwatch's ``GET /metrics`` against prometheus_client's own encoder.

    python benchmarks/scrape.py [--seconds 6] [--sizes 1000,10000,50000]

One ``PoolWatch`` per size, its registry filled through the real metrics: for each of
many routes, ``operation_duration`` children for SELECT and INSERT, an
``http_duration`` child and a ``request_queries`` child, each observed once, until the
exposition holds the wanted number of series (sample lines, the ``_bucket``, ``_count``,
``_sum`` and ``_created`` lines of every child and the pool gauges read at scrape time).
A FastAPI app with ``watch.instrument_app(app)`` is then scraped by calling it directly
(``GET /metrics``, no network; the body is collected), interleaved with
``prometheus_client.generate_latest(registry)`` on the same registry. A second pair sends
what Prometheus 3 sends, its Accept header and ``Accept-Encoding: gzip``: the middleware
answers in OpenMetrics 1.0.0 (UTF-8 names allowed), compressed at gzip level 1; the
baseline is the encoder prometheus_client's ``choose_encoder`` picks for that header,
called directly, then ``gzip.compress(body, compresslevel=1)``. Each pair does the same
work, so each ratio is the middleware's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import statistics
import sys
from collections.abc import Callable, MutableMapping
from time import perf_counter
from typing import Any

from _timing import Samples, Table, Target, interleave, ratio, spread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from poolwatch import PoolWatch

__all__ = ["bench_scrape"]

SIZES = (1_000, 10_000, 50_000)
PROMETHEUS_ACCEPT = (
    b"application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    b"application/openmetrics-text;version=0.0.1;q=0.5,"
    b"text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    b"text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
Message = MutableMapping[str, Any]
Encoder = Callable[[CollectorRegistry], bytes]
Headers = list[tuple[bytes, bytes]]


def series(registry: CollectorRegistry) -> int:
    """Sample lines the registry exposes now."""
    return sum(len(metric.samples) for metric in registry.collect())


def _add_route(watch: PoolWatch, index: int) -> None:
    route = f"/api/v1/resource{index}/{{item_id}}"
    metrics = watch.metrics
    metrics.operation_duration.labels("main", "SELECT", route).observe(0.0004)
    metrics.operation_duration.labels("main", "INSERT", route).observe(0.002)
    metrics.http_duration.labels("GET", route, "200").observe(0.012)
    metrics.request_queries.labels(route).observe(3)


def filled(size: int) -> tuple[PoolWatch, int]:
    """A PoolWatch whose registry exposes about ``size`` series, and the exact count."""
    watch = PoolWatch(nplusone_mode="off")
    empty = series(watch.registry)
    _add_route(watch, 0)
    per_route = series(watch.registry) - empty
    for index in range(1, max(1, round((size - empty) / per_route))):
        _add_route(watch, index)
    return watch, series(watch.registry)


async def _scrape(app: Any, extra: Headers) -> bytes:
    headers = [(b"host", b"127.0.0.1:8000"), *extra]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/metrics",
        "raw_path": b"/metrics",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    chunks: list[bytes] = []
    status: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"GET /metrics answered {status}")
    return b"".join(chunks)


MIN_ROUNDS, MAX_ROUNDS = 15, 300


def _compare(
    app: Any, registry: CollectorRegistry, headers: Headers, encode: Encoder, seconds: float
) -> Samples:
    """Seconds per scrape: ``encode(registry)`` and ``GET /metrics`` through ``app``.

    One scrape per sample, in as many interleaved rounds as fit in about ``seconds``
    (within ``MIN_ROUNDS`` and ``MAX_ROUNDS``): many short samples resist the machine's
    noise better than a few long ones. A full collection before each sample keeps the
    cyclic garbage collector, which a big registry makes slow, from landing at random in
    one setup's samples.
    """
    loop = asyncio.new_event_loop()
    try:
        started = perf_counter()
        encode(registry)
        once = perf_counter() - started
        rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(seconds / (2 * once))))

        def run(setup: str) -> float:
            gc.collect()  # each sample starts from the same collector state
            started = perf_counter()
            if setup == "middleware":
                loop.run_until_complete(_scrape(app, headers))
            else:
                encode(registry)
            return perf_counter() - started

        return interleave(("generate_latest", "middleware"), rounds, run, discard=1)
    finally:
        loop.close()


def bench_scrape(seconds: float, sizes: tuple[int, ...] = SIZES) -> Table:
    """Section 3: ms per scrape, middleware vs ``generate_latest``, per registry size."""
    table = Table(
        "3. Per scrape (GET /metrics through the middleware vs generate_latest)",
        ["series", "format: setup", "ms/scrape", "ratio vs direct encoder", "spread", "target"],
    )
    openmetrics = choose_encoder(PROMETHEUS_ACCEPT.decode())[0]

    def openmetrics_gzip(registry: CollectorRegistry) -> bytes:
        return gzip.compress(openmetrics(registry), compresslevel=1)

    accept = (b"accept", PROMETHEUS_ACCEPT)
    formats: tuple[tuple[str, Headers, str, Encoder], ...] = (
        ("text 0.0.4", [], "generate_latest", generate_latest),
        ("Prometheus 3 (OpenMetrics, gzip)", [accept, (b"accept-encoding", b"gzip")],
         "encoder + gzip level 1", openmetrics_gzip),
    )  # fmt: skip
    for size in sizes:
        watch, count = filled(size)
        app = FastAPI()
        watch.instrument_app(app)
        try:
            lines = asyncio.run(_scrape(app, [])).count(b"\n")
            if lines < count:
                raise RuntimeError(f"the scrape has {lines} lines for {count} series")
            for fmt, headers, baseline, encode in formats:
                samples = _compare(app, watch.registry, headers, encode, seconds)
                for setup, name in (("generate_latest", baseline),
                                    ("middleware", "poolwatch middleware")):  # fmt: skip
                    share = ratio(samples, setup, "generate_latest")
                    table.add(
                        f"{count:,}",
                        f"{fmt}: {name}",
                        f"{statistics.median(samples[setup]) * 1e3:.2f}",
                        f"{share:.3f}x",
                        spread(samples, setup, "generate_latest"),
                        target=Target("≤ 1.20x", share <= 1.2) if setup == "middleware" else None,
                    )
        finally:
            watch.uninstrument()
    table.notes.append(
        f"One scrape per sample (after gc.collect()), medians of as many interleaved rounds as "
        f"fit in ~{seconds:g} s per pair ({MIN_ROUNDS} to {MAX_ROUNDS}), after a discarded "
        "one. Prometheus 3 rows: its Accept and Accept-Encoding headers; the baseline is the "
        "encoder prometheus_client.exposition.choose_encoder picks for that Accept header, "
        "called directly, then gzip.compress(level 1)."
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per pair of rows")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(bench_scrape(args.seconds, sizes).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
