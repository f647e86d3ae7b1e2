"""N+1 while FastAPI serializes a response: blamed on the endpoint, one finding per chain.

An app shaped like real ones: a content database and an accounts database (two
engines), routers under ``/api/v1``, a repository layer, a current-user dependency, and
response models over relations (pydantic 2's ``from_attributes``, or pydantic 1's
``orm_mode`` on the oldest FastAPI). The endpoints return ORM rows; FastAPI reads
``article.author.profile`` after the endpoint has returned, so no application frame is
on the stack when each row lazy-loads: the finding names the endpoint's ``def`` line,
the chain of relations it walked, and the one chained option that loads it.
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy import Engine, ForeignKey, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from poolwatch import PoolWatch
from poolwatch.testing import capture
from tests.findings_helpers import NEVER_SLOW

ARTICLES = 6


class Content(DeclarativeBase):
    pass


class Accounts(DeclarativeBase):
    pass


class Profile(Content):
    __tablename__ = "ser_profile"
    id: Mapped[int] = mapped_column(primary_key=True)
    bio: Mapped[str] = mapped_column(String(64))


class Writer(Content):
    __tablename__ = "ser_writer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    profile_id: Mapped[int] = mapped_column(ForeignKey("ser_profile.id"))
    profile: Mapped[Profile] = relationship()


class Article(Content):
    __tablename__ = "ser_article"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(64))
    writer_id: Mapped[int] = mapped_column(ForeignKey("ser_writer.id"))
    writer: Mapped[Writer] = relationship()


class Account(Accounts):
    __tablename__ = "ser_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(64))


# -- response models, on either pydantic ---------------------------------------------------

if pydantic.VERSION.startswith("1."):

    class Schema(pydantic.BaseModel):
        class Config:
            orm_mode = True

else:

    class Schema(pydantic.BaseModel):  # type: ignore[no-redef]
        model_config = pydantic.ConfigDict(from_attributes=True)


class ProfileOut(Schema):
    bio: str


class WriterOut(Schema):
    name: str


class WriterWithProfileOut(WriterOut):
    profile: ProfileOut


class ArticleOut(Schema):
    title: str
    writer: WriterWithProfileOut


class ArticleSummaryOut(Schema):
    title: str
    writer: WriterOut


# -- the app -------------------------------------------------------------------------------


class ArticleRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def latest(self) -> list[Article]:
        return list(self.session.scalars(select(Article).order_by(Article.id)))

    def latest_with_writers(self) -> list[Article]:
        query = select(Article).options(selectinload(Article.writer).selectinload(Writer.profile))
        return list(self.session.scalars(query.order_by(Article.id)))

    def one(self, article_id: int) -> Article | None:
        return self.session.get(Article, article_id)


def content_session(request: Request) -> Iterator[Session]:
    with request.app.state.content() as session:
        yield session


def accounts_session(request: Request) -> Iterator[Session]:
    with request.app.state.accounts() as session:
        yield session


# Dependencies as defaults, declared once (FastAPI 0.92 has no Annotated dependencies).
CONTENT = Depends(content_session)
ACCOUNTS = Depends(accounts_session)
ACCOUNT_ID = Header(1)


def current_account(x_account: int = ACCOUNT_ID, session: Session = ACCOUNTS) -> Account:
    account = session.get(Account, x_account)
    if account is None:
        raise HTTPException(401)
    return account


router = APIRouter(prefix="/articles", dependencies=[Depends(current_account)])


@router.get("", response_model=list[ArticleOut])
def list_articles(session: Session = CONTENT) -> list[Article]:  # chain
    return ArticleRepository(session).latest()


@router.get("/summaries", response_model=list[ArticleSummaryOut])
def list_summaries(session: Session = CONTENT) -> list[Article]:  # writer
    return ArticleRepository(session).latest()


@router.get("/eager", response_model=list[ArticleOut])
def list_articles_eager(session: Session = CONTENT) -> list[Article]:
    return ArticleRepository(session).latest_with_writers()


@router.get("/{article_id}", response_model=ArticleOut)
def get_article(article_id: int, session: Session = CONTENT) -> Article:
    article = ArticleRepository(session).one(article_id)
    if article is None:
        raise HTTPException(404)
    return article


@router.get("-async", response_model=list[ArticleSummaryOut])
async def list_summaries_async(  # async writer
    session: Session = CONTENT,
) -> list[Article]:
    # An async endpoint on a sync session (as apps that moved to async def do): FastAPI
    # validates its response in the event loop's thread, not the thread pool.
    return ArticleRepository(session).latest()


def create_app(content: Engine, accounts: Engine) -> FastAPI:
    app = FastAPI()
    app.state.content = sessionmaker(content)
    app.state.accounts = sessionmaker(accounts)
    api = APIRouter(prefix="/api/v1")
    api.include_router(router)
    app.include_router(api)
    return app


# -- fixtures ------------------------------------------------------------------------------


def _seed(content: Engine, accounts: Engine) -> None:
    Content.metadata.create_all(content)
    Accounts.metadata.create_all(accounts)
    with Session(content) as session:
        for i in range(1, ARTICLES + 1):
            writer = Writer(id=i, name=f"writer-{i}", profile=Profile(id=i, bio=f"bio-{i}"))
            session.add(Article(id=i, title=f"article-{i}", writer=writer))
        session.commit()
    with Session(accounts) as session:
        session.add(Account(id=1, email="reader@example.com"))
        session.commit()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    content = create_engine(f"sqlite:///{tmp_path / 'content.db'}")
    accounts = create_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    _seed(content, accounts)
    yield content, accounts
    content.dispose()
    accounts.dispose()


async def _get(app: FastAPI, path: str) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def _def_line(function: Any) -> str:
    """``file:line in name`` of a function's ``def`` line, as a finding shows it."""
    source = Path(inspect.getfile(function))
    tree = ast.parse(source.read_text())
    (node,) = (
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function.__name__
    )
    return f"{os.path.relpath(source)}:{node.lineno} in {function.__qualname__}"


CHAIN = "selectinload(Article.writer).selectinload(Writer.profile)"


@pytest.fixture
def watch(engines: tuple[Engine, Engine]) -> Iterator[PoolWatch]:
    content, accounts = engines
    # No slow-query finding beside the N+1s these tests count, however loaded the machine.
    watch = PoolWatch(nplusone_mode="log", nplusone_threshold=5, slow_query_threshold=NEVER_SLOW)
    watch.instrument_sqlalchemy(content, pool="content")
    watch.instrument_sqlalchemy(accounts, pool="accounts")
    yield watch
    watch.uninstrument()


async def test_a_response_model_walking_a_chain_is_one_finding_at_the_endpoint(
    watch: PoolWatch, engines: tuple[Engine, Engine]
) -> None:
    app = create_app(*engines)
    watch.instrument_app(app)
    body = await _get(app, "/api/v1/articles")
    assert [a["writer"]["profile"]["bio"] for a in body] == [
        f"bio-{i}" for i in range(1, ARTICLES + 1)
    ]
    (finding,) = watch.findings()
    assert finding["kind"] == "nplusone"
    assert (finding["route"], finding["method"], finding["pool"]) == (
        "/api/v1/articles",
        "GET",
        "content",
    )
    assert finding["call_site"] == finding["call_path"] == _def_line(list_articles)
    assert finding["relations"] == ["Article.writer", "Writer.profile"]
    assert finding["count"] == 2 * ARTICLES
    assert CHAIN in finding["suggestion"]
    assert "`list_articles`" in finding["suggestion"]
    assert "unknown" not in str(finding)


async def test_one_relation_read_by_the_response_model(
    watch: PoolWatch, engines: tuple[Engine, Engine]
) -> None:
    app = create_app(*engines)
    watch.instrument_app(app)
    await _get(app, "/api/v1/articles/summaries")
    (finding,) = watch.findings()
    assert finding["call_site"] == _def_line(list_summaries)
    assert finding["relations"] == ["Article.writer"]
    assert finding["count"] == ARTICLES
    assert "joinedload(Article.writer)" in finding["suggestion"]


async def test_an_async_endpoint_s_response_is_blamed_on_it_too(
    watch: PoolWatch, engines: tuple[Engine, Engine]
) -> None:
    app = create_app(*engines)
    watch.instrument_app(app)
    await _get(app, "/api/v1/articles-async")
    (finding,) = watch.findings()
    assert finding["call_site"] == _def_line(list_summaries_async)
    assert finding["relations"] == ["Article.writer"]


async def test_loaded_with_the_query_or_one_row_is_no_finding(
    watch: PoolWatch, engines: tuple[Engine, Engine]
) -> None:
    app = create_app(*engines)
    watch.instrument_app(app)
    eager = await _get(app, "/api/v1/articles/eager")
    assert len(eager) == ARTICLES
    await _get(app, "/api/v1/articles/3")
    assert watch.findings() == []


async def test_a_test_suite_s_capture_sees_the_same(engines: tuple[Engine, Engine]) -> None:
    watch = PoolWatch(nplusone_mode="off")  # as under the pytest plugin: capture() judges
    content, accounts = engines
    watch.instrument_sqlalchemy(content, pool="content")
    watch.instrument_sqlalchemy(accounts, pool="accounts")
    app = create_app(content, accounts)
    watch.instrument_app(app)
    try:
        with capture() as captured:
            await _get(app, "/api/v1/articles")
    finally:
        watch.uninstrument()
    (finding,) = captured.nplusone
    assert finding.call_site == _def_line(list_articles)
    assert finding.relations == ("Article.writer", "Writer.profile")
    assert CHAIN in finding.suggestion
