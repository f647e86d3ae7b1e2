"""The SQLAlchemy adapter: one ``Engine`` or ``AsyncEngine``, observed through the
dialect and pool it already has, reported to a :class:`~poolwatch.events.PoolEvents`.

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.
"""

from __future__ import annotations

from poolwatch.adapters.sqlalchemy.instrumentation import (
    SQLAlchemyInstrumentation,
    pool_capacity,
    postgres_limits_reader,
    read_pool_state,
    tag_parameters,
    taggable,
)
from poolwatch.adapters.sqlalchemy.relations import sqlalchemy_relations

__all__ = [
    "SQLAlchemyInstrumentation",
    "pool_capacity",
    "postgres_limits_reader",
    "read_pool_state",
    "sqlalchemy_relations",
    "tag_parameters",
    "taggable",
]
