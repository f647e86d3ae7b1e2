"""Fix suggestions from model metadata: the relation named when the SQL shows it."""

from __future__ import annotations

import pytest

from poolwatch.queries.detect import Evidence
from poolwatch.queries.fingerprint import fingerprint
from poolwatch.queries.hints import (
    FORWARD,
    MANY_TO_MANY,
    REVERSE,
    Relation,
    filtered_column,
    suggest,
)


def advise(
    kind: str,
    sql: str,
    relations: list[Relation],
    orm: str | None = None,
    *,
    by_relation: bool = True,
) -> str:
    return suggest(Evidence(kind, sql, "main", by_relation=by_relation), relations, orm)


TORTOISE = [
    Relation("tortoise", "Author", "books", "book", "author_id", REVERSE, "Book"),
    Relation("tortoise", "Book", "author", "author", "id", FORWARD, "Author"),
    Relation("tortoise", "Book", "tags", "book_tag", "book_id", MANY_TO_MANY, "Tag"),
]
SQLALCHEMY = [
    Relation("sqlalchemy", "Author", "books", "books", "author_id", REVERSE, "Book"),
    Relation("sqlalchemy", "Book", "author", "authors", "id", FORWARD, "Author"),
]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('SELECT "id","title" FROM "book" WHERE "author_id"=$1', ("book", "author_id")),
        ("SELECT books.id FROM books WHERE ? = books.author_id", ("books", "author_id")),
        ("SELECT a.id FROM authors AS a WHERE a.id = %(pk)s", ("authors", "id")),
        (
            'SELECT "tag"."id" FROM "tag" LEFT OUTER JOIN "book_tag" ON "tag"."id"='
            '"book_tag"."tag_id" WHERE "book_tag"."book_id"=?',
            ("book_tag", "book_id"),
        ),
        ('SELECT "id" FROM "book" WHERE "author_id" IN ($1)', ("book", "author_id")),
        ("SELECT count(*) FROM books", None),
    ],
)
def test_filtered_column(sql: str, expected: tuple[str, str] | None) -> None:
    assert filtered_column(fingerprint(sql)) == expected


def test_tortoise_reverse_and_forward_relations_are_named() -> None:
    reverse = advise(
        "nplusone", fingerprint('SELECT "id" FROM "book" WHERE "author_id"=?'), TORTOISE
    )
    assert 'Author.all().prefetch_related("books")' in reverse
    forward = advise(
        "nplusone", fingerprint('SELECT "id" FROM "author" WHERE "id"=? LIMIT ?'), TORTOISE
    )
    assert 'Book.all().prefetch_related("author")' in forward
    m2m = advise(
        "nplusone",
        fingerprint(
            'SELECT "tag"."id" FROM "tag" JOIN "book_tag" ON x WHERE "book_tag"."book_id"=?'
        ),
        TORTOISE,
    )
    assert 'Book.all().prefetch_related("tags")' in m2m


def test_sqlalchemy_relations_name_the_loader_option() -> None:
    reverse = advise(
        "nplusone", fingerprint("SELECT books.id FROM books WHERE ? = books.author_id"), SQLALCHEMY
    )
    assert "selectinload(Author.books)" in reverse
    forward = advise(
        "nplusone", fingerprint("SELECT authors.id FROM authors WHERE authors.id = ?"), SQLALCHEMY
    )
    assert "joinedload(Book.author)" in forward


def test_unknown_tables_get_the_generic_hint_of_the_orm_that_ran_them() -> None:
    tortoise = advise("nplusone", "select ... from audit where x = ?", [], "tortoise")
    assert "prefetch_related" in tortoise
    assert "selectinload" not in tortoise
    sqlalchemy = advise("nplusone", "select ... from audit where x = ?", [], "sqlalchemy")
    assert "selectinload" in sqlalchemy
    assert "prefetch_related" not in sqlalchemy
    assert "Tortoise" not in sqlalchemy


def test_a_loop_of_lookups_by_a_plain_column_is_told_to_look_them_up_at_once() -> None:
    """One query per tag name of a request: no relation to load, one IN query to run."""
    sql = "select ... from tags where tags.name = ? limit ?"
    sqlalchemy = advise("nplusone", sql, [], "sqlalchemy")
    assert "once per value of tags.name" in sqlalchemy
    assert "`select(<Model>).where(<Model>.name.in_(values))`" in sqlalchemy
    assert "earlier result" not in sqlalchemy  # no rows of an earlier query are involved
    assert "if they are the rows of a relation" in sqlalchemy  # no model metadata known
    tortoise = advise("nplusone", sql, [], "tortoise")
    assert "`<Model>.filter(name__in=values)`" in tortoise
    assert "selectinload" not in tortoise
    # With the models' relations known and none filtering on tags.name, no relation is hinted.
    known = advise("nplusone", sql, SQLALCHEMY, "sqlalchemy")
    assert "once per value of tags.name" in known
    assert "relation" not in known


def test_a_relation_of_another_orm_is_never_named() -> None:
    sql = fingerprint('SELECT "id" FROM "book" WHERE "author_id"=?')
    assert "Author.books" not in advise("nplusone", sql, TORTOISE, "sqlalchemy")


@pytest.mark.parametrize(
    ("sql", "orm", "bulk"),
    [
        ("insert into book (title) values (?)", "tortoise", "`Model.bulk_create("),
        ("update book set title = ? where id = ?", "tortoise", "`Model.bulk_update("),
        ("update book set title = ? where id = ?", "tortoise", ".filter(id__in=ids).update("),
        ("delete from book where id = ?", "tortoise", "`Model.filter(id__in=ids).delete()`"),
        ("insert into books (title) values (?)", "sqlalchemy", "insert(table).values([{"),
        ("insert into books (title) values (?)", "sqlalchemy", "`session.add_all()`"),
        ("update books set title = ? where id = ?", "sqlalchemy", "execute(update(Model), [{"),
        ("update books set title = ? where id = ?", "sqlalchemy", ".where(Model.id.in_(ids))"),
        ("delete from books where id = ?", "sqlalchemy", "delete(Model).where(Model.id.in_("),
        ("insert into books (title) values (?)", None, "Tortoise `Model.bulk_create("),
        ("delete from books where id = ?", None, "SQLAlchemy `delete(Model).where("),
    ],
)
def test_a_bulk_write_is_told_the_bulk_api_of_its_orm(sql: str, orm: str | None, bulk: str) -> None:
    text = advise("bulk_write", sql, [], orm)
    verb = sql.split(" ", 1)[0]
    assert text.startswith(f"One {verb.upper()} per row: {verb} the rows in one statement")
    assert bulk in text
    other = {"tortoise": "session.execute", "sqlalchemy": "bulk_create"}.get(orm or "")
    assert other is None or other not in text


def test_a_bulk_write_of_another_statement_is_told_to_write_the_rows_at_once() -> None:
    text = advise("bulk_write", "replace into books (title) values (?)", [], "sqlalchemy")
    assert text == (
        "One REPLACE per row: write the rows in one statement (a multi-row VALUES, or the "
        "driver's executemany)."
    )


def test_other_kinds() -> None:
    assert "reuse" in advise("duplicate", "select 1", [])
    assert "EXPLAIN" in advise("slow_query", "select 1", [])


def test_a_chain_below_an_eager_load_extends_that_load() -> None:
    """Heroes are selected with selectinload(Hero.team) and the response model reads each
    team's heroes: selectinload(Team.heroes) alone on a query of heroes is refused by
    SQLAlchemy; the option must continue the one the query has."""
    relations = [
        Relation("sqlalchemy", "Hero", "team", "team", "id", FORWARD, "Team"),
        Relation("sqlalchemy", "Team", "heroes", "hero", "team_id", REVERSE, "Hero"),
    ]
    evidence = Evidence(
        "nplusone",
        "select ... from hero where ? = hero.team_id",
        "main",
        by_relation=True,
        relations=("Team.heroes",),
        endpoint="app.py:59 in read_heroes",
        loaded=("Hero.team",),
    )
    text = suggest(evidence, relations, "sqlalchemy")
    assert "read Team.heroes for each row" in text
    assert (
        "extend the eager load of Hero.team it has already: "
        "`selectinload(Hero.team).selectinload(Team.heroes)`"
    ) in text
    alone = suggest(evidence._replace(loaded=()), relations, "sqlalchemy")
    assert "add `selectinload(Team.heroes)`" in alone
