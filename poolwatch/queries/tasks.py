"""Where the code that waits for the running code is suspended, across task and greenlet
boundaries.

Two places hide the user's frame from a plain stack walk (:mod:`.callsite`), and this
module follows both:

* SQLAlchemy's asyncio layer runs the ORM in a greenlet whose stack ends at the
  greenlet; the awaiting coroutines are on the parent greenlet's stack
  (:func:`waiting_greenlets`).
* ``asyncio.gather(*(Author.get(id=i) for i in ids))`` runs each query in a task that
  holds no user frame at all; the line to blame is where the *awaiting* task waits
  (:func:`awaiting_tasks`, then :func:`suspended_frames`).

Python before 3.14 keeps the link from a task to the one awaiting it only in private
attributes of asyncio: they are read in :func:`awaiting_task` and :func:`_waiter` only,
and every access is guarded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from types import CodeType, CoroutineType, FrameType, MethodType
from typing import Any

__all__ = [
    "awaiting_task",
    "awaiting_tasks",
    "suspended_frames",
    "task_boundary_code",
    "waiting_greenlets",
]

# How far up the awaiting tasks to look (nested gathers) before giving up.
_MAX_TASK_HOPS = 8


def task_boundary_code() -> CodeType:
    """The code of the frame that runs every asyncio task step and callback: below it lie
    the event loop and whatever started it, never the code that issued a query."""
    # asyncio.events.Handle._run calls every task step and callback; it is pure Python
    # even where Task itself is in C.
    return asyncio.events.Handle._run.__code__


def waiting_greenlets() -> Iterator[FrameType]:
    """The frames where the greenlets waiting for the running one are suspended, nearest
    first (none where greenlet is not in use)."""
    module = sys.modules.get("greenlet")
    if module is None:
        return
    current = module.getcurrent()
    while (current := current.parent) is not None:
        if current.gr_frame is not None:
            yield current.gr_frame


def awaiting_tasks() -> Iterator[asyncio.Task[Any]]:
    """The tasks waiting for the running one (a ``gather``'s, a ``TaskGroup``'s, and the
    ones waiting for those), nearest first; none outside a task."""
    try:
        task: asyncio.Task[Any] | None = asyncio.current_task()
    except RuntimeError:
        return
    for _ in range(_MAX_TASK_HOPS):
        if task is None:
            return
        task = awaiting_task(task)
        if task is None:
            return
        yield task


def suspended_frames(task: asyncio.Task[Any]) -> Iterator[FrameType]:
    """The frames ``task`` is suspended in, outermost first: its coroutine, then each
    coroutine or generator it awaits, in order."""
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        # Coroutines first, by type: a getattr that misses raises and catches inside.
        if type(awaitable) is CoroutineType:
            frame, following = awaitable.cr_frame, awaitable.cr_await
        else:
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
            if frame is None:
                break
            following = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
        if frame is None:
            break
        yield frame
        awaitable = following


def awaiting_task(task: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The task that waits for ``task`` through ``gather`` or a ``TaskGroup``, if any.

    Python 3.14 answers this with ``asyncio.capture_call_graph``; before it, the link is
    only in private attributes: the done-callbacks a child carries (gather's closure over
    its outer future, or the TaskGroup's bound method) and the future a parent task waits
    on (``_fut_waiter``). Every access is guarded; on any surprise the answer is "unknown".
    """
    graph = _capture_call_graph
    if graph is not None:
        try:
            captured = graph(task, depth=0)
            for entry in captured.awaited_by if captured is not None else ():
                if isinstance(entry.future, asyncio.Task):
                    return entry.future
        except Exception:
            return None
        return None
    try:
        callbacks = list(getattr(task, "_callbacks", None) or ())
        for callback, _context in callbacks:
            if isinstance(callback, MethodType):  # a TaskGroup's, bound to it
                parent = getattr(callback.__self__, "_parent_task", None)
                if isinstance(parent, asyncio.Task):
                    return parent
            for cell in getattr(callback, "__closure__", None) or ():
                content = cell.cell_contents
                if isinstance(content, asyncio.Future) and not isinstance(content, asyncio.Task):
                    waiter = _waiter(content)
                    if waiter is not None:
                        return waiter
    except Exception:
        return None
    return None


_capture_call_graph = getattr(asyncio, "capture_call_graph", None)  # Python 3.14


def _waiter(future: asyncio.Future[Any]) -> asyncio.Task[Any] | None:
    """The task waiting on ``future`` (its ``_fut_waiter``).

    A task waiting on a future has its wakeup among the future's done-callbacks, bound to
    the task: that one is checked first, and every task only where it is not there (a
    scan of every task, for each statement a gathered child runs, is what this avoids).
    """
    for callback, _context in list(getattr(future, "_callbacks", None) or ()):
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, asyncio.Task) and getattr(owner, "_fut_waiter", None) is future:
            return owner
    for candidate in asyncio.all_tasks():
        if getattr(candidate, "_fut_waiter", None) is future:
            return candidate
    return None
