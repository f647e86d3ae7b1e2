"""What a connection held between two statements waited on: the words for it, and which
calls of the application's code are waits. Pure.

A call is judged by the dotted name it stands for in its function (:mod:`.source`):

* a function sent to the thread pool: ``run_in_threadpool(f, ...)`` (Starlette,
  FastAPI), ``asyncio.to_thread(f)``, ``anyio.to_thread.run_sync(f)``,
  ``loop.run_in_executor(executor, f)``, ``asyncer.asyncify(f)(...)``;
* a network call: a request function or a client method of ``httpx``, ``aiohttp``,
  ``requests``, ``urllib3``, ``urllib.request``, ``http.client``, ``websockets`` or
  ``grpc``;
* a sleep: ``asyncio.sleep``, ``anyio.sleep``, ``trio.sleep``, ``time.sleep`` (not a
  sleep of 0, which only yields to the event loop);
* an application function: what its own code waits on (the reader follows it);
* the database's own work (a call into the ORM or the driver): no wait of the
  application's, as it sends a statement (which ends the gap) or ends a transaction;
* :data:`OPAQUE`, a call that may wait on something nobody can name from here: an
  awaited call of anything else (``await request.json()``, ``await queue.get()``, an
  object whose type is not written down), or a call that reads as a blocking one
  (``.urlopen()``, ``.result()``, ``.sleep()``) on such an object;
* anything else: work on the CPU.

:func:`reading` turns the calls of the code between two statements into a
:class:`Reading`: the wait that surely ran, else ``UNKNOWN`` where an opaque call may
have waited, else a wait that ran on some paths only, else ``NOTHING``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from typing import NamedTuple

from poolwatch.pools.regions import Step, Unreadable
from poolwatch.pools.source import Scope

__all__ = [
    "NETWORK",
    "NOTHING",
    "OPAQUE",
    "SLEEP",
    "THREAD",
    "UNKNOWN",
    "Follow",
    "Reading",
    "Wait",
    "judge",
    "reading",
]

THREAD = "thread"
NETWORK = "network"
SLEEP = "sleep"

# Callables that run their argument in a worker thread: the position of that argument.
_THREAD_POOLS = {
    "starlette.concurrency.run_in_threadpool": 0,
    "fastapi.concurrency.run_in_threadpool": 0,
    "asyncio.to_thread": 0,
    "asyncio.threads.to_thread": 0,
    "anyio.to_thread.run_sync": 0,
    "trio.to_thread.run_sync": 0,
}
_THREAD_WRAPPERS = ("asyncer.asyncify",)  # asyncify(f)(...)
_SLEEPS = frozenset(
    {"asyncio.sleep", "asyncio.tasks.sleep", "anyio.sleep", "trio.sleep", "time.sleep"}
)
_NETWORK_MODULES = (
    "httpx", "aiohttp", "requests", "urllib3", "urllib.request", "http.client",
    "websockets", "grpc",
)  # fmt: skip
# What a client of those modules does that goes over the network (its constructor,
# a Timeout or a URL does not).
_NETWORK_VERBS = frozenset(
    {
        "get", "post", "put", "patch", "delete", "head", "options", "request", "send",
        "stream", "urlopen", "ws_connect", "connect", "getresponse", "fetch", "recv",
    }
)  # fmt: skip
_NETWORK_CALLS = frozenset({"asyncio.open_connection", "socket.create_connection"})
# The network calls that return a coroutine (or an async context manager): they wait
# only where awaited.
_ASYNC = ("httpx.AsyncClient.", "aiohttp.", "websockets.", "asyncio.", "grpc.aio.")
# The ORMs and drivers: what they are awaited for is the database's work.
_DATABASE = (
    "sqlalchemy.", "sqlmodel.", "tortoise.", "asyncpg.", "aiosqlite.", "psycopg.",
    "psycopg2.", "aiomysql.", "asyncmy.", "pymysql.", "MySQLdb.", "sqlite3.",
)  # fmt: skip
# Methods that read as blocking, on an object the reader cannot name (a sync client
# the app made somewhere out of sight). `get` is not one: every dict has it.
_BLOCKING_VERBS = frozenset(
    {
        "request", "urlopen", "getresponse", "recv", "sendall", "connect", "sleep",
        "wait", "result", "communicate", "post", "put", "patch", "fetch", "publish",
    }
)  # fmt: skip


class Wait(NamedTuple):
    """What the code between two statements waits on."""

    kind: str
    """:data:`THREAD`, :data:`NETWORK` or :data:`SLEEP` (:data:`OPAQUE`: not known)."""
    target: str
    """The function sent to the thread pool (``verify_password``), the network call
    (``httpx.AsyncClient.get``) or the sleep (``asyncio.sleep``)."""
    via: str = ""
    """How a function went to the thread pool, as written (``run_in_threadpool``)."""
    inside: str = ""
    """The application function the call is in, when it is not the gap's own code."""
    certain: bool = True
    """It runs on every path between the two statements (not in an ``if`` branch, a
    loop body, an ``except``, or after an ``and``/``or``)."""

    def __str__(self) -> str:
        if self.kind == THREAD:
            text = f"{self.target}, run in the thread pool by {self.via}"
        elif self.kind == NETWORK:
            text = f"a network call, {self.target}"
        else:
            text = f"a sleep, {self.target}"
        if self.inside:
            text += f", in {self.inside}"
        return text if self.certain else f"{text} (on some paths only)"


OPAQUE = Wait("unknown", "")
"""A call that may wait on something the reader cannot name."""


class Reading(NamedTuple):
    """What the code between two statements waits on, as read."""

    wait: Wait | None = None
    """The wait, if one was named."""
    known: bool = False
    """The code was read whole: with no ``wait``, it waits on nothing."""


UNKNOWN = Reading()
"""The code could not be read whole (not found, or a call that may wait unnamed)."""
NOTHING = Reading(known=True)
"""The code was read whole and waits on nothing: only work on the CPU."""


Follow = Callable[[Scope, str, bool], Reading | None]
"""``follow(scope, name, awaited)``: what the application function ``name``, called from
``scope``, waits on (``awaited``: called with ``await``); ``None`` where ``name`` is no
function of the application's."""


def judge(scope: Scope, call: ast.Call, follow: Follow) -> Wait | None:
    """The wait ``call`` (in ``scope``) is: a :class:`Wait`, :data:`OPAQUE`, or ``None``
    for work on the CPU."""
    # A coroutine runs in the caller's time only when awaited (create_task(f()) runs it
    # beside): the thread pools, the async sleeps and clients, an async def.
    awaited = id(call) in scope.awaited
    name = scope.dotted(call.func)
    named = _named(scope, call, name, awaited)
    if named is not None:
        return None if named is _NONE else named
    if name is not None and name.startswith(_DATABASE):
        return None
    inner = None if name is None else follow(scope, name, awaited)
    if inner is None:  # not the application's: a library's, or a name not found
        return OPAQUE if awaited or _blocking(call.func) else None
    if inner.wait is not None:
        return inner.wait
    return None if inner.known else OPAQUE


_NONE = Wait("none", "")  # a call known by its name, and no wait


def _named(scope: Scope, call: ast.Call, name: str | None, awaited: bool) -> Wait | None:
    """The wait a call is by its name (:data:`_NONE`: none); ``None``: not one of
    those known by name."""
    func = call.func
    if isinstance(func, ast.Call) and scope.dotted(func.func) in _THREAD_WRAPPERS:
        if awaited and func.args:
            return Wait(THREAD, _callable_name(func.args[0]), ast.unparse(func.func))
        return _NONE
    position = 1 if isinstance(func, ast.Attribute) and func.attr == "run_in_executor" else None
    if name is not None and position is None:
        position = _THREAD_POOLS.get(name)
    if position is not None:
        if awaited and len(call.args) > position:
            return Wait(THREAD, _callable_name(call.args[position]), ast.unparse(func))
        return _NONE
    if name is None:
        return None
    if name in _SLEEPS:
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Constant) and not first.value:
            return _NONE  # sleep(0): a turn of the event loop
        return Wait(SLEEP, name) if awaited or name == "time.sleep" else _NONE
    if _network(name):
        return Wait(NETWORK, name) if awaited or not name.startswith(_ASYNC) else _NONE
    return None


def reading(steps: Iterator[tuple[Scope, Step]], follow: Follow) -> Reading:
    """What the code of ``steps`` (each call with the function it is in) waits on, each
    call judged by :func:`judge`: the first wait that surely runs; else
    unknown, where a call may wait on something unnamed (or the code cannot be read);
    else the first wait that runs on some paths; else nothing.

    A call on the line that sends the next statement (:attr:`.Step.sending`) may be that
    statement's own: a wait there is one that may run, and an opaque one says nothing.
    """
    maybe = None
    opaque = False
    try:
        for scope, step in steps:
            wait = judge(scope, step.call, follow)
            if wait is None:
                continue
            if wait is OPAQUE:
                opaque = opaque or not step.sending
            elif step.certain and wait.certain and not step.sending:
                return Reading(wait, known=True)
            elif maybe is None:
                maybe = wait._replace(certain=False)
    except Unreadable:
        return UNKNOWN
    if opaque:
        return UNKNOWN
    return Reading(maybe, known=True)


def _blocking(func: ast.expr) -> bool:
    """A method whose name reads as a blocking call, on an object that is no literal."""
    return (
        isinstance(func, ast.Attribute)
        and func.attr in _BLOCKING_VERBS
        and not isinstance(func.value, ast.Constant)
    )


def _callable_name(node: ast.expr) -> str:
    """How the code names the function it sends to a thread."""
    if isinstance(node, ast.Call) and node.args:  # functools.partial(verify, ...)
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "partial":
            return _callable_name(node.args[0])
    if isinstance(node, ast.Lambda):
        return "a lambda"
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _network(name: str) -> bool:
    if name in _NETWORK_CALLS:
        return True
    module = next((m for m in _NETWORK_MODULES if name.startswith(m + ".")), None)
    return module is not None and name.rpartition(".")[2] in _NETWORK_VERBS
