"""The Tortoise-ORM corpus: every endpoint of tests/corpus/tortoise_app.py, judged two ways.

* production: the app behind PoolWatch's middleware (``nplusone_threshold=5``), read back
  from ``watch.findings()``, ``GET /poolwatch/findings`` and the per-route counters;
* tests: ``poolwatch.testing.capture()`` around the request (test threshold 2).

Each runs on SQLite in memory and, marked ``postgres``, on PostgreSQL through asyncpg and
psycopg. A finding is compared as (kind, call site, table, count): the call site's line
comes from the marker comment (``# N+1 <name>``) on that line of the app's source.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg import sql
from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE

from poolwatch import PoolWatch
from poolwatch.testing import capture
from tests.corpus import tortoise_app
from tests.corpus.tortoise_app import SECRET
from tests.findings_helpers import without_slow
from tests.tortoise_models import IGNORE_OLD_PSYCOPG_CLIENT

pytestmark = IGNORE_OLD_PSYCOPG_CLIENT

APP_FILE = "tests/corpus/tortoise_app.py"
PRODUCTION: dict[str, Any] = {
    "nplusone_mode": "log",
    "nplusone_threshold": 5,
    "allow_routes": ("/allowed/*",),
    "allow_call_sites": ("*:* in legacy_export",),
}

# -- the marker comments in the app's source -----------------------------------------------

_KINDS = {"N+1": "nplusone", "DUPLICATE": "duplicate", "BULK_WRITE": "bulk_write", "LOOP": ""}
_MARKER = re.compile(r"#\s*(N\+1|DUPLICATE|BULK_WRITE|LOOP)\s+(\w+)\s*$")


def _markers() -> dict[str, tuple[str, int]]:
    """marker name -> (finding kind, line number) in the app's source."""
    found: dict[str, tuple[str, int]] = {}
    source = Path(tortoise_app.__file__).read_text(encoding="utf-8")
    for number, line in enumerate(source.splitlines(), 1):
        match = _MARKER.search(line)
        if match is not None:
            kind, name = match.groups()
            assert name not in found, f"marker {name!r} is used twice"
            found[name] = (_KINDS[kind], number)
    return found


MARKERS = _markers()

Row = tuple[str, str, str, int]
"""A finding as compared: (kind, call site, table it reads or writes, count)."""

_TABLE = re.compile(r"\b(?:from|into|update)\s+([\w$]+)")


def _row(kind: str, call_site: str, fingerprint: str, count: int) -> Row:
    table = _TABLE.search(fingerprint)
    return (kind, call_site, table.group(1) if table else fingerprint, count)


def endpoint(name: str) -> str:
    """The qualified name of an endpoint defined in ``build_app``."""
    return f"build_app.<locals>.{name}"


@dataclasses.dataclass(frozen=True)
class Expect:
    """One finding a case must produce."""

    marker: str
    function: str
    table: str
    count: int
    hints: tuple[str, ...] = ()
    """Texts the finding's suggestion must contain (the relation to prefetch)."""
    absent: tuple[str, ...] = ()
    """Texts it must not contain (advice to do what the code already does)."""
    loop: str = ""
    """A ``# LOOP`` marker whose line must be in the finding's call path."""

    @property
    def row(self) -> Row:
        kind, line = MARKERS[self.marker]
        return (kind, f"{APP_FILE}:{line} in {self.function}", self.table, self.count)


@dataclasses.dataclass(frozen=True)
class Case:
    path: str
    expected: tuple[Expect, ...] = ()
    route: str | None = None
    """The route template, where it is not ``path``."""
    production: bool = True
    capture: bool = True
    capture_thresholds: tuple[int, ...] = (2,)

    @property
    def template(self) -> str:
        return self.route or self.path

    def rows(self) -> list[Row]:
        return sorted(e.row for e in self.expected)

    def has(self, kind: str) -> bool:
        return any(e.row[0] == kind for e in self.expected)


BOOKS_HINT = ('`Author.all().prefetch_related("books")`',)
AUTHOR_HINT = ('`Book.all().prefetch_related("author")`',)
IDS_HINT = ("`Author.filter(id__in=ids)`",)

CASES: dict[str, Case] = {
    # -- N+1 ---------------------------------------------------------------------------
    "reverse_fk": Case(
        "/nplusone/reverse-fk",
        (Expect("reverse_fk", endpoint("reverse_fk"), "corpus_book", 8, BOOKS_HINT),),
    ),
    "reverse_fk_comprehension": Case(
        "/nplusone/reverse-fk-comprehension",
        (
            Expect(
                "reverse_fk_comprehension",
                endpoint("reverse_fk_comprehension"),  # the same on every Python
                "corpus_book",
                8,
                BOOKS_HINT,
            ),
        ),
    ),
    "reverse_fk_async_for": Case(
        "/nplusone/reverse-fk-async-for",
        (
            Expect(
                "reverse_fk_async_for",
                endpoint("reverse_fk_async_for"),
                "corpus_book",
                8,
                BOOKS_HINT,
            ),
        ),
    ),
    "forward_fk": Case(
        "/nplusone/forward-fk",
        # `await book.author` is a lookup by id, like Author.get(id=...): nothing proves
        # it is the relation's load, so the relation is offered as a candidate.
        (
            Expect(
                "forward_fk", endpoint("forward_fk"), "corpus_author", 24, AUTHOR_HINT + IDS_HINT
            ),
        ),
    ),
    "get_by_id": Case(
        "/nplusone/get-by-id",
        (Expect("get_by_id", endpoint("get_by_id"), "corpus_author", 8, IDS_HINT),),
    ),
    "fetch_related": Case(
        "/nplusone/fetch-related",
        (Expect("fetch_related", endpoint("fetch_related"), "corpus_book", 8, BOOKS_HINT),),
    ),
    "prefetch_per_row": Case(
        "/nplusone/prefetch-per-row",
        (
            # One "IN (?)" per row, for the authors and for their prefetched books.
            Expect("prefetch_per_row", endpoint("prefetch_per_row"), "corpus_author", 8),
            Expect("prefetch_per_row", endpoint("prefetch_per_row"), "corpus_book", 8, BOOKS_HINT),
        ),
    ),
    "gather": Case(
        "/nplusone/gather",
        (Expect("gather", endpoint("gather"), "corpus_author", 8, IDS_HINT),),
    ),
    "gather_helper": Case(
        "/nplusone/gather-helper",
        (Expect("gather_helper", "load_author", "corpus_author", 8, IDS_HINT),),
    ),
    "nested": Case(
        "/nplusone/nested",
        (
            Expect("nested_outer", endpoint("nested"), "corpus_book", 8, BOOKS_HINT),
            Expect(
                "nested_inner",
                endpoint("nested"),
                "corpus_publisher",
                24,
                ("`Publisher.filter(id__in=ids)`", '`Book.all().prefetch_related("publisher")`'),
            ),
        ),
    ),
    "background": Case(
        "/nplusone/background/8",
        (Expect("background", "shelve_all", "corpus_book", 8, BOOKS_HINT),),
        route="/nplusone/background/{limit}",
    ),
    "m2m": Case(
        "/nplusone/m2m",
        (
            Expect(
                "m2m",
                endpoint("m2m"),
                "corpus_tag",
                24,
                ('`Book.all().prefetch_related("tags")`',),
            ),
        ),
    ),
    "reverse_o2o": Case(
        "/nplusone/reverse-o2o",
        (
            Expect(
                "reverse_o2o",
                endpoint("reverse_o2o"),
                "corpus_profile",
                8,
                ('`Author.all().prefetch_related("profile")`',),
            ),
        ),
    ),
    "prefetched_then_queried": Case(
        "/nplusone/prefetched-then-queried",
        (
            Expect(
                "prefetched_then_queried",
                endpoint("prefetched_then_queried"),
                "corpus_book",
                8,
                ("prefetched already", "`author.books`", "instead of calling `.all()`"),
                absent=("prefetch_related(",),
            ),
        ),
    ),
    "in_transaction": Case(
        "/nplusone/in-transaction",
        (Expect("in_transaction", endpoint("in_a_transaction"), "corpus_book", 8, BOOKS_HINT),),
    ),
    "secret": Case(
        "/nplusone/secret",
        (
            Expect("secret_loop", endpoint("secret"), "corpus_book", 8, BOOKS_HINT),
            Expect("secret_duplicate", endpoint("secret"), "corpus_author", 2),
        ),
    ),
    # -- duplicates --------------------------------------------------------------------
    "same_params": Case(
        "/duplicate/same-params",
        (Expect("same_params", endpoint("same_params"), "corpus_author", 2),),
    ),
    "different_params": Case("/clean/different-params"),
    # -- what real apps do -------------------------------------------------------------
    "two_callers": Case("/real/two-callers"),
    "exists_insert_exists": Case("/real/exists-insert-exists"),
    "read_commit_read": Case("/real/read-commit-read"),
    "service_loop": Case(
        "/real/service-loop",
        (
            Expect(
                "repository_count",
                "AuthorRepository.count_books",
                "corpus_book",
                8,
                BOOKS_HINT,
                loop="service_loop",
            ),
        ),
    ),
    "repeat_in_loop": Case(
        "/real/repeat-in-loop",
        (
            Expect(
                "repository_publisher",
                "AuthorRepository.first_publisher",
                "corpus_publisher",
                8,
                ("reuse it",),
            ),
        ),
    ),
    # -- writes ------------------------------------------------------------------------
    # capture() picks the ORM of its hint from what is imported: with SQLAlchemy imported
    # too (the whole suite), the text is a generic one, which still names bulk_create.
    "create_loop": Case(
        "/bulk/create-loop",
        (Expect("create_loop", endpoint("create_loop"), "corpus_note", 8, ("bulk_create",)),),
    ),
    "bulk_create": Case("/clean/bulk-create"),
    # -- clean -------------------------------------------------------------------------
    "prefetch": Case("/clean/prefetch"),
    "select_related": Case("/clean/select-related"),
    "nested_prefetch": Case("/clean/nested-prefetch"),
    "single": Case("/clean/single"),
    "distinct_sites": Case("/clean/distinct-sites"),
    # Five chunks from one line: at threshold 5 (and 2) a group of IN lists is a batch.
    "chunked": Case("/clean/chunked", capture_thresholds=(2, 5)),
    "chunked_tail": Case("/clean/chunked-tail", capture_thresholds=(2, 5)),
    "allow_nplusone": Case("/clean/allow-nplusone"),
    # capture() has no allow-lists: these two are N+1s everywhere but in production.
    "allowed_route": Case("/allowed/reverse-fk", capture=False),
    "allowed_call_site": Case("/allowed-call-site/export", capture=False),
}


# -- databases -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Database:
    url: str
    seeded: bool
    """False: an empty in-memory database, given its schema and rows by each test."""


def _tortoise_url(dsn: str, scheme: str) -> str:
    return scheme + "://" + dsn.split("://", 1)[1]


async def _init(url: str) -> None:
    # Tortoise caches each model's SQL per connection name across re-inits: switching
    # between SQLite and PostgreSQL under one name would reuse the wrong placeholders.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url=url, modules=tortoise_app.MODULES)


async def _create_and_seed(url: str) -> None:
    await _init(url)
    try:
        await Tortoise.generate_schemas()
        await tortoise_app.seed()
    finally:
        await Tortoise.close_connections()


@pytest.fixture(scope="module")
def corpus_pg_dsn(pg_dsn: str) -> Iterator[str]:
    """One seeded PostgreSQL database for the whole module, shared by asyncpg and psycopg.

    A database per test would cost more than the tests. Sharing is safe: the endpoints
    only read, except the write cases, which insert into a table that nothing reads.
    """
    name = f"poolwatch_corpus_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = urlsplit(pg_dsn)._replace(path=f"/{name}").geturl()
        asyncio.run(_create_and_seed(_tortoise_url(dsn, "asyncpg")))
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("asyncpg", marks=pytest.mark.postgres),
        pytest.param("psycopg", marks=pytest.mark.postgres),
    ]
)
def database(request: pytest.FixtureRequest) -> Database:
    if request.param == "sqlite":
        return Database("sqlite://:memory:", seeded=False)
    dsn = request.getfixturevalue("corpus_pg_dsn")
    return Database(_tortoise_url(dsn, request.param), seeded=True)


# -- the app -------------------------------------------------------------------------------


@pytest.fixture
def production_watch() -> Iterator[PoolWatch]:
    watch = PoolWatch(**PRODUCTION)
    watch.instrument_tortoise()
    yield watch
    watch.uninstrument()


@pytest.fixture
def quiet_watch() -> Iterator[PoolWatch]:
    """Instruments the pools but judges nothing: the tests' capture() does."""
    watch = PoolWatch(nplusone_mode="off")
    watch.instrument_tortoise()
    yield watch
    watch.uninstrument()


@contextlib.asynccontextmanager
async def serve(database: Database, watch: PoolWatch) -> AsyncIterator[httpx.AsyncClient]:
    """Tortoise on ``database`` and a client of the corpus app instrumented by ``watch``."""
    await _init(database.url)
    try:
        if not database.seeded:
            await Tortoise.generate_schemas()
            await tortoise_app.seed()
        app = watch.instrument_app(tortoise_app.build_app())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corpus") as client:
            yield client
    finally:
        await Tortoise.close_connections()


def _check_paths(case: Case, paths: dict[Row, str]) -> None:
    for expect in case.expected:
        if expect.loop:
            _, line = MARKERS[expect.loop]
            path = paths.get(expect.row, "")
            assert f"{APP_FILE}:{line} in " in path, f"{expect.marker}: {path}"


def _check_hints(case: Case, suggestions: dict[Row, str]) -> None:
    for expect in case.expected:
        suggestion = suggestions.get(expect.row)
        if suggestion is None:
            continue  # missing altogether: the comparison of rows already says so
        for hint in expect.hints:
            assert hint in suggestion, f"{expect.marker}: {suggestion}"
        for hint in expect.absent:
            assert hint not in suggestion, f"{expect.marker}: {suggestion}"


# -- the cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.production])
async def test_production(name: str, database: Database, production_watch: PoolWatch) -> None:
    case = CASES[name]
    watch = production_watch
    async with serve(database, watch) as client:
        response = await client.get(case.path)
        assert response.status_code == 200, response.text
        served = (await client.get("/poolwatch/findings")).json()["findings"]

    findings = without_slow(watch.findings())  # timing noise, not what the corpus is about
    assert {f["route"] for f in findings} <= {case.template}
    rows = [_row(f["kind"], f["call_site"], f["fingerprint"], f["count"]) for f in findings]
    assert sorted(rows) == case.rows()
    for finding in findings:
        assert (finding["occurrences"], finding["max_count"]) == (1, finding["count"])
        assert finding["pool"] == "default"
    _check_hints(case, {row: f["suggestion"] for row, f in zip(rows, findings, strict=True)})
    _check_paths(case, {row: f["call_path"] for row, f in zip(rows, findings, strict=True)})
    assert served == watch.findings()

    # The counters count requests with a finding; a route that was served has them at 0.
    for metric, kind in (
        ("poolwatch_nplusone_total", "nplusone"),
        ("poolwatch_duplicate_queries_total", "duplicate"),
    ):
        counted = watch.registry.get_sample_value(metric, {"route": case.template})
        assert counted == (1.0 if case.has(kind) else 0.0), metric


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.capture])
async def test_capture(name: str, database: Database, quiet_watch: PoolWatch) -> None:
    case = CASES[name]
    async with serve(database, quiet_watch) as client:
        for threshold in case.capture_thresholds:
            with capture(threshold=threshold) as captured:
                response = await client.get(case.path)
            assert response.status_code == 200, response.text
            assert captured.queries, "capture() saw no statement"
            assert {q.route for q in captured.queries} == {case.template}

            findings = without_slow(captured.findings)
            assert {f.route for f in findings} <= {case.template}
            rows = [_row(f.kind, f.call_site, f.fingerprint, f.count) for f in findings]
            assert sorted(rows) == case.rows(), f"threshold={threshold}\n{captured.report()}"
            _check_hints(case, {row: f.suggestion for row, f in zip(rows, findings, strict=True)})
            _check_paths(case, {row: f.call_path for row, f in zip(rows, findings, strict=True)})
    assert quiet_watch.findings() == []  # nplusone_mode="off" judges nothing itself


# -- what leaves poolwatch -----------------------------------------------------------------


async def test_no_parameter_value_leaves_poolwatch(
    database: Database, production_watch: PoolWatch
) -> None:
    watch = production_watch
    async with serve(database, watch) as client:
        with capture() as captured:
            assert (await client.get("/nplusone/secret")).status_code == 200
        served = await client.get("/poolwatch/findings")
        metrics = await client.get("/metrics")
    # Something was found, so there was something to leak. (A statement a loaded machine
    # made slow is found too: it is left out of the kinds, not out of the checks below.)
    assert sorted(f["kind"] for f in without_slow(watch.findings())) == ["duplicate", "nplusone"]
    assert sorted(f.kind for f in without_slow(captured.findings)) == ["duplicate", "nplusone"]
    assert SECRET not in json.dumps(watch.findings())
    assert SECRET not in served.text
    assert SECRET not in metrics.text
    assert SECRET not in generate_latest(watch.registry).decode()
    assert SECRET not in captured.report()
    assert SECRET not in repr(captured.findings) + repr(captured.queries)


async def test_markers_are_where_the_cases_point() -> None:
    """Every marker in the app is expected by some case, and vice versa."""
    assert Path(tortoise_app.__file__).as_posix().endswith(APP_FILE)
    expected = {e.marker for c in CASES.values() for e in c.expected}
    expected |= {e.loop for c in CASES.values() for e in c.expected if e.loop}
    assert expected == set(MARKERS)
