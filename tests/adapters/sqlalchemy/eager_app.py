# ruff: noqa: B008  (dependencies as defaults: FastAPI 0.92 has no Annotated)
"""A small blog on SQLAlchemy for the unused-eager-load tests: a repository layer, a
current-user dependency on a second (replica) engine, response models over relations,
routers with prefixes; sync (``Session``) or async (``AsyncSession``)."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Depends, FastAPI, Header
from sqlalchemy import Engine, ForeignKey, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    immediateload,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)

PYDANTIC_1 = pydantic.VERSION.startswith("1.")


class Base(DeclarativeBase):
    pass


class Profile(Base):
    __tablename__ = "eager_profile"
    id: Mapped[int] = mapped_column(primary_key=True)
    bio: Mapped[str]


class Author(Base):
    __tablename__ = "eager_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    profile_id: Mapped[int] = mapped_column(ForeignKey("eager_profile.id"))
    profile: Mapped[Profile] = relationship()


class Article(Base):
    __tablename__ = "eager_article"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("eager_author.id"))
    author: Mapped[Author] = relationship()
    tags: Mapped[list[Tag]] = relationship(order_by="Tag.id")


class Tag(Base):
    __tablename__ = "eager_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]
    article_id: Mapped[int] = mapped_column(ForeignKey("eager_article.id"))


def seed_rows() -> list[Base]:
    rows: list[Base] = []
    for i in range(1, 7):
        rows += [Profile(id=i, bio=f"bio {i}"), Author(id=i, name=f"author {i}", profile_id=i)]
        rows.append(Article(id=i, title=f"article {i}", author_id=i))
        rows.append(Tag(id=i, label=f"tag {i}", article_id=i))
    return rows


def seed(engine: Engine) -> None:
    """Make the blog's tables on ``engine`` (a sync one) and add :func:`seed_rows`."""
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(seed_rows())
        session.commit()


if PYDANTIC_1:

    class _Out(pydantic.BaseModel):
        class Config:
            orm_mode = True

else:

    class _Out(pydantic.BaseModel):  # type: ignore[no-redef]
        model_config = pydantic.ConfigDict(from_attributes=True)


class AuthorOut(_Out):
    name: str


class ArticleOut(_Out):
    title: str
    author: AuthorOut


# -- the repository: where the queries are -------------------------------------------------

ARTICLE_QUERIES: dict[str, Any] = {
    "with-authors": lambda: select(Article).options(selectinload(Article.author)),
    "titles": lambda: select(Article).options(selectinload(Article.tags)),
    "joined": lambda: select(Article).options(joinedload(Article.author)),
    "subquery": lambda: select(Article).options(subqueryload(Article.tags)),
    "immediate": lambda: select(Article).options(immediateload(Article.tags)),
    "chained": lambda: select(Article).options(
        selectinload(Article.author).selectinload(Author.profile)
    ),
    "chained-joined": lambda: select(Article).options(
        selectinload(Article.author).joinedload(Author.profile)
    ),
    "none": lambda: select(Article).where(Article.id < 0).options(selectinload(Article.tags)),
    "none-joined": lambda: (
        select(Article).where(Article.id < 0).options(joinedload(Article.author))
    ),
    "tags": lambda: select(Article).options(selectinload(Article.tags)),
    "plain": lambda: select(Article),
}


def build(sessions: Any, replica: Any, *, is_async: bool) -> FastAPI:
    """The app; ``sessions()`` / ``replica()`` make sessions of the two engines."""
    app = FastAPI()
    api = APIRouter(prefix="/api")
    articles = APIRouter(prefix="/articles")

    if is_async:

        async def session_dep() -> Any:
            async with sessions() as session:
                yield session

        async def current_user(x_user: int = Header(1)) -> str:
            async with replica() as session:
                user = await session.get(Author, x_user)
                return user.name if user else "anonymous"

        async def load(session: AsyncSession, name: str) -> list[Article]:
            result = await session.scalars(ARTICLE_QUERIES[name]())
            return list(result.unique().all())

        @articles.get("/with-authors", response_model=list[ArticleOut])
        async def with_authors(
            session: AsyncSession = Depends(session_dep), user: str = Depends(current_user)
        ) -> Any:
            return await load(session, "with-authors")  # read by the response model only

        @articles.get("/{name}")
        async def listing(
            name: str,
            session: AsyncSession = Depends(session_dep),
            user: str = Depends(current_user),
        ) -> Any:
            if name == "nplusone":
                await load(session, "titles")
                names = []
                for a in await load(session, "plain"):  # one query per row
                    author = await session.get(Author, a.author_id)
                    names.append(author.name if author else "")
                return names
            rows = await load(session, name)
            if name.startswith("chained"):
                return [a.author.name for a in rows]
            if name == "tags":
                return [len(a.tags) for a in rows]
            return [a.title for a in rows]

    else:

        def session_dep() -> Any:
            with sessions() as session:
                yield session

        def current_user(x_user: int = Header(1)) -> str:
            with replica() as session:
                user = session.get(Author, x_user)
                return user.name if user else "anonymous"

        def load_sync(session: Session, name: str) -> list[Article]:
            return list(session.scalars(ARTICLE_QUERIES[name]()).unique().all())

        @articles.get("/with-authors", response_model=list[ArticleOut])
        def with_authors_sync(
            session: Session = Depends(session_dep), user: str = Depends(current_user)
        ) -> Any:
            return load_sync(session, "with-authors")

        @articles.get("/{name}")
        def listing_sync(
            name: str, session: Session = Depends(session_dep), user: str = Depends(current_user)
        ) -> Any:
            if name == "nplusone":
                load_sync(session, "titles")
                return [a.author.name for a in load_sync(session, "plain")]  # lazy loads
            rows = load_sync(session, name)
            if name.startswith("chained"):
                return [a.author.name for a in rows]
            if name == "tags":
                return [len(a.tags) for a in rows]
            return [a.title for a in rows]

    api.include_router(articles)
    app.include_router(api)
    return app
