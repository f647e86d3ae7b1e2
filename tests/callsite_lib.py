"""Stands in for an ORM in the call-site tests (listed in ``ignore_modules`` there)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import greenlet

from poolwatch.queries.callsite import CallSiteFinder, WalkMemo


def query(finder: CallSiteFinder) -> str | None:
    return finder.find()


async def async_query(finder: CallSiteFinder) -> str | None:
    return finder.find()


def in_greenlet(work: Callable[[], str | None]) -> str | None:
    # What SQLAlchemy's asyncio layer does: run sync ORM code in a child greenlet.
    return greenlet.greenlet(work).switch()  # type: ignore[no-any-return]


def query_path(finder: CallSiteFinder) -> tuple[str, str, bool, str] | None:
    return finder.find_path()


def framework(call: Callable[[], object], depth: int) -> object:
    # Library frames between the application's frames, as a framework calling an endpoint.
    if depth == 0:
        return call()
    return framework(call, depth - 1)


async def aframework(call: Callable[[], Awaitable[object]], depth: int) -> object:
    # An async framework's frames between the test and an endpoint coroutine.
    if depth == 0:
        return await call()
    return await aframework(call, depth - 1)


async def async_query_path(finder: CallSiteFinder) -> tuple[str, str, bool, str] | None:
    await asyncio.sleep(0)  # run as a task of its own, as a driver's gathered query would
    return finder.find_path()


async def walk_twice(
    finder: CallSiteFinder, memo: WalkMemo, walked: asyncio.Event, go_on: asyncio.Event
) -> list[str]:
    # A driver's task of its own running two statements, with the scope's walk memo, and
    # whoever awaits it moving on in between.
    first = finder.find_path(memo=memo)
    walked.set()
    await go_on.wait()
    second = finder.find_path(memo=memo)
    return [trace.site if trace is not None else "" for trace in (first, second)]


def memo_path(finder: CallSiteFinder, memo: WalkMemo) -> str:
    # A statement's hook, with the scope's walk memo: the walk starts in this frame.
    trace = finder.find_path(memo=memo)
    return "" if trace is None else trace.path


def through(call: Callable[[], str], depth: int) -> str:
    # An ORM call of ``depth`` frames of its own down to the statement's hook.
    if depth == 0:
        return call()
    return through(call, depth - 1)


def through_other(call: Callable[[], str], depth: int) -> str:
    # Another ORM entry point, as deep.
    if depth == 0:
        return call()
    return through_other(call, depth - 1)


async def gathered_walk(finder: CallSiteFinder, memo: WalkMemo) -> str:
    # A gathered child of its own (a prefetch's query) walking with the scope's memo.
    await asyncio.sleep(0)
    trace = finder.find_path(memo=memo)
    return "" if trace is None else trace.site
