"""Clocks around everything N+1 detection runs per statement, for :mod:`detection`.

What is timed, in three sums (seconds, added up until :func:`reset`):

* ``recorder``: the recorder's own calls, per statement (``record``) and per scope
  (``scope_closed``: judging, the findings made and reported);
* ``eager``: the eager-load hooks: SQLAlchemy's ``do_orm_execute`` listener, what a row
  loaded notes (``_note``) and a read of a watched relation (the whole ``__get__``, the
  ORM's own part of it included); Tortoise's ``QuerySet._execute`` wrapper (up to handing
  back the query's coroutine), the tracking of what a query with an eager load returned,
  and a read of a watched relation (the whole property getter, Tortoise's own included);
  on both, the undoing of what a scope watched (``ScopeEagerLoads.release``). A clocked
  call made inside another is the outer one's time, not counted twice. What SQLAlchemy's
  event dispatch adds around the listeners is not clocked (only end to end);
* ``walks``: the held-idle bookkeeping's call-path walks (``HeldIdleReport.call_path``:
  the line that took a connection, and the one that gave it back where the code after
  the last statement may wait), which run while detection is on;
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

A clock costs something itself (the wrapper's call, two clock reads), inside the time it
reports. Every :data:`CALIBRATE` th call of a clocked function is followed by a call of a
C function that does nothing, timed alike with the same arguments, in the same place: the
median of those, per function, is taken off each of its calls. The clocks'
cost to the end-to-end figures is avoided by running the clocked setups apart.
"""

from __future__ import annotations

import itertools
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
from poolwatch.pools import held_idle, observer
from poolwatch.queries import eager as scope_eager

__all__ = ["CALIBRATE", "DESCHEDULED", "GROUPS", "MODULE", "clocked", "reset", "time_recorder"]

MODULE = __name__
"""This module's name, for ``ignore_modules``."""

GROUPS = ("recorder", "eager", "walks", "sampling")
DESCHEDULED = 250e-6
"""A call longer than this (and than ten times its function's median) was descheduled."""
CALIBRATE = 8
"""One call in this many of each clocked function is followed by a no-op's, timed alike."""

# (group, function) -> the durations of its calls since the last reset(), and of the
# no-op calls that measured its clock
_calls: dict[tuple[str, str], list[float]] = {}
_overheads: dict[tuple[str, str], list[float]] = {}


def reset() -> dict[str, float]:
    """The seconds spent per group since the last call, descheduled calls counted at
    their function's median (``"trimmed"``: how many were) and each call's clock cost
    taken off (``"clock"``: the sum taken off); and start again."""
    sums = dict.fromkeys(GROUPS, 0.0)
    sums["trimmed"] = sums["clock"] = 0.0
    for name, durations in _calls.items():
        overheads = _overheads[name]
        if not durations:
            continue
        median = statistics.median(durations)
        limit = max(DESCHEDULED, 10 * median)
        clock = min(statistics.median(overheads), median) if overheads else 0.0
        spent = 0.0
        for duration in durations:
            if duration > limit:
                sums["trimmed"] += 1
                duration = median  # noqa: PLW2901 - counted as a call of its usual length
            spent += duration
        sums[name[0]] += spent - clock * len(durations)
        sums["clock"] += clock * len(durations)
        durations.clear()
        overheads.clear()
    return sums


# What the no-op is: a C function taking any arguments and ignoring them, so that what is
# taken off is the clock's cost and the call's, not a Python function's frame, which the
# real call has too and is the hook's own cost.
_noop: Callable[..., object] = "".format


_inside = [False]  # a clocked call is running: calls made inside it are its time


def _clock(function: Callable[..., Any], into: str) -> Callable[..., Any]:
    name = (into, function.__qualname__)
    durations = _calls.setdefault(name, [])
    overheads = _overheads.setdefault(name, [])
    calls = itertools.count(1)

    @wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if _inside[0]:
            return function(*args, **kwargs)
        _inside[0] = True
        started = perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            durations.append(perf_counter() - started)
            _inside[0] = False
            if next(calls) % CALIBRATE == 0:
                started = perf_counter()
                try:
                    _noop(*args, **kwargs)
                finally:
                    overheads.append(perf_counter() - started)

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
        _replace(sqlalchemy_eager._WatchedAttribute, "__get__", "eager", undo)
        _replace(tortoise_eager._Hooks, "track", "eager", undo)
        _replace(tortoise_eager, "_note_read", "eager", undo)
        _replace(scope_eager.ScopeEagerLoads, "release", "eager", undo)
        _replace(observer, "thread_usage", "sampling", undo)
        _replace(held_idle.HeldIdleReport, "call_path", "walks", undo)
        real_property = tortoise_eager._watched_property
        tortoise_eager._watched_property = _clocked_property(real_property)  # type: ignore[assignment]
        undo.append(lambda: setattr(tortoise_eager, "_watched_property", real_property))
        tortoise_instrumentation.wrap_execute = _wrap_execute
        undo.append(lambda: setattr(tortoise_instrumentation, "wrap_execute", _real_wrap_execute))
        yield
    finally:
        for step in reversed(undo):
            step()


def _clocked_property(make: Callable[..., property]) -> Callable[..., property]:
    # The property Tortoise's watched relations get, with a clock around its getter.
    def clocked(*args: Any, **kwargs: Any) -> property:
        made = make(*args, **kwargs)
        getter = _clock(made.fget, "eager")  # type: ignore[arg-type]
        return property(getter, made.fset, made.fdel, made.__doc__)

    return clocked


def time_recorder(watch: PoolWatch) -> None:
    """Put a clock around ``watch``'s recorder calls (before any pool is made)."""
    recorder = watch.recorder
    # Instance attributes: PoolObserver and the agent call through the instance.
    recorder.record = _clock(recorder.record, "recorder")  # type: ignore[method-assign]
    recorder.scope_closed = _clock(recorder.scope_closed, "recorder")  # type: ignore[method-assign]
