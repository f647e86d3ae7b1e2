"""Pool sizing: how many connections a pool may use right now, and the guard at its door.

* :mod:`.controller`: the pure feedback controller (windows in, a limit out; no clock,
  lock or I/O), and :mod:`.budget`: the database's connection budget, shared with peers
  (pure arithmetic on one read of the server);
* :mod:`.settings`: :class:`Autosize`, what a user sets;
* :mod:`.limiter` and :mod:`.gate`: the resizable semaphore and what stands in front of a
  pool's acquire (the acquire timeout, :mod:`.deadline`, included);
* :mod:`.sizer` (one pool's loop: sample, decide, apply), :mod:`.maintenance` (the thread
  that drives every sizer and reads the budgets) and :mod:`.guards` (their wiring per
  PoolWatch); :mod:`.appname` tags a pool's connections so peers can see each other.

May import the core (``poolwatch.errors``, ``events``, ``context``, ``safety``,
``forksafe``), :mod:`poolwatch.pools` and, in :mod:`.guards` only, the metric
definitions of :mod:`poolwatch.exposition.metrics`; never an adapter or the agent.
``poolwatch.sizing.Tuning`` and the controller's types are importable from here.
"""

from __future__ import annotations

from poolwatch.sizing.controller import Decision, SizeController, Tuning, Window

__all__ = ["Decision", "SizeController", "Tuning", "Window"]
