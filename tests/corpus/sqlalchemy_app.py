"""A sync FastAPI app on a SQLAlchemy ``Session``: endpoints that must, or must not, be flagged.

The endpoints are plain ``def`` functions (FastAPI runs them in its threadpool); each loop
lives in a function of its own that takes a session, so tests can also call it without
HTTP. A line ending in ``# N+1 ...``, ``# bulk write ...`` or ``# duplicate ...`` is the
call site the corresponding finding must name; the tests find these lines by their
comment, so lines can move freely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker, subqueryload

import poolwatch
from tests.corpus.sqlalchemy_models import AUTHORS, Author, Book, Publisher, Tag

SECRET = "s3cret-value"
"""A parameter value that must never appear in a finding, the findings JSON or a metric."""

NEW_ROWS = 8

router = APIRouter()


def create_app(engine: Engine) -> FastAPI:
    """The corpus app on ``engine`` (not instrumented: the tests do that)."""
    app = FastAPI()
    app.state.sessions = sessionmaker(engine)
    app.include_router(router)
    return app


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def all_authors(session: Session) -> list[Author]:
    return list(session.scalars(select(Author).order_by(Author.id)))


def all_books(session: Session) -> list[Book]:
    return list(session.scalars(select(Book).order_by(Book.id)))


# -- loops that must be flagged ----------------------------------------------------------


def books_per_author(session: Session) -> dict[str, int]:
    """1. A lazy one-to-many in a loop."""
    counts: dict[str, int] = {}
    for author in all_authors(session):
        books = author.books  # N+1 one-to-many
        counts[author.name] = len(books)
    return counts


def publisher_per_book(session: Session) -> dict[str, str]:
    """2. A lazy many-to-one in a loop; no publisher is in the session yet."""
    names: dict[str, str] = {}
    for book in all_books(session):
        publisher = book.publisher  # N+1 many-to-one
        names[book.title] = publisher.name
    return names


def authors_by_get(session: Session) -> list[str]:
    """3a. ``session.get`` per id on a fresh session: a SELECT each."""
    names: list[str] = []
    for author_id in range(1, AUTHORS + 1):
        author = session.get(Author, author_id)  # N+1 session.get
        names.append(author.name if author is not None else "")
    return names


def authors_by_execute(session: Session) -> list[str]:
    """3b. ``session.execute(select(...).where(id == i))`` per id."""
    names: list[str] = []
    for author_id in range(1, AUTHORS + 1):
        query = select(Author).where(Author.id == author_id)
        result = session.execute(query)  # N+1 execute
        names.append(result.scalar_one().name)
    return names


def books_query_per_author(session: Session) -> dict[str, list[str]]:
    """4. One books query per author, each with its own ``selectinload``: per-row loading.

    The filter carries :data:`SECRET`, which must not leak into any finding.
    """
    titles: dict[str, list[str]] = {}
    for author in all_authors(session):
        query = select(Book).where(Book.author_id == author.id, Book.title != SECRET)
        query = query.options(selectinload(Book.tags))
        books = session.scalars(query).all()  # N+1 per author
        titles[author.name] = [book.title for book in books]
    return titles


def books_selected_again(session: Session) -> dict[str, int]:
    """4b. The books are loaded with the authors, and selected again per author."""
    counts: dict[str, int] = {}
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    for author in session.scalars(query).all():  # eager selected again
        by_author = select(Book).where(Book.author_id == author.id)
        books = session.scalars(by_author).all()  # N+1 selected again
        counts[author.name] = len(books)
    return counts


def books_and_tags(session: Session) -> dict[str, list[str]]:
    """6. Nested loops: authors -> books (outer N+1) -> tags (inner N+1)."""
    tags: dict[str, list[str]] = {}
    for author in all_authors(session):
        for book in author.books:  # N+1 nested outer
            book_tags = book.tags  # N+1 nested inner
            tags[book.title] = [tag.name for tag in book_tags]
    return tags


def audit_authors(factory: sessionmaker[Session]) -> None:
    """7. A background task: a lazy many-to-one per book, after the response."""
    with factory() as session:
        for book in all_books(session):
            author = book.author  # N+1 background
            assert author.name


def tags_per_book(session: Session) -> dict[str, int]:
    """8. A lazy many-to-many in a loop."""
    counts: dict[str, int] = {}
    for book in all_books(session):
        tags = book.tags  # N+1 many-to-many
        counts[book.title] = len(tags)
    return counts


# -- endpoints that must be flagged ------------------------------------------------------


@router.get("/authors/books-lazy")
def authors_books_lazy(session: SessionDep) -> dict[str, Any]:
    return books_per_author(session)


@router.get("/authors/books-selected-again")
def authors_books_selected_again(session: SessionDep) -> dict[str, Any]:
    return books_selected_again(session)


@router.get("/books/publisher-lazy")
def books_publisher_lazy(session: SessionDep) -> dict[str, Any]:
    return publisher_per_book(session)


@router.get("/authors/get-loop")
def authors_get_loop(session: SessionDep) -> list[str]:
    return authors_by_get(session)


@router.get("/authors/execute-loop")
def authors_execute_loop(session: SessionDep) -> list[str]:
    return authors_by_execute(session)


@router.get("/authors/books-query")
def authors_books_query(session: SessionDep) -> dict[str, Any]:
    return books_query_per_author(session)


@router.get("/authors/books/tags")
def authors_books_tags(session: SessionDep) -> dict[str, Any]:
    return books_and_tags(session)


@router.get("/background/authors")
def background_authors(request: Request, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(audit_authors, request.app.state.sessions)
    return {"status": "scheduled"}


@router.get("/books/tags-lazy")
def books_tags_lazy(session: SessionDep) -> dict[str, Any]:
    return tags_per_book(session)


# -- endpoints that must not be flagged --------------------------------------------------


@router.get("/clean/selectinload")
def clean_selectinload(session: SessionDep) -> dict[str, int]:
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    return {author.name: len(author.books) for author in session.scalars(query)}


@router.get("/clean/joinedload")
def clean_joinedload(session: SessionDep) -> dict[str, str]:
    query = select(Book).options(joinedload(Book.author)).order_by(Book.id)
    return {book.title: book.author.name for book in session.scalars(query)}


@router.get("/clean/subqueryload")
def clean_subqueryload(session: SessionDep) -> dict[str, int]:
    query = select(Author).options(subqueryload(Author.books)).order_by(Author.id)
    return {author.name: len(author.books) for author in session.scalars(query)}


@router.get("/clean/nested-selectinload")
def clean_nested_selectinload(session: SessionDep) -> dict[str, list[str]]:
    loader = selectinload(Author.books).selectinload(Book.tags)
    tags: dict[str, list[str]] = {}
    for author in session.scalars(select(Author).options(loader).order_by(Author.id)):
        for book in author.books:
            tags[book.title] = [tag.name for tag in book.tags]
    return tags


@router.get("/clean/one-plus-one")
def clean_one_plus_one(session: SessionDep) -> dict[str, Any]:
    author = session.get(Author, 1)
    assert author is not None
    return {"name": author.name, "books": [book.title for book in author.books]}


@router.post("/write/add-all")
def write_add_all(session: SessionDep) -> dict[str, int]:
    session.add_all([Publisher(name=f"new-publisher-{i}") for i in range(NEW_ROWS)])
    session.commit()
    return {"added": NEW_ROWS}


@router.post("/write/executemany")
def write_executemany(session: SessionDep) -> dict[str, int]:
    rows = [{"title": f"new-book-{i}", "author_id": 1, "publisher_id": 1} for i in range(NEW_ROWS)]
    session.execute(insert(Book), rows)
    session.commit()
    return {"added": NEW_ROWS}


@router.post("/write/insert-loop")
def write_insert_loop(session: SessionDep) -> dict[str, int]:
    for i in range(NEW_ROWS):
        session.execute(insert(Tag).values(name=f"new-tag-{i}"))  # bulk write insert loop
    session.commit()
    return {"added": NEW_ROWS}


@router.get("/clean/different-sites")
def clean_different_sites(session: SessionDep) -> list[str]:
    first = session.get(Author, 1)
    second = session.get(Author, 2)
    third = session.get(Author, 3)
    return [author.name for author in (first, second, third) if author is not None]


@router.get("/clean/identity-map")
def clean_identity_map(session: SessionDep) -> dict[str, str]:
    publishers = session.scalars(select(Publisher)).all()  # every publisher is in the session
    names: dict[str, str] = {}
    for book in all_books(session):
        names[book.title] = book.publisher.name  # an identity-map hit: no SQL
    again = session.get(Publisher, 1)  # also an identity-map hit
    assert again is not None
    assert again in publishers
    return names


@router.get("/clean/chunked-in")
def clean_chunked_in(session: SessionDep) -> list[str]:
    ids = list(range(1, AUTHORS + 1))
    chunks = [ids[i : i + 2] for i in range(0, len(ids), 2)]
    names: list[str] = []
    for chunk in chunks:
        names += [a.name for a in session.scalars(select(Author).where(Author.id.in_(chunk)))]
    return names


@router.get("/clean/allowed-block")
def clean_allowed_block(session: SessionDep) -> dict[str, int]:
    with poolwatch.allow_nplusone():
        return books_per_author(session)


@router.get("/allowed/books-lazy")
def allowed_route_books_lazy(session: SessionDep) -> dict[str, Any]:
    return books_per_author(session)


# -- duplicates --------------------------------------------------------------------------


@router.get("/duplicate/same-params")
def duplicate_same_params(session: SessionDep) -> dict[str, int]:
    query = select(Author).where(Author.name == SECRET)
    first = session.scalars(query).all()  # duplicate first
    second = session.scalars(query).all()  # duplicate second
    return {"found": len(first) + len(second)}


@router.get("/duplicate/different-values")
def duplicate_different_values(session: SessionDep) -> dict[str, int]:
    first = session.scalars(select(Author).where(Author.name == "author-1")).all()
    second = session.scalars(select(Author).where(Author.name == "author-2")).all()
    return {"found": len(first) + len(second)}


# -- what real apps do: a repository layer, a current-user dependency, writes, commits -----


class AuthorRepository:
    """The data layer between routes and the ORM, as real apps have one."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, author_id: int) -> Author | None:
        return self.session.scalars(select(Author).where(Author.id == author_id)).first()

    def exists(self, name: str) -> bool:
        return self.session.scalar(select(Author.id).where(Author.name == name)) is not None

    def count_books(self, author_id: int) -> int:
        query = select(func.count()).select_from(Book).where(Book.author_id == author_id)
        return self.session.scalar(query) or 0  # N+1 repository count

    def publisher(self) -> Publisher | None:
        query = select(Publisher).where(Publisher.id == 1)
        return self.session.scalars(query).first()  # duplicate repository publisher


def current_author(session: SessionDep, x_author: Annotated[int, Header()] = 1) -> Author:
    author = AuthorRepository(session).get(x_author)
    if author is None:
        raise HTTPException(401)
    return author


@router.get("/real/two-callers")
def two_callers(session: SessionDep, viewer: Annotated[Author, Depends(current_author)]) -> Any:
    # The dependency and the route load two authors with one helper: two lookups, no loop.
    other = AuthorRepository(session).get(2)
    return {"viewer": viewer.id, "other": other.id if other else None}


@router.post("/real/exists-insert-exists")
def exists_insert_exists(session: SessionDep) -> dict[str, bool]:
    authors = AuthorRepository(session)
    before = authors.exists("newcomer")
    session.add(Author(name="newcomer"))
    session.commit()
    return {"before": before, "after": authors.exists("newcomer")}  # another read


@router.get("/real/read-commit-read")
def read_commit_read(session: SessionDep) -> dict[str, bool]:
    authors = AuthorRepository(session)
    first = authors.get(1)
    session.commit()  # what the first read saw may have changed since
    return {"same": authors.get(1) is first}


def _author_info(session: Session, author: Author) -> dict[str, Any]:
    return {"id": author.id, "books": AuthorRepository(session).count_books(author.id)}


def authors_with_counts(session: Session) -> list[dict[str, Any]]:
    return [_author_info(session, author) for author in all_authors(session)]  # service loop


@router.get("/real/service-loop")
def service_loop(session: SessionDep) -> list[dict[str, Any]]:
    return authors_with_counts(session)


@router.get("/real/repeat-in-loop")
def repeat_in_loop(session: SessionDep) -> list[str]:
    # The same row again for every author: a duplicate to hoist, not a per-row load.
    return [f"{a.name}/{AuthorRepository(session).publisher()}" for a in all_authors(session)]


@router.post("/real/merge-graph")
def merge_graph(session: SessionDep) -> dict[str, int]:
    # A detached author with its two books, merged back in one call: the author, then its
    # books, each loaded once; a book the collection brought is not loaded again.
    books = [Book(id=i, title=f"book-{i}", author_id=1, publisher_id=i) for i in (1, 2)]
    merged = session.merge(Author(id=1, name="author-1", books=books))
    session.rollback()
    return {"books": len(books), "merged": int(merged is not None)}


@router.post("/real/merge-strangers")
def merge_strangers(session: SessionDep) -> dict[str, int]:
    # One merge of an author with six books of other authors: merge loads each book by
    # primary key, six loads by design of one call, no loop of the app's.
    books = [Book(id=i, title=f"book-{i}", author_id=1, publisher_id=i) for i in range(3, 9)]
    session.merge(Author(id=1, name="author-1", books=books))
    session.rollback()
    return {"books": len(books)}


@router.post("/real/merge-per-row")
def merge_per_row(session: SessionDep) -> dict[str, int]:
    # Detached rows (from a request body, a cache) merged one by one: a load each.
    rows = [Author(id=i, name=f"author-{i}") for i in range(1, AUTHORS + 1)]
    merged = [session.merge(row) for row in rows]  # N+1 merge per row
    session.rollback()
    return {"merged": len(merged)}


@router.get("/real/refresh-per-row")
def refresh_per_row(session: SessionDep) -> list[str]:
    authors = all_authors(session)
    session.expire_all()
    for author in authors:
        session.refresh(author)  # N+1 refresh per row
    return [author.name for author in authors]


@router.get("/real/chain-in-one-line")
def chain_in_one_line(session: SessionDep) -> dict[str, list[str]]:
    # Each author's books, then each book's publisher: two loops down one chain of
    # relations, from one line.
    authors = all_authors(session)
    return {a.name: [b.publisher.name for b in a.books] for a in authors}  # N+1 chain


# -- response models over relations: FastAPI serializes after the endpoint returns -------


class PublisherOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str


class BookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    title: str


class BookWithPublisherOut(BookOut):
    publisher: PublisherOut


class AuthorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    books: list[BookOut]


class AuthorWithPublishersOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    books: list[BookWithPublisherOut]


@router.get("/serialize/authors", response_model=list[AuthorOut])
def serialize_authors(session: SessionDep) -> list[Author]:  # N+1 serialized books
    return all_authors(session)


@router.get("/serialize/authors-publishers", response_model=list[AuthorWithPublishersOut])
def serialize_authors_publishers(session: SessionDep) -> list[Author]:  # N+1 serialized chain
    return all_authors(session)


@router.get("/serialize/clean", response_model=list[AuthorWithPublishersOut])
def serialize_clean(session: SessionDep) -> list[Author]:
    query = select(Author).options(selectinload(Author.books).selectinload(Book.publisher))
    return list(session.scalars(query.order_by(Author.id)))
