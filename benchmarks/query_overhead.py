"""Per-query cost of poolwatch's instrumentation, against the uninstrumented baseline.

    python benchmarks/query_overhead.py [--rounds 9] [--ops 3000] [--pg postgresql://...]

Bare and instrumented runs are interleaved (A B A B ...) on the same engine, by
instrumenting and uninstrumenting between rounds, so machine noise hits both alike. The
result is the ratio of medians; absolute microseconds are printed for scale only.
Peer tools (OpenTelemetry, prometheus-fastapi-instrumentator) join this table in the
benchmark suite of a later issue.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Awaitable, Callable
from time import perf_counter

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

from poolwatch import PoolWatch


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "bench_item"


def _median_us(samples: list[float], ops: int) -> float:
    return statistics.median(samples) / ops * 1e6


def bench_sqlalchemy(url: str, rounds: int, ops: int) -> tuple[float, float]:
    engine = create_engine(url)
    table = Table(
        "bench_sa", MetaData(), Column("id", Integer, primary_key=True), Column("v", String)
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.delete())
        conn.execute(insert(table), [{"id": i, "v": f"v{i}"} for i in range(1, 11)])
    query = select(table).where(table.c.id == 1)
    bare: list[float] = []
    watched: list[float] = []
    with engine.connect() as conn:
        for _ in range(rounds):
            for instrumented in (False, True):
                watch = PoolWatch()
                if instrumented:
                    watch.instrument_sqlalchemy(engine, pool="bench")
                started = perf_counter()
                for _ in range(ops):
                    conn.execute(query).all()
                (watched if instrumented else bare).append(perf_counter() - started)
                watch.uninstrument()
    engine.dispose()
    return _median_us(bare, ops), _median_us(watched, ops)


async def bench_tortoise(url: str, rounds: int, ops: int) -> tuple[float, float]:
    EXECUTOR_CACHE.clear()  # Tortoise keeps per-connection-name SQL across re-inits
    await Tortoise.init(db_url=url, modules={"bench": [__name__]})
    await Tortoise.generate_schemas(safe=True)
    await Item.all().delete()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, 11)])

    async def run(op: Callable[[], Awaitable[object]]) -> float:
        started = perf_counter()
        for _ in range(ops):
            await op()
        return perf_counter() - started

    bare: list[float] = []
    watched: list[float] = []
    for _ in range(rounds):
        for instrumented in (False, True):
            watch = PoolWatch()
            if instrumented:
                watch.instrument_tortoise()
            (watched if instrumented else bare).append(await run(lambda: Item.get(id=1)))
            watch.uninstrument()
    await Tortoise.close_connections()
    return _median_us(bare, ops), _median_us(watched, ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--pg", help="PostgreSQL DSN (postgresql://user@127.0.0.1:port/db)")
    args = parser.parse_args()
    rows = [
        ("SQLAlchemy core select by pk, SQLite memory",
         bench_sqlalchemy("sqlite://", args.rounds, args.ops)),
        ("Tortoise get by pk, SQLite memory",
         asyncio.run(bench_tortoise("sqlite://:memory:", args.rounds, args.ops))),
    ]  # fmt: skip
    if args.pg:
        rest = args.pg.split("://", 1)[1]
        rows.append(
            ("SQLAlchemy core select by pk, PostgreSQL (psycopg)",
             bench_sqlalchemy(f"postgresql+psycopg://{rest}", args.rounds, args.ops // 3))
        )  # fmt: skip
        rows.append(
            ("Tortoise get by pk, PostgreSQL (asyncpg)",
             asyncio.run(bench_tortoise(f"asyncpg://{rest}", args.rounds, args.ops // 3)))
        )  # fmt: skip
    print(f"| case | bare µs/query | poolwatch µs/query | ratio |  (median of {args.rounds})")
    print("|---|---|---|---|")
    for name, (bare, watched) in rows:
        print(f"| {name} | {bare:.1f} | {watched:.1f} | {watched / bare:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
