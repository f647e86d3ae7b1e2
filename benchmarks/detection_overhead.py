"""What N+1 detection costs on top of plain query counting.

    python benchmarks/detection_overhead.py [--rounds 9] [--requests 200]

Each "request" is a ``poolwatch.scope`` block of 50 statements from one loop (the worst
case: every request is judged an N+1 and reported). Three setups run interleaved on one
engine, so machine noise hits all alike:

* bare: no poolwatch;
* counting: poolwatch with ``nplusone_mode="off"`` (metrics only);
* detection: poolwatch with ``nplusone_mode="log"`` (call site, fingerprint, grouping,
  judging at the end of the scope, the finding reported; log output discarded).

End to end, detection cost per statement is (detection - counting) / 50; on a shared
machine that difference is within the noise of a 200 µs Tortoise statement, so the time
spent inside detection itself (the recorder, per statement and per request, timed
around its own calls) is measured too. A last row reads an ORM attribute of loaded
objects with and without poolwatch: detection patches no attribute access, so that ratio
stays at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from collections.abc import Callable
from time import perf_counter

from sqlalchemy import String, bindparam, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

import poolwatch
from poolwatch import PoolWatch
from poolwatch.context import WorkScope
from poolwatch.events import Finding
from poolwatch.recorder import QueryRecorder

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


class TimedRecorder(QueryRecorder):
    """The real recorder, with the time spent in it added up."""

    spent = 0.0

    def record(self, work: WorkScope | None, sql: str, seconds: float, failed: bool,
               params: object, *, pool: str) -> None:  # fmt: skip
        started = perf_counter()
        super().record(work, sql, seconds, failed, params, pool=pool)
        TimedRecorder.spent += perf_counter() - started

    def scope_closed(self, work: WorkScope) -> list[Finding]:
        started = perf_counter()
        try:
            return super().scope_closed(work)
        finally:
            TimedRecorder.spent += perf_counter() - started


def _watch(setup: str) -> PoolWatch | None:
    if setup == "bare":
        return None
    watch = PoolWatch(nplusone_mode="off" if setup == "counting" else "log")
    if setup == "detection":
        # The same recorder with a clock around its calls; set before any pool is made.
        watch.recorder = TimedRecorder(watch.settings, watch.metrics, watch._suggest)
    return watch


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
        # One statement object: SQLAlchemy compiles it once, as an app's would be.
        query = select(Row.name).where(Row.id == bindparam("row_id"))
        with engine.connect() as conn:
            started = perf_counter()
            for _ in range(requests):
                with poolwatch.scope("bench"):
                    for i in range(1, PER_REQUEST + 1):
                        conn.execute(query, {"row_id": i}).all()
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
    print("| case | bare µs/stmt | counting µs/stmt | detection µs/stmt | detection / bare "
          "| inside detection µs/stmt | per request µs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    cases: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("SQLAlchemy select by pk, SQLite memory",
         lambda: bench_sqlalchemy(args.rounds, args.requests)),
        ("Tortoise get by pk, SQLite memory",
         lambda: asyncio.run(bench_tortoise(args.rounds, args.requests))),
    ]  # fmt: skip
    for name, bench in cases:
        TimedRecorder.spent = 0.0
        timings = bench()
        bare, counting, detection = (timings[s] / statements * 1e6 for s in SETUPS)
        inside = TimedRecorder.spent / (statements * args.rounds) * 1e6
        print(
            f"| {name} | {bare:.1f} | {counting:.1f} | {detection:.1f} "
            f"| {detection / bare:.3f}x | {inside:.2f} | {inside * PER_REQUEST:.0f} |"
        )
    bare_reads, watched_reads = bench_attribute_reads(args.rounds)
    print(f"\nORM attribute reads (200k): bare {bare_reads * 1e3:.1f} ms, with poolwatch "
          f"{watched_reads * 1e3:.1f} ms, ratio {watched_reads / bare_reads:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
