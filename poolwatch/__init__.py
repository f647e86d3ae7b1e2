"""poolwatch: connection-pool and query metrics for Python web apps.

::

    from poolwatch import PoolWatch

    watch = PoolWatch()
    watch.instrument_app(app)
    watch.instrument_tortoise()

Importing this package does nothing by itself: no registry, no task, no patch.
"""

from __future__ import annotations

from poolwatch.agent import PoolWatch
from poolwatch.config import Settings
from poolwatch.context import current_route, scope
from poolwatch.errors import ConfigError, PoolWatchError
from poolwatch.events import PoolEvents, PoolProbe, PoolState

__all__ = [
    "ConfigError",
    "PoolEvents",
    "PoolProbe",
    "PoolState",
    "PoolWatch",
    "PoolWatchError",
    "Settings",
    "__version__",
    "current_route",
    "scope",
]

__version__ = "0.1.0"
