"""Run by tests/queries/test_fingerprint_stability.py in fresh processes (each with its own hash
seed): prints the fingerprint of every statement a small Tortoise app runs, one per line."""

from __future__ import annotations

import asyncio

from tortoise import Tortoise, fields
from tortoise.models import Model

from poolwatch import PoolWatch
from poolwatch.testing import capture


class Member(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)
    email = fields.CharField(max_length=80)
    active = fields.BooleanField(default=True)
    score = fields.IntField(default=0)

    class Meta:
        app = "stability"
        table = "stability_member"


async def main() -> None:
    watch = PoolWatch()
    watch.instrument_tortoise()
    await Tortoise.init(db_url="sqlite://:memory:", modules={"stability": [__name__]})
    await Tortoise.generate_schemas()
    try:
        with capture() as captured:
            member = await Member.create(name="a", email="a@example.com")
            await Member.get(id=member.id)
            await Member.filter(active=True).order_by("name").limit(3)
            member.score = 3
            await member.save()
            await Member.filter(id=member.id).update(active=False)
            await Member.filter(name="a").values("id", "email")
            await Member.bulk_create([Member(name="b", email="b"), Member(name="c", email="c")])
            await Member.filter(id=member.id).delete()
        for query in captured.queries:
            print(query.fingerprint)
    finally:
        await Tortoise.close_connections()
        watch.uninstrument()


if __name__ == "__main__":
    asyncio.run(main())
