"""A FastAPI app on SQLAlchemy that holds its session's connection across waits, as apps
do: a login that checks the password in the thread pool, a page that asks another
service, a retry that sleeps, and sync endpoints that sleep or call out in their thread;
and one that waits on nothing: a list read row by row from a read replica.

A repository layer, a session per request from a dependency, a current-user dependency,
response models, a primary and a replica engine: the held_idle tests judge what
poolwatch says of this code, run after run.
"""

# ruff: noqa: B008  (dependencies as defaults: FastAPI 0.92 has no Annotated)

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio.to_thread
import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import Engine, String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.concurrency import run_in_threadpool

# A few tens of milliseconds, as a bcrypt check at a low cost: near the 100 ms that
# decided, measured, whether a gap was a wait, so that a loaded machine made it a finding
# on one run and not the next. The verdict no longer hangs on its length.
ITERATIONS = 100_000
SALT = b"poolwatch-tests"
RETRY_PAUSE = 0.02


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[bytes]
    token: Mapped[str] = mapped_column(String(40))
    logins: Mapped[int] = mapped_column(default=0)


def hash_password(password: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, ITERATIONS)


def verify_password(password: str, password_hash: bytes) -> bool:
    return hash_password(password) == password_hash


class AccountOut(BaseModel):
    email: str
    logins: int


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_email(self, email: str) -> Account | None:
        found = await self.session.execute(select(Account).where(Account.email == email))
        return found.scalar_one_or_none()

    async def by_token(self, token: str) -> Account | None:
        found = await self.session.execute(select(Account).where(Account.token == token))
        return found.scalar_one_or_none()

    async def by_id(self, account_id: int) -> Account | None:
        found = await self.session.execute(select(Account).where(Account.id == account_id))
        return found.scalar_one_or_none()

    async def record_login(self, account: Account) -> None:
        account.logins += 1
        await self.session.flush()


def make_app(engine: AsyncEngine, replica: AsyncEngine, stock_url: str) -> FastAPI:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    replica_sessions = async_sessionmaker(replica, expire_on_commit=False)
    app = FastAPI()

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    async def get_replica_session() -> AsyncIterator[AsyncSession]:
        async with replica_sessions() as session:
            yield session

    def accounts(session: AsyncSession = Depends(get_session)) -> AccountRepository:
        return AccountRepository(session)

    def replica_accounts(
        session: AsyncSession = Depends(get_replica_session),
    ) -> AccountRepository:
        return AccountRepository(session)

    # One client for the app's life, as apps keep one (closed by whoever made the app).
    app.state.stock = httpx.AsyncClient(base_url=stock_url)

    async def current_account(
        authorization: str = Header(), repository: AccountRepository = Depends(accounts)
    ) -> Account:
        account = await repository.by_token(authorization)
        if account is None:
            raise HTTPException(401)
        return account

    async def stock_client() -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(base_url=stock_url) as client:
            yield client

    _add_logins(app, accounts)

    @app.get("/me/stock")
    async def my_stock(
        account: Account = Depends(current_account),
        repository: AccountRepository = Depends(accounts),
        stock: httpx.AsyncClient = Depends(stock_client),
    ) -> dict[str, Any]:
        # The current user's SELECT began the session's transaction: it stays open, idle,
        # while the other service answers.
        answer = await stock.get("/stock")
        await repository.record_login(account)
        await repository.session.commit()
        return {"email": account.email, **answer.json()}

    @app.post("/me/retry")
    async def retry(
        account: Account = Depends(current_account),
        repository: AccountRepository = Depends(accounts),
    ) -> dict[str, int]:
        await asyncio.sleep(RETRY_PAUSE)  # a back-off before trying again
        await repository.record_login(account)
        await repository.session.commit()
        return {"logins": account.logins}

    @app.get("/accounts", response_model=list[AccountOut])
    async def accounts_by_id(
        ids: str, repository: AccountRepository = Depends(replica_accounts)
    ) -> list[AccountOut]:
        # The same SELECT with another id each turn, and nothing but CPU work between:
        # no wait, however long a busy machine makes the turns.
        found = []
        for account_id in ids.split(","):
            account = await repository.by_id(int(account_id))
            if account is not None:
                found.append(AccountOut(email=account.email, logins=account.logins))
        return found

    @app.get("/me/stock/shared")
    async def my_stock_shared_client(
        request: Request,
        account: Account = Depends(current_account),
        repository: AccountRepository = Depends(accounts),
    ) -> dict[str, Any]:
        # The app's shared client, out of the reader's sight (app.state has no type):
        # what it waits on is not known, and only a measured wait can be reported.
        answer = await request.app.state.stock.get("/stock")
        await repository.record_login(account)
        await repository.session.commit()
        return {"email": account.email, **answer.json()}

    return app


def _add_logins(app: FastAPI, accounts: Callable[..., AccountRepository]) -> None:
    """Three logins, each sending the password's check to the thread pool its own way,
    the session's connection held (its SELECT began a transaction)."""

    @app.post("/login")
    async def login(
        email: str, password: str, repository: AccountRepository = Depends(accounts)
    ) -> dict[str, str]:
        account = await repository.by_email(email)
        if account is None or not await run_in_threadpool(
            verify_password, password, account.password_hash
        ):
            raise HTTPException(401)
        await repository.record_login(account)
        await repository.session.commit()
        return {"token": account.token}

    @app.post("/login/to-thread")
    async def login_to_thread(
        email: str, password: str, repository: AccountRepository = Depends(accounts)
    ) -> dict[str, str]:
        account = await repository.by_email(email)
        if account is None:
            raise HTTPException(401)
        valid = await asyncio.to_thread(verify_password, password, account.password_hash)
        if not valid:
            raise HTTPException(401)
        await repository.record_login(account)
        await repository.session.commit()
        return {"token": account.token}

    @app.post("/login/anyio")
    async def login_anyio(
        email: str, password: str, repository: AccountRepository = Depends(accounts)
    ) -> dict[str, str]:
        account = await repository.by_email(email)
        if account is None or not await anyio.to_thread.run_sync(
            verify_password, password, account.password_hash
        ):
            raise HTTPException(401)
        return {"token": account.token}  # the session's dependency gives it back


def make_sync_app(engine: Engine, stock_url: str) -> FastAPI:
    """Sync endpoints: FastAPI runs each in a worker thread, its session's connection
    held there."""
    sessions = sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    def get_session() -> Iterator[Session]:
        with sessions() as session:
            yield session

    @app.post("/report/slow")
    def slow_report(session: Session = Depends(get_session)) -> dict[str, int]:
        count = len(session.scalars(select(Account)).all())
        time.sleep(RETRY_PAUSE)  # waiting for a rate limit, the transaction open
        session.execute(select(Account).where(Account.id == 1)).scalar_one()
        return {"accounts": count}

    @app.post("/report/stock")
    def stock_report(session: Session = Depends(get_session)) -> dict[str, Any]:
        count = len(session.scalars(select(Account)).all())
        with urllib.request.urlopen(f"{stock_url}/stock") as answer:
            stock = answer.read()
        session.execute(select(Account).where(Account.id == 1)).scalar_one()
        return {"accounts": count, "stock": len(stock)}

    return app
