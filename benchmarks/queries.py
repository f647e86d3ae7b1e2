"""Per-query cost of poolwatch and its peers, against the uninstrumented baseline.

    python benchmarks/queries.py [--rounds 15] [--ops 3000] [--pg postgresql://...]

Two statements, each looked up by primary key with a different id every time:

* SQLAlchemy core: ``select(t).where(t.c.id == bindparam("row_id"))``, built once and
  executed on one open connection (SQLAlchemy compiles it once and caches it);
* Tortoise-ORM: ``await Item.get(id=...)`` (a checkout and a release per statement).

on SQLite in memory and, with ``--pg``, on PostgreSQL in a database of their own (SQLAlchemy
through psycopg 3, Tortoise through asyncpg). Setups:

* bare: nothing instrumented;
* poolwatch: ``PoolWatch()`` with defaults; the statements run outside any request or
  scope, as in a script (what detection adds inside a request is section 4);
* OpenTelemetry: ``SQLAlchemyInstrumentor().instrument(engine=...)`` /
  ``TortoiseORMInstrumentor().instrument()`` with an SDK ``TracerProvider`` whose
  ``BatchSpanProcessor`` (default queue and batch sizes) hands spans to an exporter that
  discards them (no network; the batching thread still runs), and, for SQLAlchemy, an SDK
  ``MeterProvider`` with an ``InMemoryMetricReader`` (aggregation happens, export never);
* floor (SQLAlchemy only): a ``before_cursor_execute``/``after_cursor_execute`` event
  pair observing one prometheus_client ``Histogram``: the least a user could write.

Interleaved rounds (bare, poolwatch, OpenTelemetry, floor, bare, ...). Each SQLAlchemy round
uses a new engine: an engine that ever had an event listener keeps dispatching events
after the listener is removed (``Engine._has_events`` stays set), which would slow the
bare rounds that follow. Tortoise runs every round inside one ``Tortoise.init`` (it keeps
its connections in a context variable of the task that ran init), instrumenting and
uninstrumenting between rounds. After each instrumented round the instrumentation is
checked to have seen the statements.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter, process_time
from typing import Any

from _pg import temporary_database, with_scheme
from _timing import Samples, Table, Target, column, interleave, interleave_async, ratio, spread
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy import Table as SATable
from sqlalchemy.engine import Engine
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

from poolwatch import PoolWatch

__all__ = ["bench_queries"]

ROWS = 10
WARMUP = 200
SA_SETUPS = ("bare", "poolwatch", "opentelemetry", "floor")
TORTOISE_SETUPS = ("bare", "poolwatch", "opentelemetry")
SETUP_NAMES = {
    "bare": "bare",
    "poolwatch": "poolwatch",
    "opentelemetry": "OpenTelemetry (SDK, batch span processor)",
    "floor": "floor: cursor event pair + 1 Histogram",
}

# An instrumentation in place: stop() removes it and returns the statements it observed
# (the check that it really was in place; bare returns infinity: nothing to check).
Stop = Callable[[], float]


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "bench_item"


ROWS_TABLE = SATable(
    "bench_sa", MetaData(), Column("id", Integer, primary_key=True), Column("v", String(50))
)
# Built once, as an application's would be; SQLAlchemy caches its compiled form.
BY_ID = select(ROWS_TABLE).where(ROWS_TABLE.c.id == bindparam("row_id"))


class _Discard(SpanExporter):
    """Counts the spans it is handed, keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class _OpenTelemetry:
    """The SDK providers the OpenTelemetry setup reports to (shut down after a case)."""

    def __init__(self) -> None:
        self.exporter = _Discard()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def spans(self) -> float:
        self.tracer_provider.force_flush()
        return self.exporter.spans

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@contextmanager
def _opentelemetry() -> Iterator[_OpenTelemetry]:
    otel = _OpenTelemetry()
    try:
        yield otel
    finally:
        otel.shutdown()


def _pool_statements(watch: PoolWatch, pool: str) -> float:
    value = watch.registry.get_sample_value(
        "db_client_operation_duration_seconds_count",
        {"pool": pool, "operation": "SELECT", "route": "none"},
    )
    return value or 0.0


# -- SQLAlchemy ----------------------------------------------------------------------------


def _instrument_engine(setup: str, engine: Engine, otel: _OpenTelemetry) -> Stop:
    if setup == "bare":
        return lambda: float("inf")
    if setup == "poolwatch":
        watch = PoolWatch()
        watch.instrument_sqlalchemy(engine, pool="bench")

        def stop_watch() -> float:
            seen = _pool_statements(watch, "bench")
            watch.uninstrument()
            return seen

        return stop_watch
    if setup == "opentelemetry":
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        before = otel.spans()
        SQLAlchemyInstrumentor().instrument(
            engine=engine,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
            skip_dep_check=True,  # the SQLAlchemy 2.1 in use is newer than it declares
        )

        def stop_otel() -> float:
            SQLAlchemyInstrumentor().uninstrument()
            return otel.spans() - before

        return stop_otel
    if setup == "floor":
        histogram = Histogram(
            "bench_query_seconds", "Statement duration.", registry=CollectorRegistry()
        )

        # (conn, cursor, statement, parameters, context, executemany); context is per call
        def started(*args: Any) -> None:
            args[4]._bench_started = perf_counter()

        def ended(*args: Any) -> None:
            histogram.observe(perf_counter() - args[4]._bench_started)

        event.listen(engine, "before_cursor_execute", started)
        event.listen(engine, "after_cursor_execute", ended)

        def stop_floor() -> float:
            event.remove(engine, "before_cursor_execute", started)
            event.remove(engine, "after_cursor_execute", ended)
            for metric in histogram.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_count"):
                        return float(sample.value)
            return 0.0

        return stop_floor
    raise ValueError(f"unknown setup {setup!r}")


def bench_sqlalchemy(url: str, rounds: int, ops: int) -> tuple[Samples, Samples]:
    """Seconds per statement, wall clock and process CPU, by setup, SQLAlchemy on ``url``."""
    memory = url.startswith("sqlite")
    if not memory:
        engine = create_engine(url)
        ROWS_TABLE.metadata.drop_all(engine)
        ROWS_TABLE.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(ROWS_TABLE), [{"id": i, "v": f"v{i}"} for i in range(1, ROWS + 1)])
        engine.dispose()
    ids = [{"row_id": i % ROWS + 1} for i in range(ops)]

    with _opentelemetry() as otel:

        def run(setup: str) -> tuple[float, float]:
            engine = create_engine(url)  # new every round: see the module docstring
            if memory:
                ROWS_TABLE.metadata.create_all(engine)
                with engine.begin() as conn:
                    rows = [{"id": i, "v": f"v{i}"} for i in range(1, ROWS + 1)]
                    conn.execute(insert(ROWS_TABLE), rows)
            stop = _instrument_engine(setup, engine, otel)
            try:
                with engine.connect() as conn:
                    for params in ids[:WARMUP]:
                        conn.execute(BY_ID, params).all()
                    started, cpu_started = perf_counter(), process_time()
                    for params in ids:
                        conn.execute(BY_ID, params).all()
                    elapsed = perf_counter() - started
                    cpu = process_time() - cpu_started
            finally:
                seen = stop()
                engine.dispose()
            if seen < 1:
                raise RuntimeError(f"{setup} observed no statement")
            return elapsed / ops, cpu / ops

        samples = interleave(SA_SETUPS, rounds, run, discard=1)
        return column(samples, 0), column(samples, 1)


# -- Tortoise ------------------------------------------------------------------------------


def _instrument_tortoise(setup: str, otel: _OpenTelemetry) -> Stop:
    if setup == "bare":
        return lambda: float("inf")
    if setup == "poolwatch":
        watch = PoolWatch()
        watch.instrument_tortoise()

        def stop_watch() -> float:
            seen = _pool_statements(watch, "default")
            watch.uninstrument()
            return seen

        return stop_watch
    if setup == "opentelemetry":
        from opentelemetry.instrumentation.tortoiseorm import TortoiseORMInstrumentor

        before = otel.spans()
        TortoiseORMInstrumentor().instrument(
            tracer_provider=otel.tracer_provider, skip_dep_check=True
        )

        def stop_otel() -> float:
            TortoiseORMInstrumentor().uninstrument()
            return otel.spans() - before

        return stop_otel
    raise ValueError(f"unknown setup {setup!r}")


async def bench_tortoise(url: str, rounds: int, ops: int) -> tuple[Samples, Samples]:
    """Seconds per statement, wall clock and process CPU, by setup, Tortoise on ``url``."""
    EXECUTOR_CACHE.clear()  # Tortoise keeps per-connection-name SQL across re-inits
    await Tortoise.init(db_url=url, modules={"bench": [__name__]})
    await Tortoise.generate_schemas(safe=True)
    await Item.all().delete()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, ROWS + 1)])
    ids = [i % ROWS + 1 for i in range(ops)]

    try:
        with _opentelemetry() as otel:

            async def run(setup: str) -> tuple[float, float]:
                stop = _instrument_tortoise(setup, otel)
                try:
                    for i in ids[:WARMUP]:
                        await Item.get(id=i)
                    started, cpu_started = perf_counter(), process_time()
                    for i in ids:
                        await Item.get(id=i)
                    elapsed = perf_counter() - started
                    cpu = process_time() - cpu_started
                finally:
                    seen = stop()
                if seen < 1:
                    raise RuntimeError(f"{setup} observed no statement")
                return elapsed / ops, cpu / ops

            samples = await interleave_async(TORTOISE_SETUPS, rounds, run, discard=1)
            return column(samples, 0), column(samples, 1)
    finally:
        await Tortoise.close_connections()


# -- the table -----------------------------------------------------------------------------

# (case, setup) -> (the ratio vs bare to stay at or under, how the goal reads)
TARGETS = {
    ("SQLAlchemy core select by pk, SQLite memory", "poolwatch"): (1.25, "≤ 1.25x"),
    ("Tortoise get by pk, PostgreSQL (asyncpg)", "poolwatch"): (1.03, "< 1.03x (under 3%)"),
}


def bench_queries(rounds: int, ops: int, pg: str | None) -> Table:
    """Section 2: µs per statement by setup, SQLite and (with ``pg``) PostgreSQL."""
    table = Table(
        "2. Per query",
        ["case", "setup", "µs/query", "ratio vs bare", "spread", "CPU µs/query",
         "CPU added, % of bare µs/query", "target"],
    )  # fmt: skip
    cases: list[tuple[str, Callable[[], tuple[Samples, Samples]]]] = [
        ("SQLAlchemy core select by pk, SQLite memory",
         lambda: bench_sqlalchemy("sqlite://", rounds, ops * 4)),
        ("Tortoise get by pk, SQLite memory",
         lambda: asyncio.run(bench_tortoise("sqlite://:memory:", rounds, ops))),
    ]  # fmt: skip
    pg_ops = ops // 4  # and twice the rounds: its target is the tightest
    with temporary_database(pg) if pg else _nothing() as url:
        if url:
            cases += [
                ("SQLAlchemy core select by pk, PostgreSQL (psycopg)",
                 lambda: bench_sqlalchemy(with_scheme(url, "postgresql+psycopg"), rounds, ops)),
                ("Tortoise get by pk, PostgreSQL (asyncpg)",
                 lambda: asyncio.run(
                     bench_tortoise(with_scheme(url, "asyncpg"), rounds * 2, pg_ops))),
            ]  # fmt: skip
        for case, bench in cases:
            wall, cpu = bench()
            bare_wall = statistics.median(wall["bare"])
            bare_cpu = statistics.median(cpu["bare"])
            for setup in wall:
                share = ratio(wall, setup, "bare")
                target = None
                if (case, setup) in TARGETS:
                    limit, goal = TARGETS[case, setup]
                    target = Target(goal, share <= limit if goal.startswith("≤") else share < limit)
                added = statistics.median(cpu[setup]) - bare_cpu
                table.add(
                    case,
                    SETUP_NAMES[setup],
                    f"{statistics.median(wall[setup]) * 1e6:.1f}",
                    f"{share:.3f}x",
                    spread(wall, setup, "bare"),
                    f"{statistics.median(cpu[setup]) * 1e6:.1f}",
                    "-" if setup == "bare" else f"{added * 1e6:+.1f} µs ({added / bare_wall:+.1%})",
                    target=target,
                )
    if not pg:
        table.notes.append("PostgreSQL rows skipped: no --pg DSN.")
    table.notes.append(
        f"Median of {rounds} interleaved rounds ({rounds * 2} for Tortoise on PostgreSQL), "
        "after one discarded round; statements per round: SQLAlchemy SQLite "
        f"{ops * 4}, Tortoise SQLite {ops}, SQLAlchemy PostgreSQL {ops}, Tortoise "
        f"PostgreSQL {pg_ops}; {WARMUP} warm-up statements before each. CPU: this process's "
        "CPU time (all its threads, so OpenTelemetry's export thread too; not the database "
        "server's). The CPU a setup adds, over bare µs/query, estimates its wall-clock cost "
        "with less noise than the wall-clock ratio, as the added work runs between round "
        "trips."
    )
    return table


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--pg", help="PostgreSQL DSN (postgresql://user@127.0.0.1:port/db)")
    args = parser.parse_args()
    print(bench_queries(args.rounds, args.ops, args.pg).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
