"""Two engines on one database file: the primary for writes, a read-only one for feeds."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, event
from sqlmodel import Session, SQLModel, create_engine

from tests.realapp.models import Article, Favorite, User

engines: dict[str, Engine] = {}


def make_engines(path: str) -> dict[str, Engine]:
    primary = create_engine(f"sqlite:///{path}")
    replica = create_engine(f"sqlite:///{path}")

    @event.listens_for(replica, "connect")
    def read_only(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]

    SQLModel.metadata.create_all(primary)
    engines.update(primary=primary, replica=replica)
    return engines


def seed() -> None:
    with Session(engines["primary"]) as session:
        users = [User(name=f"user {i}", email=f"user{i}@example.com") for i in range(1, 5)]
        session.add_all(users)
        session.flush()
        articles = [Article(title=f"article {i}", author_id=users[i % 4].id) for i in range(8)]
        session.add_all(articles)
        session.flush()
        session.add_all(
            Favorite(user_id=u.id, article_id=a.id)
            for u in users
            for a in articles
            if ((u.id or 0) + (a.id or 0)) % 3 == 0
        )
        session.commit()


def get_session() -> Iterator[Session]:
    with Session(engines["primary"]) as session:
        yield session


def get_read_session() -> Iterator[Session]:
    with Session(engines["replica"]) as session:
        yield session
