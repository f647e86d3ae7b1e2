"""What a child process forgets after ``fork()``: the parent's checkouts, permits, threads.

gunicorn forks its workers from a master that imported the app (and wired poolwatch);
``multiprocessing`` forks from wherever it is called. The child inherits poolwatch's
bookkeeping as it was at that instant: checkouts the parent held, autosize permits it had
out, a maintenance thread that does not exist in the child, locks other parent threads
held. Left as they are, the child would count connections it never took, for good (its
drift stuck below zero, its permits short). So each holder of such state registers here
and starts afresh in the child. Registering is lazy (nothing happens at import), and
objects are held weakly.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "forget_in_child"]

logger = logging.getLogger("poolwatch")


class ForkAware(Protocol):
    """An object whose state belongs to the process that made it."""

    def after_fork(self) -> None:
        """Called in the child, right after ``fork()``: drop the parent's state."""
        ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_registering = threading.Lock()
_hooked: list[bool] = []  # not empty once the hook is registered (once per process tree)


def forget_in_child(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every child process forked from now on."""
    _objects.add(obj)
    if _hooked:
        return
    with _registering:
        if not _hooked:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooked.append(True)


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        try:
            obj.after_fork()
        except Exception:  # a fork must never fail because of poolwatch
            logger.exception("poolwatch: resetting %r after fork failed", obj)
