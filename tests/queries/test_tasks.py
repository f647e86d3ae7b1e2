"""Following the running code to where the code that waits for it is suspended: the task
awaiting a gathered one, the greenlet that switched to this one."""

from __future__ import annotations

import asyncio
import inspect
from types import FrameType

import greenlet

from poolwatch.queries.tasks import awaiting_tasks, suspended_frames, waiting_greenlets


async def test_a_gathered_child_leads_to_the_task_that_gathers_it() -> None:
    gathering = asyncio.current_task()

    async def child() -> list[asyncio.Task[object]]:
        return list(awaiting_tasks())

    (found,) = await asyncio.gather(child())
    assert found[0] is gathering
    # Where it waits: this test's own frame, outermost, at the gather.
    frames = list(suspended_frames(found[0]))
    assert frames[0].f_code is test_a_gathered_child_leads_to_the_task_that_gathers_it.__code__


async def test_a_task_group_child_leads_to_the_task_that_owns_the_group() -> None:
    owner = asyncio.current_task()

    async def child() -> list[asyncio.Task[object]]:
        return list(awaiting_tasks())

    async with asyncio.TaskGroup() as group:
        task = group.create_task(child())
    assert task.result()[0] is owner


def test_no_task_awaits_code_outside_the_event_loop() -> None:
    assert list(awaiting_tasks()) == []


def test_a_greenlet_leads_to_the_frame_that_switched_to_it() -> None:
    def child() -> list[FrameType]:
        return list(waiting_greenlets())

    found = greenlet.greenlet(child).switch()
    assert found[0] is inspect.currentframe()  # suspended at the switch, in this test
