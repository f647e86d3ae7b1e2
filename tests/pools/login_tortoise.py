"""The login app of ``login_app.py`` on Tortoise-ORM: each request's writes in one
transaction (``in_transaction()``), which holds one connection from its first statement
to its end, across whatever the block awaits."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from starlette.concurrency import run_in_threadpool
from tortoise import fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

from tests.pools.login_app import RETRY_PAUSE, verify_password


class Member(Model):
    id = fields.IntField(primary_key=True)
    email = fields.CharField(max_length=100, unique=True)
    password_hash = fields.BinaryField()
    logins = fields.IntField(default=0)

    class Meta:
        app = "models"
        table = "t_member"


class Members:
    """The repository: every method on the connection of the caller's transaction."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def by_email(self, email: str) -> Member | None:
        return await Member.get_or_none(email=email, using_db=self.connection)

    async def record_login(self, member: Member) -> None:
        member.logins += 1
        await member.save(using_db=self.connection, update_fields=["logins"])


def make_app(stock_url: str) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(email: str, password: str) -> dict[str, int]:
        async with in_transaction() as connection:
            members = Members(connection)
            member = await members.by_email(email)
            if member is None or not await run_in_threadpool(
                verify_password, password, bytes(member.password_hash)
            ):
                raise HTTPException(401)
            await members.record_login(member)
        return {"id": member.id}

    @app.post("/members/{member_id}/sync")
    async def sync_member(member_id: int) -> dict[str, Any]:
        async with in_transaction() as connection:
            member = await Member.get(id=member_id, using_db=connection)
            async with httpx.AsyncClient(base_url=stock_url) as client:
                answer = await client.get("/stock")
            member.logins += 1
            await member.save(using_db=connection, update_fields=["logins"])
        return {"id": member.id, **answer.json()}

    @app.post("/members/{member_id}/retry")
    async def retry(member_id: int) -> dict[str, int]:
        async with in_transaction() as connection:
            member = await Member.get(id=member_id, using_db=connection)
            await asyncio.sleep(RETRY_PAUSE)
            await Members(connection).record_login(member)
        return {"logins": member.logins}

    @app.post("/members/{member_id}/retry-outside")
    async def retry_outside(member_id: int) -> dict[str, int]:
        """The control: the pause comes after the transaction gave its connection back."""
        async with in_transaction() as connection:
            member = await Member.get(id=member_id, using_db=connection)
        await asyncio.sleep(RETRY_PAUSE)
        async with in_transaction() as connection:
            await Members(connection).record_login(member)
        return {"logins": member.logins}

    return app
