"""The async twin of :mod:`tests.corpus.sqlalchemy_app`: ``AsyncSession`` and async endpoints.

Lazy loads are spelled ``await obj.awaitable_attrs.books``; SQLAlchemy runs them in a
greenlet, and the call site poolwatch reports must still be the awaiting line here. Lines
ending in ``# N+1 ...``, ``# bulk write ...`` or ``# duplicate ...`` are those call sites.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload, subqueryload

import poolwatch
from tests.corpus.sqlalchemy_models import AUTHORS, Author, Book, Publisher, Tag

SECRET = "s3cret-value"
"""A parameter value that must never appear in a finding, the findings JSON or a metric."""

NEW_ROWS = 8

router = APIRouter()


def create_app(engine: AsyncEngine) -> FastAPI:
    """The corpus app on ``engine`` (not instrumented: the tests do that)."""
    app = FastAPI()
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.include_router(router)
    return app


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def all_authors(session: AsyncSession) -> list[Author]:
    return list(await session.scalars(select(Author).order_by(Author.id)))


async def all_books(session: AsyncSession) -> list[Book]:
    return list(await session.scalars(select(Book).order_by(Book.id)))


# -- loops that must be flagged ----------------------------------------------------------


async def books_per_author(session: AsyncSession) -> dict[str, int]:
    """1. A lazy one-to-many in a loop."""
    counts: dict[str, int] = {}
    for author in await all_authors(session):
        books = await author.awaitable_attrs.books  # N+1 one-to-many
        counts[author.name] = len(books)
    return counts


async def publisher_per_book(session: AsyncSession) -> dict[str, str]:
    """2. A lazy many-to-one in a loop; no publisher is in the session yet."""
    names: dict[str, str] = {}
    for book in await all_books(session):
        publisher = await book.awaitable_attrs.publisher  # N+1 many-to-one
        names[book.title] = publisher.name
    return names


async def authors_by_get(session: AsyncSession) -> list[str]:
    """3a. ``session.get`` per id on a fresh session: a SELECT each."""
    names: list[str] = []
    for author_id in range(1, AUTHORS + 1):
        author = await session.get(Author, author_id)  # N+1 session.get
        names.append(author.name if author is not None else "")
    return names


async def authors_by_execute(session: AsyncSession) -> list[str]:
    """3b. ``session.execute(select(...).where(id == i))`` per id."""
    names: list[str] = []
    for author_id in range(1, AUTHORS + 1):
        query = select(Author).where(Author.id == author_id)
        result = await session.execute(query)  # N+1 execute
        names.append(result.scalar_one().name)
    return names


async def books_query_per_author(session: AsyncSession) -> dict[str, list[str]]:
    """4. One books query per author, each with its own ``selectinload``: per-row loading.

    The filter carries :data:`SECRET`, which must not leak into any finding.
    """
    titles: dict[str, list[str]] = {}
    for author in await all_authors(session):
        query = select(Book).where(Book.author_id == author.id, Book.title != SECRET)
        query = query.options(selectinload(Book.tags))
        books = (await session.scalars(query)).all()  # N+1 per author
        titles[author.name] = [book.title for book in books]
    return titles


async def authors_by_gather(factory: async_sessionmaker[AsyncSession]) -> list[str]:
    """5. ``asyncio.gather`` over per-id queries, each in a session of its own."""

    async def load(author_id: int) -> Author | None:
        async with factory() as session:
            return await session.get(Author, author_id)  # N+1 gather

    authors = await asyncio.gather(*(load(i) for i in range(1, AUTHORS + 1)))
    return [author.name for author in authors if author is not None]


async def books_selected_again(session: AsyncSession) -> dict[str, int]:
    """4b. The books are loaded with the authors, and selected again per author."""
    counts: dict[str, int] = {}
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    for author in (await session.scalars(query)).all():  # eager selected again
        by_author = select(Book).where(Book.author_id == author.id)
        books = (await session.scalars(by_author)).all()  # N+1 selected again
        counts[author.name] = len(books)
    return counts


async def books_and_tags(session: AsyncSession) -> dict[str, list[str]]:
    """6. Nested loops: authors -> books (outer N+1) -> tags (inner N+1)."""
    tags: dict[str, list[str]] = {}
    for author in await all_authors(session):
        for book in await author.awaitable_attrs.books:  # N+1 nested outer
            book_tags = await book.awaitable_attrs.tags  # N+1 nested inner
            tags[book.title] = [tag.name for tag in book_tags]
    return tags


async def audit_authors(factory: async_sessionmaker[AsyncSession]) -> None:
    """7. A background task: a lazy many-to-one per book, after the response."""
    async with factory() as session:
        for book in await all_books(session):
            author = await book.awaitable_attrs.author  # N+1 background
            assert author.name


async def tags_per_book(session: AsyncSession) -> dict[str, int]:
    """8. A lazy many-to-many in a loop."""
    counts: dict[str, int] = {}
    for book in await all_books(session):
        tags = await book.awaitable_attrs.tags  # N+1 many-to-many
        counts[book.title] = len(tags)
    return counts


# -- endpoints that must be flagged ------------------------------------------------------


@router.get("/authors/books-lazy")
async def authors_books_lazy(session: SessionDep) -> dict[str, Any]:
    return await books_per_author(session)


@router.get("/books/publisher-lazy")
async def books_publisher_lazy(session: SessionDep) -> dict[str, Any]:
    return await publisher_per_book(session)


@router.get("/authors/get-loop")
async def authors_get_loop(session: SessionDep) -> list[str]:
    return await authors_by_get(session)


@router.get("/authors/execute-loop")
async def authors_execute_loop(session: SessionDep) -> list[str]:
    return await authors_by_execute(session)


@router.get("/authors/books-selected-again")
async def authors_books_selected_again(session: SessionDep) -> dict[str, Any]:
    return await books_selected_again(session)


@router.get("/authors/books-query")
async def authors_books_query(session: SessionDep) -> dict[str, Any]:
    return await books_query_per_author(session)


@router.get("/authors/gather")
async def authors_gather(request: Request) -> list[str]:
    return await authors_by_gather(request.app.state.sessions)


@router.get("/authors/books/tags")
async def authors_books_tags(session: SessionDep) -> dict[str, Any]:
    return await books_and_tags(session)


@router.get("/background/authors")
async def background_authors(request: Request, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(audit_authors, request.app.state.sessions)
    return {"status": "scheduled"}


@router.get("/books/tags-lazy")
async def books_tags_lazy(session: SessionDep) -> dict[str, Any]:
    return await tags_per_book(session)


# -- endpoints that must not be flagged --------------------------------------------------


@router.get("/clean/selectinload")
async def clean_selectinload(session: SessionDep) -> dict[str, int]:
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    return {author.name: len(author.books) for author in await session.scalars(query)}


@router.get("/clean/joinedload")
async def clean_joinedload(session: SessionDep) -> dict[str, str]:
    query = select(Book).options(joinedload(Book.author)).order_by(Book.id)
    return {book.title: book.author.name for book in await session.scalars(query)}


@router.get("/clean/subqueryload")
async def clean_subqueryload(session: SessionDep) -> dict[str, int]:
    query = select(Author).options(subqueryload(Author.books)).order_by(Author.id)
    return {author.name: len(author.books) for author in await session.scalars(query)}


@router.get("/clean/nested-selectinload")
async def clean_nested_selectinload(session: SessionDep) -> dict[str, list[str]]:
    loader = selectinload(Author.books).selectinload(Book.tags)
    tags: dict[str, list[str]] = {}
    for author in await session.scalars(select(Author).options(loader).order_by(Author.id)):
        for book in author.books:
            tags[book.title] = [tag.name for tag in book.tags]
    return tags


@router.get("/clean/one-plus-one")
async def clean_one_plus_one(session: SessionDep) -> dict[str, Any]:
    author = await session.get(Author, 1)
    assert author is not None
    books = await author.awaitable_attrs.books
    return {"name": author.name, "books": [book.title for book in books]}


@router.post("/write/add-all")
async def write_add_all(session: SessionDep) -> dict[str, int]:
    session.add_all([Publisher(name=f"new-publisher-{i}") for i in range(NEW_ROWS)])
    await session.commit()
    return {"added": NEW_ROWS}


@router.post("/write/executemany")
async def write_executemany(session: SessionDep) -> dict[str, int]:
    rows = [{"title": f"new-book-{i}", "author_id": 1, "publisher_id": 1} for i in range(NEW_ROWS)]
    await session.execute(insert(Book), rows)
    await session.commit()
    return {"added": NEW_ROWS}


@router.post("/write/insert-loop")
async def write_insert_loop(session: SessionDep) -> dict[str, int]:
    for i in range(NEW_ROWS):
        await session.execute(insert(Tag).values(name=f"new-tag-{i}"))  # bulk write insert loop
    await session.commit()
    return {"added": NEW_ROWS}


@router.get("/clean/different-sites")
async def clean_different_sites(session: SessionDep) -> list[str]:
    first = await session.get(Author, 1)
    second = await session.get(Author, 2)
    third = await session.get(Author, 3)
    return [author.name for author in (first, second, third) if author is not None]


@router.get("/clean/identity-map")
async def clean_identity_map(session: SessionDep) -> dict[str, str]:
    publishers = (await session.scalars(select(Publisher))).all()  # all of them in the session
    names: dict[str, str] = {}
    for book in await all_books(session):
        publisher = await book.awaitable_attrs.publisher  # an identity-map hit: no SQL
        names[book.title] = publisher.name
    again = await session.get(Publisher, 1)  # also an identity-map hit
    assert again is not None
    assert again in publishers
    return names


@router.get("/clean/chunked-in")
async def clean_chunked_in(session: SessionDep) -> list[str]:
    ids = list(range(1, AUTHORS + 1))
    chunks = [ids[i : i + 2] for i in range(0, len(ids), 2)]
    names: list[str] = []
    for chunk in chunks:
        authors = await session.scalars(select(Author).where(Author.id.in_(chunk)))
        names += [author.name for author in authors]
    return names


@router.get("/clean/allowed-block")
async def clean_allowed_block(session: SessionDep) -> dict[str, int]:
    with poolwatch.allow_nplusone():
        return await books_per_author(session)


@router.get("/allowed/books-lazy")
async def allowed_route_books_lazy(session: SessionDep) -> dict[str, Any]:
    return await books_per_author(session)


# -- duplicates --------------------------------------------------------------------------


@router.get("/duplicate/same-params")
async def duplicate_same_params(session: SessionDep) -> dict[str, int]:
    query = select(Author).where(Author.name == SECRET)
    first = (await session.scalars(query)).all()  # duplicate first
    second = (await session.scalars(query)).all()  # duplicate second
    return {"found": len(first) + len(second)}


@router.get("/duplicate/different-values")
async def duplicate_different_values(session: SessionDep) -> dict[str, int]:
    first = (await session.scalars(select(Author).where(Author.name == "author-1"))).all()
    second = (await session.scalars(select(Author).where(Author.name == "author-2"))).all()
    return {"found": len(first) + len(second)}


# -- what real apps do: a repository layer, a current-user dependency, writes, commits -----


class AuthorRepository:
    """The data layer between routes and the ORM, as real apps have one."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, author_id: int) -> Author | None:
        return (await self.session.scalars(select(Author).where(Author.id == author_id))).first()

    async def exists(self, name: str) -> bool:
        found = await self.session.scalar(select(Author.id).where(Author.name == name))
        return found is not None

    async def count_books(self, author_id: int) -> int:
        query = select(func.count()).select_from(Book).where(Book.author_id == author_id)
        return await self.session.scalar(query) or 0  # N+1 repository count

    async def publisher(self) -> Publisher | None:
        query = select(Publisher).where(Publisher.id == 1)
        return (await self.session.scalars(query)).first()  # duplicate repository publisher


async def current_author(session: SessionDep, x_author: Annotated[int, Header()] = 1) -> Author:
    author = await AuthorRepository(session).get(x_author)
    if author is None:
        raise HTTPException(401)
    return author


@router.get("/real/two-callers")
async def two_callers(
    session: SessionDep, viewer: Annotated[Author, Depends(current_author)]
) -> Any:
    # The dependency and the route load two authors with one helper: two lookups, no loop.
    other = await AuthorRepository(session).get(2)
    return {"viewer": viewer.id, "other": other.id if other else None}


@router.post("/real/exists-insert-exists")
async def exists_insert_exists(session: SessionDep) -> dict[str, bool]:
    authors = AuthorRepository(session)
    before = await authors.exists("newcomer")
    session.add(Author(name="newcomer"))
    await session.commit()
    return {"before": before, "after": await authors.exists("newcomer")}  # another read


@router.get("/real/read-commit-read")
async def read_commit_read(session: SessionDep) -> dict[str, bool]:
    authors = AuthorRepository(session)
    first = await authors.get(1)
    await session.commit()  # what the first read saw may have changed since
    return {"same": await authors.get(1) is first}


async def _author_info(session: AsyncSession, author: Author) -> dict[str, Any]:
    return {"id": author.id, "books": await AuthorRepository(session).count_books(author.id)}


async def authors_with_counts(session: AsyncSession) -> list[dict[str, Any]]:
    infos = []
    for author in await all_authors(session):
        infos.append(await _author_info(session, author))  # service loop
    return infos


@router.get("/real/service-loop")
async def service_loop(session: SessionDep) -> list[dict[str, Any]]:
    return await authors_with_counts(session)


@router.get("/real/repeat-in-loop")
async def repeat_in_loop(session: SessionDep) -> list[str]:
    # The same row again for every author: a duplicate to hoist, not a per-row load.
    names = []
    for author in await all_authors(session):
        publisher = await AuthorRepository(session).publisher()
        names.append(f"{author.name}/{publisher}")
    return names


@router.post("/real/merge-graph")
async def merge_graph(session: SessionDep) -> dict[str, int]:
    # A detached author with its two books, merged back in one call: the author, then its
    # books, each loaded once; a book the collection brought is not loaded again.
    books = [Book(id=i, title=f"book-{i}", author_id=1, publisher_id=i) for i in (1, 2)]
    merged = await session.merge(Author(id=1, name="author-1", books=books))
    await session.rollback()
    return {"books": len(books), "merged": int(merged is not None)}


@router.post("/real/merge-strangers")
async def merge_strangers(session: SessionDep) -> dict[str, int]:
    # One merge of an author with six books of other authors: merge loads each book by
    # primary key, six loads by design of one call, no loop of the app's.
    books = [Book(id=i, title=f"book-{i}", author_id=1, publisher_id=i) for i in range(3, 9)]
    await session.merge(Author(id=1, name="author-1", books=books))
    await session.rollback()
    return {"books": len(books)}


@router.post("/real/merge-per-row")
async def merge_per_row(session: SessionDep) -> dict[str, int]:
    # Detached rows (from a request body, a cache) merged one by one: a load each.
    rows = [Author(id=i, name=f"author-{i}") for i in range(1, AUTHORS + 1)]
    merged = [await session.merge(row) for row in rows]  # N+1 merge per row
    await session.rollback()
    return {"merged": len(merged)}


@router.get("/real/refresh-per-row")
async def refresh_per_row(session: SessionDep) -> list[str]:
    authors = await all_authors(session)
    session.expire_all()
    for author in authors:
        await session.refresh(author)  # N+1 refresh per row
    return [author.name for author in authors]
