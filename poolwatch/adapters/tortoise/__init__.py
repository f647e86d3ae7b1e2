"""The Tortoise-ORM adapter: every connection of every backend, observed by wrapping
Tortoise's clients in one place, reversibly, per known version layout
(:mod:`.layouts`), reported to a :class:`~poolwatch.events.PoolEvents`.

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.

One concept per module:

* :mod:`.instrumentation`: :class:`TortoiseInstrumentation`, which decides what is wrapped
  on which version, installs and removes it, and finds a client's pool (registration).
* :mod:`.statements`: the ``execute_*`` wrappers, timing the outermost statement.
* :mod:`.checkouts`: the context managers' entry and exit, as acquire and release; the
  give-back of a failed entry; autosize's gate; the psycopg pool's cancellation guards.
* :mod:`.transactions`: how a transaction block ends, and the ``rollback`` wrapper.
* :mod:`.pool`: the driver's pool read at scrape time, and its connections opened,
  tagged and timed.
* :mod:`.budget`: the PostgreSQL server's connection limits, for autosize's budget.
* :mod:`.layouts`: the data, where each Tortoise version keeps what poolwatch touches;
  :mod:`.seams`: the classes of that layout found in the installed Tortoise;
  :mod:`.entry` and :mod:`.sqlite_entry`: what each entry took and how to give it back.
* :mod:`.asyncpg_return`: the moment asyncpg has a connection back, for permits.
* :mod:`.relations`: the models' relations, for fix suggestions.

The wrappers are closures made by module-level factories (``wrap_query(original,
events_of)``), not methods of one class: each takes what it uses explicitly, so a module
can be read without the instrumentation's state in mind. The checkout wrappers use five
pieces of it and take the instrumentation as a small Protocol
(:class:`.checkouts.Instrumentation`) instead of five arguments. A factory binds what its
wrapper needs once, when Tortoise is wrapped, so a statement or checkout makes no more
calls than it did when the wrappers were methods' closures.

Private attributes of other libraries, and the one function or class touching each
(every module's docstring says the same for its own): Tortoise's client ``_pool``,
``_lock``, ``_connection`` for the gauges, :func:`read_pool_state`; SQLite's
``_connection`` at its first open, :mod:`.pool`'s ``create_connection`` wrapper and
``discard_half_open``; aiosqlite's ``_stop_running``, ``_close_half_open``; the context
managers' and transaction wrappers' attributes and the ``_parent`` chain, the
:class:`~.entry.Entry` subclasses, ``PoolInit`` and ``root_client`` in :mod:`.entry` and
:mod:`.sqlite_entry`, on the versions :mod:`.layouts` names; asyncpg's
``PoolConnectionHolder._release`` and a connection's ``_holder``,
:class:`~.asyncpg_return.ReturnHook`; ``Model._meta``, :func:`tortoise_relations`.
Methods of Tortoise's classes are replaced only by :class:`TortoiseInstrumentation`.
"""

from __future__ import annotations

from poolwatch.adapters.tortoise.budget import postgres_limits_reader
from poolwatch.adapters.tortoise.instrumentation import TortoiseInstrumentation
from poolwatch.adapters.tortoise.layouts import (
    LAYOUTS,
    SUPPORTED,
    Layout,
    layout_for,
    tortoise_version,
)
from poolwatch.adapters.tortoise.pool import open_connections, read_pool_state, tag_pool_parameters
from poolwatch.adapters.tortoise.relations import tortoise_relations
from poolwatch.adapters.tortoise.seams import resolve

__all__ = [
    "LAYOUTS",
    "SUPPORTED",
    "Layout",
    "TortoiseInstrumentation",
    "layout_for",
    "open_connections",
    "postgres_limits_reader",
    "read_pool_state",
    "resolve",
    "tag_pool_parameters",
    "tortoise_relations",
    "tortoise_version",
]
