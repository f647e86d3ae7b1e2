"""The eager loads a statement's loader options ask for, read where SQLAlchemy keeps
them (:mod:`poolwatch.adapters.sqlalchemy.eager_options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session, selectinload

from poolwatch.adapters.sqlalchemy.eager_options import (
    eager_parts,
    load_path,
    loaded_relation,
    refreshes,
)
from tests.adapters.sqlalchemy import eager_app
from tests.adapters.sqlalchemy.eager_app import Article, Author


def test_the_private_loader_options_read_are_where_they_were() -> None:
    """Fails loudly if a new SQLAlchemy moves ``_with_options`` or a Load's ``context``
    (path, strategy): :func:`eager_parts` is the one reader of them."""
    statement = select(Article).options(selectinload(Article.author).selectinload(Author.profile))
    assert statement._with_options  # the attribute eager_parts reads
    [(option, parts)] = eager_parts(statement)
    assert option is statement._with_options[0]
    assert [(cls, key, loader, part) for cls, key, loader, _, part, _ in parts] == [
        (Article, "author", "selectinload", ""),
        (Author, "profile", "selectinload", ".selectinload(Author.profile)"),
    ]
    assert parts[1][5] == "selectinload(Article.author)"


def test_the_private_load_path_read_is_where_it_was(tmp_path: Path) -> None:
    """Fails loudly if a new SQLAlchemy moves a statement's loader path (mapper,
    relationship, ...) or tells relationship loads apart otherwise: :func:`load_path` is
    its one reader, and says a statement is a relationship load exactly when SQLAlchemy
    does."""
    engine = create_engine(f"sqlite:///{tmp_path / 'blog.db'}")
    eager_app.seed(engine)
    seen: list[tuple[type, str] | None] = []

    def on_execute(state: Any) -> None:
        chain = load_path(state.statement)
        assert bool(chain) is state.is_relationship_load
        assert refreshes(state.statement) is state.is_column_load
        if chain and not state.is_column_load:
            assert chain == state.loader_strategy_path.path
            seen.append(loaded_relation(chain))

    with Session(engine) as session:
        event.listen(session, "do_orm_execute", on_execute)
        chained = selectinload(Article.author).selectinload(Author.profile)
        session.scalars(select(Article).options(chained)).all()
        session.scalars(select(Article).options(selectinload(Article.tags))).all()
        session.expunge_all()
        for article in session.scalars(select(Article)):  # lazy loads
            assert article.author.name
        session.expunge_all()
        tag = session.scalars(select(Article).options(selectinload(Article.tags))).first().tags[0]
        session.expire(tag)
        assert tag.label  # a refresh below Article.tags: its path, and no relation loaded
    engine.dispose()
    lazy = [(Article, "author")] * 6
    selected = [(Article, "tags")]
    assert seen == [(Article, "author"), (Author, "profile"), (Article, "tags"), *lazy, *selected]
