"""The Tortoise version seams: each layout against the installed Tortoise, and what each
one's holes would lose, on Tortoise's real classes with a fake driver pool (no server).

Run it under every Tortoise version poolwatch supports (0.21 to 1.1): each run checks the
layout of the version it finds. A pooled client here is Tortoise's own asyncpg client,
initialised without connecting, whose ``_pool`` is a :class:`FakePool` the test steers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tortoise
from tortoise import Tortoise, connections
from tortoise.backends.base import client as base
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from poolwatch import PoolWatch
from poolwatch.adapters.tortoise import LAYOUTS, SUPPORTED, layout_for, resolve, tortoise_version
from poolwatch.events import SLOW_QUERY
from tests.metrics_helpers import total, value

OPS = "db_client_operation_duration_seconds_count"
RECLAIMED = "poolwatch_connections_reclaimed_total"


# -- the layouts -----------------------------------------------------------------------


def test_every_supported_version_has_a_layout_and_no_other() -> None:
    assert SUPPORTED == ((0, 21), (0, 22), (0, 23), (0, 24), (0, 25), (1, 0), (1, 1))
    assert set(LAYOUTS) == set(SUPPORTED)
    for unread in ((0, 20), (0, 26), (1, 2), (2, 0)):
        assert layout_for(unread) is None


def test_the_installed_tortoise_is_as_its_layout_says() -> None:
    """Each field of the installed version's layout, checked against its source."""
    layout = layout_for(tortoise_version())
    assert layout is not None, f"Tortoise {tortoise.__version__} is not supported"
    seams, missing = resolve(layout)
    assert missing == []
    found = {seam.cls.__name__ for seam in seams}
    assert {"PoolConnectionWrapper", "TransactionContextPooled", "ConnectionWrapper"} <= found
    assert layout.sqlite_transaction[1] in found

    pooled = base.TransactionContextPooled
    enter = inspect.getsource(pooled.__aenter__)
    assert f"self.{layout.transaction_wrapper}._connection = " in enter
    token_at, acquire_at = enter.index("self.token ="), enter.index("_pool.acquire()")
    assert (token_at < acquire_at) is layout.token_before_acquire
    assert ("finally:" in inspect.getsource(pooled.__aexit__)) is layout.exit_has_finally
    init_lock = "_pool_init_lock" in inspect.getsource(pooled.ensure_connection)
    assert init_lock is layout.pool_init_lock
    wrapper = inspect.getsource(base.PoolConnectionWrapper.__aenter__)
    assert ("self.pool.acquire()" in wrapper) is (layout.checkout_pool == "pool")
    locked = inspect.getsource(base.ConnectionWrapper.__aenter__)
    assert f"self.{layout.connection_lock}.acquire()" in locked
    assert isinstance(getattr(base, layout.transactional), type)

    module, name = layout.sqlite_transaction
    sqlite_context = getattr(importlib.import_module(module), name)
    sqlite_enter = inspect.getsource(sqlite_context.__aenter__)
    assert f"self.{layout.sqlite_transaction_lock}.acquire()" in sqlite_enter
    sqlite_exit = inspect.getsource(sqlite_context.__aexit__)
    assert ("finally:" in sqlite_exit) is layout.exit_has_finally

    handler = importlib.import_module("tortoise.connection")
    assert hasattr(handler, "get_connections") is layout.context_connections


# -- a pooled Tortoise client on a fake pool -------------------------------------------


class FakeTransaction:
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    async def start(self) -> None:
        if self.pool.begin_gate is not None:
            await self.pool.begin_gate.wait()

    async def commit(self) -> None:
        await asyncio.sleep(0)
        if self.pool.commit_error is not None:
            raise self.pool.commit_error

    async def rollback(self) -> None:
        await asyncio.sleep(0)


class FakeConnection:
    """What Tortoise's asyncpg client and its TransactionWrapper call on a connection."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.terminated = False

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self.pool)

    async def fetch(self, *args: Any) -> list[Any]:
        await asyncio.sleep(0)
        return []

    def terminate(self) -> None:
        self.terminated = True


class FakePool:
    """An asyncpg-like pool: the test can hold its acquire, a BEGIN, or fail a COMMIT."""

    def __init__(self) -> None:
        self.out: list[FakeConnection] = []
        self.released: list[FakeConnection] = []
        self.acquire_gate: asyncio.Event | None = None
        self.begin_gate: asyncio.Event | None = None
        self.commit_error: BaseException | None = None

    async def acquire(self) -> FakeConnection:
        if self.acquire_gate is not None:
            await self.acquire_gate.wait()
        connection = FakeConnection(self)
        self.out.append(connection)
        return connection

    async def release(self, connection: FakeConnection) -> None:
        self.out.remove(connection)  # a second release of one connection fails here
        self.released.append(connection)

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def pooled(pool: FakePool | None) -> AsyncIterator[Any]:
    """Tortoise's own asyncpg client, never connected, with ``pool`` as its pool."""
    pytest.importorskip("asyncpg")
    EXECUTOR_CACHE.clear()
    await Tortoise.init(
        db_url="asyncpg://nobody:secret@127.0.0.1:9/none",
        modules={"models": ["tests.tortoise_models"]},
    )
    client = connections.get("default")
    client._pool = pool
    try:
        yield client
    finally:
        await Tortoise.close_connections()


async def _entered(steps: int, pool: FakePool) -> tuple[list[Any], asyncio.Task[None]]:
    """A task entering ``in_transaction()``, cancelled after ``steps`` loop turns; returns
    the connection it saw itself on after the cancellation, and the task."""
    seen: list[Any] = []

    async def enter() -> None:
        try:
            async with in_transaction():
                pass
        except asyncio.CancelledError:
            seen.append(connections.get("default"))
            raise

    task = asyncio.create_task(enter())
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return seen, task


async def test_a_transaction_cancelled_waiting_for_a_connection_leaves_no_override(
    watch: PoolWatch,
) -> None:
    """To 0.25 the transaction sets the task's connection before it waits: cancelled in
    the wait, the task went on seeing a transaction that had no connection."""
    pool = FakePool()
    async with pooled(pool) as client:
        pool.acquire_gate = asyncio.Event()
        seen, task = await _entered(3, pool)
        assert task.cancelled()
        assert seen == [client]
        assert pool.out == []
        assert pool.released == []
        assert value(watch.registry, "db_client_connection_pending_requests", pool="default") == 0


async def test_a_transaction_cancelled_during_begin_gives_its_connection_back(
    watch: PoolWatch,
) -> None:
    pool = FakePool()
    async with pooled(pool) as client:
        pool.begin_gate = asyncio.Event()
        seen, task = await _entered(3, pool)
        assert task.cancelled()
        assert seen == [client]
        for _ in range(5):
            await asyncio.sleep(0)
        assert pool.out == []
        [connection] = pool.released
        assert connection.terminated  # BEGIN was cut off: closed, not reused
        assert value(watch.registry, RECLAIMED, pool="default", outcome="closed") == 1
        assert watch._observers["default"].checked_out() == 0


async def test_a_commit_that_raises_still_releases_the_connection(watch: PoolWatch) -> None:
    """0.21's exit has no ``finally``: a COMMIT that raised kept the connection out of the
    pool and the task's override set, for good."""
    pool = FakePool()
    async with pooled(pool) as client:
        pool.commit_error = ConnectionResetError("server went away")
        for _ in range(3):
            with pytest.raises(ConnectionResetError):
                async with in_transaction() as transaction:
                    await transaction.execute_query("SELECT 1")
            assert connections.get("default") is client
        assert pool.out == []
        assert len(pool.released) == 3
        assert watch._observers["default"].checked_out() == 0
        pool.commit_error = None
        async with in_transaction() as transaction:
            await transaction.execute_query("SELECT 1")
        assert len(pool.released) == 4


async def test_first_checkouts_together_create_one_pool(watch: PoolWatch) -> None:
    """To 0.23 each checkout that found no pool created one: all but the last were never
    closed, nor read by the gauges."""
    async with pooled(None) as client:
        created: list[FakePool] = []

        async def create_connection(with_db: bool) -> None:
            await asyncio.sleep(0.01)
            client._pool = FakePool()
            created.append(client._pool)

        client.create_connection = create_connection

        async def transaction() -> None:
            async with in_transaction() as connection:
                await connection.execute_query("SELECT 1")

        work = [client.execute_query("SELECT 1") for _ in range(5)]
        work += [transaction() for _ in range(5)]
        await asyncio.gather(*work)
        assert len(created) == 1
        assert len(created[0].released) == 10
        assert created[0].out == []
        assert total(watch.registry, OPS, pool="default") == 10
        assert watch._observers["default"].checked_out() == 0


# -- SQLite ----------------------------------------------------------------------------


async def test_a_sqlite_commit_that_raises_frees_the_lock(
    watch: PoolWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.21's exit has no ``finally``: a COMMIT that raised kept SQLite's one lock, and
    every later statement waited for it forever."""
    from tortoise.exceptions import OperationalError

    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"models": ["tests.tortoise_models"]})
    try:
        client = connections.get("default")
        wrapper_class = type(client._in_transaction().connection)

        async def failing_commit(self: Any) -> None:
            raise OperationalError("disk I/O error")

        monkeypatch.setattr(wrapper_class, "commit", failing_commit)
        with pytest.raises(OperationalError, match="disk I/O"):
            async with in_transaction() as transaction:
                await transaction.execute_query("SELECT 1")
        assert not client._lock.locked()
        assert connections.get("default") is client
        monkeypatch.undo()
        assert await asyncio.wait_for(client.execute_query_dict("SELECT 1 AS one"), 5) == [
            {"one": 1}
        ]
    finally:
        await Tortoise.close_connections()


# -- versions and seams poolwatch does not know ----------------------------------------


async def _statements_only(watch: PoolWatch) -> None:
    """Statements are counted; pools are neither wrapped nor read."""
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"models": ["tests.tortoise_models"]})
    try:
        client = connections.get("default")
        for _ in range(3):
            await client.execute_query("SELECT 1")
        async with in_transaction() as transaction:
            await transaction.execute_query("SELECT 2")
        assert total(watch.registry, OPS, pool="default") == 4
        max_size = watch.registry.get_sample_value("db_client_connection_max", {"pool": "default"})
        assert max_size is None
        assert value(watch.registry, "poolwatch_pool_drift", pool="default") == 0
        assert value(watch.registry, "poolwatch_internal_errors_total", component="query") == 0
    finally:
        await Tortoise.close_connections()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """poolwatch's own warnings, less slow-query findings (a loaded machine can make any
    statement slow)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("poolwatch")
        and record.levelno >= logging.WARNING
        and getattr(record, "poolwatch_finding", {}).get("kind") != SLOW_QUERY
    ]


async def test_an_untested_version_keeps_statement_metrics_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tortoise, "__version__", "1.2.0")
    enter = base.PoolConnectionWrapper.__dict__["__aenter__"]
    watch = PoolWatch(acquire_timeout=1.0)
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_tortoise()
        try:
            assert base.PoolConnectionWrapper.__dict__["__aenter__"] is enter
            await _statements_only(watch)
        finally:
            watch.uninstrument()
    [warning] = _warnings(caplog)
    assert "tested with Tortoise-ORM 0.21, 0.22, 0.23, 0.24, 0.25, 1.0, 1.1" in warning
    assert "found 1.2" in warning
    assert "only statements are observed" in warning


async def test_a_missing_seam_keeps_statement_metrics_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(base.TransactionContextPooled, "__aexit__")
    enter = base.ConnectionWrapper.__dict__["__aenter__"]
    watch = PoolWatch()
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_tortoise()
        try:
            assert base.ConnectionWrapper.__dict__["__aenter__"] is enter
            await _statements_only(watch)
        finally:
            watch.uninstrument()
    [warning] = _warnings(caplog)
    assert "lacks TransactionContextPooled.__aexit__" in warning
    assert "only statements are observed" in warning


async def test_a_missing_extra_is_named_and_the_rest_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tortoise.backends.sqlite.client import SqliteClient

    monkeypatch.delattr(SqliteClient, "create_connection")
    watch = PoolWatch()
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_tortoise()
    try:
        [warning] = _warnings(caplog)
        assert "lacks SqliteClient.create_connection" in warning
        assert base.ConnectionWrapper.__dict__["__aenter__"].__wrapped__ is not None
    finally:
        watch.uninstrument()


def test_a_supported_version_installs_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = PoolWatch()
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_tortoise()
    try:
        assert _warnings(caplog) == []
        assert base.PoolConnectionWrapper.__dict__["__aenter__"].__wrapped__ is not None
    finally:
        watch.uninstrument()
