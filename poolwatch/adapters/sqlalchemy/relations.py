"""SQLAlchemy's ORM relationships, described for fix suggestions
(see :mod:`poolwatch.queries.hints`), and the relation a lazy load loads."""

from __future__ import annotations

from types import FrameType
from typing import Any

from poolwatch.queries.hints import FORWARD, MANY_TO_MANY, REVERSE, SQLALCHEMY, Relation

__all__ = ["LAZY_LOADER_MODULE", "lazy_loaded_relation", "sqlalchemy_relations"]

LAZY_LOADER_MODULE = "sqlalchemy.orm.strategies"
"""The module of the lazy loader frames :func:`lazy_loaded_relation` names."""

# id(loader strategy) -> (strategy, "Model.attribute" or ""): one per relationship, for
# the process's life (mappers live as long).
_names: dict[int, tuple[Any, str]] = {}
_MAX_NAMES = 4096

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


def lazy_loaded_relation(frame: FrameType) -> str | None:
    """``Article.author``: the relationship a lazy loader frame loads (its
    ``LazyLoader._load_for_state`` or ``_emit_lazyload``); ``None`` for a deferred
    column's load, which names no relationship.

    The strategy is the frame's ``self``; its ``parent_property`` is the relationship.
    """
    strategy = frame.f_locals.get("self")
    known = _names.get(id(strategy))
    if known is not None and known[0] is strategy:
        return known[1] or None
    prop = getattr(strategy, "parent_property", None)
    name = ""
    if prop is not None and hasattr(prop, "direction"):  # a relationship, not a column
        name = f"{prop.parent.class_.__name__}.{prop.key}"
    if len(_names) >= _MAX_NAMES:
        _names.clear()
    _names[id(strategy)] = (strategy, name)
    return name or None
