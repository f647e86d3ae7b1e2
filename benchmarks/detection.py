"""What N+1 detection costs on top of plain query counting.

    python benchmarks/detection.py [--rounds 9] [--requests 200]

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
around its own calls) is measured too. A last pair of rows reads an ORM attribute of
loaded objects with and without poolwatch: detection patches no attribute access, so
that ratio stays at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

from _timing import Samples, Table, interleave, interleave_async, ratio, spread
from sqlalchemy import String, bindparam, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

import poolwatch
from poolwatch import PoolWatch
from poolwatch.context import WorkScope
from poolwatch.events import Finding
from poolwatch.queries.recorder import QueryRecorder

__all__ = ["bench_detection"]

PER_REQUEST = 50
SETUPS = ("bare", "counting", "detection")
SETUP_NAMES = {
    "bare": "bare",
    "counting": 'counting (nplusone_mode="off")',
    "detection": 'detection (nplusone_mode="log")',
}


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
               params: object, *, pool: str, dialect: str = "") -> None:  # fmt: skip
        started = perf_counter()
        super().record(work, sql, seconds, failed, params, pool=pool, dialect=dialect)
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


def bench_sqlalchemy(rounds: int, requests: int) -> Samples:
    """Seconds per round of ``requests`` scopes, by setup."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Row(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])
        session.commit()
    # One statement object: SQLAlchemy compiles it once, as an app's would be.
    query = select(Row.name).where(Row.id == bindparam("row_id"))

    def run(setup: str) -> float:
        watch = _watch(setup)
        if watch is not None:
            watch.instrument_sqlalchemy(engine, pool="bench")
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
        return interleave(SETUPS, rounds, run, discard=1)
    finally:
        engine.dispose()


async def bench_tortoise(rounds: int, requests: int) -> Samples:
    """Seconds per round of ``requests`` scopes, by setup."""
    # Tortoise 1.x keeps its connections in a context variable of the task that ran
    # init, so every round runs inside this one coroutine.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"bench": [__name__]})
    await Tortoise.generate_schemas()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])

    async def run(setup: str) -> float:
        watch = _watch(setup)
        if watch is not None:
            watch.instrument_tortoise()
        started = perf_counter()
        for _ in range(requests):
            with poolwatch.scope("bench"):
                for i in range(1, PER_REQUEST + 1):
                    await Item.get(id=i)
        elapsed = perf_counter() - started
        if watch is not None:
            watch.uninstrument()
        return elapsed

    try:
        return await interleave_async(SETUPS, rounds, run, discard=1)
    finally:
        await Tortoise.close_connections()


def bench_attribute_reads(rounds: int) -> Samples:
    """Seconds for 200k ORM attribute reads, without and with poolwatch."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Row(id=i, name=f"n{i}") for i in range(1, 1001)])
        session.commit()
        rows = session.scalars(select(Row)).all()

        def run(setup: str) -> float:
            watch = None
            if setup == "poolwatch":
                watch = PoolWatch()
                watch.instrument_sqlalchemy(engine, pool="attrs")
            started = perf_counter()
            for _ in range(200):
                for row in rows:
                    row.name  # noqa: B018 - the attribute read is what is measured
            elapsed = perf_counter() - started
            if watch is not None:
                watch.uninstrument()
            return elapsed

        samples = interleave(("bare", "poolwatch"), rounds, run)
    engine.dispose()
    return samples


@contextmanager
def _findings_silenced() -> Iterator[None]:
    findings = logging.getLogger("poolwatch.findings")
    was = findings.disabled
    findings.disabled = True
    try:
        yield
    finally:
        findings.disabled = was


def bench_detection(rounds: int, requests: int) -> Table:
    """Section 4: µs per statement bare, counting, detecting; time inside detection."""
    table = Table(
        f"4. N+1 detection ({PER_REQUEST} statements per scope, one loop: the worst case)",
        ["case", "setup", "µs/stmt", "ratio vs bare", "spread", "inside detection µs/stmt",
         "target"],
    )  # fmt: skip
    statements = requests * PER_REQUEST
    cases: list[tuple[str, Callable[[], Samples]]] = [
        ("SQLAlchemy select by pk, SQLite memory",
         lambda: bench_sqlalchemy(rounds, requests)),
        ("Tortoise get by pk, SQLite memory",
         lambda: asyncio.run(bench_tortoise(rounds, requests))),
    ]  # fmt: skip
    extra: list[str] = []
    with _findings_silenced():
        for case, bench in cases:
            TimedRecorder.spent = 0.0
            samples = bench()
            # the recorder ran in the discarded round too
            inside = TimedRecorder.spent / (statements * (rounds + 1)) * 1e6
            us = {s: statistics.median(v) / statements * 1e6 for s, v in samples.items()}
            for setup in SETUPS:
                table.add(
                    case,
                    SETUP_NAMES[setup],
                    f"{us[setup]:.1f}",
                    f"{ratio(samples, setup, 'bare'):.3f}x",
                    spread(samples, setup, "bare"),
                    f"{inside:.2f} ({inside * PER_REQUEST:.0f} per scope)"
                    if setup == "detection"
                    else "-",
                )
            extra.append(
                f"{case}: detection - counting = {us['detection'] - us['counting']:+.1f} "
                f"µs/stmt end to end."
            )
        reads = bench_attribute_reads(rounds)
    for setup in ("bare", "poolwatch"):
        table.add(
            "ORM attribute read (1,000 rows x 200)",
            setup,
            f"{statistics.median(reads[setup]) / 200_000 * 1e6:.3f}",
            f"{ratio(reads, setup, 'bare'):.3f}x",
            spread(reads, setup, "bare"),
            "-",
        )
    table.notes.append(
        f"Median of {rounds} interleaved rounds (after a discarded one) of {requests} scopes "
        f"({statements} statements) "
        "per setup; no target was set for this section. " + " ".join(extra)
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print(bench_detection(args.rounds, args.requests).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
