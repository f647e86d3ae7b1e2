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
from poolwatch.context import allow_nplusone, current_route, scope
from poolwatch.errors import (
    ConfigError,
    NPlusOneError,
    NPlusOneWarning,
    PoolTimeoutError,
    PoolWatchError,
)
from poolwatch.events import Finding, PoolEvents, PoolProbe, PoolState, QueryEvent
from poolwatch.sizing.settings import Autosize

__all__ = [
    "Autosize",
    "ConfigError",
    "Finding",
    "NPlusOneError",
    "NPlusOneWarning",
    "PoolEvents",
    "PoolProbe",
    "PoolState",
    "PoolTimeoutError",
    "PoolWatch",
    "PoolWatchError",
    "QueryEvent",
    "Settings",
    "__version__",
    "allow_nplusone",
    "current_route",
    "scope",
]

__version__ = "0.1.0"
