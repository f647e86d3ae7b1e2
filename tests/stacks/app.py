"""The matrix's app: one shop, written the way real apps are, on either ORM and any
database.

Routers nested with prefixes (``/api/v1`` > ``/items``, ``/orders``, ``/reports``), a
repository and a service between the routes and the ORM, a session dependency (SQLAlchemy)
and three kinds of work:

* ``GET /api/v1/items/{item_id}``: a read;
* ``POST /api/v1/orders?item_id=N[&reject=1]``: a transaction that locks the item (where
  the database can), inserts and updates, and when asked raises inside the transaction so
  that it rolls back (409);
* ``GET /api/v1/reports/slow``: a transaction that holds its connection for 10 ms (the
  server sleeps; on SQLite the app awaits inside the transaction).

Any other exception is the app's error: counted in :attr:`StackApp.errors` by type and
message, and answered 500. The matrix expects none, with or without poolwatch.
:meth:`StackApp.driver_counts` reads the driver's own pool, the truth poolwatch's gauges
are held to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from poolwatch import Autosize, PoolWatch
from tests.campaign.models import Item, ItemRow, Order, OrderRow
from tests.stacks.stacks import Stack

__all__ = ["SLOW", "StackApp", "error_kind"]

SLOW = 0.01  # seconds a slow report holds its connection


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """The session dependency: one session per request, closed after the response."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


Db = Annotated[AsyncSession, Depends(_session)]


def error_kind(exc: BaseException) -> str:
    """An error's type and the first line of its message (SQLAlchemy's later lines carry
    the statement and its parameters, which differ from one request to the next)."""
    return f"{type(exc).__name__}: {str(exc).partition(chr(10))[0]}"[:160]


def _begin_immediate(engine: Any) -> None:
    """SQLAlchemy's recipe for SQLite apps that write concurrently: every transaction
    takes the write lock at BEGIN. SQLite's default (a transaction that reads, then
    writes) fails at once, without waiting, when another one wrote first: "database is
    locked". An app with engine event listeners, as many have."""

    @event.listens_for(engine, "connect")
    def driver_leaves_transactions_to_us(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class RejectedError(Exception):
    """The service refuses an order after writing it: the transaction must roll back."""


def _routers(app: FastAPI) -> tuple[APIRouter, APIRouter, APIRouter]:
    return APIRouter(prefix="/items"), APIRouter(prefix="/orders"), APIRouter(prefix="/reports")


def _mount(app: FastAPI, *routers: APIRouter) -> None:
    api = APIRouter(prefix="/api/v1")
    for router in routers:
        api.include_router(router)
    app.include_router(api)


class StackApp:
    """The shop on one stack, its pool at most ``pool_max`` connections."""

    def __init__(self, stack: Stack, url: str, pool_max: int) -> None:
        self.stack = stack
        self.url = url
        self.pool_max = pool_max
        self.errors: Counter[str] = Counter()
        self.asgi = FastAPI(title=stack.name)
        self.pool = "default" if stack.orm == "tortoise" else "main"
        self._engine: Any = None

        @self.asgi.exception_handler(RejectedError)
        async def rejected(request: Request, exc: RejectedError) -> JSONResponse:
            return JSONResponse({"detail": "order rejected"}, status_code=409)

        @self.asgi.exception_handler(Exception)
        async def failed(request: Request, exc: Exception) -> JSONResponse:
            self.errors[error_kind(exc)] += 1
            return JSONResponse({"detail": "error"}, status_code=500)

        items, orders, reports = _routers(self.asgi)
        if stack.orm == "tortoise":
            self._tortoise_routes(items, orders, reports)
        elif stack.sync:
            self._sync_routes(items, orders, reports)
        else:
            self._async_routes(items, orders, reports)
        _mount(self.asgi, items, orders, reports)

    # -- the engine, made where the wiring says --------------------------------------

    def make_engine(self) -> None:
        """Create the SQLAlchemy engine (no connection yet); nothing for Tortoise."""
        if self.stack.orm == "tortoise":
            return
        # A file database gets a QueuePool too (SQLAlchemy 2), so autosize can size it.
        options: dict[str, Any] = {"pool_size": self.pool_max, "max_overflow": 0}
        if self.stack.database == "sqlite":
            # SQLite writes one at a time; its default 5 s wait for the lock is what a
            # loaded machine runs out of, with or without poolwatch. Apps that write
            # concurrently set it longer.
            options["connect_args"] = {"timeout": 30}
        if self.stack.sync:
            self._engine = create_engine(self.url, **options)
            self._sessions_sync = sessionmaker(self._engine, expire_on_commit=False)
        else:
            self._engine = create_async_engine(self.url, **options)
            self.asgi.state.sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        if self.stack.database == "sqlite":
            _begin_immediate(getattr(self._engine, "sync_engine", self._engine))

    def instrument(self, watch: PoolWatch, autosize: Autosize | None) -> None:
        """Wire poolwatch in: the middleware, and the engine or every Tortoise connection."""
        watch.instrument_app(self.asgi)
        if self.stack.orm == "tortoise":
            watch.instrument_tortoise(autosize=autosize)
        else:
            watch.instrument_sqlalchemy(self._engine, pool=self.pool, autosize=autosize)

    async def start(self) -> None:
        """Open the ORM's connections (Tortoise) and check the database answers."""
        if self.stack.orm == "tortoise":
            url = self.url
            if self.stack.database != "sqlite":
                url += f"?minsize=1&maxsize={self.pool_max}"
            EXECUTOR_CACHE.clear()
            await Tortoise.init(db_url=url, modules={"models": ["tests.campaign.models"]})
            await connections.get("default").execute_query("SELECT 1")
        elif self.stack.sync:
            await asyncio.to_thread(self._ping)
        else:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

    def _ping(self) -> None:
        with self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    async def stop(self) -> None:
        if self.stack.orm == "tortoise":
            await Tortoise.close_connections()
        elif self.stack.sync:
            self._engine.dispose()
        else:
            await self._engine.dispose()

    def after_fork(self) -> None:
        """In a forked worker: SQLAlchemy's recipe, the parent's connections left alone."""
        if self._engine is not None:
            sync_engine = getattr(self._engine, "sync_engine", self._engine)
            sync_engine.dispose(close=False)

    def driver_counts(self) -> tuple[int, int]:
        """``(in use, idle)`` connections, from the driver's own pool."""
        if self.stack.orm != "tortoise":
            sync_engine = getattr(self._engine, "sync_engine", self._engine)
            pool = sync_engine.pool
            return int(pool.checkedout()), int(pool.checkedin())
        client = connections.get("default")
        if self.stack.database == "sqlite":  # one connection, behind the client's lock
            if getattr(client, "_connection", None) is None:
                return 0, 0
            used = 1 if client._lock.locked() else 0
            return used, 1 - used
        pool = getattr(client, "_pool", None)
        if pool is None:
            return 0, 0
        if hasattr(pool, "get_idle_size"):  # asyncpg
            return int(pool.get_size() - pool.get_idle_size()), int(pool.get_idle_size())
        if hasattr(pool, "get_stats"):  # psycopg_pool
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            return int(size - idle), int(idle)
        return int(pool.size - pool.freesize), int(pool.freesize)  # asyncmy, aiomysql

    # -- SQL per database ------------------------------------------------------------

    def _sleep_sql(self, placeholder: str) -> str | None:
        if self.stack.database == "postgresql":
            return f"SELECT pg_sleep({placeholder})"
        if self.stack.database == "mysql":
            return f"SELECT SLEEP({placeholder})"
        return None  # SQLite: the app holds the connection across an await instead

    # -- Tortoise --------------------------------------------------------------------

    def _tortoise_routes(self, items: APIRouter, orders: APIRouter, reports: APIRouter) -> None:
        locks = self.stack.database != "sqlite"
        placeholder = "$1" if self.stack.driver == "asyncpg" else "%s"
        if self.stack.database == "sqlite":
            placeholder = "?"
        sleep = self._sleep_sql(placeholder)

        class Items:
            async def get(self, item_id: int) -> Item | None:
                return await Item.get_or_none(id=item_id)

            async def lock(self, item_id: int) -> Item:
                query = Item.filter(id=item_id)
                return await (query.select_for_update() if locks else query).get()

        class Orders:
            def __init__(self, repository: Items) -> None:
                self.items = repository

            async def place(self, item_id: int, reject: bool) -> int:
                async with in_transaction():
                    item = await self.items.lock(item_id)
                    order = await Order.create(item_id=item.id, quantity=1)
                    item.stock -= 1
                    await item.save(update_fields=["stock"])
                    if reject:
                        raise RejectedError
                    return int(order.id)

            async def slow_report(self) -> None:
                async with in_transaction() as connection:
                    if sleep is None:
                        await connection.execute_query("SELECT 1")
                        await asyncio.sleep(SLOW)
                    else:
                        await connection.execute_query(sleep, [SLOW])

        repository = Items()
        service = Orders(repository)

        @items.get("/{item_id}")
        async def get_item(item_id: int) -> dict[str, int]:
            item = await repository.get(item_id)
            if item is None:
                raise HTTPException(404)
            return {"id": item.id, "stock": item.stock}

        @orders.post("")
        async def place(item_id: int, reject: bool = False) -> dict[str, int]:
            return {"id": await service.place(item_id, reject)}

        @reports.get("/slow")
        async def slow() -> dict[str, bool]:
            await service.slow_report()
            return {"ok": True}

    # -- SQLAlchemy, async -----------------------------------------------------------

    def _async_routes(self, items: APIRouter, orders: APIRouter, reports: APIRouter) -> None:
        sleep = self._sleep_sql(":s")

        class Items:
            def __init__(self, db: AsyncSession) -> None:
                self.db = db

            async def get(self, item_id: int) -> ItemRow | None:
                return await self.db.get(ItemRow, item_id)

            async def lock(self, item_id: int) -> ItemRow:
                row = await self.db.scalar(
                    select(ItemRow).where(ItemRow.id == item_id).with_for_update()
                )
                if row is None:
                    raise HTTPException(404)
                return row

        class Orders:
            def __init__(self, db: AsyncSession) -> None:
                self.db = db
                self.items = Items(db)

            async def place(self, item_id: int, reject: bool) -> int:
                async with self.db.begin():
                    item = await self.items.lock(item_id)
                    order = OrderRow(item_id=item.id, quantity=1)
                    self.db.add(order)
                    item.stock -= 1
                    await self.db.flush()
                    if reject:
                        raise RejectedError
                    return order.id

            async def slow_report(self) -> None:
                async with self.db.begin():
                    if sleep is None:
                        await self.db.execute(text("SELECT 1"))
                        await asyncio.sleep(SLOW)
                    else:
                        await self.db.execute(text(sleep), {"s": SLOW})

        @items.get("/{item_id}")
        async def get_item(item_id: int, db: Db) -> dict[str, int]:
            item = await Items(db).get(item_id)
            if item is None:
                raise HTTPException(404)
            return {"id": item.id, "stock": item.stock}

        @orders.post("")
        async def place(item_id: int, db: Db, reject: bool = False) -> dict[str, int]:
            return {"id": await Orders(db).place(item_id, reject)}

        @reports.get("/slow")
        async def slow(db: Db) -> dict[str, bool]:
            await Orders(db).slow_report()
            return {"ok": True}

    # -- SQLAlchemy, sync (endpoints in Starlette's thread pool) ---------------------

    def _sync_routes(self, items: APIRouter, orders: APIRouter, reports: APIRouter) -> None:
        sleep = self._sleep_sql(":s")

        class Items:
            def __init__(self, db: Session) -> None:
                self.db = db

            def get(self, item_id: int) -> ItemRow | None:
                return self.db.get(ItemRow, item_id)

            def lock(self, item_id: int) -> ItemRow:
                row = self.db.scalar(select(ItemRow).where(ItemRow.id == item_id).with_for_update())
                if row is None:
                    raise HTTPException(404)
                return row

        class Orders:
            def __init__(self, db: Session) -> None:
                self.db = db
                self.items = Items(db)

            def place(self, item_id: int, reject: bool) -> int:
                with self.db.begin():
                    item = self.items.lock(item_id)
                    order = OrderRow(item_id=item.id, quantity=1)
                    self.db.add(order)
                    item.stock -= 1
                    self.db.flush()
                    if reject:
                        raise RejectedError
                    return order.id

            def slow_report(self) -> None:
                with self.db.begin():
                    if sleep is None:
                        self.db.execute(text("SELECT 1"))
                        time.sleep(SLOW)
                    else:
                        self.db.execute(text(sleep), {"s": SLOW})

        # Each endpoint opens its own session: a sync ``yield`` dependency holds the
        # connection until FastAPI's teardown, which a request abandoned meanwhile may
        # never run, with or without poolwatch (the apps that do it lose connections).
        def sessions() -> Session:
            opened: Session = self._sessions_sync()
            return opened

        @items.get("/{item_id}")
        def get_item(item_id: int) -> dict[str, int]:
            with sessions() as db:
                item = Items(db).get(item_id)
                if item is None:
                    raise HTTPException(404)
                return {"id": item.id, "stock": item.stock}

        @orders.post("")
        def place(item_id: int, reject: bool = False) -> dict[str, int]:
            with sessions() as db:
                return {"id": Orders(db).place(item_id, reject)}

        @reports.get("/slow")
        def slow() -> dict[str, bool]:
            with sessions() as db:
                Orders(db).slow_report()
            return {"ok": True}
