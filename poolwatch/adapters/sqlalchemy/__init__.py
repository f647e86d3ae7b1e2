"""The SQLAlchemy adapter: one ``Engine`` or ``AsyncEngine``, observed through the
dialect and pool it already has, reported to a :class:`~poolwatch.events.PoolEvents`.

Never imports :mod:`poolwatch.exposition` or the agent; the agent wires it.
"""
