"""The database budget with peers, on real PostgreSQL: tagged connections, fair shares,
and the fallback where the tags cannot be seen.

The truth is the server's own ``pg_stat_activity`` and ``current_setting``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE

from poolwatch import Autosize
from poolwatch.sizing.appname import tagged_name
from poolwatch.sizing.budget import default_headroom
from poolwatch.sizing.sizer import PoolSizer
from tests.findings_helpers import NEVER_SLOW


def _url(dsn: str, scheme: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return scheme + "://" + dsn.split("://", 1)[1] + (f"?{query}" if query else "")


async def _first_read(sizer: PoolSizer) -> None:
    for _ in range(100):
        if sizer.budget is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the budget was never read")


def _server(dsn: str) -> tuple[int, int, int]:
    """max_connections, superuser_reserved, and the client sessions open now."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@pytest.mark.parametrize("scheme", ["asyncpg", "psycopg"])
async def test_a_lone_tortoise_pool_is_tagged_and_may_take_all_but_the_headroom(
    pg_database: str, make_watch: Any, scheme: str
) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=Autosize(min=2, max=50, interval=3600, budget_interval=3600))
    EXECUTOR_CACHE.clear()
    await Tortoise.init(
        db_url=_url(pg_database, scheme, maxsize=50, application_name="shop-api"),
        modules={"models": ["tests.tortoise_models"]},
    )
    try:
        client = connections.get("default")
        rows = await client.execute_query_dict("SELECT current_setting('application_name') AS a")
        sizer = watch.guards.sizers["default"]
        await _first_read(sizer)
        max_connections, _, open_now = _server(pg_database)
    finally:
        await Tortoise.close_connections()
    assert sizer.tag is not None
    # The application's own name stays in front of the tag.
    assert next(iter(rows[0].values())) == f"shop-api {sizer.tag}"
    assert sizer.budget is not None
    assert sizer.budget.peers == 1
    # All that is free but the headroom (superuser: the reserved slots count), give or
    # take the few sessions other tests of this run open or close meanwhile.
    expected = max_connections - default_headroom(max_connections) - open_now + 1
    assert abs(sizer.budget.ceiling - expected) <= 3, (sizer.budget, expected)


async def test_two_engines_autosized_on_one_database_get_fair_shares(
    pg_database: str, make_watch: Any
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = Autosize(min=2, max=80, interval=3600, budget_interval=3600)
    engines = {
        "writer": create_async_engine(
            _url(pg_database, "postgresql+asyncpg"), pool_size=80, max_overflow=0
        ),
        "reader": create_async_engine(
            _url(pg_database, "postgresql+psycopg"), pool_size=80, max_overflow=0
        ),
    }
    watch = make_watch()
    for name, engine in engines.items():
        watch.instrument_sqlalchemy(engine, pool=name, autosize=settings)
    try:
        names = {}
        for name, engine in engines.items():  # each opens a tagged connection
            async with engine.connect() as connection:
                names[name] = (
                    await connection.execute(text("SELECT current_setting('application_name')"))
                ).scalar()
        sizers = [watch.guards.sizers[name] for name in engines]
        for sizer in sizers:  # both read the same database: each sees the other
            sizer.budget = None
            await watch.guards.maintenance._read_budget(sizer)
        max_connections, _, open_now = _server(pg_database)
    finally:
        for engine in engines.values():
            await engine.dispose()
    assert names == {name: watch.guards.sizers[name].tag for name in engines}
    room = max_connections - default_headroom(max_connections) - open_now + 2
    for sizer in sizers:
        assert sizer.budget is not None
        assert sizer.budget.peers == 2, sizer.budget
        assert abs(sizer.budget.ceiling - room / 2) <= 3, (sizer.budget, room)
    assert sum(s.budget.ceiling for s in sizers if s.budget) <= room + 1


async def test_peers_off_leaves_the_application_name_alone(
    pg_database: str, make_watch: Any
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        _url(pg_database, "postgresql+psycopg", application_name="billing"), pool_size=8
    )
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=2, peers=False, interval=3600))
    try:
        async with engine.connect() as connection:
            name = (
                await connection.execute(text("SELECT current_setting('application_name')"))
            ).scalar()
        sizer = watch.guards.sizers["main"]
        await watch.guards.maintenance._read_budget(sizer)
    finally:
        await engine.dispose()
    assert name == "billing"
    assert sizer.tag is None
    assert sizer.budget is not None
    assert sizer.budget.peers is None
    assert not sizer.budget.unseen


async def test_a_pool_opened_before_poolwatch_falls_back_with_one_warning(
    pg_database: str, make_watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Tortoise's pool opens its connections before poolwatch is told: none carries the
    # tag, as through a pooler that hides them. The budget falls back, says why, once.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(
        db_url=_url(pg_database, "asyncpg", maxsize=20, minsize=2),
        modules={"models": ["tests.tortoise_models"]},
    )
    try:
        await connections.get("default").execute_query("SELECT 1")  # the pool opens
        watch = make_watch(slow_query_threshold=NEVER_SLOW)  # the budget's warning alone
        watch.instrument_tortoise(
            autosize=Autosize(min=2, max=20, interval=3600, budget_interval=3600)
        )
        client = connections.get("default")
        with caplog.at_level(logging.INFO, logger="poolwatch.autosize"):
            await client.execute_query("SELECT 1")
            sizer = watch.guards.sizers["default"]
            await _first_read(sizer)
            await watch.guards.maintenance._read_budget(sizer)
    finally:
        await Tortoise.close_connections()
    assert sizer.budget is not None
    assert sizer.budget.peers is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "does not carry the pool's application_name tag" in warnings[0]
    assert "autosize.budget_share=0.5" in warnings[0]
    assert "Set autosize.budget" in warnings[0]


def test_a_sync_engine_is_tagged_too(pg_database: str, make_watch: Any) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(_url(pg_database, "postgresql+psycopg"), pool_size=4, max_overflow=0)
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=2, interval=3600))
    try:
        with engine.connect() as connection:
            name = connection.execute(text("SELECT current_setting('application_name')")).scalar()
    finally:
        engine.dispose()
    tag = watch.guards.sizers["main"].tag
    assert tag is not None
    assert name == tag


def test_tagged_names_keep_the_applications_name_within_63_bytes() -> None:
    assert tagged_name("pw-0000beef") == "pw-0000beef"
    assert tagged_name("pw-0000beef", "api") == "api pw-0000beef"
    long = tagged_name("pw-0000beef", "x" * 80)
    assert len(long) == 63
    assert long.endswith(" pw-0000beef")
    # A pool created again under the same tag, or another's: replaced, not stacked.
    assert tagged_name("pw-0000beef", "api pw-12345678") == "api pw-0000beef"
    assert tagged_name("pw-0000beef", "café") == "caf? pw-0000beef"


def test_growth_needs_a_fresh_read_and_a_stale_one_holds_the_limit(
    make_watch: Any, tmp_path: Any
) -> None:
    from sqlalchemy import create_engine

    from poolwatch.sizing.budget import ServerLimits
    from poolwatch.sizing.sizer import BUDGET_FRESH

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=40, max_overflow=0)
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=2, max=40, interval=3600))
    sizer = watch.guards.sizers["main"]
    sizer.tag = "pw-0000beef"
    try:
        sizer.apply_budget(
            ServerLimits(max_connections=100, open_total=10, tagged={"pw-0000beef": 1})
        )
        assert sizer.budget is not None
        assert sizer.budget.peers == 1
        assert sizer.ceiling == 86  # 100 - 5 headroom - 10 + 1
        # Its first read as a tagged pool: growth waits until any other pool's read from
        # before its connections were on the server is stale.
        assert sizer.seen_by_peers_at is not None
        assert sizer.growth_ceiling() == sizer.limiter.limit == 2
        sizer.seen_by_peers_at -= BUDGET_FRESH
        assert sizer.growth_ceiling() == sizer.ceiling
        sizer.budget_read_at -= BUDGET_FRESH + 0.1  # the read grows old
        # The limit in force is kept, and growth past it waits for the next read.
        assert sizer.growth_ceiling() == sizer.limiter.limit == 2
        assert sizer.effective_max() == 40  # what is published does not flicker
    finally:
        engine.dispose()


def test_an_ordinary_role_counts_every_session_and_sees_the_tags(pg_database: str) -> None:
    # Without pg_read_all_stats, other roles' sessions show no backend_type: they must
    # still count as clients, and their application_name (the tag) is still visible.
    import uuid

    from psycopg import sql

    from poolwatch.sizing.budget import POSTGRES_LIMITS_SQL, ServerLimits

    role = f"poolwatch_plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    rest = pg_database.split("://", 1)[1].split("@", 1)[1]
    try:
        with (
            psycopg.connect(pg_database, application_name="peer pw-0000beef") as other,
            psycopg.connect(f"postgresql://{role}@{rest}", autocommit=True) as plain,
        ):
            row = plain.execute(POSTGRES_LIMITS_SQL).fetchone()
            truth = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    assert row is not None
    assert truth is not None
    limits = ServerLimits.from_row(tuple(row))
    assert not limits.superuser
    assert abs(limits.open_total - truth[0]) <= 1  # other tests may open or close one
    assert limits.tagged.get("pw-0000beef") == 1
