"""Tortoise-ORM's relations, described for fix suggestions (see :mod:`poolwatch.queries.hints`)."""

from __future__ import annotations

from typing import Any

from poolwatch.queries.hints import FORWARD, MANY_TO_MANY, REVERSE, TORTOISE, Relation

__all__ = ["tortoise_relations"]


def tortoise_relations() -> list[Relation]:
    """Every relation of every model Tortoise knows, empty before ``Tortoise.init``.

    Reads ``Model._meta``: Tortoise has no public API that names the column a relation's
    lazy load filters on (``describe_models`` leaves out the reverse side's column).
    """
    from tortoise import Tortoise

    relations: list[Relation] = []
    apps: Any = Tortoise.apps if Tortoise._inited else None
    for models in (apps or {}).values():
        for model in models.values():
            relations.extend(_model_relations(model))
    return relations


def _model_relations(model: Any) -> list[Relation]:
    meta = model._meta
    name = model.__name__
    found: list[Relation] = []
    for attribute in sorted(meta.fk_fields | meta.o2o_fields):
        field = meta.fields_map[attribute]
        target = field.related_model
        to_field = field.to_field_instance
        column = to_field.source_field or to_field.model_field_name
        table = target._meta.db_table
        found.append(_relation(name, attribute, table, column, kind=FORWARD, target=target))
    for attribute in sorted(meta.backward_fk_fields | meta.backward_o2o_fields):
        field = meta.fields_map[attribute]
        target = field.related_model
        table, column = target._meta.db_table, field.relation_field
        found.append(_relation(name, attribute, table, column, kind=REVERSE, target=target))
    for attribute in sorted(meta.m2m_fields):
        field = meta.fields_map[attribute]
        table, column, target = field.through, field.backward_key, field.related_model
        found.append(_relation(name, attribute, table, column, kind=MANY_TO_MANY, target=target))
    return found


def _relation(
    model: str, attribute: str, table: str, column: str, *, kind: str, target: Any
) -> Relation:
    return Relation(
        TORTOISE, model, attribute, table.lower(), column.lower(), kind, target.__name__
    )
