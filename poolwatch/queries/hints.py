"""What to change: a fix suggestion for a finding, from the ORM's model metadata. Pure.

A lazy relation load has a recognisable shape: it selects from one table filtering one
column by one value (``WHERE post.author_id = ?``, or SQLAlchemy's ``WHERE ? =
posts.author_id``). The ORM adapters describe every relation as a :class:`Relation`
(which table and column its lazy load filters on); matching the two names the relation,
and the suggestion names the attribute to prefetch. Where the ORM's loader named the
relation itself (SQLAlchemy's lazy loads), no matching is needed, and a chain of them
(``article.author.profile``) is advised as one chained option.

Advice never asks for what the code already does: a relation the scope loaded eagerly
and then queried again is advised to be read from what was loaded; loads an ORM
operation makes by design (a merge, a refresh, a cascade) are advised at that operation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from poolwatch.events import BULK_WRITE, DUPLICATE, NPLUSONE, SLOW_QUERY
from poolwatch.queries.detect import Evidence

__all__ = [
    "FORWARD",
    "MANY_TO_MANY",
    "REVERSE",
    "Relation",
    "example_advice",
    "filtered_column",
    "relation_named",
    "suggest",
]

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


def _per_value(table: str, column: str, orm: str | None, relations_known: bool) -> str:
    """Advice for a loop of lookups by a column no known relation filters on: one query
    per value (tag names of a request, ids of a list), not per row of a relation."""
    if orm == TORTOISE:
        at_once = f"`<Model>.filter({column}__in=values)`"
        loader = '`prefetch_related("<relation>")`'
    else:
        at_once = f"`select(<Model>).where(<Model>.{column}.in_(values))`"
        loader = "`selectinload(<Model.relationship>)`"
    text = (
        f"The same query runs once per value of {table}.{column}, from a loop: select the "
        f"rows for all the values in one query before it, {at_once}, and look each one up "
        "in a dict"
    )
    if relations_known:  # the models' relations are known, and none filters on it
        return text + "."
    return (
        f"{text}; if they are the rows of a relation, load it with the query that fetched "
        f"its parents ({loader})."
    )


def relation_named(name: str, relations: Sequence[Relation]) -> Relation | None:
    """The relation ``Model.attribute`` among ``relations``, if there."""
    model, _, attribute = name.partition(".")
    return next((r for r in relations if r.model == model and r.attribute == attribute), None)


def _chained(chain: Sequence[Relation]) -> str:
    """The one option that loads a chain of relations, outermost first."""
    if chain[0].orm == TORTOISE:
        nested = "__".join(r.attribute for r in chain)
        return f'`{chain[0].model}.all().prefetch_related("{nested}")`'
    if len(chain) == 1:
        return _prefetch(chain[0])
    text = "`" + ".".join(f"selectinload({r.model}.{r.attribute})" for r in chain) + "`"
    if all(r.kind == FORWARD for r in chain):
        text += " (or `joinedload` at each step: one JOIN instead of one query per step)"
    return text


def _known(evidence: Evidence, relations: Sequence[Relation]) -> list[Relation]:
    """The relations the loader named, described, in chain order; [] if any is unknown."""
    found = [relation_named(name, relations) for name in evidence.relations]
    return [r for r in found if r is not None] if all(found) else []


def _reread(relation: Relation) -> str:
    """Advice for a relation loaded eagerly and then queried again per row."""
    row = relation.model.lower()
    if relation.orm == TORTOISE:
        return (
            f"{relation.model}.{relation.attribute} is prefetched already by the query that "
            f"fetched the rows, and each row queries it again: iterate the prefetched "
            f"`{row}.{relation.attribute}` (or `{row}.{relation.attribute}.related_objects`) "
            f"instead of calling `.all()`, `.filter()` or `.count()` on it, which run a new "
            "query."
        )
    return (
        f"{relation.model}.{relation.attribute} is loaded already by the eager load of the "
        f"query that fetched the rows, and each row queries it again: read "
        f"`{row}.{relation.attribute}` instead of selecting its rows anew."
    )


def _rooted(
    chain: Sequence[Relation], loaded: Sequence[str], relations: Sequence[Relation]
) -> list[Relation]:
    """``chain`` with the eager loads that lead to its first model put in front: an option
    for a related model's relation must start where the query's own options do
    (``selectinload(Hero.team).selectinload(Team.heroes)``, not ``selectinload(Team.heroes)``
    on a query of heroes, which SQLAlchemy refuses)."""
    rooted = list(chain)
    for _ in range(len(loaded)):
        head = rooted[0]
        before = next(
            (
                r
                for r in relations
                if r.orm == head.orm
                and r.target == head.model
                and f"{r.model}.{r.attribute}" in loaded
                and r not in rooted
            ),
            None,
        )
        if before is None:
            break
        rooted.insert(0, before)
    return rooted


def _load_chain(
    chain: Sequence[Relation], evidence: Evidence, relations: Sequence[Relation]
) -> str:
    """What to write to load ``chain`` with the query: one option, extending the eager
    load the query has already where the chain starts below it."""
    rooted = _rooted(chain, evidence.loaded, relations)
    option = _chained(rooted)
    if len(rooted) == len(chain):
        return ("use " if chain[0].orm == TORTOISE else "add ") + option
    there = ", ".join(f"{r.model}.{r.attribute}" for r in rooted[: len(rooted) - len(chain)])
    return f"extend the eager load of {there} it has already: {option}"


def _serialized(
    evidence: Evidence, chain: Sequence[Relation], relations: Sequence[Relation]
) -> str:
    endpoint = evidence.endpoint
    if chain:
        walked = ", then ".join(f"{r.model}.{r.attribute}" for r in chain)
        return (
            f"FastAPI serialized the response of `{endpoint}` after it returned, and its "
            f"response model read {walked} for each row, one query each: for the "
            f"endpoint's query, {_load_chain(chain, evidence, relations)}; or leave the "
            "relation out of the response model."
        )
    return (
        f"FastAPI serialized the response of `{endpoint}` after it returned, and its "
        "response model read a relation for each row, one query each: load that relation "
        "with the endpoint's query (an eager load), or leave it out of the response model."
    )


# The ORM operations whose calls in a loop make a finding, and what to do instead
# (Tortoise's fetch_related is a relation loader: its advice names the relation).
_OPERATIONS = {
    "Session.merge": (
        "Each `Session.merge()` loads the object it merges by primary key (and what its "
        "cascade='merge' relationships reach) unless the session holds it already: one "
        "SELECT per merged row here. Load the rows first with one query "
        "(`select(Model).where(Model.id.in_(ids))`) so that merge finds them in the "
        "session, or pass `load=False` for objects known to match the database."
    ),
    "Session.refresh": (
        "Each `Session.refresh()` reloads its object with a SELECT of its own: select "
        "the rows again in one query with `.execution_options(populate_existing=True)`, "
        "or skip the refresh where the object is current (`expire_on_commit=False`)."
    ),
    "Session.delete": (
        "Each `Session.delete()` loads the collections its cascade will delete, one "
        "object at a time: delete the rows in one statement "
        "(`delete(Model).where(Model.id.in_(ids))`), with `ON DELETE CASCADE` and "
        "`passive_deletes=True` on the relationship, or load those collections with the "
        "rows (`selectinload`)."
    ),
}
_OPERATIONS["Session.merge_all"] = _OPERATIONS["Session.merge"]
_OPERATIONS["Session.delete_all"] = _OPERATIONS["Session.delete"]


def _matched(
    fingerprint: str,
    relations: Sequence[Relation],
    orm: str | None,
    by_relation: bool,
    loaded: Sequence[str] = (),
) -> str:
    matched = [r for r in _matches(fingerprint, relations) if orm is None or r.orm == orm]
    reread = [r for r in matched if f"{r.model}.{r.attribute}" in loaded]
    if reread:
        return _reread(reread[0])
    # Rows filtered by a relation's foreign key are that relation's rows, however the query
    # was written. A filter on a primary key is any lookup by id (session.get(User, id)):
    # it is a relation's only if the ORM's relation loader ran it.
    found = [r for r in matched if by_relation or r.kind != FORWARD]
    if not found:
        keyed = next((r for r in matched if r.kind == FORWARD), None)
        if keyed is None:
            where = filtered_column(fingerprint)
            if where is None:
                return _GENERIC_NPLUSONE.get(orm or "", _ANY_NPLUSONE)
            return _per_value(*where, orm, relations_known=any(r.orm == orm for r in relations))
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


def _nplusone(evidence: Evidence, relations: Sequence[Relation], orm: str | None) -> str:
    operation = _OPERATIONS.get(evidence.orm_call)
    if operation is not None:
        return operation
    chain = _known(evidence, relations)
    if evidence.endpoint:
        return _serialized(evidence, chain, relations)
    reread = [r for r in chain if f"{r.model}.{r.attribute}" in evidence.loaded]
    if reread:
        return _reread(reread[0])
    if chain:
        return (
            f"Load {chain[-1].target} with the rows that need it: for the query that fetched "
            f"them, {_load_chain(chain, evidence, relations)}."
        )
    return _matched(evidence.fingerprint, relations, orm, evidence.by_relation, evidence.loaded)


def example_advice(kind: str, fingerprint: str, relations: Sequence[Relation], orm: str) -> str:
    """:func:`suggest` for a finding known only by its kind and fingerprint: how the
    reference words each kind's advice for an example, per ORM."""
    return suggest(Evidence(kind, fingerprint, ""), relations, orm)


def suggest(evidence: Evidence, relations: Sequence[Relation], orm: str | None = None) -> str:
    """One sentence or two saying what to change for the finding ``evidence`` describes.

    A relation is named when the ORM's loader named it, or when ``evidence.by_relation``
    (the ORM's relation loader ran the statements) and one of ``relations`` of ``orm``
    loads this shape.
    """
    kind = evidence.kind
    if kind == NPLUSONE:
        return _nplusone(evidence, relations, orm)
    if kind == DUPLICATE:
        return (
            "The same query with the same parameters ran more than once in this request or scope, "
            "with no write or commit in between: keep the first result and reuse it (or "
            "hoist the query out of the loop)."
        )
    if kind == BULK_WRITE:
        return _bulk_write(evidence.fingerprint, orm)
    if kind == SLOW_QUERY:
        return (
            "Look at its plan (EXPLAIN ANALYZE): an index on the filtered or joined "
            "columns, or fewer rows fetched, is the usual fix."
        )
    return ""
