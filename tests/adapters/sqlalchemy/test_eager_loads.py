"""Unused eager loads on SQLAlchemy, sync and async, in a FastAPI app with a repository
layer, a current-user dependency on a replica engine and response models."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    Session,
    immediateload,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

import poolwatch
from poolwatch import PoolWatch
from poolwatch.adapters.sqlalchemy import eager
from poolwatch.events import NPLUSONE, UNUSED_EAGER_LOAD
from poolwatch.testing import capture
from tests.adapters.sqlalchemy import eager_app
from tests.adapters.sqlalchemy.eager_app import Article, Author
from tests.adapters.sqlalchemy.readings import pg_url

DRIVERS = [
    "sqlite",
    "aiosqlite",
    pytest.param("psycopg", marks=pytest.mark.postgres),
    pytest.param("asyncpg", marks=pytest.mark.postgres),
]


@pytest.fixture(params=DRIVERS)
async def blog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """(app client, PoolWatch) over a seeded database, for one driver."""
    driver = request.param
    if driver in ("sqlite", "aiosqlite"):
        url = (
            f"sqlite+{'pysqlite' if driver == 'sqlite' else 'aiosqlite'}:///{tmp_path / 'blog.db'}"
        )
    else:
        url = pg_url(request.getfixturevalue("pg_database"), driver)
    setup = create_engine(url.replace("+aiosqlite", "+pysqlite").replace("+asyncpg", "+psycopg"))
    eager_app.seed(setup)
    setup.dispose()
    is_async = driver in ("aiosqlite", "asyncpg")
    if is_async:
        main, replica = create_async_engine(url), create_async_engine(url)
        sessions: Any = async_sessionmaker(main)
        replicas: Any = async_sessionmaker(replica)
    else:
        main, replica = create_engine(url), create_engine(url)
        sessions, replicas = sessionmaker(main), sessionmaker(replica)
    watch = PoolWatch()
    app = eager_app.build(sessions, replicas, is_async=is_async)
    watch.instrument_app(app)
    watch.instrument_sqlalchemy(main, pool="main")
    watch.instrument_sqlalchemy(replica, pool="replica")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://blog") as client:
        yield client, watch
    watch.uninstrument()
    for engine in (main, replica):
        if is_async:
            await engine.dispose()
        else:
            engine.dispose()


def _unused(watch: PoolWatch) -> list[dict[str, Any]]:
    return [f for f in watch.findings() if f["kind"] == UNUSED_EAGER_LOAD]


def _counted(watch: PoolWatch, route: str) -> float:
    value = watch.registry.get_sample_value("poolwatch_unused_eager_loads_total", {"route": route})
    return -1.0 if value is None else value


async def test_a_relation_read_in_code_or_by_the_response_model_is_used(blog: Any) -> None:
    client, watch = blog
    response = await client.get("/api/articles/with-authors")
    assert response.status_code == 200
    assert response.json()[0]["author"]["name"] == "author 1"  # read by serialization only
    assert (await client.get("/api/articles/tags")).json() == [1] * 6
    assert _unused(watch) == []
    assert _counted(watch, "/api/articles/with-authors") == 0.0  # at zero, like the others


@pytest.mark.parametrize(
    ("name", "relation", "option"),
    [
        ("titles", "Article.tags", "selectinload(Article.tags)"),
        ("joined", "Article.author", "joinedload(Article.author)"),
        ("subquery", "Article.tags", "subqueryload(Article.tags)"),
        ("immediate", "Article.tags", "immediateload(Article.tags)"),
    ],
)
async def test_an_unused_eager_load_is_reported_with_its_call_path(
    blog: Any, name: str, relation: str, option: str
) -> None:
    client, watch = blog
    for _ in range(2):
        assert (await client.get(f"/api/articles/{name}")).status_code == 200
    [finding] = _unused(watch)
    assert finding["route"] == "/api/articles/{name}"
    assert finding["method"] == "GET"
    assert tuple(finding["relations"]) == (relation,)
    assert finding["pool"] == "main"
    assert finding["count"] == 1
    assert finding["occurrences"] == 2
    assert "eager_app.py" in finding["call_site"]
    assert "listing" in finding["call_path"]
    assert finding["call_path"].endswith(("in build.<locals>.load", "in build.<locals>.load_sync"))
    assert finding["fingerprint"].startswith("select ... from eager_article")
    assert f"`{option}`" in finding["suggestion"]
    assert _counted(watch, "/api/articles/{name}") == 2.0  # requests, not findings


@pytest.mark.parametrize(
    ("name", "part"), [("chained", ".selectinload"), ("chained-joined", ".joinedload")]
)
async def test_the_unused_part_of_a_chained_option_is_reported_as_that_part(
    blog: Any, name: str, part: str
) -> None:
    client, watch = blog
    assert (await client.get(f"/api/articles/{name}")).status_code == 200
    [finding] = _unused(watch)
    assert tuple(finding["relations"]) == ("Author.profile",)
    assert f"the `{part}(Author.profile)` part of" in finding["suggestion"]
    assert "`selectinload(Article.author)`" in finding["suggestion"]


@pytest.mark.parametrize("name", ["none", "none-joined"])
async def test_an_eager_load_of_no_rows_loaded_nothing(blog: Any, name: str) -> None:
    client, watch = blog
    assert (await client.get(f"/api/articles/{name}")).json() == []
    assert _unused(watch) == []


async def test_an_nplusone_beside_an_unused_eager_load_are_both_found(blog: Any) -> None:
    client, watch = blog
    assert (await client.get("/api/articles/nplusone")).status_code == 200
    kinds = {(f["kind"], tuple(f["relations"])) for f in watch.findings()}
    assert (UNUSED_EAGER_LOAD, ("Article.tags",)) in kinds
    assert NPLUSONE in {kind for kind, _ in kinds}


async def test_capture_sees_the_finding_with_detection_off(blog: Any) -> None:
    client, watch = blog
    watch.recorder.enabled = False
    with capture() as captured:
        await client.get("/api/articles/titles")
        await client.get("/api/articles/with-authors")
    [finding] = captured.unused_eager_loads
    assert finding.relations == ("Article.tags",)
    assert finding.route == "/api/articles/{name}"
    assert _unused(watch) == []


async def test_a_fault_in_the_hook_is_counted_and_the_request_succeeds(
    blog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, watch = blog

    def broken(statement: Any) -> Any:
        raise RuntimeError("options moved")

    monkeypatch.setattr(eager, "eager_parts", broken)
    response = await client.get("/api/articles/titles")
    assert response.status_code == 200
    assert len(response.json()) == 6
    errors = watch.registry.get_sample_value(
        "poolwatch_internal_errors_total", {"component": "eager_loads"}
    )
    assert errors is not None
    assert errors >= 1
    assert _unused(watch) == []


async def test_memory_stays_bounded_and_relations_are_put_back(blog: Any) -> None:
    client, watch = blog
    for _ in range(30):
        await client.get("/api/articles/titles")
        await client.get("/api/articles/chained")
    assert eager.hooks.watching() == 0  # every watched relation put back at scope end
    assert type(Article.__dict__["tags"]) is InstrumentedAttribute
    assert type(Author.__dict__["profile"]) is InstrumentedAttribute
    gc.collect()
    assert len(_unused(watch)) == 2  # aggregated, not one entry per request


def test_uninstrument_removes_the_session_listener(tmp_path: Path) -> None:
    from sqlalchemy import event

    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    assert event.contains(Session, "do_orm_execute", eager.hooks._on_execute)
    watch.uninstrument()
    assert not event.contains(Session, "do_orm_execute", eager.hooks._on_execute)
    engine.dispose()


def test_only_joined_loads_are_counted_row_by_row(tmp_path: Path) -> None:
    """A relation loaded by its own statement (selectin, subquery, immediate) is counted
    by that statement: the session gets a per-row listener only once a joined load is
    tracked in it, and a lazy load of another relation counts for no tracked load."""
    engine = create_engine(f"sqlite:///{tmp_path / 'blog.db'}")
    eager_app.seed(engine)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    with capture() as captured, poolwatch.scope("job"), Session(engine) as session:
        by_statement = select(Article).options(
            selectinload(Article.tags), immediateload(Article.author)
        )
        for article in session.scalars(by_statement):
            assert article.author.profile.bio  # a lazy load of Author.profile per row
        assert not session.dispatch.loaded_as_persistent  # no per-row listener
        empty = select(Article).where(Article.id < 0).options(selectinload(Article.author))
        assert session.scalars(empty).all() == []
        assert not session.dispatch.loaded_as_persistent
        session.expunge_all()
        session.scalars(select(Article).options(joinedload(Article.author))).unique().all()
        assert session.dispatch.loaded_as_persistent  # the joined rows are counted
    watch.uninstrument()
    engine.dispose()
    assert {f.relations for f in captured.unused_eager_loads} == {
        ("Article.tags",),  # loaded by its own statement, never read
        ("Article.author",),  # joined, never read (the first query's were)
    }
    assert eager.hooks.watching() == 0


def test_a_row_refreshed_below_a_relation_is_no_load_of_it(tmp_path: Path) -> None:
    """An expired row loaded by a relation's own statement is refreshed with that
    relation's loader path and the query's options: it loads no relation, and the tracked
    query of the same shape that returned nothing stays no finding."""
    engine = create_engine(f"sqlite:///{tmp_path / 'blog.db'}")
    eager_app.seed(engine)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    with Session(engine) as session:
        tagged = select(Article).options(selectinload(Article.tags))
        tag = session.scalars(tagged).first().tags[0]  # before the scope
        with capture() as captured, poolwatch.scope("job"):
            none = select(Article).where(Article.id < 0).options(selectinload(Article.tags))
            assert session.scalars(none).all() == []
            session.expire(tag)
            assert tag.label == "tag 1"  # refreshed
    watch.uninstrument()
    engine.dispose()
    assert captured.unused_eager_loads == []
    errors = watch.registry.get_sample_value(
        "poolwatch_internal_errors_total", {"component": "eager_loads"}
    )
    assert not errors


class _Zoo(DeclarativeBase):
    pass


class _Keeper(_Zoo):
    __tablename__ = "zoo_keeper"
    id: Mapped[int] = mapped_column(primary_key=True)
    animals: Mapped[list[_Animal]] = relationship(order_by="_Animal.id")


class _Animal(_Zoo):
    __tablename__ = "zoo_animal"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    keeper_id: Mapped[int] = mapped_column(ForeignKey("zoo_keeper.id"))
    __mapper_args__: ClassVar[dict[str, str]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "animal",
    }


class _Dog(_Animal):
    __tablename__ = "zoo_dog"
    id: Mapped[int] = mapped_column(ForeignKey("zoo_animal.id"), primary_key=True)
    bark: Mapped[str]
    __mapper_args__: ClassVar[dict[str, str]] = {
        "polymorphic_identity": "dog",
        "polymorphic_load": "selectin",
    }


def test_a_polymorphic_load_below_a_tracked_query_is_no_relation_load(tmp_path: Path) -> None:
    """A subclass's columns loaded by a statement of their own (``polymorphic_load=
    "selectin"``) carry a loader path that ends at a class, not a relation: counted for
    nothing, and no fault."""
    engine = create_engine(f"sqlite:///{tmp_path / 'zoo.db'}")
    _Zoo.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([_Keeper(id=1), _Dog(id=1, keeper_id=1, bark="woof")])
        session.commit()
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    with capture() as captured, poolwatch.scope("job"), Session(engine) as session:
        [keeper] = session.scalars(select(_Keeper).options(selectinload(_Keeper.animals)))
        assert [dog.bark for dog in keeper.animals] == ["woof"]  # type: ignore[attr-defined]
        dogs = session.scalars(select(_Keeper).options(selectinload(_Keeper.animals))).all()
        assert len(dogs) == 1  # read nothing the second time: that line's load is unused
    watch.uninstrument()
    engine.dispose()
    assert [f.relations for f in captured.unused_eager_loads] == [("_Keeper.animals",)]
    errors = watch.registry.get_sample_value(
        "poolwatch_internal_errors_total", {"component": "eager_loads"}
    )
    assert not errors
