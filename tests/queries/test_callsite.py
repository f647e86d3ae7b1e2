"""The call site: the application's line behind a query, even across tasks and greenlets."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

import pytest

from poolwatch.queries import callsite
from poolwatch.queries.callsite import CallSiteFinder, WalkMemo
from tests import callsite_lib

LIB = ("tests.callsite_lib",)


def here(offset: int = 0) -> int:
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + offset


def test_first_application_frame_outside_libraries() -> None:
    finder = CallSiteFinder(LIB)
    site = callsite_lib.query(finder)
    line = here(-1)
    where = f"tests/queries/test_callsite.py:{line}"
    assert site == f"{where} in test_first_application_frame_outside_libraries"


def test_without_ignore_the_wrapper_is_the_call_site() -> None:
    site = callsite_lib.query(CallSiteFinder())
    assert site is not None
    assert site.startswith("tests/callsite_lib.py:")


def test_a_loop_gives_one_site_per_line() -> None:
    finder = CallSiteFinder(LIB)
    sites = {callsite_lib.query(finder) for _ in range(3)}
    assert len(sites) == 1


async def test_gather_children_without_application_frames_point_at_the_gather() -> None:
    finder = CallSiteFinder(LIB)
    sites = await asyncio.gather(*(callsite_lib.async_query(finder) for _ in range(3)))
    line = here(-1)
    name = "test_gather_children_without_application_frames_point_at_the_gather"
    assert set(sites) == {f"tests/queries/test_callsite.py:{line} in {name}"}


async def test_gather_through_an_application_helper_points_into_the_helper() -> None:
    finder = CallSiteFinder(LIB)

    async def load() -> str | None:
        return await callsite_lib.async_query(finder)

    line = here(-2)
    sites = await asyncio.gather(load(), load())
    assert {s.split(" in ")[0] for s in sites if s} == {f"tests/queries/test_callsite.py:{line}"}


async def test_task_group_children_point_at_the_awaiting_block() -> None:
    finder = CallSiteFinder(LIB)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(callsite_lib.async_query(finder)) for _ in range(2)]
    line = here(-2)
    results = {t.result() for t in tasks}
    # The parent waits in the TaskGroup's __aexit__, i.e. at the end of the "async with".
    assert len(results) == 1
    (site,) = results
    assert site is not None
    assert site.startswith("tests/queries/test_callsite.py:")
    assert int(site.split(":")[1].split(" ")[0]) in range(line - 1, line + 1)


async def test_gathered_children_find_their_parents_frames_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A loop gathering two queries per turn (a prefetch's, a task each): the first child
    # reads where the parent is suspended, the others find it remembered; once the
    # parent awaits from another line, that line is read.
    finder = CallSiteFinder(LIB)
    memo = WalkMemo()
    read: list[object] = []
    real = callsite.suspended_frames

    def counted(task: asyncio.Task[Any]) -> Any:
        read.append(task)
        return real(task)

    monkeypatch.setattr(callsite, "suspended_frames", counted)
    walk = functools.partial(callsite_lib.gathered_walk, finder, memo)
    sites = []
    loop_line = here(+2)
    for _ in range(3):
        sites += await asyncio.gather(walk(), walk())
    assert len(read) == 1
    other_line = here(+1)
    sites += await asyncio.gather(walk(), walk())
    assert len(read) == 2
    name = "test_gathered_children_find_their_parents_frames_once"
    assert (
        sites
        == [f"tests/queries/test_callsite.py:{loop_line} in {name}"] * 6
        + [f"tests/queries/test_callsite.py:{other_line} in {name}"] * 2
    )


async def test_a_remembered_awaiting_task_is_followed_again_once_it_moves_on() -> None:
    # A TaskGroup's parent runs on while its children run: a child's second statement
    # is blamed on where the parent waits then (inside a helper of its own), not where
    # it waited at the first.
    finder = CallSiteFinder(LIB)
    memo = WalkMemo()
    walked, go_on = asyncio.Event(), asyncio.Event()

    async def collect(task: asyncio.Task[list[str]]) -> list[str]:
        go_on.set()
        return await task

    helper_line = here(-2)
    async with asyncio.TaskGroup() as group:
        child = group.create_task(callsite_lib.walk_twice(finder, memo, walked, go_on))
        await walked.wait()
        first_line = here(-1)
        sites = await collect(child)
    name = "test_a_remembered_awaiting_task_is_followed_again_once_it_moves_on"
    assert sites == [
        f"tests/queries/test_callsite.py:{first_line} in {name}",
        f"tests/queries/test_callsite.py:{helper_line} in {name}.<locals>.collect",
    ]
    assert memo.tasks  # the child's awaiting frames were remembered, and found stale


class _CountingVerdicts(dict[int, int]):
    """A finder's verdict cache that counts its look-ups: one per frame walked."""

    looked_up = 0

    def get(self, key: int, default: Any = None) -> Any:
        self.looked_up += 1
        return super().get(key, default)


def test_a_loops_statements_after_the_first_are_found_without_a_walk() -> None:
    # The memo's jump: the same hook, as many frames above it as last time, under the same
    # call: the loop's line again, found without walking the frames in between.
    finder = CallSiteFinder(LIB)
    memo = WalkMemo()
    hook = functools.partial(callsite_lib.memo_path, finder, memo)
    paths = []
    line = here(+4)
    for turn in range(4):
        if turn == 1:  # walked once: count the frames judged from now on
            finder._library = verdicts = _CountingVerdicts(finder._library)
        paths.append(callsite_lib.through(hook, 3))
    name = "test_a_loops_statements_after_the_first_are_found_without_a_walk"
    assert paths == [f"tests/queries/test_callsite.py:{line} in {name}"] * 4
    assert verdicts.looked_up == 0


def test_a_loops_statements_through_several_chains_in_turn_are_found_without_a_walk() -> None:
    # One line of a loop sends statements up through two chains in turn, from two calls
    # (``session.scalars(query).one()``: the query's own statement, then its eager
    # loads', deeper): each chain is remembered, and none is walked again.
    finder = CallSiteFinder(LIB)
    memo = WalkMemo()
    hook = functools.partial(callsite_lib.memo_path, finder, memo)
    paths = []
    line = here(+4)
    for turn in range(4):
        if turn == 1:  # each chain walked once: count the frames judged from now on
            finder._library = verdicts = _CountingVerdicts(finder._library)
        paths += [callsite_lib.through(hook, 2), callsite_lib.through_other(hook, 6)]
    name = "test_a_loops_statements_through_several_chains_in_turn_are_found_without_a_walk"
    assert paths == [f"tests/queries/test_callsite.py:{line} in {name}"] * 8
    assert verdicts.looked_up == 0


def test_the_same_line_calling_another_function_is_walked_again() -> None:
    # One line, as many frames down to the same hook, but another call, which calls back
    # into the application: the jump must not answer the line of the last walk.
    finder = CallSiteFinder(LIB)
    memo = WalkMemo()
    hook = functools.partial(callsite_lib.memo_path, finder, memo)

    def helper() -> str:
        return hook()

    name = "test_the_same_line_calling_another_function_is_walked_again"
    Entry = Callable[[Callable[[], str], int], str]
    calls: list[tuple[Entry, Callable[[], str], int]] = [
        (callsite_lib.through, hook, 1),
        (callsite_lib.through_other, helper, 0),
    ]
    paths = []
    line = here(+2)
    for entry, call, depth in calls:
        paths.append(entry(call, depth))
    site = f"tests/queries/test_callsite.py:{line} in {name}"
    assert paths[0] == site
    helper_line = helper.__code__.co_firstlineno + 1  # its return line
    helper_site = f"tests/queries/test_callsite.py:{helper_line} in {name}.<locals>.helper"
    assert paths[1] == f"{site} -> {helper_site}"


def test_greenlet_child_is_followed_to_its_parent() -> None:
    finder = CallSiteFinder(LIB)
    site = callsite_lib.in_greenlet(lambda: callsite_lib.query(finder))
    # The lambda is application code in this file: that line is the call site.
    line = here(-2)
    assert site is not None
    assert site.startswith(f"tests/queries/test_callsite.py:{line}")

    def library_only() -> str | None:
        return callsite_lib.query(finder)

    library_finder = CallSiteFinder((*LIB, "tests.queries.test_callsite"))
    assert callsite_lib.in_greenlet(lambda: callsite_lib.query(library_finder)) is None
    assert library_only() is not None


WRAPPER = """
def query(finder, where):
    return where(finder)


def deeper(finder, where):
    return query(finder, where)


def collect(into, finder, where):
    into.append(deeper(finder, where))
"""


def _installed(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """A module installed in a ``site-packages`` directory, as pip would."""
    site = tmp_path / "venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / f"{name}.py").write_text(WRAPPER)
    monkeypatch.syspath_prepend(str(site))
    return importlib.import_module(name)


def test_an_installed_wrapper_of_the_orm_is_library_code_by_where_it_lives(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLModel, a shared repository package...: on no list, but installed.
    wrapper = _installed(tmp_path, monkeypatch, "poolwatch_test_wrapper")
    finder = CallSiteFinder()
    site = wrapper.deeper(finder, CallSiteFinder.find)
    line = here(-1)
    name = "test_an_installed_wrapper_of_the_orm_is_library_code_by_where_it_lives"
    assert site == f"tests/queries/test_callsite.py:{line} in {name}"


def test_with_no_application_frame_the_innermost_installed_frame_stands_in(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An app deployed into site-packages itself: its own frames are all "installed". A
    # thread started on its function holds no frame of this test.
    wrapper = _installed(tmp_path, monkeypatch, "poolwatch_test_deployed")
    sites: list[str | None] = []
    thread = threading.Thread(
        target=wrapper.collect, args=(sites, CallSiteFinder(), CallSiteFinder.find)
    )
    thread.start()
    thread.join()
    assert sites == ["poolwatch_test_deployed.py:3 in query"]


# -- call paths ----------------------------------------------------------------------------


def _path(finder: CallSiteFinder) -> str:
    found = callsite_lib.query_path(finder)
    assert found is not None
    site, path, relation, origin = found[:4]
    assert path.endswith(site)
    assert not relation
    outermost = path.split(" -> ", 1)[0]
    assert origin == outermost.split(":", 1)[0] + " in " + outermost.split(" in ", 1)[1]
    return path


def _helper(finder: CallSiteFinder) -> str:
    return _path(finder)  # the helper's line


def test_a_path_runs_from_the_caller_to_the_helper_outermost_first() -> None:
    finder = CallSiteFinder(LIB)
    paths = {_helper(finder) for _ in range(3)}  # the loop's line
    line = here(-1)
    (path,) = paths
    frames = path.split(" -> ")
    name = "test_a_path_runs_from_the_caller_to_the_helper_outermost_first"
    # (the comprehension has no frame of its own in the path, on any Python)
    assert frames[-3:] == [
        f"tests/queries/test_callsite.py:{line} in {name}",
        f"tests/queries/test_callsite.py:{_helper.__code__.co_firstlineno + 1} in _helper",
        f"tests/queries/test_callsite.py:{_path.__code__.co_firstlineno + 1} in _path",
    ]


def test_two_callers_of_one_helper_have_two_paths() -> None:
    finder = CallSiteFinder(LIB)
    first = _helper(finder)
    second = _helper(finder)
    assert first != second
    assert first.rsplit(" -> ", 1)[1] == second.rsplit(" -> ", 1)[1]  # the same helper


def test_a_path_ends_at_the_framework_that_called_the_endpoint() -> None:
    finder = CallSiteFinder(LIB)

    def endpoint() -> str:
        return _helper(finder)

    path = str(callsite_lib.framework(endpoint, depth=10))
    assert path.split(" -> ", maxsplit=1)[0].endswith(
        " in test_a_path_ends_at_the_framework_that_called_the_endpoint.<locals>.endpoint"
    )
    shallow = str(callsite_lib.framework(endpoint, depth=1))  # a decorator's frame: stepped over
    assert shallow.split(" -> ", maxsplit=1)[0].endswith(
        " in test_a_path_ends_at_the_framework_that_called_the_endpoint"
    )


def test_a_path_has_at_most_max_path_frames() -> None:
    from poolwatch.queries.callsite import MAX_PATH

    finder = CallSiteFinder(LIB)

    def nest(depth: int) -> str:
        return _helper(finder) if depth == 0 else nest(depth - 1)

    frames = nest(10).split(" -> ")
    assert len(frames) == MAX_PATH
    assert frames[-1].endswith(" in _path")


async def test_a_gathered_querys_path_ends_at_the_framework_too() -> None:
    finder = CallSiteFinder(LIB)

    async def endpoint() -> list[tuple[str, str, bool, str] | None]:
        return await asyncio.gather(*(callsite_lib.async_query_path(finder) for _ in range(2)))

    found = await callsite_lib.aframework(endpoint, depth=10)
    assert isinstance(found, list)
    for item in found:
        assert item is not None
        path = item[1]
        assert " -> " not in path  # the endpoint alone: not the test behind the framework
        assert path.endswith(
            " in test_a_gathered_querys_path_ends_at_the_framework_too.<locals>.endpoint"
        )
