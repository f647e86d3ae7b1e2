from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from sqlmodel import Session

from tests.realapp import services
from tests.realapp.db import get_read_session
from tests.realapp.deps import CurrentUser, SessionDep
from tests.realapp.models import Article
from tests.realapp.repositories import ArticleRepository

router = APIRouter(prefix="/articles")
ReadSession = Annotated[Session, Depends(get_read_session)]


@router.get("")
def feed(session: ReadSession, limit: int = 5) -> list[dict[str, Any]]:
    return services.feed(session, limit)


@router.get("/compare")
def compare(session: SessionDep, replica: ReadSession) -> dict[str, Any]:
    # The same statement on the primary and on the replica: two engines, two reads.
    ours = ArticleRepository(session).latest(3)
    theirs = ArticleRepository(replica).latest(3)
    return {"same": [a.id for a in ours] == [a.id for a in theirs]}


@router.get("/one-by-one")
def feed_one_by_one(session: ReadSession, limit: int = 5) -> list[dict[str, Any]]:
    return services.feed_one_by_one(session, limit)


@router.put("/{article_id}")
def rename(article_id: int, title: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    articles = ArticleRepository(session)
    article = articles.get(article_id)
    if article is None:
        raise HTTPException(404)
    article.title = title
    articles.save(article)  # UPDATE, COMMIT, then a refresh reads it again
    return {"id": article.id, "title": article.title, "by": user.id}


@router.post("", status_code=201)
def write(title: str, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    article = ArticleRepository(session).save(Article(title=title, author_id=user.id or 0))
    return {"id": article.id}
