"""A Tortoise-ORM + FastAPI app whose endpoints each embody one query-pattern case.

Every line that poolwatch must report ends with a marker comment: ``# N+1 <name>``,
``# DUPLICATE <name>`` or ``# BULK_WRITE <name>``. tests/adapters/test_corpus_tortoise.py finds the
markers by scanning this file, so the expected call sites (``file:line in function``) stay
exact when lines move. Unmarked lines must never be a finding's call site, except the loops
under ``/allowed...`` routes, which only production's allow-lists accept.

Data (see :func:`seed`): 8 authors with a profile each, 3 books per author (24 books), each
book with a publisher (3 in all) and 2 of 4 tags. Every loop below runs at least 8 times,
so both the test threshold (2) and the production threshold (5) flag it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import ModuleType
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI
from tortoise import fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

import poolwatch

APP_LABEL = "corpus"
MODULES: dict[str, Iterable[str | ModuleType]] = {APP_LABEL: [__name__]}

AUTHORS = 8
BOOKS_PER_AUTHOR = 3
PUBLISHERS = 3
TAGS = 4
TAGS_PER_BOOK = 2
# Must never leave poolwatch: not in a finding, the findings JSON or the metrics.
SECRET = "s3cret-value-90417"


# -- models --------------------------------------------------------------------------------


class Publisher(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)

    books: fields.ReverseRelation[Book]

    class Meta:
        app = APP_LABEL
        table = "corpus_publisher"


class Author(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)

    books: fields.ReverseRelation[Book]
    profile: fields.BackwardOneToOneRelation[Profile]

    class Meta:
        app = APP_LABEL
        table = "corpus_author"


class Profile(Model):
    id = fields.IntField(primary_key=True)
    bio = fields.CharField(max_length=200)
    author: fields.OneToOneRelation[Author] = fields.OneToOneField(
        f"{APP_LABEL}.Author", related_name="profile"
    )

    class Meta:
        app = APP_LABEL
        table = "corpus_profile"


class Tag(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    books: fields.ManyToManyRelation[Book]

    class Meta:
        app = APP_LABEL
        table = "corpus_tag"


class Book(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=200)
    author: fields.ForeignKeyRelation[Author] = fields.ForeignKeyField(
        f"{APP_LABEL}.Author", related_name="books"
    )
    publisher: fields.ForeignKeyRelation[Publisher] = fields.ForeignKeyField(
        f"{APP_LABEL}.Publisher", related_name="books"
    )
    tags: fields.ManyToManyRelation[Tag] = fields.ManyToManyField(
        f"{APP_LABEL}.Tag", related_name="books", through="corpus_book_tag"
    )

    class Meta:
        app = APP_LABEL
        table = "corpus_book"


class Note(Model):
    """What the write endpoints insert; no read endpoint looks at it."""

    id = fields.IntField(primary_key=True)
    text = fields.CharField(max_length=100)

    class Meta:
        app = APP_LABEL
        table = "corpus_note"


async def seed() -> None:
    """Fill an empty schema (run outside any request: it is never judged)."""
    await Publisher.bulk_create([Publisher(name=f"publisher {i}") for i in range(PUBLISHERS)])
    await Tag.bulk_create([Tag(name=f"tag {i}") for i in range(TAGS)])
    await Author.bulk_create([Author(name=f"author {i}") for i in range(AUTHORS)])
    authors = await Author.all().order_by("id")
    publishers = await Publisher.all().order_by("id")
    tags = await Tag.all().order_by("id")
    await Profile.bulk_create([Profile(bio=f"bio of {a.name}", author=a) for a in authors])
    await Book.bulk_create(
        [
            Book(
                title=f"{author.name}, book {j}",
                author=author,
                publisher=publishers[(i + j) % PUBLISHERS],
            )
            for i, author in enumerate(authors)
            for j in range(BOOKS_PER_AUTHOR)
        ]
    )
    for i, book in enumerate(await Book.all().order_by("id")):
        await book.tags.add(*(tags[(i + k) % TAGS] for k in range(TAGS_PER_BOOK)))


# -- helpers the endpoints call (module level: their call sites read "in load_author") -----


async def load_author(author_id: int) -> Author:
    return await Author.get(id=author_id)  # N+1 gather_helper


async def shelve_all(authors: list[Author]) -> None:
    """Run as a Starlette background task, after the response was sent."""
    for author in authors:
        await author.books  # N+1 background


async def legacy_export(authors: list[Author]) -> int:
    """A known loop, allow-listed by call site in production (``allow_call_sites``)."""
    total = 0
    for author in authors:
        total += len(await author.books)
    return total


async def _author_ids() -> list[int]:
    return [author.id for author in await Author.all().order_by("id").only("id")]


async def _book_ids() -> list[int]:
    return [book.id for book in await Book.all().order_by("id").only("id")]


# -- what real apps do: a repository layer, a current-user dependency, writes, commits -----


class AuthorRepository:
    """The data layer between routes and the ORM, as real apps have one."""

    async def get(self, author_id: int) -> Author | None:
        return await Author.filter(id=author_id).first()

    async def count_books(self, author_id: int) -> int:
        return await Book.filter(author_id=author_id).count()  # N+1 repository_count

    async def note_exists(self, text: str) -> bool:
        return await Note.filter(text=text).exists()

    async def first_publisher(self) -> Publisher | None:
        return await Publisher.filter(name="publisher 0").first()  # DUPLICATE repository_publisher


async def current_author() -> tuple[Author, list[int]]:
    ids = await _author_ids()
    author = await AuthorRepository().get(ids[0])
    assert author is not None
    return author, ids


async def _author_info(author: Author) -> dict[str, Any]:
    return {"id": author.id, "books": await AuthorRepository().count_books(author.id)}


async def authors_with_counts() -> list[dict[str, Any]]:
    infos = []
    for author in await Author.all().order_by("id"):
        infos.append(await _author_info(author))  # LOOP service_loop
    return infos


# -- the app -------------------------------------------------------------------------------


def build_app() -> FastAPI:  # noqa: PLR0915 (one endpoint per case, on purpose)
    """The corpus app; the caller instruments it (``watch.instrument_app(app)``)."""
    app = FastAPI()

    # -- N+1: must be reported, at the marked line -----------------------------------------

    @app.get("/nplusone/reverse-fk")
    async def reverse_fk() -> dict[str, int]:
        total = 0
        for author in await Author.all().order_by("id"):
            books = await author.books  # N+1 reverse_fk
            total += len(books)
        return {"books": total}

    @app.get("/nplusone/prefetched-then-queried")
    async def prefetched_then_queried() -> dict[str, int]:
        # The books are prefetched, and each author's are queried again all the same.
        total = 0
        for author in await Author.all().order_by("id").prefetch_related("books"):
            books = await author.books.all()  # N+1 prefetched_then_queried
            total += len(books)
        return {"books": total}

    @app.get("/nplusone/reverse-fk-comprehension")
    async def reverse_fk_comprehension() -> dict[str, int]:
        authors = await Author.all().order_by("id")
        shelves = [await author.books for author in authors]  # N+1 reverse_fk_comprehension
        return {"books": sum(len(shelf) for shelf in shelves)}

    @app.get("/nplusone/reverse-fk-async-for")
    async def reverse_fk_async_for() -> dict[str, int]:
        total = 0
        for author in await Author.all().order_by("id"):
            async for _book in author.books:  # N+1 reverse_fk_async_for
                total += 1
        return {"books": total}

    @app.get("/nplusone/forward-fk")
    async def forward_fk() -> dict[str, int]:
        names: set[str] = set()
        for book in await Book.all().order_by("id"):
            author = await book.author  # N+1 forward_fk
            names.add(author.name)
        return {"authors": len(names)}

    @app.get("/nplusone/get-by-id")
    async def get_by_id() -> dict[str, int]:
        names = []
        for author_id in await _author_ids():
            author = await Author.get(id=author_id)  # N+1 get_by_id
            names.append(author.name)
        return {"authors": len(names)}

    @app.get("/nplusone/fetch-related")
    async def fetch_related() -> dict[str, int]:
        authors = await Author.all().order_by("id")
        for author in authors:
            await author.fetch_related("books")  # N+1 fetch_related
        return {"books": sum(len(a.books) for a in authors)}

    @app.get("/nplusone/prefetch-per-row")
    async def prefetch_per_row() -> dict[str, int]:
        total = 0
        for author in await Author.all().order_by("id"):
            query = Author.filter(id__in=[author.id]).prefetch_related("books")
            rows = await query  # N+1 prefetch_per_row
            total += sum(len(row.books) for row in rows)
        return {"books": total}

    @app.get("/nplusone/gather")
    async def gather() -> dict[str, int]:
        ids = await _author_ids()
        authors = await asyncio.gather(*(Author.get(id=i) for i in ids))  # N+1 gather
        return {"authors": len(authors)}

    @app.get("/nplusone/gather-helper")
    async def gather_helper() -> dict[str, int]:
        ids = await _author_ids()
        authors = await asyncio.gather(*(load_author(i) for i in ids))
        return {"authors": len(authors)}

    @app.get("/nplusone/nested")
    async def nested() -> dict[str, int]:
        publishers: set[str] = set()
        for author in await Author.all().order_by("id"):
            for book in await author.books:  # N+1 nested_outer
                publisher = await book.publisher  # N+1 nested_inner
                publishers.add(publisher.name)
        return {"publishers": len(publishers)}

    @app.get("/nplusone/background/{limit}")
    async def background(limit: int, tasks: BackgroundTasks) -> dict[str, int]:
        authors = await Author.all().order_by("id").limit(limit)
        tasks.add_task(shelve_all, list(authors))
        return {"authors": len(authors)}

    @app.get("/nplusone/m2m")
    async def m2m() -> dict[str, int]:
        total = 0
        for book in await Book.all().order_by("id"):
            tags = await book.tags  # N+1 m2m
            total += len(tags)
        return {"tags": total}

    @app.get("/nplusone/reverse-o2o")
    async def reverse_o2o() -> dict[str, int]:
        bios = []
        for author in await Author.all().order_by("id"):
            profile = await author.profile  # N+1 reverse_o2o
            bios.append(profile.bio)
        return {"profiles": len(bios)}

    @app.get("/nplusone/in-transaction")
    async def in_a_transaction() -> dict[str, int]:
        total = 0
        async with in_transaction():
            for author in await Author.all().order_by("id"):
                total += len(await author.books)  # N+1 in_transaction
        return {"books": total}

    @app.get("/nplusone/secret")
    async def secret() -> dict[str, int]:
        total = 0
        for author in await Author.all().order_by("id"):
            total += len(await author.books.filter(title__not=SECRET))  # N+1 secret_loop
        first = await Author.filter(name=SECRET).first()  # DUPLICATE secret_duplicate
        again = await Author.filter(name=SECRET).first()
        return {"books": total, "found": int(first is not None) + int(again is not None)}

    # -- duplicates --------------------------------------------------------------------

    @app.get("/duplicate/same-params")
    async def same_params() -> dict[str, Any]:
        ids = await _author_ids()
        first = await Author.get(id=ids[2])  # DUPLICATE same_params
        again = await Author.get(id=ids[2])
        return {"same": first.name == again.name}

    @app.get("/clean/different-params")
    async def different_params() -> dict[str, Any]:
        ids = await _author_ids()
        first = await Author.get(id=ids[2])
        other = await Author.get(id=ids[3])
        return {"same": first.name == other.name}

    # -- what real apps do --------------------------------------------------------------

    @app.get("/real/two-callers")
    async def two_callers(viewer: Annotated[Any, Depends(current_author)]) -> dict[str, Any]:
        # The dependency and the route load two authors with one helper: no loop.
        author, ids = viewer
        other = await AuthorRepository().get(ids[1])
        return {"viewer": author.id, "other": other.id if other else None}

    @app.get("/real/exists-insert-exists")
    async def exists_insert_exists() -> dict[str, bool]:
        authors = AuthorRepository()
        before = await authors.note_exists("newcomer")
        await Note.create(text="newcomer")
        return {"before": before, "after": await authors.note_exists("newcomer")}

    @app.get("/real/read-commit-read")
    async def read_commit_read() -> dict[str, bool]:
        ids = await _author_ids()
        async with in_transaction():
            first = await AuthorRepository().get(ids[0])
        # committed: what the first read saw may have changed since
        again = await AuthorRepository().get(ids[0])
        return {"same": first == again}

    @app.get("/real/service-loop")
    async def service_loop() -> list[dict[str, Any]]:
        return await authors_with_counts()

    @app.get("/real/repeat-in-loop")
    async def repeat_in_loop() -> list[str]:
        # The same row again for every author: a duplicate to hoist, not a per-row load.
        names = []
        for author in await Author.all().order_by("id"):
            publisher = await AuthorRepository().first_publisher()
            names.append(f"{author.name}/{publisher}")
        return names

    # -- writes ------------------------------------------------------------------------

    @app.get("/bulk/create-loop")
    async def create_loop() -> dict[str, int]:
        for i in range(AUTHORS):
            await Note.create(text=f"note {i}")  # BULK_WRITE create_loop
        return {"notes": AUTHORS}

    @app.get("/clean/bulk-create")
    async def bulk_create() -> dict[str, int]:
        await Note.bulk_create([Note(text=f"note {i}") for i in range(20)])
        return {"notes": 20}

    # -- clean: must not be reported ---------------------------------------------------

    @app.get("/clean/prefetch")
    async def prefetch() -> dict[str, int]:
        authors = await Author.all().order_by("id").prefetch_related("books")
        return {"books": sum(len(a.books) for a in authors)}

    @app.get("/clean/select-related")
    async def select_related() -> dict[str, int]:
        books = await Book.all().order_by("id").select_related("author")
        return {"authors": len({b.author.name for b in books})}

    @app.get("/clean/nested-prefetch")
    async def nested_prefetch() -> dict[str, int]:
        authors = await Author.all().order_by("id").prefetch_related("books__tags")
        return {"tags": sum(len(book.tags) for a in authors for book in a.books)}

    @app.get("/clean/single")
    async def single() -> dict[str, int]:
        author = await Author.get(id=(await _author_ids())[0])
        books = await author.books
        return {"books": len(books)}

    @app.get("/clean/distinct-sites")
    async def distinct_sites() -> dict[str, int]:
        # One SQL text, six call sites, one statement each: no loop, no repeat.
        ids = await _author_ids()
        a = await Author.get(id=ids[0])
        b = await Author.get(id=ids[1])
        c = await Author.get(id=ids[2])
        d = await Author.get(id=ids[3])
        e = await Author.get(id=ids[4])
        f = await Author.get(id=ids[5])
        return {"authors": len({x.id for x in (a, b, c, d, e, f)})}

    @app.get("/clean/chunked")
    async def chunked() -> dict[str, int]:
        ids = await _book_ids()  # 24 ids: chunks of 5, 5, 5, 5, 4
        loaded = 0
        for start in range(0, len(ids), 5):
            loaded += len(await Book.filter(id__in=ids[start : start + 5]))
        return {"books": loaded}

    @app.get("/clean/chunked-tail")
    async def chunked_tail() -> dict[str, int]:
        ids = (await _book_ids())[:21]  # chunks of 5, 5, 5, 5 and a last one of 1
        loaded = 0
        for start in range(0, len(ids), 5):
            loaded += len(await Book.filter(id__in=ids[start : start + 5]))
        return {"books": loaded}

    @app.get("/clean/allow-nplusone")
    async def allow_nplusone() -> dict[str, int]:
        total = 0
        with poolwatch.allow_nplusone():
            for author in await Author.all().order_by("id"):
                total += len(await author.books)
        return {"books": total}

    @app.get("/allowed/reverse-fk")
    async def allowed_route() -> dict[str, int]:
        # An N+1, but its route is allow-listed in production (allow_routes).
        total = 0
        for author in await Author.all().order_by("id"):
            total += len(await author.books)
        return {"books": total}

    @app.get("/allowed-call-site/export")
    async def allowed_call_site() -> dict[str, int]:
        return {"books": await legacy_export(list(await Author.all().order_by("id")))}

    return app
