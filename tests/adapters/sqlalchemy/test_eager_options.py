"""The eager loads a statement's loader options ask for, read where SQLAlchemy keeps
them (:mod:`poolwatch.adapters.sqlalchemy.eager_options`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from poolwatch.adapters.sqlalchemy.eager_options import eager_parts
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
