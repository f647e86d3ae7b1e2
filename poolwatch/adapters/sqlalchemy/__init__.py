"""The SQLAlchemy adapter: one ``Engine`` or ``AsyncEngine``, observed through the
dialect and pool it already has, reported to a :class:`~poolwatch.events.PoolEvents`.

Each thing is observed at one seam, chosen for being cheap and, where SQLAlchemy offers
one, public; one module each:

* :mod:`.statements`: the dialect's ``do_execute*``, timed (with the measured cost per
  statement, and why no engine event is used);
* :mod:`.transactions`: the dialect's ``do_begin``, ``do_commit`` and ``do_rollback*``,
  and why a transaction ended;
* :mod:`.pool`: the pool's state, read at scrape time, and its checkouts, new connections,
  permits and ``recreate()``;
* :mod:`.budget`: what autosize's database budget needs (the server's limits, tagged
  connections);
* :mod:`.instrumentation`: :class:`SQLAlchemyInstrumentation`, which installs the hooks
  and removes them, and the one method touching SQLAlchemy's private attributes
  (``_hook_pool``; see that module);
* :mod:`.relations`: the ORM's relationships, for fix suggestions;
* :mod:`.eager_options`: the eager loads a statement's loader options ask for;
* :mod:`.eager`: whether each relation loaded eagerly in a scope is read
  (``unused_eager_load``).

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.
"""

from __future__ import annotations

from poolwatch.adapters.sqlalchemy.budget import postgres_limits_reader, tag_parameters, taggable
from poolwatch.adapters.sqlalchemy.instrumentation import SQLAlchemyInstrumentation
from poolwatch.adapters.sqlalchemy.pool import pool_capacity, read_pool_state
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
