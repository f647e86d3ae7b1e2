"""The realistic app's own honest suite (run by tests/test_realapp.py as a test file of a
user's project, with the pytest plugin in raise mode): it must pass untouched."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from poolwatch import PoolWatch
from tests.realapp import db
from tests.realapp.main import create_app
from tests.realapp.repositories import UserRepository


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[PoolWatch]:
    engines = db.make_engines(str(tmp_path / "realapp.db"))
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engines["primary"], pool="primary")
    watch.instrument_sqlalchemy(engines["replica"], pool="replica")
    db.seed()
    yield watch
    watch.uninstrument()
    for engine in engines.values():
        engine.dispose()


@pytest.fixture
def call(watch: PoolWatch) -> Any:
    app = create_app()
    watch.instrument_app(app)

    def request(method: str, path: str, **params: Any) -> Any:
        async def send() -> Any:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                response = await client.request(method, path, params=params)
                assert response.status_code < 400, response.text
                return response.json()

        return asyncio.run(send())

    return request


def test_me(call: Any) -> None:
    assert call("GET", "/api/v1/users/me")["id"] == 1


def test_another_users_profile(call: Any) -> None:
    # The current-user dependency and the route load two users with one helper.
    assert call("GET", "/api/v1/users/3") == {"id": 3, "name": "user 3", "viewer": 1}


def test_my_own_profile(call: Any) -> None:
    # The dependency and the route load the same user: two callers, no loop to hoist.
    assert call("GET", "/api/v1/users/1") == {"id": 1, "name": "user 1", "viewer": 1}


def test_register_checks_the_email_before_and_after(call: Any) -> None:
    assert call("POST", "/api/v1/users", name="new", email="new@example.com")["taken"]


def test_rename_reads_the_article_again_after_its_commit(call: Any) -> None:
    assert call("PUT", "/api/v1/articles/2", title="renamed")["title"] == "renamed"


def test_feed(call: Any) -> None:
    assert len(call("GET", "/api/v1/articles", limit=5)) == 5


def test_primary_and_replica_agree(call: Any) -> None:
    assert call("GET", "/api/v1/articles/compare") == {"same": True}


def test_write_then_read(call: Any) -> None:
    created = call("POST", "/api/v1/articles", title="fresh")
    assert call("GET", "/api/v1/articles", limit=1)[0]["id"] == created["id"]


def test_users_checked_one_by_one_by_the_test_itself(call: Any) -> None:
    with Session(db.engines["primary"]) as session:
        for user_id in (1, 2, 3):
            assert UserRepository(session).get(user_id) is not None
