"""The agent: the one place that wires settings, metrics, adapters and middleware.

:class:`PoolWatch` is made of one class per thing it wires, each in its own module:

* ``core``: what all of them share (settings, registry, recorder, pools, undo);
* ``serving``: the middleware, an app's own ``/metrics``, the endpoints, a port of their own;
* ``sqlalchemy_engines``: SQLAlchemy engines by pool name;
* ``tortoise_clients``: Tortoise-ORM's connections.

Only this package imports an adapter (``tests/test_architecture.py`` holds it to that);
each ORM's adapter is imported when the app instruments that ORM, not before.
"""

from __future__ import annotations

from poolwatch.agent.serving import Serving
from poolwatch.agent.sqlalchemy_engines import SQLAlchemyWiring
from poolwatch.agent.tortoise_clients import TortoiseWiring

__all__ = ["PoolWatch"]


class PoolWatch(Serving, SQLAlchemyWiring, TortoiseWiring):
    """Connection-pool and query metrics for one application.

    ::

        watch = PoolWatch()                      # POOLWATCH_* environment, then arguments
        watch.instrument_app(app)                # ASGI middleware and GET /metrics
        watch.instrument_tortoise()              # every Tortoise connection
        watch.instrument_sqlalchemy(engine, pool="main")
        ...
        watch.uninstrument()                     # undo all of it

    Each PoolWatch owns a ``CollectorRegistry`` (unless ``registry=`` or
    ``use_global_registry=True`` says otherwise), so two apps in one process, and tests,
    do not collide.
    """
