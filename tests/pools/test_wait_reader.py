"""What the code between two statements waits on, read from the source: each case is a
small application module written to disk and imported, and two call paths into it as
poolwatch records them (``file:line in function``, outermost first); the lines are found
by the comments that mark them."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from poolwatch.pools.reader import WaitReader
from poolwatch.pools.waits import NETWORK, NOTHING, SLEEP, THREAD, UNKNOWN, Reading, Wait
from poolwatch.queries.frames import display_path

Paths = Callable[..., str]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Paths]]:
    """Writes ``source`` as a module of a package of its own, imports it, and returns a
    function that makes call paths into it: ``path(("login", "before"), ...)``, each
    frame a function's qualified name and the marker of its line (the first after the
    function's ``def``)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def write(source: str) -> Paths:
        name = f"waitapp{len(made)}_{id(made)}"
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text("")
        text = textwrap.dedent(source)
        (package / "routes.py").write_text(text)
        module = importlib.import_module(f"{name}.routes")
        made.append(name)
        lines = text.splitlines()
        shown = display_path(str(module.__file__))

        def path(*frames: tuple[str, str]) -> str:
            parts = []
            for function, marker in frames:
                name = function.rsplit(".", 1)[-1]
                start = next(i for i, t in enumerate(lines) if f"def {name}(" in t)
                line = next(
                    i
                    for i, t in enumerate(lines[start:], start + 1)
                    if t.rstrip().endswith(f"# {marker}")
                )
                parts.append(f"{shown}:{line} in {function}")
            return " -> ".join(parts)

        return path

    yield write
    for name in made:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]


def _between(path: Paths, before: tuple[str, str], after: tuple[str, str]) -> Reading:
    return WaitReader().between(path(before), path(after))


HASHING = """
    from fastapi import HTTPException
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession
    from starlette.concurrency import run_in_threadpool


    def verify_password(password, hashed):
        return password == hashed


    class Accounts:
        def __init__(self, session: AsyncSession) -> None:
            self.session = session

        async def by_email(self, email):
            return (await self.session.execute(select(1))).scalar()  # select

        async def record_login(self, account):
            account.logins += 1
            await self.session.flush()  # flush


    async def login(email, password, accounts: Accounts):
        account = await accounts.by_email(email)  # before
        if account is None or not await run_in_threadpool(verify_password, password, 1):
            raise HTTPException(401)
        await accounts.record_login(account)  # after
        await accounts.session.commit()
        return {"ok": True}
"""


def test_a_function_sent_to_the_thread_pool_past_a_guard_surely_ran(app: Callable) -> None:
    path = app(HASHING)
    found = _between(
        path,
        ("login", "before"),
        ("login", "after"),
    )
    assert found == Reading(Wait(THREAD, "verify_password", "run_in_threadpool"), known=True)
    # The inner frames: the rest of by_email, the start of record_login, both DB work.
    found = WaitReader().between(
        path(("login", "before"), ("Accounts.by_email", "select")),
        path(("login", "after"), ("Accounts.record_login", "flush")),
    )
    assert found.wait == Wait(THREAD, "verify_password", "run_in_threadpool")


def test_until_the_release_the_guard_may_have_left_before_the_hash(app: Callable) -> None:
    path = app(HASHING)
    reader = WaitReader()
    before = path(("login", "before"), ("Accounts.by_email", "select"))
    found = reader.after(before)
    assert found.known
    assert found.wait == Wait(THREAD, "verify_password", "run_in_threadpool", certain=False)
    assert str(found.wait).endswith("(on some paths only)")


LOOP = """
    import asyncio

    import httpx
    from sqlalchemy import select


    async def prices(ids, session):
        out = []
        for item_id in ids.split(","):
            row = await session.execute(select(1).where(item_id == 1))  # statement
            out.append(row.scalar_one())
        return out


    async def notify_each(ids, session, client: httpx.AsyncClient):
        for item_id in ids:
            await session.execute(select(1))  # statement
            if item_id:
                await client.post("/notify", json={"id": item_id})


    async def stream(session, rows):
        async for row in rows:
            await session.execute(select(row))  # statement


    async def yields(session):
        for _ in range(3):
            await session.execute(select(1))  # statement
            await asyncio.sleep(0)
"""


def test_a_loop_of_one_statement_with_only_cpu_work_waits_on_nothing(app: Callable) -> None:
    # The same SELECT, another id each turn: a loaded machine once made one such gap
    # 226 ms; the code has no wait.
    path = app(LOOP)
    assert _between(path, ("prices", "statement"), ("prices", "statement")) == NOTHING
    assert _between(path, ("yields", "statement"), ("yields", "statement")) == NOTHING


def test_a_wait_in_a_branch_of_the_loop_may_run_between_two_turns(app: Callable) -> None:
    path = app(LOOP)
    found = _between(path, ("notify_each", "statement"), ("notify_each", "statement"))
    assert found.wait == Wait(NETWORK, "httpx.AsyncClient.post", certain=False)


def test_an_async_for_awaits_its_next_item_from_who_knows_where(app: Callable) -> None:
    path = app(LOOP)
    assert _between(path, ("stream", "statement"), ("stream", "statement")) == UNKNOWN


CALLS = """
    import asyncio
    import functools
    import time
    import urllib.request

    import anyio.to_thread

    try:
        from asyncer import asyncify
    except ImportError:  # not installed: the name is read, not run
        asyncify = None
    from sqlalchemy import select


    def report(rows):
        return len(rows)


    async def audit(client, entry):
        await asyncio.sleep(0.01)  # pretend


    async def with_helper(session, client):
        await session.execute(select(1))  # before
        await audit(client, "x")
        await session.execute(select(2))  # after


    async def untyped(request, session):
        await session.execute(select(1))  # before
        data = await request.app.state.cache.get("k")
        await session.execute(select(data))  # after


    async def untyped_on_the_statements_line(repo, session):
        await session.execute(select(1))  # before
        await repo.save(session, 2)  # after


    async def spawned(session, client):
        await session.execute(select(1))  # before
        task = asyncio.create_task(audit(client, "x"))
        await session.execute(select(2))  # after
        await task


    async def executor(session, loop):
        await session.execute(select(1))  # before
        await loop.run_in_executor(None, functools.partial(report, [1]))
        await anyio.to_thread.run_sync(lambda: report([]))
        await session.execute(select(2))  # after


    async def wrapped(session):
        await session.execute(select(1))  # before
        await asyncify(report)([1])
        await session.execute(select(2))  # after


    def sync_calls(session):
        session.execute(select(1))  # before
        urllib.request.urlopen("http://example.invalid")
        time.sleep(0.01)
        session.execute(select(2))  # after


    def sync_unknown(session, s3):
        session.execute(select(1))  # before
        ", ".join(["a", "b"])
        s3.urlopen("x")
        session.execute(select(2))  # after
"""


def test_a_wait_inside_an_application_function_is_named_with_it(app: Callable) -> None:
    path = app(CALLS)
    found = _between(path, ("with_helper", "before"), ("with_helper", "after"))
    assert found.wait == Wait(SLEEP, "asyncio.sleep", inside="audit")
    assert str(found.wait) == "a sleep, asyncio.sleep, in audit"


def test_an_awaited_call_on_an_object_of_no_known_type_is_unknown(app: Callable) -> None:
    path = app(CALLS)
    assert _between(path, ("untyped", "before"), ("untyped", "after")) == UNKNOWN


def test_the_statements_own_call_on_its_line_says_nothing(app: Callable) -> None:
    # `await repo.save(...)` sends the next statement itself: not a wait of its own.
    path = app(CALLS)
    found = _between(
        path,
        ("untyped_on_the_statements_line", "before"),
        ("untyped_on_the_statements_line", "after"),
    )
    assert found == NOTHING


def test_a_coroutine_not_awaited_runs_beside_and_is_no_wait(app: Callable) -> None:
    path = app(CALLS)
    assert _between(path, ("spawned", "before"), ("spawned", "after")) == NOTHING


def test_the_ways_to_the_thread_pool_are_named_as_written(app: Callable) -> None:
    path = app(CALLS)
    found = _between(path, ("executor", "before"), ("executor", "after"))
    assert found.wait == Wait(THREAD, "report", "loop.run_in_executor")
    found = _between(path, ("wrapped", "before"), ("wrapped", "after"))
    assert found.wait == Wait(THREAD, "report", "asyncify")


def test_sync_code_waits_in_its_thread(app: Callable) -> None:
    path = app(CALLS)
    found = _between(path, ("sync_calls", "before"), ("sync_calls", "after"))
    assert found.wait == Wait(NETWORK, "urllib.request.urlopen")
    # A method that reads as blocking, on an object of no known type: not known.
    assert _between(path, ("sync_unknown", "before"), ("sync_unknown", "after")) == UNKNOWN


BLOCKS = """
    import httpx
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")


    async def in_a_with(client: httpx.AsyncClient):
        async with engine.connect() as connection:  # taken
            await client.get("/a")
            await connection.execute(select(1))  # statement
            await connection.commit()
        await client.get("/b")


    async def from_a_header(session, client: httpx.AsyncClient):
        for row in (await session.execute(select(1))).scalars():  # header
            await client.post("/x", json=row)
            await session.execute(select(row))  # statement


    async def handled(session, client: httpx.AsyncClient):
        try:
            await session.execute(select(1))  # try
        except ValueError:
            await client.get("/fallback")
            await session.execute(select(2))  # handler
"""


def test_from_the_line_that_took_the_connection_into_its_block(app: Callable) -> None:
    path = app(BLOCKS)
    found = _between(path, ("in_a_with", "taken"), ("in_a_with", "statement"))
    assert found.wait == Wait(NETWORK, "httpx.AsyncClient.get")


def test_until_a_release_whose_line_is_not_known_the_with_block_ends_it(
    app: Callable,
) -> None:
    # The rest of the block (the commit), not the call after it.
    path = app(BLOCKS)
    reader = WaitReader()
    assert reader.between(path(("in_a_with", "statement")), "") == NOTHING
    # Until the functions return, the call after the block is reached.
    assert reader.after(path(("in_a_with", "statement"))).wait == Wait(
        NETWORK, "httpx.AsyncClient.get"
    )


def test_a_statement_sent_from_a_loops_header(app: Callable) -> None:
    path = app(BLOCKS)
    found = _between(path, ("from_a_header", "header"), ("from_a_header", "statement"))
    assert found.wait == Wait(NETWORK, "httpx.AsyncClient.post")


def test_from_a_try_into_its_handler(app: Callable) -> None:
    path = app(BLOCKS)
    found = _between(path, ("handled", "try"), ("handled", "handler"))
    assert found.wait == Wait(NETWORK, "httpx.AsyncClient.get")


def test_code_not_found_is_unknown(app: Callable) -> None:
    path = app(BLOCKS)
    reader = WaitReader()
    first = path(("handled", "try"))
    assert reader.between(first, first.replace("in handled", "in <lambda>")) == UNKNOWN
    assert reader.between("nowhere.py:3 in f", "nowhere.py:5 in f") == UNKNOWN
    assert reader.between(first, "not a call path") == UNKNOWN


WRITES = """
    import asyncio


    async def import_rows(session, rows):
        for row in rows:
            await save(session, row)  # call


    async def save(session, row):
        session.add(row)
        await session.flush()  # flush


    async def gathered(session, rows):
        await asyncio.gather(*(save(session, row) for row in rows))  # gather


    async def once(session, row):
        await save(session, row)  # call
"""


def test_the_loop_of_a_per_row_write_is_the_innermost_one_around_its_path(
    app: Callable,
) -> None:
    path = app(WRITES)
    reader = WaitReader()
    found = reader.loop_of(path(("import_rows", "call"), ("save", "flush")))
    call = int(path(("import_rows", "call")).split(":")[1].split()[0])
    assert found.endswith(f":{call - 1} in import_rows (for row in rows:)")
    assert reader.loop_of(path(("gathered", "gather"), ("save", "flush"))).endswith(
        "in gathered (await asyncio.gather(*(save(session, row) for row in rows))  # gather)"
    )
    assert reader.loop_of(path(("once", "call"), ("save", "flush"))) == ""
    assert reader.loop_of("nowhere.py:3 in f") == ""
