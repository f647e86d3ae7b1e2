"""The pytest plugin's listed findings, on a small user suite shaped like real code: a
FastAPI app with a repository layer, a session per request from a dependency, response
models, and two engines (the primary for writes, a replica for reads). Per-row writes
and eager loads nothing read are listed at the end, with the loop's line and the ORM's
bulk call, or the query's call path and the option to remove; they fail no test unless
``poolwatch_fail_on`` names their kind."""

from __future__ import annotations

# FastAPI and SQLAlchemy's ORM are imported here, before pytester's in-process runs: a
# module first imported inside one is dropped from sys.modules after it, and SQLAlchemy
# imported again beside the compiled parts of the first import fails in the next run.
import fastapi  # noqa: F401
import pytest
import sqlalchemy.orm  # noqa: F401

SHOP = """
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, create_engine, delete, select
from sqlalchemy.orm import (
    DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker,
)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship()


class BookOut(BaseModel):
    title: str


class Books:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_each(self, titles):
        for title in titles:
            self.session.add(Book(title=title, author_id=1))
            self.session.flush()  # an INSERT per row

    def retire(self, ids):
        for book_id in ids:
            self.session.execute(delete(Book).where(Book.id == book_id))

    def listing(self):
        query = select(Book).options(selectinload(Book.author)).order_by(Book.id)
        return self.session.scalars(query).all()


def make_engines(path):
    primary = create_engine(f"sqlite:///{path}")
    replica = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(primary)
    with Session(primary) as session:
        session.add(Author(id=1, name="Ada"))
        session.add_all([Book(id=i, title=f"t{i}", author_id=1) for i in range(1, 6)])
        session.commit()
    return primary, replica


def make_app(primary, replica):
    writes = sessionmaker(primary)
    reads = sessionmaker(replica)
    app = FastAPI()

    def get_session():
        with writes() as session:
            yield session

    def get_replica_session():
        with reads() as session:
            yield session

    def books(session: Session = Depends(get_session)) -> Books:
        return Books(session)

    def replica_books(session: Session = Depends(get_replica_session)) -> Books:
        return Books(session)

    @app.post("/books/import")
    def import_books(titles: str, repository: Books = Depends(books)) -> dict:
        repository.add_each(titles.split(","))
        repository.session.commit()
        return {"imported": len(titles.split(","))}

    @app.post("/books/retire")
    def retire_books(ids: str, repository: Books = Depends(books)) -> dict:
        repository.retire([int(i) for i in ids.split(",")])
        repository.session.commit()
        return {"retired": ids}

    @app.get("/books", response_model=list[BookOut])
    def list_books(repository: Books = Depends(replica_books)) -> list[BookOut]:
        return [BookOut(title=book.title) for book in repository.listing()]

    return app
"""

CONFTEST = """
import asyncio

import httpx
import pytest
from poolwatch import PoolWatch
from shop import make_app, make_engines


@pytest.fixture
def client(tmp_path):
    primary, replica = make_engines(tmp_path / "shop.sqlite")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(primary)
    watch.instrument_sqlalchemy(replica, pool="replica")
    app = make_app(primary, replica)
    watch.instrument_app(app)

    def call(method, path, **params):
        async def send():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                response = await c.request(method, path, params=params)
                assert response.status_code == 200, response.text
                return response.json()

        return asyncio.run(send())

    yield call
    watch.uninstrument()
    primary.dispose()
    replica.dispose()
"""

SUITE = """
def test_import(client):
    assert client("POST", "/books/import", titles="a,b,c") == {"imported": 3}


def test_import_again(client):
    client("POST", "/books/import", titles="d,e,f,g")


def test_retire(client):
    client("POST", "/books/retire", ids="1,2,3")


def test_listing(client):
    assert [book["title"] for book in client("GET", "/books")] == [f"t{i}" for i in range(1, 6)]
"""

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_shop=SUITE, shop=SHOP, conftest=CONFTEST)
    pytester.makeini(INI)
    pytester.syspathinsert()
    return pytester


def _line(source: str, text: str) -> int:
    """The line of ``text`` in a module pytester wrote (without the leading newline)."""
    lines = source.lstrip("\n").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize("mode", ["report", "raise"])
def test_per_row_writes_are_listed_with_the_loop_and_the_bulk_call(
    suite: pytest.Pytester, mode: str
) -> None:
    result = suite.runpytest(f"--poolwatch-nplusone={mode}")
    result.assert_outcomes(passed=4)  # never a failure, in raise mode too
    add, flush = _line(SHOP, "for title in titles:"), _line(SHOP, "self.session.flush()")
    retire = _line(SHOP, "for book_id in ids:")
    result.stdout.fnmatch_lines(
        [
            "*- poolwatch: 3 per-row writes, at 2 places -*",
            "test_shop.py::test_import (and 1 more test): bulk_write on POST /books/import: "
            "4 x 'insert into book (...) values (?, ?)' (* ms) at "
            f"shop.py:{_line(SHOP, 'repository.add_each(')} in make_app.<locals>.import_books "
            f"-> shop.py:{flush} in Books.add_each. One INSERT per row: insert the rows in "
            "one statement, with `session.execute(insert(Model), *` or "
            "`insert(table).values(*)`; ORM objects: `session.add_all()` and one "
            "flush, not a flush or commit per row.",
            f"    the loop: shop.py:{add} in Books.add_each (for title in titles:)",
            "test_shop.py::test_retire: bulk_write on POST /books/retire: 3 x "
            "'delete from book where book.id = ?' (* ms) at *. One DELETE per row: delete the "
            "rows in one statement, with "
            "`session.execute(delete(Model).where(Model.id.in_(ids)))`.",
            f"    the loop: shop.py:{retire} in Books.retire (for book_id in ids:)",
            "(listed only; --poolwatch-fail-on=bulk_write or poolwatch_fail_on = bulk_write "
            "makes them fail the tests that show them)",
        ]
    )


def test_eager_loads_nothing_read_are_listed_with_the_query_and_the_option(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest("test_shop.py::test_listing")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*- poolwatch: 1 unused eager load, at 1 place -*",
            "test_shop.py::test_listing: unused_eager_load on GET /books: Book.author loaded "
            f"1 x and never read, at shop.py:{_line(SHOP, 'repository.listing()')} in "
            "make_app.<locals>.list_books -> shop.py:"
            f"{_line(SHOP, 'return self.session.scalars(query)')} in Books.listing. Nothing "
            "read Book.author, which `selectinload(Book.author)` loaded (one more query each "
            "time): remove the option*",
            "(listed only; --poolwatch-fail-on=unused_eager_load or poolwatch_fail_on = "
            "unused_eager_load makes them fail the tests that show them)",
        ]
    )


def test_asked_a_kind_fails_the_tests_that_show_it_and_no_other(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest("--poolwatch-fail-on=bulk_write")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "1 finding(s) of a kind that fails tests (poolwatch_fail_on = bulk_write) in "
            "test_shop.py::test_import:",
            "  - bulk_write on POST /books/import: 3 x 'insert into book *",
        ]
    )
    assert "per-row writes" not in result.stdout.str()  # they failed tests instead
    result.stdout.fnmatch_lines(["*- poolwatch: 1 unused eager load, at 1 place -*"])


def test_the_ini_option_names_kinds_too(suite: pytest.Pytester) -> None:
    suite.makeini(INI + "poolwatch_fail_on = unused_eager_load, bulk_write\n")
    result = suite.runpytest()
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "1 finding(s) of a kind that fails tests (poolwatch_fail_on = bulk_write,"
            "unused_eager_load) in test_shop.py::test_listing:",
            "  - unused_eager_load on GET /books: Book.author loaded 1 x and never read*",
        ]
    )


def test_a_kind_it_does_not_take_fails_the_session(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--poolwatch-fail-on=bulk_writes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*poolwatch_fail_on='bulk_writes': bulk_writes is not a kind it takes; it takes "
            "held_idle, bulk_write, unused_eager_load (N+1 and duplicate queries fail with "
            "--poolwatch-nplusone=raise)*"
        ]
    )
