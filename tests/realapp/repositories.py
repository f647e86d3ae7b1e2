"""The data layer: every route and service reaches the database through these."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from tests.realapp.models import Article, Favorite, User


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, user_id: int) -> User | None:
        return self.session.exec(select(User).where(User.id == user_id)).first()

    def exists(self, email: str) -> bool:
        return self.session.exec(select(User.id).where(User.email == email)).first() is not None

    def add(self, user: User) -> User:
        self.session.add(user)
        self.session.commit()
        self.session.refresh(user)
        return user


class ArticleRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, article_id: int) -> Article | None:
        return self.session.get(Article, article_id)

    def latest(self, limit: int) -> list[Article]:
        return list(self.session.exec(select(Article).order_by(Article.id.desc()).limit(limit)))  # type: ignore[union-attr]

    def favorite_counts(self, ids: list[int]) -> dict[int, int]:
        query = (
            select(Favorite.article_id, func.count())
            .where(Favorite.article_id.in_(ids))  # type: ignore[attr-defined]
            .group_by(Favorite.article_id)
        )
        return dict(self.session.exec(query).all())  # type: ignore[arg-type]

    def save(self, article: Article) -> Article:
        self.session.add(article)
        self.session.commit()
        self.session.refresh(article)
        return article


class FavoriteRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def count(self, article_id: int) -> int:
        query = select(func.count()).where(Favorite.article_id == article_id)
        return self.session.exec(query).one()
