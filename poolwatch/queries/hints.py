"""What to change: a fix suggestion for a finding, from the ORM's model metadata. Pure.

A lazy relation load has a recognisable shape: it selects from one table filtering one
column by one value (``WHERE post.author_id = ?``, or SQLAlchemy's ``WHERE ? =
posts.author_id``). The ORM adapters describe every relation as a :class:`Relation`
(which table and column its lazy load filters on); matching the two names the relation,
and the suggestion names the attribute to prefetch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from poolwatch.events import BULK_WRITE, DUPLICATE, NPLUSONE, SLOW_QUERY

__all__ = ["FORWARD", "MANY_TO_MANY", "REVERSE", "Relation", "filtered_column", "suggest"]

FORWARD = "forward"  # many-to-one / one-to-one: the load filters the target's key
REVERSE = "reverse"  # one-to-many: the load filters the foreign key column
MANY_TO_MANY = "m2m"  # the load filters the association table's key column

TORTOISE = "tortoise"
SQLALCHEMY = "sqlalchemy"


class Relation(NamedTuple):
    """One relation attribute, and the table and column its lazy load filters on."""

    orm: str
    model: str
    attribute: str
    table: str
    column: str
    kind: str
    target: str
    """The model the relation loads."""


# "from posts", "join post_tag", "from authors as authors_1", "from author a"
_FROM = re.compile(
    r"""\b(?:from|join)\ ([\w$]+)
        (?:\ as)?(?:\ (?!(?:where|on|left|inner|join|limit|order|group)\b)([\w$]+))?""",
    re.VERBOSE,
)
# "where posts.author_id = ?", "where ? = posts.author_id" (SQLAlchemy's lazy loads),
# "where author_id in (?)" (one prefetch per row)
_WHERE = re.compile(
    r"""\bwhere\ (?:
        \?\ =\ (?:([\w$]+)\.)?([\w$]+)
      | (?:([\w$]+)\.)?([\w$]+)\ (?:=\ \?|in\ \((?:\?|\.\.\.)\))
    )""",
    re.VERBOSE,
)


def filtered_column(fingerprint: str) -> tuple[str, str] | None:
    """``(table, column)`` of the first ``WHERE`` comparison against a value, if any.

    >>> filtered_column("select posts.id from posts where ? = posts.author_id")
    ('posts', 'author_id')
    >>> filtered_column("select id from author where id = ? limit ?")
    ('author', 'id')
    """
    where = _WHERE.search(fingerprint)
    if where is None:
        return None
    qualifier = where.group(1) or where.group(3)
    column = where.group(2) or where.group(4)
    aliases: dict[str, str] = {}
    first_table = None
    for match in _FROM.finditer(fingerprint[: where.start()]):
        table, alias = match.group(1), match.group(2)
        first_table = first_table or table
        aliases[table] = table
        if alias:
            aliases[alias] = table
    if qualifier is not None:
        table = aliases.get(qualifier, qualifier)
    elif first_table is not None:
        table = first_table
    else:
        return None
    return table, column


def _matches(fingerprint: str, relations: Sequence[Relation]) -> list[Relation]:
    where = filtered_column(fingerprint)
    if where is None:
        return []
    table, column = where
    return [r for r in relations if r.table == table and r.column == column]


def _prefetch(relation: Relation) -> str:
    if relation.orm == TORTOISE:
        return f'`{relation.model}.all().prefetch_related("{relation.attribute}")`'
    loader = "joinedload" if relation.kind == FORWARD else "selectinload"
    return f"`{loader}({relation.model}.{relation.attribute})`"


_GENERIC_NPLUSONE = {
    TORTOISE: (
        "The same query runs once per row of an earlier result: fetch the related rows "
        'with that query (`prefetch_related("<relation>")` or `select_related("<relation>")`), '
        "or all at once with `.filter(<field>__in=ids)`."
    ),
    SQLALCHEMY: (
        "The same query runs once per row of an earlier result: load the related rows with "
        "that query (`selectinload(<Model.relationship>)` or `joinedload(...)` in its "
        "`.options()`), or all at once with `select(...).where(<column>.in_(ids))`."
    ),
}
_ANY_NPLUSONE = (
    "The same query runs once per row of an earlier result: load those rows together with "
    "the query that fetched the rows, or all at once with one `IN (...)` query."
)


def _nplusone(
    fingerprint: str, relations: Sequence[Relation], orm: str | None, by_relation: bool
) -> str:
    matched = [r for r in _matches(fingerprint, relations) if orm is None or r.orm == orm]
    # Rows filtered by a relation's foreign key are that relation's rows, however the query
    # was written. A filter on a primary key is any lookup by id (session.get(User, id)):
    # it is a relation's only if the ORM's relation loader ran it.
    found = [r for r in matched if by_relation or r.kind != FORWARD]
    if not found:
        keyed = next((r for r in matched if r.kind == FORWARD), None)
        if keyed is None:
            return _GENERIC_NPLUSONE.get(orm or "", _ANY_NPLUSONE)
        model = keyed.target
        one_query = (
            f"`{model}.filter({keyed.column}__in=ids)`"
            if keyed.orm == TORTOISE
            else f"`select({model}).where({model}.{keyed.column}.in_(ids))`"
        )
        text = f"One {model} is loaded per row or id: fetch them in one query, {one_query}, "
        if keyed.orm != TORTOISE:
            return text + "before the loop (or load them with the query that fetched the rows)."
        # Tortoise runs `await post.author` as Author.filter(id=...).first(): no trace of the
        # relation is left to prove it, so the relations that load this way are candidates.
        candidates = [r for r in matched if r.kind == FORWARD][:3]
        return (
            text + "before the loop; if they are loaded through "
            + " or ".join(f"`{r.model.lower()}.{r.attribute}`" for r in candidates)
            + ", use " + " or ".join(_prefetch(r) for r in candidates)
            + " on the query that fetched the rows."
        )  # fmt: skip
    first = found[0]
    verb = "use" if first.orm == TORTOISE else "add"
    options = " or ".join(_prefetch(r) for r in found[:3])
    text = f"Load {first.target} with the rows that need it: {verb} {options}"
    text += " on the query that fetched them" if first.orm == TORTOISE else " to that query"
    return text + "."


# Per ORM and statement, the call that writes all the rows at once. SQLAlchemy's ORM bulk
# UPDATE by primary key (a list of dicts, each with its key) needs a Session.
_BULK = {
    TORTOISE: {
        "insert": "`Model.bulk_create([Model(...), ...])`",
        "update": "`Model.bulk_update(objects, fields=[...])` (each row its own values) "
        "or `Model.filter(id__in=ids).update(field=value)` (the same values)",
        "delete": "`Model.filter(id__in=ids).delete()`",
    },
    SQLALCHEMY: {
        "insert": "`session.execute(insert(Model), [{...}, ...])` or "
        "`insert(table).values([{...}, ...])`; ORM objects: `session.add_all()` and one "
        "flush, not a flush or commit per row",
        "update": '`session.execute(update(Model), [{"id": ..., ...}, ...])` (by primary '
        "key, each row its own values) or "
        "`update(Model).where(Model.id.in_(ids)).values(...)` (the same values)",
        "delete": "`session.execute(delete(Model).where(Model.id.in_(ids)))`",
    },
    "": {
        "insert": "Tortoise `Model.bulk_create(objects)`, SQLAlchemy "
        "`session.execute(insert(Model), rows)` or `insert(table).values(rows)`",
        "update": "Tortoise `Model.bulk_update(objects, fields=[...])`, SQLAlchemy "
        "`session.execute(update(Model), rows)` (by primary key), or one "
        "`UPDATE ... WHERE id IN (...)` when the rows get the same values",
        "delete": "Tortoise `Model.filter(id__in=ids).delete()`, SQLAlchemy "
        "`delete(Model).where(Model.id.in_(ids))`",
    },
}


def _bulk_write(fingerprint: str, orm: str | None) -> str:
    verb = fingerprint.split(" ", 1)[0]
    how = _BULK.get(orm or "", _BULK[""]).get(verb)
    if how is None:  # REPLACE, MERGE, a CTE
        return (
            f"One {verb.upper()} per row: write the rows in one statement (a multi-row "
            "VALUES, or the driver's executemany)."
        )
    return f"One {verb.upper()} per row: {verb} the rows in one statement, with {how}."


def suggest(
    kind: str,
    fingerprint: str,
    relations: Sequence[Relation],
    orm: str | None = None,
    *,
    by_relation: bool = True,
) -> str:
    """One sentence saying what to change for a finding of ``kind`` on ``fingerprint``.

    A relation is named only when ``by_relation`` (the ORM's relation loader ran the
    statements) and one of ``relations`` of ``orm`` loads this shape.
    """
    if kind == NPLUSONE:
        return _nplusone(fingerprint, relations, orm, by_relation)
    if kind == DUPLICATE:
        return (
            "The same query with the same parameters ran more than once in this request, "
            "with no write or commit in between: keep the first result and reuse it (or "
            "hoist the query out of the loop)."
        )
    if kind == BULK_WRITE:
        return _bulk_write(fingerprint, orm)
    if kind == SLOW_QUERY:
        return (
            "Look at its plan (EXPLAIN ANALYZE): an index on the filtered or joined "
            "columns, or fewer rows fetched, is the usual fix."
        )
    return ""
