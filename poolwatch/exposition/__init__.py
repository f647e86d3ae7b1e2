"""Exposition: the metrics, and everything that serves them or feeds them per request.

* :mod:`.metrics`: every metric's definition (names, types, labels are a contract), with
  :mod:`.histogram`; :mod:`.collectors`: the scrape-time reads of each pool;
* :mod:`.middleware` (the plain ASGI middleware), :mod:`.routes` (route templates) and
  :mod:`.tracing` (trace ids for exemplars);
* :mod:`.endpoints` (``/metrics`` and the findings, with authentication and gzip),
  :mod:`.server` (a port of its own) and :mod:`.multiprocess` (gunicorn workers);
* :mod:`.assets`: the dashboards and rules shipped in the wheel.

May import the core and :mod:`poolwatch.queries`; never an adapter, :mod:`poolwatch.sizing`
or the agent.
"""
