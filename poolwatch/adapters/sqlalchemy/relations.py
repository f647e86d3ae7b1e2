"""SQLAlchemy's ORM relationships, described for fix suggestions
(see :mod:`poolwatch.queries.hints`)."""

from __future__ import annotations

from typing import Any

from poolwatch.queries.hints import FORWARD, MANY_TO_MANY, REVERSE, SQLALCHEMY, Relation

__all__ = ["sqlalchemy_relations"]

_KINDS = {"MANYTOONE": FORWARD, "ONETOMANY": REVERSE, "MANYTOMANY": MANY_TO_MANY}


def sqlalchemy_relations() -> list[Relation]:
    """Every ``relationship()`` of every mapped class in the process.

    The set of registries is private (``mapperlib._all_registries``, the list
    ``configure_mappers()`` itself walks); each registry's ``mappers`` is public.
    """
    from sqlalchemy.orm import mapperlib

    all_registries = getattr(mapperlib, "_all_registries", None)
    if all_registries is None:  # a SQLAlchemy that moved it: suggestions turn generic
        return []
    relations: list[Relation] = []
    for registry in list(all_registries()):
        for mapper in list(registry.mappers):
            for relationship in list(mapper.relationships):
                relation = _describe(relationship)
                if relation is not None:
                    relations.append(relation)
    return relations


def _describe(relationship: Any) -> Relation | None:
    pairs = relationship.local_remote_pairs
    if not pairs:
        return None
    # The first pair's remote column is what the lazy load compares with a value: the
    # foreign key (one-to-many), the target's key (many-to-one), or the association
    # table's column (many-to-many).
    remote = pairs[0][1]
    table = getattr(remote.table, "name", None)
    if not isinstance(table, str):
        return None
    return Relation(
        SQLALCHEMY,
        relationship.parent.class_.__name__,
        relationship.key,
        table.lower(),
        str(remote.name).lower(),
        _KINDS.get(relationship.direction.name, REVERSE),
        relationship.mapper.class_.__name__,
    )
