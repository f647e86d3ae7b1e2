"""What N+1 detection, unused-eager-load tracking included, costs on top of counting.

    python benchmarks/detection.py [--rounds 9] [--requests 100] [--cases sa,tortoise,...]

Each "request" is a ``poolwatch.scope`` block of about 50 statements from one loop: the
worst case, every request has findings and they are reported. Three setups run
interleaved on one database, so machine noise hits all alike:

* bare: no poolwatch;
* counting: poolwatch with ``nplusone_mode="off"`` (metrics only);
* detection: poolwatch with ``nplusone_mode="log"`` (call site, fingerprint, grouping,
  eager-load tracking, judging at the end of the scope, findings reported; log output
  discarded).

The cases, on SQLite in memory:

* ``sa``: SQLAlchemy core select by primary key on one connection (the statement alone);
* ``sa-orm``: a Session per request, ORM select by primary key (the ``do_orm_execute``
  listener on every statement, the held-idle samples of a checkout in the request);
* ``sa-eager``: a Session per request, each query with ``selectinload`` of two
  relations, one of them read on every row and one never (an ``unused_eager_load``
  finding per request, beside the N+1s);
* ``tortoise``: Tortoise ``get`` by primary key (the ``QuerySet._execute`` wrapper on
  every statement);
* ``tortoise-eager``: each query with ``prefetch_related`` of two relations, one read on
  every row and one never.

End to end, detection's cost per statement is (detection - counting) / statements, in
wall time and in process CPU time (which leaves out the time other processes take the
CPU, so is steadier on a shared machine). On a 200-500 µs Tortoise statement that
difference is within the noise, so the time spent inside detection is measured too,
with clocks around each call (see :mod:`_detection_clocks`): the recorder's calls and
the eager-load hooks ("inside", what the target is held against), and beside it the
held-idle bookkeeping's call-path walks (the line that took a connection, and the one
that gave it back where the code may wait) and CPU-time samples. The clocked runs are
the counting and detection setups again, interleaved with the three above, so the
clocks cost the end-to-end figures nothing. Every figure is the median over rounds. A
last pair of rows reads an ORM attribute of loaded objects with and without poolwatch:
nothing patches attribute access outside a scope that tracks an eager load, so that
ratio stays at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter, process_time

import _detection_clocks as clocks
from _timing import Samples, Table, Target, interleave, interleave_async, ratio, spread
from sqlalchemy import Engine, ForeignKey, String, bindparam, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from tortoise import Tortoise, fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

import poolwatch
from poolwatch import PoolWatch

__all__ = ["CASES", "SQLALCHEMY_BODIES", "TORTOISE_BODIES", "bench_detection", "tortoise_database"]

PER_REQUEST = 50  # statements per scope in the single-statement cases
EAGER_QUERIES = 17  # queries per scope in the eager cases: 3 statements each
SETUPS = ("bare", "counting", "detection")
# The same two poolwatch setups with clocks inside (see _detection_clocks), run apart so
# that the clocks' own cost stays out of the end-to-end figures.
CLOCKED = {"counting": "counting, clocked", "detection": "detection, clocked"}
RUNS = (*SETUPS, *CLOCKED.values())
SETUP_NAMES = {
    "bare": "bare",
    "counting": 'counting (nplusone_mode="off")',
    "detection": 'detection (nplusone_mode="log")',
}
TARGET_US = 5.0  # poolwatch issue 26: detection under 5 µs per statement, inside


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Parent(Base):
    __tablename__ = "bench_parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Child]] = relationship(back_populates="parent")
    tags: Mapped[list[Tag]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "bench_children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("bench_parents.id"))
    name: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Tag(Base):
    __tablename__ = "bench_tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("bench_parents.id"))
    name: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="tags")


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "bench_detect_item"


class TParent(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "bench_detect_parent"


class TChild(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)
    parent: fields.ForeignKeyRelation[TParent] = fields.ForeignKeyField(
        "bench.TParent", related_name="children"
    )

    class Meta:
        app = "bench"
        table = "bench_detect_child"


class TTag(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)
    parent: fields.ForeignKeyRelation[TParent] = fields.ForeignKeyField(
        "bench.TParent", related_name="tags"
    )

    class Meta:
        app = "bench"
        table = "bench_detect_tag"


@dataclass
class Round:
    """One setup's round: wall and CPU seconds, statements, and the clocks' sums."""

    wall: float
    cpu: float
    statements: int
    inside: float = 0.0  # recorder + eager hooks
    eager: float = 0.0  # eager hooks alone
    sampling: float = 0.0  # held-idle CPU-time samples
    walks: float = 0.0  # held-idle call-path walks
    trimmed: int = 0  # clocked calls that were descheduled (see _detection_clocks)
    clock: float = 0.0  # the clocks' own cost, taken off the sums above


def _watch(run: str) -> PoolWatch | None:
    if run == "bare":
        return None
    watch = PoolWatch(
        nplusone_mode="log" if run.startswith("detection") else "off",
        ignore_modules=(clocks.MODULE,),
    )
    if run in CLOCKED.values():
        clocks.time_recorder(watch)  # before any pool is made: the observers call it
    return watch


@contextmanager
def _clocks(run: str) -> Iterator[None]:
    """The hooks' clocks, on for the clocked runs only (they must be on before the
    instrumentation installs the hooks)."""
    if run in CLOCKED.values():
        with clocks.clocked():
            yield
    else:
        yield


def _round(wall: float, cpu: float, statements: int) -> Round:
    sums = clocks.reset()
    return Round(
        wall,
        cpu,
        statements,
        inside=sums["recorder"] + sums["eager"],
        eager=sums["eager"],
        sampling=sums["sampling"],
        walks=sums["walks"],
        trimmed=int(sums["trimmed"]),
        clock=sums["clock"],
    )


class _Counter:
    """Statements per scope, as poolwatch counts them (the scope's ``queries``)."""

    def __init__(self) -> None:
        self.statements = 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        with poolwatch.scope("bench") as work:
            yield
        self.statements += work.queries


# -- SQLAlchemy ----------------------------------------------------------------------------


def _sqlalchemy_engine() -> Engine:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Row(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])
        for i in range(1, PER_REQUEST + 1):
            parent = Parent(id=i, name=f"p{i}")
            parent.children = [Child(name=f"c{i}-{k}") for k in range(2)]
            parent.tags = [Tag(name=f"t{i}-{k}") for k in range(2)]
            session.add(parent)
        session.commit()
    return engine


def _core_requests(engine: Engine, requests: int, counter: _Counter) -> None:
    # One statement object: SQLAlchemy compiles it once, as an app's would be.
    query = select(Row.name).where(Row.id == bindparam("row_id"))
    with engine.connect() as conn:
        for _ in range(requests):
            with counter.scope():
                for i in range(1, PER_REQUEST + 1):
                    conn.execute(query, {"row_id": i}).all()


def _orm_requests(engine: Engine, requests: int, counter: _Counter) -> None:
    for _ in range(requests):
        with counter.scope(), Session(engine) as session:
            for i in range(1, PER_REQUEST + 1):
                session.scalars(select(Parent).where(Parent.id == i)).one()


def _eager_requests(engine: Engine, requests: int, counter: _Counter) -> None:
    for _ in range(requests):
        with counter.scope(), Session(engine) as session:
            for i in range(1, EAGER_QUERIES + 1):
                query = (
                    select(Parent)
                    .where(Parent.id == i)
                    .options(selectinload(Parent.children), selectinload(Parent.tags))
                )
                parent = session.scalars(query).one()
                len(parent.children)  # read; the tags never are


def bench_sqlalchemy(
    rounds: int, requests: int, body: Callable[[Engine, int, _Counter], None]
) -> dict[str, list[Round]]:
    """Rounds of ``requests`` scopes of ``body``, by setup."""
    engine = _sqlalchemy_engine()

    def run(setup: str) -> Round:
        with _clocks(setup):
            watch = _watch(setup)
            if watch is not None:
                watch.instrument_sqlalchemy(engine, pool="bench")
            counter = _Counter()
            clocks.reset()
            started, cpu = perf_counter(), process_time()
            body(engine, requests, counter)
            result = _round(perf_counter() - started, process_time() - cpu, counter.statements)
            if watch is not None:
                watch.uninstrument()
        return result

    try:
        return interleave(RUNS, rounds, run, discard=1)
    finally:
        engine.dispose()


# -- Tortoise ------------------------------------------------------------------------------


async def _get_requests(requests: int, counter: _Counter) -> None:
    for _ in range(requests):
        with counter.scope():
            for i in range(1, PER_REQUEST + 1):
                await Item.get(id=i)


async def _prefetch_requests(requests: int, counter: _Counter) -> None:
    for _ in range(requests):
        with counter.scope():
            for i in range(1, EAGER_QUERIES + 1):
                for parent in await TParent.filter(id=i).prefetch_related("children", "tags"):
                    len(parent.children)  # read; the tags never are


async def tortoise_database() -> None:
    """Tortoise on SQLite in memory, with the cases' rows."""
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"bench": [__name__]})
    await Tortoise.generate_schemas()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, PER_REQUEST + 1)])
    for i in range(1, PER_REQUEST + 1):
        parent = await TParent.create(id=i, name=f"p{i}")
        for k in range(2):
            await TChild.create(name=f"c{i}-{k}", parent=parent)
            await TTag.create(name=f"t{i}-{k}", parent=parent)


async def bench_tortoise(
    rounds: int, requests: int, body: Callable[[int, _Counter], Awaitable[None]]
) -> dict[str, list[Round]]:
    """Rounds of ``requests`` scopes of ``body``, by setup."""
    # Tortoise 1.x keeps its connections in a context variable of the task that ran
    # init, so every round runs inside this one coroutine.
    await tortoise_database()

    async def run(setup: str) -> Round:
        with _clocks(setup):
            watch = _watch(setup)
            if watch is not None:
                watch.instrument_tortoise()
            counter = _Counter()
            clocks.reset()
            started, cpu = perf_counter(), process_time()
            await body(requests, counter)
            result = _round(perf_counter() - started, process_time() - cpu, counter.statements)
            if watch is not None:
                watch.uninstrument()
        return result

    try:
        return await interleave_async(RUNS, rounds, run, discard=1)
    finally:
        await Tortoise.close_connections()


# Each case's scopes: ``body(engine, scopes, counter)`` on SQLAlchemy,
# ``await body(scopes, counter)`` on Tortoise.
SQLALCHEMY_BODIES: dict[str, Callable[[Engine, int, _Counter], None]] = {
    "sa": _core_requests,
    "sa-orm": _orm_requests,
    "sa-eager": _eager_requests,
}
TORTOISE_BODIES: dict[str, Callable[[int, _Counter], Awaitable[None]]] = {
    "tortoise": _get_requests,
    "tortoise-eager": _prefetch_requests,
}

_NAMES = {
    "sa": "SQLAlchemy core select by pk",
    "sa-orm": "SQLAlchemy ORM select by pk, Session per request",
    "sa-eager": "SQLAlchemy ORM select + selectinload x2 (one read)",
    "tortoise": "Tortoise get by pk",
    "tortoise-eager": "Tortoise filter + prefetch_related x2 (one read)",
}
Bench = Callable[[int, int], dict[str, list[Round]]]


def _sqlalchemy_case(body: Callable[[Engine, int, _Counter], None]) -> Bench:
    return lambda rounds, requests: bench_sqlalchemy(rounds, requests, body)


def _tortoise_case(body: Callable[[int, _Counter], Awaitable[None]]) -> Bench:
    return lambda rounds, requests: asyncio.run(bench_tortoise(rounds, requests, body))


CASES: dict[str, tuple[str, Bench]] = {
    **{key: (_NAMES[key], _sqlalchemy_case(body)) for key, body in SQLALCHEMY_BODIES.items()},
    **{key: (_NAMES[key], _tortoise_case(body)) for key, body in TORTOISE_BODIES.items()},
}


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


def _per_statement(rounds: list[Round], statements: int, figure: Callable[[Round], float]) -> float:
    """The median over rounds of ``figure`` per statement, in µs."""
    return statistics.median(figure(r) / statements * 1e6 for r in rounds)


def bench_detection(rounds: int, requests: int, cases: list[str] | None = None) -> Table:
    """Section 4: µs per statement bare, counting, detecting; time inside detection."""
    table = Table(
        "4. N+1 detection with unused-eager-load tracking (about 50 statements per scope, "
        "findings in every one: the worst case)",
        ["case", "setup", "µs/stmt", "ratio vs bare", "ratio vs counting", "spread vs bare",
         "CPU µs/stmt", "inside µs/stmt (eager hooks)", "held-idle walks µs/stmt",
         "held-idle samples µs/stmt", "target"],
    )  # fmt: skip
    extra: list[str] = []
    with _findings_silenced():
        for key in cases or list(CASES):
            case, bench = CASES[key]
            by_setup = bench(rounds, requests)
            # Bare counts nothing; the setups run the same statements.
            n = by_setup["counting"][0].statements
            counted = [r for run in RUNS[1:] for r in by_setup[run]]
            if any(r.statements != n for r in counted):
                raise RuntimeError(f"{case}: the setups ran different statements")
            walls: Samples = {s: [r.wall / n for r in by_setup[s]] for s in SETUPS}
            cpus: Samples = {s: [r.cpu / n for r in by_setup[s]] for s in SETUPS}
            for setup in SETUPS:
                timed = by_setup.get(CLOCKED.get(setup, ""), [])
                inside = _per_statement(timed, n, lambda r: r.inside) if timed else 0.0
                eager = _per_statement(timed, n, lambda r: r.eager) if timed else 0.0
                sampling = _per_statement(timed, n, lambda r: r.sampling) if timed else 0.0
                walked = _per_statement(timed, n, lambda r: r.walks) if timed else 0.0
                table.add(
                    f"{case} ({n // requests}/scope)",
                    SETUP_NAMES[setup],
                    f"{statistics.median(walls[setup]) * 1e6:.1f}",
                    f"{ratio(walls, setup, 'bare'):.3f}x",
                    f"{ratio(walls, setup, 'counting'):.3f}x" if setup == "detection" else "-",
                    spread(walls, setup, "bare"),
                    f"{statistics.median(cpus[setup]) * 1e6:.1f}",
                    f"{inside:.2f} ({eager:.2f})" if timed else "-",
                    f"{walked:.2f}" if timed else "-",
                    f"{sampling:.2f}" if timed else "-",
                    target=Target(f"inside < {TARGET_US:g} µs", inside < TARGET_US)
                    if setup == "detection"
                    else None,
                )
            wall = statistics.median(walls["detection"]) - statistics.median(walls["counting"])
            cpu = statistics.median(cpus["detection"]) - statistics.median(cpus["counting"])
            clocked = [r for run in CLOCKED.values() for r in by_setup[run]]
            trimmed = sum(r.trimmed for r in clocked)
            clock = _per_statement(by_setup[CLOCKED["detection"]], n, lambda r: r.clock)
            extra.append(
                f"{case}: detection - counting = {wall * 1e6:+.1f} µs/stmt wall, "
                f"{cpu * 1e6:+.1f} µs/stmt CPU; clocks' cost taken off inside {clock:.2f} "
                f"µs/stmt; {trimmed} clocked calls descheduled."
            )
        reads = bench_attribute_reads(rounds)
    for setup in ("bare", "poolwatch"):
        table.add(
            "ORM attribute read (1,000 rows x 200)",
            setup,
            f"{statistics.median(reads[setup]) / 200_000 * 1e6:.3f}",
            f"{ratio(reads, setup, 'bare'):.3f}x",
            "-",
            spread(reads, setup, "bare"),
            "-",
            "-",
            "-",
            "-",
        )
    table.notes.append(
        f"SQLite in memory. Median of {rounds} interleaved rounds (after a discarded one) of "
        f"{requests} scopes per setup. Inside: the recorder's calls and the eager-load hooks, "
        "timed around each call in runs of their own (the counting and detection setups "
        "again, interleaved with the rest, with clocks): the hooks alone in brackets (in "
        "counting mode only they run); the clocks' own cost, measured in place on a no-op, "
        "taken off; a call descheduled by the machine counted as its function's median "
        "call. Held-idle walks and samples: what the held_idle finding's bookkeeping "
        "adds while detection is on, the call-path walks at a checkout (and at a release "
        "where the code after the last statement may wait), and the CPU-time samples (a "
        "getrusage system call each). " + " ".join(extra)
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--cases", default=",".join(CASES), help="cases to run")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    print(bench_detection(args.rounds, args.requests, cases).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
