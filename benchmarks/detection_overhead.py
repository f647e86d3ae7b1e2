"""What N+1 detection costs on top of plain query counting.

    python benchmarks/detection_overhead.py [--rounds 9] [--requests 200]

Each "request" is a ``poolwatch.scope`` block of 50 statements from one loop (the worst
case: every request is judged an N+1 and reported). Three setups run interleaved on one
engine, so machine noise hits all alike:

* bare: no poolwatch;
* counting: poolwatch with ``nplusone_mode="off"`` (metrics only);
* detection: poolwatch with ``nplusone_mode="log"`` (call site, fingerprint, grouping,
  judging at the end of the scope, the finding reported; log output discarded).

Detection cost per statement is (detection - counting) / 50. A last row reads an ORM
attribute of loaded objects with and without poolwatch: detection needs no patched
attribute access, so that ratio stays at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from collections.abc import Callable
from time import perf_counter

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

import poolwatch
from poolwatch import PoolWatch

PER_REQUEST = 50
SETUPS = ("bare", "counting", "detection")


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "bench_detect_item"


def _watch(setup: str) -> PoolWatch | None:
    if setup == "bare":
        return None
    return PoolWatch(nplusone_mode="off" if setup == "counting" else "log")


def _interleaved(rounds: int, run: Callable[[str], float]) -> dict[str, float]:
    samples: dict[str, list[float]] = {s: [] for s in SETUPS}
    for _ in range(rounds):
        for setup in SETUPS:
            samples[setup].append(run(setup))
    return {s: statistics.median(v) for s, v in samples.items()}


def bench_sqlalchemy(rounds: int, requests: int) -> dict[str, float]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Row(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])
        session.commit()

    def run(setup: str) -> float:
        watch = _watch(setup)
        if watch is not None:
            watch.instrument_sqlalchemy(engine, pool="bench")
        with engine.connect() as conn:
            started = perf_counter()
            for _ in range(requests):
                with poolwatch.scope("bench"):
                    for i in range(1, PER_REQUEST + 1):
                        conn.execute(select(Row.name).where(Row.id == i)).all()
            elapsed = perf_counter() - started
        if watch is not None:
            watch.uninstrument()
        return elapsed

    try:
        return _interleaved(rounds, run)
    finally:
        engine.dispose()


async def bench_tortoise(rounds: int, requests: int) -> dict[str, float]:
    # Tortoise 1.x keeps its connections in a context variable of the task that ran
    # init, so every round runs inside this one coroutine.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"bench": [__name__]})
    await Tortoise.generate_schemas()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])
    samples: dict[str, list[float]] = {s: [] for s in SETUPS}
    for _ in range(rounds):
        for setup in SETUPS:
            watch = _watch(setup)
            if watch is not None:
                watch.instrument_tortoise()
            started = perf_counter()
            for _ in range(requests):
                with poolwatch.scope("bench"):
                    for i in range(1, PER_REQUEST + 1):
                        await Item.get(id=i)
            samples[setup].append(perf_counter() - started)
            if watch is not None:
                watch.uninstrument()
    await Tortoise.close_connections()
    return {s: statistics.median(v) for s, v in samples.items()}


def bench_attribute_reads(rounds: int) -> tuple[float, float]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Row(id=i, name=f"n{i}") for i in range(1, 1001)])
        session.commit()
        rows = session.scalars(select(Row)).all()

        def read() -> float:
            started = perf_counter()
            for _ in range(200):
                for row in rows:
                    row.name  # noqa: B018 - the attribute read is what is measured
            return perf_counter() - started

        bare, watched = [], []
        for _ in range(rounds):
            bare.append(read())
            watch = PoolWatch()
            watch.instrument_sqlalchemy(engine, pool="attrs")
            watched.append(read())
            watch.uninstrument()
    engine.dispose()
    return statistics.median(bare), statistics.median(watched)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    logging.getLogger("poolwatch.findings").disabled = True
    statements = args.requests * PER_REQUEST
    print(f"{PER_REQUEST} statements per request, median of {args.rounds} interleaved rounds\n")
    print("| case | bare µs/stmt | counting µs/stmt | detection µs/stmt "
          "| detection cost µs/stmt | per request µs | detection / bare |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, timings in (
        ("SQLAlchemy select by pk, SQLite memory", bench_sqlalchemy(args.rounds, args.requests)),
        (
            "Tortoise get by pk, SQLite memory",
            asyncio.run(bench_tortoise(args.rounds, args.requests)),
        ),
    ):
        bare, counting, detection = (timings[s] / statements * 1e6 for s in SETUPS)
        cost = detection - counting
        print(
            f"| {name} | {bare:.1f} | {counting:.1f} | {detection:.1f} | {cost:.2f} "
            f"| {cost * PER_REQUEST:.0f} | {detection / bare:.3f}x |"
        )
    bare_reads, watched_reads = bench_attribute_reads(args.rounds)
    print(f"\nORM attribute reads (200k): bare {bare_reads * 1e3:.1f} ms, with poolwatch "
          f"{watched_reads * 1e3:.1f} ms, ratio {watched_reads / bare_reads:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
