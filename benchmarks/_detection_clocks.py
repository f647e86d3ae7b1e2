"""Clocks around everything N+1 detection runs per statement, for :mod:`detection`.

What is timed, in three sums (seconds, added up until :func:`reset`):

* ``recorder``: the recorder's own calls, per statement (``record``) and per scope
  (``scope_closed``: judging, the findings made and reported);
* ``eager``: the eager-load hooks: SQLAlchemy's ``do_orm_execute`` listener and what a
  row loaded or a watched relation read notes (``_note``); Tortoise's ``QuerySet._execute``
  wrapper (up to handing back the query's coroutine), the tracking of what a query with
  an eager load returned, and what a watched relation read notes (``_note_read``);
* ``sampling``: the held-idle bookkeeping's CPU-time samples (``thread_usage``: a
  ``getrusage`` at a checkout and after each statement while detection is on).

The hooks run in counting mode too (they are installed with the instrumentation and ask
whether the scope is judged), so their time is summed whatever the setup.

Each call is timed on the wall clock (a CPU-time clock is a system call, as slow as what
it would time). On a shared machine a call is now and then descheduled for a timeslice,
milliseconds, which in a sum of microsecond calls outweighs all the rest: a call that took
over :data:`DESCHEDULED` and over ten times the median of its function's calls counts as
that median (how many did is reported). Garbage collections, tens of microseconds, stay
in the sum of the call they fell in.

The clocks are put on poolwatch's private names; a name that moved fails here, loudly,
rather than measuring nothing. Their frames stand between the ORM and poolwatch's hooks,
so the PoolWatch setups list this module in ``ignore_modules``: a library's frames,
never a call site.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from time import perf_counter
from typing import Any

import poolwatch.adapters.sqlalchemy.eager as sqlalchemy_eager
import poolwatch.adapters.tortoise.eager as tortoise_eager
import poolwatch.adapters.tortoise.instrumentation as tortoise_instrumentation
from poolwatch import PoolWatch
from poolwatch.pools import observer

__all__ = ["DESCHEDULED", "GROUPS", "MODULE", "clocked", "reset", "time_recorder"]

MODULE = __name__
"""This module's name, for ``ignore_modules``."""

GROUPS = ("recorder", "eager", "sampling")
DESCHEDULED = 250e-6
"""A call longer than this (and than ten times its function's median) was descheduled."""

# (group, function) -> the durations of its calls since the last reset()
_calls: dict[tuple[str, str], list[float]] = {}


def reset() -> dict[str, float]:
    """The seconds spent per group since the last call, descheduled calls counted at
    their function's median (``"trimmed"``: how many were); and start again."""
    sums = dict.fromkeys(GROUPS, 0.0)
    sums["trimmed"] = 0
    for (group, _), durations in _calls.items():
        if not durations:
            continue
        median = statistics.median(durations)
        limit = max(DESCHEDULED, 10 * median)
        for duration in durations:
            if duration > limit:
                sums["trimmed"] += 1
                duration = median  # noqa: PLW2901 - counted as a call of its usual length
            sums[group] += duration
        durations.clear()
    return sums


def _clock(function: Callable[..., Any], into: str) -> Callable[..., Any]:
    durations = _calls.setdefault((into, function.__qualname__), [])

    @wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            durations.append(perf_counter() - started)

    return timed


def _wrap_execute(original: Callable[..., Any], watch: Callable[[], Any]) -> Any:
    # The wrapper the instrumentation installs, with a clock around each call.
    return _clock(_real_wrap_execute(original, watch), "eager")


_real_wrap_execute = tortoise_instrumentation.wrap_execute


def _replace(owner: Any, name: str, into: str, undo: list[Callable[[], None]]) -> None:
    original = getattr(owner, name)  # AttributeError: poolwatch moved it; update the clocks
    setattr(owner, name, _clock(original, into))
    undo.append(lambda: setattr(owner, name, original))


@contextmanager
def clocked() -> Iterator[None]:
    """Put the clocks on the eager-load hooks and the held-idle sampling (for every
    PoolWatch instrumented inside the block) and take them off after it."""
    undo: list[Callable[[], None]] = []
    try:
        _replace(sqlalchemy_eager.EagerHooks, "_on_execute", "eager", undo)
        _replace(sqlalchemy_eager, "_note", "eager", undo)
        _replace(tortoise_eager._Hooks, "track", "eager", undo)
        _replace(tortoise_eager, "_note_read", "eager", undo)
        _replace(observer, "thread_usage", "sampling", undo)
        tortoise_instrumentation.wrap_execute = _wrap_execute
        undo.append(lambda: setattr(tortoise_instrumentation, "wrap_execute", _real_wrap_execute))
        yield
    finally:
        for step in reversed(undo):
            step()


def time_recorder(watch: PoolWatch) -> None:
    """Put a clock around ``watch``'s recorder calls (before any pool is made)."""
    recorder = watch.recorder
    # Instance attributes: PoolObserver and the agent call through the instance.
    recorder.record = _clock(recorder.record, "recorder")  # type: ignore[method-assign]
    recorder.scope_closed = _clock(recorder.scope_closed, "recorder")  # type: ignore[method-assign]
