"""The dialect's own statements (first-connect probes) are never findings; statements
are read in the engine's dialect."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import poolwatch
from poolwatch import PoolWatch
from poolwatch.testing import capture
from tests.findings_helpers import without_slow

# -- the dialect's own statements are never findings ---------------------------------------


async def test_first_connect_probes_of_two_fresh_engines_are_no_findings(
    sync_url: str, async_url: str
) -> None:
    # Engines instrumented before their first connect: the dialect's probes (server version,
    # schema, isolation level, standard_conforming_strings) run inside the scope, on two
    # pools, the same statements twice. They are bookkeeping, not the app's reads.
    engines = [create_engine(sync_url), create_engine(sync_url)]
    async_engine = create_async_engine(async_url)
    watch = PoolWatch(nplusone_threshold=2, duplicate_threshold=2)
    for i, engine in enumerate(engines):
        watch.instrument_sqlalchemy(engine, pool=f"sync{i}")
    watch.instrument_sqlalchemy(async_engine, pool="async")
    try:
        with capture() as captured, poolwatch.scope("startup"):
            for engine in engines:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            async with async_engine.connect() as aconn:
                await aconn.execute(text("SELECT 1"))
    finally:
        watch.uninstrument()
        for engine in engines:
            engine.dispose()
        await async_engine.dispose()
    assert without_slow(watch.findings()) == []
    assert captured.findings == []
    assert captured.queries == [], captured.report()


def test_an_engines_statements_are_read_in_its_dialect(
    watch: PoolWatch, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool="main")
    assert engine.dialect.name in ("sqlite", "postgresql")
    assert watch.pool_events("main").dialect == engine.dialect.name
