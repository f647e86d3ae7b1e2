"""One pool's own account, from the events its adapter reports.

* :mod:`.observer`: :class:`~.observer.PoolObserver`, the :class:`~poolwatch.events.PoolEvents`
  of one pool: checkouts, waits, statements and transactions, as metric observations;
* :mod:`.checkout`: one connection out of the pool, and whether it was held across a
  wait; :mod:`.held_idle` makes that a finding;
* :mod:`.reader`: what the application's code between two statements waits on, read
  from its source (:mod:`.regions`: the calls between two lines; :mod:`.source`: what
  the names stand for; :mod:`.waits`: which calls are waits);
* :mod:`.holders`: who holds the connections (route, line, since when);
* :mod:`.reconcile`: the drift between poolwatch's count and the driver's;
* :mod:`.leaks`: checkouts held past the leak threshold.

May import the core, :mod:`poolwatch.queries` and the metric definitions of
:mod:`poolwatch.exposition.metrics`; never an adapter, :mod:`poolwatch.sizing` or the agent.
"""
