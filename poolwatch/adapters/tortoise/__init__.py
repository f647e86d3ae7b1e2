"""The Tortoise-ORM adapter: every connection of every backend, observed by wrapping
Tortoise's clients in one place, reversibly, per known version layout
(:mod:`.entry`), reported to a :class:`~poolwatch.events.PoolEvents`.

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.
"""

from __future__ import annotations

from poolwatch.adapters.tortoise.instrumentation import (
    TortoiseInstrumentation,
    open_connections,
    postgres_limits_reader,
    read_pool_state,
    tag_pool_parameters,
)
from poolwatch.adapters.tortoise.layouts import (
    LAYOUTS,
    SUPPORTED,
    Layout,
    layout_for,
    tortoise_version,
)
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
