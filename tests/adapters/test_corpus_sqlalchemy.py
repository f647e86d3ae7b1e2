"""The SQLAlchemy corpus: endpoints that must, or must not, be flagged, on real databases.

Every case runs on the sync app (``Session``, ``def`` endpoints) and the async app
(``AsyncSession``, ``async`` endpoints) where it applies, on SQLite and PostgreSQL, in
production mode (middleware, ``nplusone_threshold=5``, ``watch.findings()``) and in test
mode (``capture()`` around the request, threshold 2). A flagged case names the exact call
site: the line of the corpus marked with the case's comment.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg import sql
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import poolwatch
from poolwatch import PoolWatch
from poolwatch.testing import Capture, capture
from tests.corpus import sqlalchemy_app, sqlalchemy_async_app
from tests.corpus.sqlalchemy_models import reset, seed
from tests.findings_helpers import without_slow
from tests.metrics_helpers import value

SYNC, ASYNC = "sync", "async"
PRODUCTION, TEST = "production", "test"
APPS: dict[str, ModuleType] = {SYNC: sqlalchemy_app, ASYNC: sqlalchemy_async_app}
POOL = "main"
SECRET = sqlalchemy_app.SECRET
assert SECRET == sqlalchemy_async_app.SECRET

NPLUSONE, DUPLICATE, BULK_WRITE = "nplusone", "duplicate", "bulk_write"
UNUSED_EAGER_LOAD = "unused_eager_load"


# -- call sites, read from the corpus's source -------------------------------------------


def _qualnames(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, qualname) of every function in a module."""
    found: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def call_site(module: ModuleType, marker: str) -> str:
    """``path:line in qualname`` of the one line of ``module`` ending in ``# marker``."""
    path = Path(module.__file__ or "")
    source = path.read_text()
    lines = [
        number
        for number, text in enumerate(source.splitlines(), 1)
        if text.rstrip().endswith(f"# {marker}")
    ]
    assert len(lines) == 1, f"{path}: {len(lines)} lines are marked {marker!r}"
    (line,) = lines
    enclosing = [
        (first, name)
        for first, last, name in _qualnames(ast.parse(source))
        if first <= line <= last
    ]
    assert enclosing, f"{path}:{line} is not inside a function"
    _, qualname = max(enclosing)  # the innermost function starts last
    return f"{os.path.relpath(path)}:{line} in {qualname}"


# -- the cases ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expect:
    """A finding a case must produce: its kind, where (a marker, or alternatives) and size."""

    kind: str
    markers: tuple[str, ...]
    count: int
    hint: str = ""
    """Text the finding's suggestion must contain."""
    loop: str = ""
    """A marker whose line must be in the finding's call path: the loop above the site."""
    relations: tuple[str, ...] | None = None
    """The relations the finding must name, a chain outermost first (if given)."""
    callers: tuple[str, ...] = ()
    """Markers of every call path the finding must list as its callers."""
    absent: str = ""
    """Text the finding's suggestion must not contain (what the code does already)."""


def nplusone(marker: str, count: int, hint: str = "") -> Expect:
    return Expect(NPLUSONE, (marker,), count, hint)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    path: str
    expect: tuple[Expect, ...] = ()
    method: str = "GET"
    flavors: tuple[str, ...] = (SYNC, ASYNC)
    modes: tuple[str, ...] = (PRODUCTION, TEST)
    options: tuple[tuple[str, Any], ...] = ()
    """PoolWatch settings of the production run."""
    queries: int | None = None
    """Data statements the request sends (checked in test mode), where it is fixed."""


BY_IDS = "select(Author).where(Author.id.in_(ids))"

CASES = [
    # -- must be flagged: exactly these findings, at these lines
    Case(
        "lazy-one-to-many",
        "/authors/books-lazy",
        (nplusone("N+1 one-to-many", 6, "selectinload(Author.books)"),),
        queries=7,
    ),
    Case(
        "lazy-many-to-one",
        "/books/publisher-lazy",
        (nplusone("N+1 many-to-one", 12, "joinedload(Book.publisher)"),),
        queries=13,
    ),
    Case(
        "session-get-loop",
        "/authors/get-loop",
        (nplusone("N+1 session.get", 6, BY_IDS),),
        queries=6,
    ),
    Case("execute-loop", "/authors/execute-loop", (nplusone("N+1 execute", 6, BY_IDS),), queries=6),
    Case(
        "query-per-author",
        "/authors/books-query",
        (
            nplusone("N+1 per author", 6, "selectinload(Author.books)"),
            # Each author's books load their tags, and nothing reads them.
            Expect(UNUSED_EAGER_LOAD, ("N+1 per author",), 6, "`selectinload(Book.tags)`"),
        ),
        queries=13,  # per author: its books, and their tags by selectinload
    ),
    Case(
        "selected-again",
        "/authors/books-selected-again",
        (
            # The books were loaded with the authors: the advice is to read them, never
            # to add the selectinload that is there; and nothing read what it loaded.
            Expect(
                NPLUSONE,
                ("N+1 selected again",),
                6,
                "is loaded already by the eager load",
                absent="selectinload(",
            ),
            Expect(UNUSED_EAGER_LOAD, ("eager selected again",), 1, "selectinload(Author.books)"),
        ),
        queries=8,
    ),
    Case(
        "gather-per-id",
        "/authors/gather",
        (nplusone("N+1 gather", 6, BY_IDS),),
        flavors=(ASYNC,),
        queries=6,
    ),
    Case(
        "nested-loops",
        "/authors/books/tags",
        (
            nplusone("N+1 nested outer", 6, "selectinload(Author.books)"),
            nplusone("N+1 nested inner", 12, "selectinload(Book.tags)"),
        ),
        queries=19,
    ),
    Case(
        "background-task",
        "/background/authors",
        (nplusone("N+1 background", 6, "joinedload(Book.author)"),),
        queries=7,
    ),
    Case(
        "lazy-many-to-many",
        "/books/tags-lazy",
        (nplusone("N+1 many-to-many", 12, "selectinload(Book.tags)"),),
        queries=13,
    ),
    # -- must not be flagged
    Case("selectinload", "/clean/selectinload", queries=2),
    Case("joinedload", "/clean/joinedload", queries=1),
    Case("subqueryload", "/clean/subqueryload", queries=2),
    Case("nested-selectinload", "/clean/nested-selectinload", queries=3),
    Case("one-plus-one", "/clean/one-plus-one", queries=2),
    Case("add-all", "/write/add-all", method="POST"),
    Case("executemany", "/write/executemany", method="POST"),
    Case(
        "insert-loop-is-a-bulk-write",
        "/write/insert-loop",
        (Expect(BULK_WRITE, ("bulk write insert loop",), 8, "session.add_all()"),),
        method="POST",
    ),
    Case("same-sql-from-different-sites", "/clean/different-sites", queries=3),
    Case("identity-map-hits", "/clean/identity-map", queries=2),
    Case("chunked-in", "/clean/chunked-in", queries=3),
    Case("allow-nplusone-block", "/clean/allowed-block", queries=7),
    Case(
        "allow-listed-route",
        "/allowed/books-lazy",
        modes=(PRODUCTION,),  # a PoolWatch setting; capture() judges with its own policy
        options=(("allow_routes", ("/allowed/*",)),),
    ),
    # -- duplicates
    Case(
        "duplicate-same-params",
        "/duplicate/same-params",
        (
            Expect(
                DUPLICATE,
                ("duplicate first", "duplicate second"),
                2,
                "reuse it",
                callers=("duplicate first", "duplicate second"),
            ),
        ),
        queries=2,
    ),
    Case("same-sql-different-values", "/duplicate/different-values", queries=2),
    # -- what real apps do
    Case("two-callers-of-one-helper", "/real/two-callers", queries=2),
    Case("exists-insert-exists", "/real/exists-insert-exists", method="POST", queries=3),
    Case("read-commit-read", "/real/read-commit-read", queries=2),
    Case("merge-graph", "/real/merge-graph", method="POST"),
    # -- loads an ORM operation makes by design: one call's cost, never the app's loop
    Case("one-merge-loading-six", "/real/merge-strangers", method="POST"),
    Case(
        "merge-per-row",
        "/real/merge-per-row",
        (nplusone("N+1 merge per row", 6, "load=False"),),
        method="POST",
        queries=6,
    ),
    Case(
        "refresh-per-row",
        "/real/refresh-per-row",
        (nplusone("N+1 refresh per row", 6, "populate_existing=True"),),
        queries=7,
    ),
    Case(
        "a-chain-of-relations-from-one-line",
        "/real/chain-in-one-line",
        (
            Expect(
                NPLUSONE,
                ("N+1 chain",),
                18,
                "selectinload(Author.books).selectinload(Book.publisher)",
                relations=("Author.books", "Book.publisher"),
            ),
        ),
        flavors=(SYNC,),  # an async session never loads lazily
        queries=19,
    ),
    # -- response models over relations, read while FastAPI serializes: the endpoint's
    Case(
        "serialized-relation",
        "/serialize/authors",
        (
            Expect(
                NPLUSONE,
                ("N+1 serialized books",),
                6,
                "selectinload(Author.books)",
                relations=("Author.books",),
            ),
        ),
        flavors=(SYNC,),
        queries=7,
    ),
    Case(
        "serialized-chain",
        "/serialize/authors-publishers",
        (
            Expect(
                NPLUSONE,
                ("N+1 serialized chain",),
                18,
                "selectinload(Author.books).selectinload(Book.publisher)",
                relations=("Author.books", "Book.publisher"),
            ),
        ),
        flavors=(SYNC,),
        queries=19,
    ),
    Case("serialized-with-its-loads", "/serialize/clean", flavors=(SYNC,), queries=3),
    Case(
        "service-loop-over-a-repository-helper",
        "/real/service-loop",
        (
            Expect(
                NPLUSONE,
                ("N+1 repository count",),
                6,
                "selectinload(Author.books)",
                loop="service loop",
            ),
        ),
        queries=7,
    ),
    Case(
        "the-same-row-in-a-loop-is-a-duplicate",
        "/real/repeat-in-loop",
        (Expect(DUPLICATE, ("duplicate repository publisher",), 6, "reuse it"),),
        queries=7,
    ),
]


def _case_params() -> Iterator[Any]:
    for case in CASES:
        for flavor in case.flavors:
            for mode in case.modes:
                yield pytest.param(case, flavor, mode, id=f"{flavor}-{mode}-{case.name}")


# -- databases ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Database:
    sync_url: str
    async_url: str


def _driver_url(dsn: str, driver: str) -> str:
    return make_url(dsn).set(drivername=f"postgresql+{driver}").render_as_string(False)


def _seed(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            seed(conn)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sqlite_seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("corpus") / "seeded.db"
    _seed(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def pg_seeded(pg_dsn: str) -> Iterator[str]:
    """A seeded PostgreSQL database for the module; each test deletes what it wrote.

    One database rather than ``pg_database``'s one per test keeps the module fast.
    """
    name = f"poolwatch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_url(pg_dsn).set(database=name).render_as_string(False)
        _seed(_driver_url(dsn, "psycopg"))
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "corpus.db"
        shutil.copyfile(request.getfixturevalue("sqlite_seeded"), path)
        yield Database(f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}")
        return
    dsn: str = request.getfixturevalue("pg_seeded")
    yield Database(_driver_url(dsn, "psycopg"), _driver_url(dsn, "asyncpg"))
    cleanup = create_engine(_driver_url(dsn, "psycopg"), poolclass=NullPool)
    try:
        with cleanup.begin() as conn:
            reset(conn)
    finally:
        cleanup.dispose()


# -- serving the apps --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def engine_for(flavor: str, database: Database) -> AsyncIterator[Engine | AsyncEngine]:
    """A new engine, its dialect set up (first connect) before anyone instruments it."""
    if flavor == SYNC:
        engine = create_engine(database.sync_url)
        try:
            with engine.connect():
                pass
            yield engine
        finally:
            engine.dispose()
    else:
        async_engine = create_async_engine(database.async_url)
        try:
            async with async_engine.connect():
                pass
            yield async_engine
        finally:
            await async_engine.dispose()


@contextlib.asynccontextmanager
async def serve(
    flavor: str, database: Database, watch: PoolWatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The flavor's corpus app on a new, instrumented engine; uninstrumented afterwards."""
    async with engine_for(flavor, database) as engine:
        try:
            watch.instrument_sqlalchemy(engine, pool=POOL)
            app = APPS[flavor].create_app(engine)
            watch.instrument_app(app)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://corpus") as client:
                yield client
        finally:
            watch.uninstrument()


def production_watch(**options: Any) -> PoolWatch:
    return PoolWatch(nplusone_mode="log", nplusone_threshold=5, **options)


async def call(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 200, response.text


# -- judging -----------------------------------------------------------------------------


def assert_findings(found: list[dict[str, Any]], case: Case, flavor: str, report: str = "") -> None:
    """``found`` is exactly what ``case`` expects: kinds, call sites, counts and hints."""
    module = APPS[flavor]
    shown = "\n".join(
        f"  {f['kind']} x{f['count']} at {f['call_site']}: {f['fingerprint']}" for f in found
    )
    message = f"findings of {case.path}:\n{shown or '  (none)'}\n{report}"
    assert all(f["route"] == case.path for f in found), message
    assert all(f["pool"] == POOL for f in found), message
    left = without_slow(found)  # a statement a loaded machine made slow is no bug
    for expect in case.expect:
        sites = {call_site(module, marker) for marker in expect.markers}
        matches = [f for f in left if f["kind"] == expect.kind and f["call_site"] in sites]
        assert len(matches) == 1, f"expected one {expect.kind} at {sorted(sites)}\n{message}"
        (match,) = matches
        assert match["count"] == expect.count, message
        assert expect.hint in match["suggestion"], f"{match['suggestion']!r}\n{message}"
        if expect.absent:
            assert expect.absent not in match["suggestion"], f"{match['suggestion']!r}"
        if expect.relations is not None:
            assert tuple(match["relations"]) == expect.relations, message
        callers = [call_site(module, marker) for marker in expect.callers]
        assert [path.rpartition(" -> ")[2] for path in match["callers"]] == callers, message
        if expect.loop:
            loop = call_site(module, expect.loop)
            assert loop in match["call_path"].split(" -> "), f"{loop} not in the path\n{message}"
            assert match["call_path"].endswith(match["call_site"]), message
        left.remove(match)
    assert left == [], f"unexpected findings\n{message}"


async def run_case(
    case: Case, flavor: str, mode: str, database: Database
) -> tuple[list[dict[str, Any]], Capture | None]:
    """Request the case's endpoint once; its findings (and the capture in test mode)."""
    if mode == PRODUCTION:
        watch = production_watch(**dict(case.options))
        async with serve(flavor, database, watch) as client:
            await call(client, case.method, case.path)
        return watch.findings(), None
    watch = PoolWatch(nplusone_mode="off")  # a test suite judges with capture()
    async with serve(flavor, database, watch) as client:
        with capture() as captured:
            await call(client, case.method, case.path)
    return [f.to_dict() for f in captured.findings], captured


@pytest.mark.parametrize(("case", "flavor", "mode"), list(_case_params()))
async def test_corpus_case(case: Case, flavor: str, mode: str, database: Database) -> None:
    found, captured = await run_case(case, flavor, mode, database)
    report = captured.report() if captured is not None else ""
    assert_findings(found, case, flavor, report)
    if captured is not None and case.queries is not None:
        assert len(captured.queries) == case.queries, report


# -- what findings and metrics must not contain, and what the counters say ---------------


@pytest.mark.parametrize("flavor", [SYNC, ASYNC])
async def test_no_parameter_value_leaves_the_process(flavor: str, database: Database) -> None:
    watch = production_watch()
    async with serve(flavor, database, watch) as client:
        await call(client, "GET", "/authors/books-query")
        await call(client, "GET", "/duplicate/same-params")
        served = await client.get("/poolwatch/findings")
        metrics = await client.get("/metrics")
    assert served.status_code == 200
    # Slow findings are left out of the kinds, not out of the leak checks below.
    assert {f["kind"] for f in without_slow(served.json()["findings"])} == {
        NPLUSONE,
        DUPLICATE,
        UNUSED_EAGER_LOAD,
    }
    assert served.json()["findings"] == json.loads(json.dumps(watch.findings()))
    for text in (
        json.dumps(watch.findings()),
        served.text,
        metrics.text,
        generate_latest(watch.registry).decode(),
    ):
        assert SECRET not in text

    watch = PoolWatch(nplusone_mode="off")
    async with serve(flavor, database, watch) as client:
        with capture() as captured:
            await call(client, "GET", "/authors/books-query")
            await call(client, "GET", "/duplicate/same-params")
    assert {f.kind for f in without_slow(captured.findings)} == {
        NPLUSONE,
        DUPLICATE,
        UNUSED_EAGER_LOAD,
    }
    assert SECRET not in captured.report()
    assert SECRET not in repr(captured.queries) + repr(captured.findings)


@pytest.mark.parametrize("flavor", [SYNC, ASYNC])
async def test_counters_count_requests_with_findings(flavor: str, database: Database) -> None:
    watch = production_watch()
    async with serve(flavor, database, watch) as client:
        await call(client, "GET", "/authors/books-lazy")
        await call(client, "GET", "/clean/selectinload")
        await call(client, "GET", "/duplicate/same-params")
    registry = watch.registry
    nplusone_total = "poolwatch_nplusone_total"
    duplicates_total = "poolwatch_duplicate_queries_total"
    assert value(registry, nplusone_total, route="/authors/books-lazy") == 1
    assert value(registry, duplicates_total, route="/authors/books-lazy") == 0
    # A clean route that was requested has its series, at zero.
    assert registry.get_sample_value(nplusone_total, {"route": "/clean/selectinload"}) == 0
    assert registry.get_sample_value(duplicates_total, {"route": "/clean/selectinload"}) == 0
    assert value(registry, duplicates_total, route="/duplicate/same-params") == 1
    assert value(registry, nplusone_total, route="/duplicate/same-params") == 0


# -- the same loops without HTTP ---------------------------------------------------------

LOOPS = [
    ("books_per_author", "N+1 one-to-many", 6),
    ("publisher_per_book", "N+1 many-to-one", 12),
    ("authors_by_get", "N+1 session.get", 6),
    ("tags_per_book", "N+1 many-to-many", 12),
]


async def run_loop(flavor: str, engine: Engine | AsyncEngine, function: str) -> None:
    loop = getattr(APPS[flavor], function)
    if isinstance(engine, AsyncEngine):
        async with AsyncSession(engine) as async_session:
            await loop(async_session)
    else:
        with Session(engine) as session:
            loop(session)


@pytest.mark.parametrize(("function", "marker", "count"), LOOPS)
@pytest.mark.parametrize("flavor", [SYNC, ASYNC])
async def test_loops_outside_http(
    flavor: str, function: str, marker: str, count: int, database: Database
) -> None:
    site = call_site(APPS[flavor], marker)
    async with engine_for(flavor, database) as engine:
        watch = production_watch()
        try:
            watch.instrument_sqlalchemy(engine, pool=POOL)
            with poolwatch.scope("nightly-report"):
                await run_loop(flavor, engine, function)
            with capture() as captured:  # no request, no scope: one scope of its own
                await run_loop(flavor, engine, function)
        finally:
            watch.uninstrument()
    found = without_slow(watch.findings())
    assert [(f["kind"], f["route"], f["call_site"], f["count"]) for f in found] == [
        (NPLUSONE, "nightly-report", site, count)
    ]
    assert [(f.kind, f.route, f.call_site, f.count) for f in without_slow(captured.findings)] == [
        (NPLUSONE, "capture", site, count)
    ], captured.report()
