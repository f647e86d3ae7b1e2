"""A small shop, written the way real apps are, on Tortoise and on SQLAlchemy.

Routers nested with prefixes (``/api/v1`` > ``/items``, ``/orders``, ``/reports``), a
repository and a service between the routes and the ORM, a session dependency, and five
kinds of work the campaign's clients mix:

* ``GET /api/v1/items/{item_id}``: a plain read;
* ``POST /api/v1/orders``: a transaction that locks the item row, inserts and updates,
  and, when asked (``reject=1``), raises inside the transaction so it rolls back (409);
* ``GET /api/v1/reports/slow``: a transaction holding its connection across a 20 ms
  statement;
* ``GET /api/v1/reports/broken``: a statement the database rejects (500);
* ``GET /api/v1/reports/guarded?within=S``: the app's own ``asyncio.wait_for`` around a
  transaction, ``S`` seconds (the caller's deadline; 504 when it fires): the pattern
  that loses Tortoise's connections.

Each :class:`Shop` also reads its driver's own counts, which the campaign checks poolwatch
(and the pool) against.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from poolwatch import Autosize, PoolWatch
from tests.campaign.models import Item, ItemRow, Order, OrderRow

SLOW_SECONDS = 0.02

SCHEMA = """
CREATE TABLE shop_item (
    id serial PRIMARY KEY, name varchar(100) NOT NULL, stock integer NOT NULL DEFAULT 1000000
);
CREATE TABLE shop_order (
    id serial PRIMARY KEY,
    item_id integer NOT NULL REFERENCES shop_item (id),
    quantity integer NOT NULL
);
INSERT INTO shop_item (name) SELECT 'item ' || g FROM generate_series(1, 50) AS g;
"""


class OrderRejectedError(Exception):
    """The service refuses an order after writing it: the transaction must roll back."""


class Shop(Protocol):
    """One shop app on one ORM and driver, and its driver's own counts."""

    name: str
    app: FastAPI
    pool: str
    max_size: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def in_use(self) -> int: ...

    def idle(self) -> int: ...

    def instrument(self, watch: PoolWatch, autosize: Autosize | None) -> None: ...


def _app(name: str) -> tuple[FastAPI, APIRouter, APIRouter, APIRouter]:
    app = FastAPI(title=name)

    @app.exception_handler(OrderRejectedError)
    async def rejected(request: Request, exc: OrderRejectedError) -> JSONResponse:
        return JSONResponse({"detail": "order rejected"}, status_code=409)

    return (
        app,
        APIRouter(prefix="/items"),
        APIRouter(prefix="/orders"),
        APIRouter(prefix="/reports"),
    )


def _mount(app: FastAPI, *routers: APIRouter) -> None:
    api = APIRouter(prefix="/api/v1")
    for router in routers:
        api.include_router(router)
    app.include_router(api)


# -- Tortoise ------------------------------------------------------------------------------


class TortoiseItems:
    """The repository: the only code that builds queries."""

    async def get(self, item_id: int) -> Item | None:
        return await Item.get_or_none(id=item_id)

    async def lock(self, item_id: int) -> Item:
        return await Item.select_for_update().get(id=item_id)


class TortoiseOrders:
    def __init__(self, items: TortoiseItems, placeholder: str) -> None:
        self.items = items
        self.sleep = f"SELECT pg_sleep({placeholder})"

    async def place(self, item_id: int, quantity: int, reject: bool) -> int:
        async with in_transaction():
            item = await self.items.lock(item_id)
            order = await Order.create(item_id=item.id, quantity=quantity)
            item.stock -= quantity
            await item.save(update_fields=["stock"])
            if reject:
                raise OrderRejectedError
            return int(order.id)

    async def slow_report(self) -> None:
        async with in_transaction() as connection:
            await connection.execute_query(self.sleep, [SLOW_SECONDS])


class TortoiseShop:
    """The shop on Tortoise-ORM (``driver``: asyncpg or psycopg)."""

    pool = "default"

    def __init__(self, dsn: str, driver: str, max_size: int) -> None:
        self.name = f"tortoise-{driver}"
        self.max_size = max_size
        self.url = f"{driver}://{dsn.split('://', 1)[1]}?minsize=1&maxsize={max_size}"
        self.app, items, orders, reports = _app(self.name)
        repository = TortoiseItems()
        service = TortoiseOrders(repository, "$1" if driver == "asyncpg" else "%s")

        @items.get("/{item_id}")
        async def get_item(item_id: int) -> dict[str, Any]:
            item = await repository.get(item_id)
            if item is None:
                raise HTTPException(404)
            return {"id": item.id, "stock": item.stock}

        @orders.post("")
        async def place(item_id: int, reject: bool = False) -> dict[str, int]:
            return {"id": await service.place(item_id, 1, reject)}

        @reports.get("/slow")
        async def slow() -> dict[str, bool]:
            await service.slow_report()
            return {"ok": True}

        @reports.get("/broken")
        async def broken() -> None:
            await connections.get("default").execute_query("SELECT * FROM missing_table")

        @reports.get("/guarded")
        async def guarded(within: float) -> dict[str, bool]:
            try:
                await asyncio.wait_for(service.slow_report(), within)
            except TimeoutError:
                raise HTTPException(504) from None
            return {"ok": True}

        _mount(self.app, items, orders, reports)

    def instrument(self, watch: PoolWatch, autosize: Autosize | None) -> None:
        watch.instrument_app(self.app)
        watch.instrument_tortoise(autosize=autosize)

    async def start(self) -> None:
        EXECUTOR_CACHE.clear()
        await Tortoise.init(db_url=self.url, modules={"models": ["tests.campaign.models"]})
        await connections.get("default").execute_query("SELECT 1")

    async def stop(self) -> None:
        await Tortoise.close_connections()

    def _pool(self) -> Any:
        return connections.get("default")._pool

    def in_use(self) -> int:
        pool = self._pool()
        if pool is None:
            return 0
        if hasattr(pool, "get_idle_size"):
            return int(pool.get_size() - pool.get_idle_size())
        stats = pool.get_stats()
        return int(stats.get("pool_size", 0) - stats.get("pool_available", 0))

    def idle(self) -> int:
        pool = self._pool()
        if pool is None:
            return 0
        if hasattr(pool, "get_idle_size"):
            return int(pool.get_idle_size())
        return int(pool.get_stats().get("pool_available", 0))


# -- SQLAlchemy ----------------------------------------------------------------------------


async def async_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The session dependency: one session per request, closed after the response."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


AsyncDb = Annotated[AsyncSession, Depends(async_session)]


class AsyncItems:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, item_id: int) -> ItemRow | None:
        return await self.session.get(ItemRow, item_id)

    async def lock(self, item_id: int) -> ItemRow:
        row = await self.session.scalar(
            select(ItemRow).where(ItemRow.id == item_id).with_for_update()
        )
        if row is None:
            raise HTTPException(404)
        return row


class AsyncOrders:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.items = AsyncItems(session)

    async def place(self, item_id: int, quantity: int, reject: bool) -> int:
        async with self.session.begin():
            item = await self.items.lock(item_id)
            order = OrderRow(item_id=item.id, quantity=quantity)
            self.session.add(order)
            item.stock -= quantity
            await self.session.flush()
            if reject:
                raise OrderRejectedError
            return order.id

    async def slow_report(self) -> None:
        async with self.session.begin():
            await self.session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW_SECONDS})


class SQLAlchemyAsyncShop:
    """The shop on SQLAlchemy's ``AsyncEngine`` and ``AsyncSession``."""

    pool = "main"

    def __init__(self, dsn: str, driver: str, max_size: int, pool_timeout: float) -> None:
        self.name = f"sqlalchemy-async-{driver}"
        self.max_size = max_size
        url = f"postgresql+{driver}://{dsn.split('://', 1)[1]}"
        self.engine = create_async_engine(
            url, pool_size=max_size, max_overflow=0, pool_timeout=pool_timeout
        )
        self.app, items, orders, reports = _app(self.name)
        self.app.state.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

        @items.get("/{item_id}")
        async def get_item(item_id: int, db: AsyncDb) -> dict[str, Any]:
            item = await AsyncItems(db).get(item_id)
            if item is None:
                raise HTTPException(404)
            return {"id": item.id, "stock": item.stock}

        @orders.post("")
        async def place(item_id: int, db: AsyncDb, reject: bool = False) -> dict[str, int]:
            return {"id": await AsyncOrders(db).place(item_id, 1, reject)}

        @reports.get("/slow")
        async def slow(db: AsyncDb) -> dict[str, bool]:
            await AsyncOrders(db).slow_report()
            return {"ok": True}

        @reports.get("/broken")
        async def broken(db: AsyncDb) -> None:
            await db.execute(text("SELECT * FROM missing_table"))

        @reports.get("/guarded")
        async def guarded(db: AsyncDb, within: float) -> dict[str, bool]:
            try:
                await asyncio.wait_for(AsyncOrders(db).slow_report(), within)
            except TimeoutError:
                raise HTTPException(504) from None
            return {"ok": True}

        _mount(self.app, items, orders, reports)

    def instrument(self, watch: PoolWatch, autosize: Autosize | None) -> None:
        watch.instrument_app(self.app)
        watch.instrument_sqlalchemy(self.engine, pool=self.pool, autosize=autosize)

    async def start(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def stop(self) -> None:
        await self.engine.dispose()

    def _queue(self) -> QueuePool:
        pool = self.engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        return pool

    def in_use(self) -> int:
        return int(self._queue().checkedout())

    def idle(self) -> int:
        return int(self._queue().checkedin())


class SyncItems:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, item_id: int) -> ItemRow | None:
        return self.session.get(ItemRow, item_id)

    def lock(self, item_id: int) -> ItemRow:
        row = self.session.scalar(select(ItemRow).where(ItemRow.id == item_id).with_for_update())
        if row is None:
            raise HTTPException(404)
        return row


class SyncOrders:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.items = SyncItems(session)

    def place(self, item_id: int, quantity: int, reject: bool) -> int:
        with self.session.begin():
            item = self.items.lock(item_id)
            order = OrderRow(item_id=item.id, quantity=quantity)
            self.session.add(order)
            item.stock -= quantity
            self.session.flush()
            if reject:
                raise OrderRejectedError
            return order.id

    def slow_report(self) -> None:
        with self.session.begin():
            self.session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW_SECONDS})


class SQLAlchemySyncShop:
    """The shop on a sync ``Engine``: sync endpoints, run in Starlette's thread pool."""

    pool = "main"

    def __init__(self, dsn: str, max_size: int, pool_timeout: float) -> None:
        self.name = "sqlalchemy-sync-psycopg"
        self.max_size = max_size
        url = f"postgresql+psycopg://{dsn.split('://', 1)[1]}"
        self.engine = create_engine(
            url, pool_size=max_size, max_overflow=0, pool_timeout=pool_timeout
        )
        sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.app, items, orders, reports = _app(self.name)

        # Each endpoint opens its own session: a sync ``yield`` dependency would hold the
        # connection until FastAPI runs its teardown, which 200 waiting requests starve of
        # threads (and a request cancelled meanwhile may never run): no pool survives that.
        @items.get("/{item_id}")
        def get_item(item_id: int) -> dict[str, Any]:
            with sessions() as db:
                item = SyncItems(db).get(item_id)
                if item is None:
                    raise HTTPException(404)
                return {"id": item.id, "stock": item.stock}

        @orders.post("")
        def place(item_id: int, reject: bool = False) -> dict[str, int]:
            with sessions() as db:
                return {"id": SyncOrders(db).place(item_id, 1, reject)}

        @reports.get("/slow")
        def slow() -> dict[str, bool]:
            with sessions() as db:
                SyncOrders(db).slow_report()
            return {"ok": True}

        @reports.get("/broken")
        def broken() -> None:
            with sessions() as db:
                db.execute(text("SELECT * FROM missing_table"))

        @reports.get("/guarded")
        async def guarded(within: float) -> dict[str, bool]:
            # An async endpoint guarding sync work, as apps do with to_thread.
            def work() -> None:
                with sessions() as opened:
                    SyncOrders(opened).slow_report()

            try:
                await asyncio.wait_for(asyncio.to_thread(work), within)
            except TimeoutError:
                raise HTTPException(504) from None
            return {"ok": True}

        _mount(self.app, items, orders, reports)

    def instrument(self, watch: PoolWatch, autosize: Autosize | None) -> None:
        watch.instrument_app(self.app)
        watch.instrument_sqlalchemy(self.engine, pool=self.pool, autosize=autosize)

    async def start(self) -> None:
        def ping() -> None:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        await asyncio.to_thread(ping)

    async def stop(self) -> None:
        self.engine.dispose()

    def _queue(self) -> QueuePool:
        pool = self.engine.pool
        assert isinstance(pool, QueuePool)
        return pool

    def in_use(self) -> int:
        return int(self._queue().checkedout())

    def idle(self) -> int:
        return int(self._queue().checkedin())
