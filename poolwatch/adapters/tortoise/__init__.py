"""The Tortoise-ORM adapter: every connection of every backend, observed by wrapping
Tortoise's clients in one place, reversibly, per known version layout
(:mod:`.entry`), reported to a :class:`~poolwatch.events.PoolEvents`.

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.
"""
