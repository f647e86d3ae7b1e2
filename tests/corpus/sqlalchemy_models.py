"""The models of the SQLAlchemy corpus: authors, their books, publishers and tags.

Every relationship loads lazily (``lazy="select"``, SQLAlchemy's default), so a loop that
touches one per row sends one query per row. ``AsyncAttrs`` gives the async app
``await obj.awaitable_attrs.books``.

The seed makes every loop of the corpus run at least six times: six authors with two
books each, each book with a publisher of its own and two of four tags.
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, ForeignKey, String, Table, delete, insert, text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

AUTHORS = 6
BOOKS_PER_AUTHOR = 2
BOOKS = AUTHORS * BOOKS_PER_AUTHOR
PUBLISHERS = BOOKS  # one per book: a loop over books misses the identity map every time
TAGS = 4
TAGS_PER_BOOK = 2


class Base(AsyncAttrs, DeclarativeBase):
    pass


book_tag = Table(
    "corpus_sa_book_tag",
    Base.metadata,
    Column("book_id", ForeignKey("corpus_sa_book.id"), primary_key=True),
    Column("tag_id", ForeignKey("corpus_sa_tag.id"), primary_key=True),
)


class Author(Base):
    __tablename__ = "corpus_sa_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Publisher(Base):
    __tablename__ = "corpus_sa_publisher"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    books: Mapped[list[Book]] = relationship(back_populates="publisher", order_by="Book.id")


class Tag(Base):
    __tablename__ = "corpus_sa_tag"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    books: Mapped[list[Book]] = relationship(
        secondary=book_tag, back_populates="tags", order_by="Book.id"
    )


class Book(Base):
    __tablename__ = "corpus_sa_book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(64))
    author_id: Mapped[int] = mapped_column(ForeignKey("corpus_sa_author.id"))
    publisher_id: Mapped[int] = mapped_column(ForeignKey("corpus_sa_publisher.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    publisher: Mapped[Publisher] = relationship(back_populates="books")
    tags: Mapped[list[Tag]] = relationship(
        secondary=book_tag, back_populates="books", order_by="Tag.id"
    )


# The seeded rows, by table: what the corpus's own writes are told apart from.
SEEDED = {
    Author.__tablename__: AUTHORS,
    Publisher.__tablename__: PUBLISHERS,
    Tag.__tablename__: TAGS,
    Book.__tablename__: BOOKS,
}


def seed(conn: Connection) -> None:
    """Create the tables and fill them (on a connection in a transaction)."""
    Base.metadata.create_all(conn)
    conn.execute(insert(Author), [{"id": i, "name": f"author-{i}"} for i in range(1, AUTHORS + 1)])
    conn.execute(
        insert(Publisher),
        [{"id": i, "name": f"publisher-{i}"} for i in range(1, PUBLISHERS + 1)],
    )
    conn.execute(insert(Tag), [{"id": i, "name": f"tag-{i}"} for i in range(1, TAGS + 1)])
    conn.execute(
        insert(Book),
        [
            {
                "id": i,
                "title": f"book-{i}",
                "author_id": (i - 1) // BOOKS_PER_AUTHOR + 1,
                "publisher_id": i,
            }
            for i in range(1, BOOKS + 1)
        ],
    )
    conn.execute(
        insert(book_tag),
        [
            {"book_id": i, "tag_id": (i + k) % TAGS + 1}
            for i in range(1, BOOKS + 1)
            for k in range(TAGS_PER_BOOK)
        ],
    )
    if conn.dialect.name == "postgresql":
        # The rows came with their ids: move the sequences past them for later inserts.
        for table in SEEDED:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )


def reset(conn: Connection) -> None:
    """Delete every row the corpus wrote after :func:`seed` (a shared database)."""
    conn.execute(delete(book_tag).where(book_tag.c.book_id > BOOKS))
    conn.execute(delete(Book).where(Book.id > BOOKS))
    conn.execute(delete(Author).where(Author.id > AUTHORS))
    conn.execute(delete(Publisher).where(Publisher.id > PUBLISHERS))
    conn.execute(delete(Tag).where(Tag.id > TAGS))
