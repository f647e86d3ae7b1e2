"""What a whole transaction costs with poolwatch, against the uninstrumented baseline.

    python benchmarks/transactions.py [--rounds 9] [--ops 3000]


Each operation is one short unit of work on SQLite (a file in a temporary directory on
tmpfs, so every checkout is a real one and no fsync blurs the numbers), looked up by
primary key with a different id every time:

* ``sqlalchemy commit``: ``with engine.begin() as conn: conn.execute(select ...)``;
* ``sqlalchemy session read``: ``with Session(engine) as s: s.execute(select ...)``, closed
  without a commit (the ``closed`` outcome, whose cause is read from the stack);
* ``sqlalchemy rollback``: ``with engine.connect()``, a select, ``conn.rollback()``;
* ``tortoise in_transaction``: ``async with in_transaction(): await Item.get(id=...)``.

Setups: bare (nothing instrumented) and poolwatch (``PoolWatch()`` with defaults: metrics,
transactions, idle-while-held bookkeeping, N+1 detection on, outside any request). Rounds
alternate bare and poolwatch; each SQLAlchemy round gets a new engine. Prints the median
microseconds per operation (the best round: the least disturbed by the rest of the
machine) and poolwatch's ratio to bare, per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session
from tortoise import Tortoise, fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

from poolwatch import PoolWatch

__all__ = ["main"]

ROWS = 500


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "bench"
        table = "item"


def _table(metadata: MetaData) -> Table:
    return Table("item", metadata, Column("id", Integer, primary_key=True), Column("name", String))


def _sqlalchemy_ops(engine: Any, table: Table) -> dict[str, Callable[[int], None]]:
    query = select(table).where(table.c.id == 1)

    def commit(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(query.where(table.c.id == i % ROWS + 1)).all()

    def session_read(i: int) -> None:
        with Session(engine) as session:
            session.execute(query.where(table.c.id == i % ROWS + 1)).all()

    def rollback(i: int) -> None:
        with engine.connect() as conn:
            conn.execute(query.where(table.c.id == i % ROWS + 1)).all()
            conn.rollback()

    return {
        "sqlalchemy commit": commit,
        "sqlalchemy session read": session_read,
        "sqlalchemy rollback": rollback,
    }


def _sqlalchemy_round(directory: Path, name: str, ops: int, instrumented: bool) -> float:
    engine = create_engine(f"sqlite:///{directory / 'sa.sqlite'}")
    table = _table(MetaData())
    watch = None
    if instrumented:
        watch = PoolWatch()
        watch.instrument_sqlalchemy(engine)
    try:
        run = _sqlalchemy_ops(engine, table)[name]
        for i in range(ops // 10):
            run(i)
        started = time.perf_counter()
        for i in range(ops):
            run(i)
        return (time.perf_counter() - started) / ops * 1e6
    finally:
        if watch is not None:
            watch.uninstrument()
        engine.dispose()


def _prepare_sqlalchemy(directory: Path) -> None:
    engine = create_engine(f"sqlite:///{directory / 'sa.sqlite'}")
    metadata = MetaData()
    table = _table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "name": f"n{i}"} for i in range(1, ROWS + 1)])
    engine.dispose()


async def _tortoise_rounds(directory: Path, ops: int, rounds: int) -> dict[bool, list[float]]:
    await Tortoise.init(
        db_url=f"sqlite://{directory / 'tortoise.sqlite'}", modules={"bench": [__name__]}
    )
    await Tortoise.generate_schemas()
    await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, ROWS + 1)])

    async def run(count: int) -> float:
        started = time.perf_counter()
        for i in range(count):
            async with in_transaction():
                await Item.get(id=i % ROWS + 1)
        return (time.perf_counter() - started) / count * 1e6

    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(rounds):
            for instrumented in (False, True):
                watch = None
                if instrumented:
                    watch = PoolWatch()
                    watch.instrument_tortoise()
                try:
                    await run(ops // 10)
                    results[instrumented].append(await run(ops))
                finally:
                    if watch is not None:
                        watch.uninstrument()
    finally:
        await Tortoise.close_connections()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=3000)
    args = parser.parse_args()
    results: dict[str, dict[bool, list[float]]] = {}
    # On tmpfs where there is one: a commit's fsync would otherwise be most of the time,
    # and the noisiest part of it.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as name:
        directory = Path(name)
        _prepare_sqlalchemy(directory)
        for op in _sqlalchemy_ops(None, _table(MetaData())):
            results[op] = {False: [], True: []}
            for _ in range(args.rounds):
                for instrumented in (False, True):
                    cost = _sqlalchemy_round(directory, op, args.ops, instrumented)
                    results[op][instrumented].append(cost)
        results["tortoise in_transaction"] = asyncio.run(
            _tortoise_rounds(directory, args.ops, args.rounds)
        )
    print(f"{'operation':26} {'bare µs':>9} {'poolwatch µs':>13} {'ratio':>6}")
    for op, by in results.items():
        bare, watched = min(by[False]), min(by[True])
        print(f"{op:26} {bare:9.1f} {watched:13.1f} {watched / bare:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
