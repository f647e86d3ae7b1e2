"""What the routes call: one honest feed, and the per-article helper real apps grow."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from tests.realapp.models import Article
from tests.realapp.repositories import ArticleRepository, FavoriteRepository


def feed(session: Session, limit: int) -> list[dict[str, Any]]:
    articles = ArticleRepository(session).latest(limit)
    counts = ArticleRepository(session).favorite_counts([a.id for a in articles if a.id])
    return [{"id": a.id, "title": a.title, "favorites": counts.get(a.id or 0, 0)} for a in articles]


def feed_one_by_one(session: Session, limit: int) -> list[dict[str, Any]]:
    articles = ArticleRepository(session).latest(limit)
    return [_article_info(session, article) for article in articles]  # loop: per article


def _article_info(session: Session, article: Article) -> dict[str, Any]:
    favorites = FavoriteRepository(session).count(article.id or 0)  # helper: per article
    return {"id": article.id, "title": article.title, "favorites": favorites}
