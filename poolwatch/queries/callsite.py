"""Where in the user's code a query comes from.

The call site of a query is the innermost frame of the running stack that belongs to the
application rather than to a library. As error trackers do, where a module lives decides:
code installed in ``site-packages`` / ``dist-packages`` and the standard library are
libraries (SQLModel, a repository package, any ORM wrapper), and so are poolwatch, the
well-known ORMs, drivers and frameworks by name (also when installed editable) and the
modules in ``ignore_modules`` (an app's own data layer). Should no frame be the app's (an
app deployed into ``site-packages`` itself), the innermost installed frame that is not a
known library stands in. Walking the stack is the only way to get it without patching
attribute access; it is kept cheap by deciding "library or not" once per code object.

Two places hide the user's frame from a plain stack walk, and both are followed:

* SQLAlchemy's asyncio layer runs the ORM in a greenlet whose stack ends at the
  greenlet; the awaiting coroutines are on the parent greenlet's stack.
* ``asyncio.gather(*(Author.get(id=i) for i in ids))`` runs each query in a task that
  holds no user frame at all; the line to blame is where the *awaiting* task waits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import sysconfig
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Any, NamedTuple

__all__ = ["LIBRARY_PACKAGES", "MAX_PATH", "CallSite", "CallSiteFinder"]

# Top-level packages whose frames are never the call site. Everything from the standard
# library is added at run time (sys.stdlib_module_names).
LIBRARY_PACKAGES = frozenset(
    {
        "poolwatch", "tortoise", "pypika", "pypika_tortoise", "sqlalchemy", "asyncpg",
        "psycopg", "psycopg_pool", "psycopg2", "aiosqlite", "aiomysql", "asyncmy", "pymysql",
        "MySQLdb", "starlette", "fastapi", "anyio", "sniffio", "uvicorn", "gunicorn",
        "hypercorn", "uvloop", "greenlet", "pydantic", "pydantic_core", "httpx", "httpcore",
        "_pytest", "pytest", "pytest_asyncio", "pluggy", "typing_extensions",
        "console_script",
    }
)  # fmt: skip
# poolwatch's own demo is an application: its findings must point into it.
_APPLICATION_PACKAGES = ("poolwatch.demo",)
# Application frames in a call path: the helper, its caller, and the loop above them.
MAX_PATH = 4
# Library frames tolerated between two application frames (a decorator, a context
# manager); past that the walk has reached the framework that called the endpoint.
_MAX_GAP = 3
# How far up the awaiting tasks to look (nested gathers) before giving up.
_MAX_TASK_HOPS = 8
_MAX_CACHED_CODES = 65536

# What a code object is, decided once: the application's, an installed package's (a
# library, unless no frame is the application's), or a known library's.
_APP, _INSTALLED, _LIBRARY, _RELATION, _INLINE = 0, 1, 2, 3, 4
# Comprehensions have frames of their own before Python 3.12 and none after: left out of
# paths, so a path reads the same on every Python (the line is the enclosing one's).
_INLINED = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>"})
# Library functions that load an ORM relation for rows already fetched: a statement run
# under one of them is proven to be that relation's load (its advice may name it).
_RELATION_LOADERS = {
    "sqlalchemy.orm.strategies": ("_load_for_state", "_emit_lazyload"),
    "tortoise.models": ("fetch_related",),
    "tortoise.backends.base.executor": ("_prefetch_",),
}
# Why a walk ended: the path is complete, the frame that runs a task, the end of a stack.
_FULL, _AT_TASK, _END_OF_STACK = 0, 1, 2


class CallSite(NamedTuple):
    """A line in the application: ``file:line in function``."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


class CallSiteFinder:
    """Finds the call site of the running code; one per PoolWatch (its ignore list).

    ``ignore_modules`` adds module prefixes (``"myapp.db"``) to treat like a library, for
    applications that wrap the ORM in a layer of their own.
    """

    def __init__(self, ignore_modules: Iterable[str] = ()) -> None:
        self._ignore = tuple(ignore_modules)
        # id(code) -> _APP, _INSTALLED or _LIBRARY, decided once per function. Keyed by id
        # because hashing a code object hashes its bytecode on every lookup; _seen holds
        # each code object so that its id cannot be reused while the verdict is cached.
        self._library: dict[int, int] = {}
        self._seen: list[CodeType] = []
        # (id(code), offset) -> (code, "file:line in function"): a loop formats one string
        self._sites: dict[tuple[int, int], tuple[CodeType, str]] = {}
        # (code id and offset..., relation) -> ((call site, path, relation, origin), codes)
        self._paths: dict[
            tuple[object, ...], tuple[tuple[str, str, bool, str], tuple[CodeType, ...]]
        ] = {}
        self._stop = _task_boundary_code()

    def find(self, skip: int = 1) -> str | None:
        """The call site of the code running now (``file:line in function``), if any.

        ``skip`` frames are known to be poolwatch's own: ``sys._getframe(skip)`` steps
        over them without materialising a frame object for each.
        """
        found = self.find_path(skip + 1, depth=1)  # one frame: the walk ends there
        return None if found is None else found[0]

    def find_path(self, skip: int = 1, depth: int = MAX_PATH) -> tuple[str, str, bool, str] | None:
        """The call site and the application call path of the code running now, whether
        an ORM's relation loader runs it (a lazy load, ``fetch_related``), and the path's
        origin: its outermost function (``file in function``, no line).

        The path is the innermost ``depth`` application frames, outermost first,
        joined by ``" -> "``: ``service.py:136 in list_articles -> favorite.py:27 in
        count``. The loop that calls a per-row helper is in it, and two callers of one
        helper have two paths. The call site is its innermost frame.
        """
        try:
            frame: FrameType | None = sys._getframe(skip)
        except ValueError:  # a shallower stack than the caller promised
            frame = sys._getframe(1)
        path: list[FrameType] = []
        # Each path frame's code and bytecode offset (by id: hashing a code object hashes
        # its bytecode): formatting "file:line in function" (f_lineno decodes the line
        # table) happens once per distinct path.
        keys: list[object] = []
        ended, installed, relation = self._walk(frame, path, depth, keys)
        if ended is _END_OF_STACK and len(path) < depth:
            relation = self._from_greenlet_parent(path, depth) or relation
        if not path and ended is _AT_TASK:
            path = self._from_awaiting_task(depth)
        if not path and installed is not None:
            path = [installed]
        if not path:
            return None
        if len(keys) != len(path):  # frames found beyond the walk: keyed here
            keys = [(id(f.f_code) << 32) | f.f_lasti for f in path]
        keys.append(relation)
        key = tuple(keys)
        known = self._paths.get(key)
        if known is None:
            if len(self._paths) >= _MAX_CACHED_CODES:
                self._paths.clear()
            sites = [self._site(frame) for frame in reversed(path)]
            code = path[-1].f_code
            origin = f"{display_path(code.co_filename)} in {code.co_qualname}"
            found = (sites[-1], " -> ".join(sites), relation, origin)
            # The entry holds the code objects its key names by id, so no id is reused
            # while it is cached.
            known = self._paths[key] = (found, tuple(frame.f_code for frame in path))
        return known[0]

    # -- the walk ----------------------------------------------------------------------

    def _walk(
        self,
        frame: FrameType | None,
        path: list[FrameType],
        depth: int,
        keys: list[object] | None = None,
    ) -> tuple[int, FrameType | None, bool]:
        """Collect application frames from ``frame`` outwards into ``path`` (innermost
        first); returns why the walk ended, the innermost installed-package frame, and
        whether a relation loader ran below the first application frame.

        It ends with ``depth`` frames, ``_MAX_GAP`` library frames past the last
        application frame (the framework that called the endpoint), or at the frame that
        runs an asyncio callback: below it lie the event loop and whatever started it,
        never the code that issued this query.
        """
        library = self._library
        stop = self._stop
        installed: FrameType | None = None
        relation = False
        gap = 0
        # Most frames are a library's, below the first application frame: their way
        # through the loop is kept to the fewest tests (a hot loop: ~25 frames a query).
        while frame is not None:
            code = frame.f_code
            verdict = library.get(id(code))
            if verdict is None:
                verdict = self._judge(code, frame)
            if verdict is _APP:
                path.append(frame)
                if keys is not None:
                    keys.append((id(code) << 32) | frame.f_lasti)
                if len(path) >= depth:
                    return _FULL, installed, relation
                gap = 0
            elif path:
                if verdict is not _INLINE:
                    gap += 1
                    if gap > _MAX_GAP:
                        return _FULL, installed, relation
            elif verdict is not _LIBRARY:
                if verdict is _INSTALLED:
                    installed = installed or frame
                elif verdict is _RELATION:
                    relation = True
            if code is stop:
                return _AT_TASK, installed, relation
            frame = frame.f_back
        return _END_OF_STACK, installed, relation

    def _judge(self, code: CodeType, frame: FrameType) -> int:
        if len(self._library) >= _MAX_CACHED_CODES:
            self._library.clear()
            self._seen.clear()
        module = _module_of(frame)
        loaders = _RELATION_LOADERS.get(module)
        if code.co_name in _INLINED:
            verdict = _INLINE
        elif module.startswith(_APPLICATION_PACKAGES):
            verdict = _APP
        elif loaders is not None and code.co_name.startswith(loaders):
            verdict = _RELATION
        elif is_library_module(module, self._ignore):
            verdict = _LIBRARY
        elif is_installed(code.co_filename):
            verdict = _INSTALLED
        else:
            verdict = _APP
        self._library[id(code)] = verdict
        self._seen.append(code)
        return verdict

    def _site(self, frame: FrameType) -> str:
        code = frame.f_code
        # Keyed by the bytecode offset: f_lineno decodes the line table on every read.
        key = (id(code), frame.f_lasti)
        known = self._sites.get(key)
        if known is not None:
            return known[1]
        if len(self._sites) >= _MAX_CACHED_CODES:
            self._sites.clear()
        line = frame.f_lineno or code.co_firstlineno
        site = str(CallSite(display_path(code.co_filename), line, code.co_qualname))
        self._sites[key] = (code, site)
        return site

    # -- where a plain walk cannot see -------------------------------------------------

    def _from_greenlet_parent(self, path: list[FrameType], depth: int) -> bool:
        """Continue the walk on the greenlets that wait for this one; True if a relation
        loader runs there below the application's frames."""
        greenlet = sys.modules.get("greenlet")
        if greenlet is None:
            return False
        current = greenlet.getcurrent()
        relation = False
        while (parent := current.parent) is not None:
            ended, _, loads = self._walk(parent.gr_frame, path, depth)
            relation = relation or loads
            if ended != _END_OF_STACK or len(path) >= depth:
                break
            current = parent
        return relation

    def _from_awaiting_task(self, depth: int) -> list[FrameType]:
        try:
            task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:
            return []
        for _ in range(_MAX_TASK_HOPS):
            if task is None:
                return []
            task = awaiting_task(task)
            if task is None:
                return []
            path = self._application_frames(task, depth)
            if path:
                return path
        return []

    def _application_frames(self, task: asyncio.Task[Any], depth: int) -> list[FrameType]:
        """The application frames nearest to where ``task`` is suspended, innermost
        first, ended as a walk is (``depth`` frames, or a gap of library frames)."""
        chain: list[tuple[FrameType, int]] = []  # outermost first: the awaits, in order
        awaitable: Any = task.get_coro()
        while awaitable is not None:
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
            if frame is None:
                break
            verdict = self._library.get(id(frame.f_code))
            if verdict is None:
                verdict = self._judge(frame.f_code, frame)
            chain.append((frame, verdict))
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
        found: list[FrameType] = []
        gap = 0
        for frame, verdict in reversed(chain):
            if verdict == _APP:
                found.append(frame)
                gap = 0
                if len(found) >= depth:
                    break
            elif found and verdict != _INLINE:
                gap += 1
                if gap > _MAX_GAP:
                    break
        return found


def _module_of(frame: FrameType) -> str:
    module = frame.f_globals.get("__name__")
    if module != "__main__":
        return module if isinstance(module, str) else ""
    # "python -m pytest" runs pytest/__main__.py as __main__; its spec knows better.
    spec = frame.f_globals.get("__spec__")
    if spec is not None and isinstance(getattr(spec, "name", None), str):
        return str(spec.name)
    # A console-script shim (bin/uvicorn, bin/gunicorn) only calls a library's main().
    if os.path.basename(os.path.dirname(frame.f_code.co_filename)) in ("bin", "Scripts"):
        return "console_script"
    return "__main__"


def is_library_module(module: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether frames of ``module`` are library code (never a call site)."""
    if module.startswith(_APPLICATION_PACKAGES):
        return False
    top = module.partition(".")[0]
    if top in LIBRARY_PACKAGES or top in sys.stdlib_module_names:
        return True
    return any(module == prefix or module.startswith(prefix + ".") for prefix in extra)


def is_installed(filename: str) -> bool:
    """Whether ``filename`` is installed code: a package in ``site-packages`` or
    ``dist-packages``, the standard library, or frozen into the interpreter."""
    if filename.startswith("<frozen"):
        return True
    if f"{os.sep}site-packages{os.sep}" in filename or f"{os.sep}dist-packages{os.sep}" in filename:
        return True
    return filename.startswith(_stdlib_dirs())


@functools.cache
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.join(paths[key], "") for key in ("stdlib", "platstdlib") if key in paths})


def awaiting_task(task: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The task that waits for ``task`` through ``gather`` or a ``TaskGroup``, if any.

    Python 3.14 answers this with ``asyncio.capture_call_graph``; before it, the link is
    only in private attributes: the done-callbacks a child carries (gather's closure over
    its outer future, or the TaskGroup's bound method) and the future a parent task waits
    on (``_fut_waiter``). Every access is guarded; on any surprise the answer is "unknown".
    """
    graph = getattr(asyncio, "capture_call_graph", None)
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
            owner = getattr(callback, "__self__", None)
            parent = getattr(owner, "_parent_task", None)
            if isinstance(parent, asyncio.Task):
                return parent
            for cell in getattr(callback, "__closure__", None) or ():
                content = cell.cell_contents
                if isinstance(content, asyncio.Future) and not isinstance(content, asyncio.Task):
                    for candidate in asyncio.all_tasks():
                        if getattr(candidate, "_fut_waiter", None) is content:
                            return candidate
    except Exception:
        return None
    return None


def _task_boundary_code() -> CodeType:
    # asyncio.events.Handle._run calls every task step and callback; it is pure Python
    # even where Task itself is in C.
    return asyncio.events.Handle._run.__code__


_display_cache: dict[str, str] = {}


def display_path(filename: str) -> str:
    """``filename`` relative to the project root (the working directory: where the app,
    or pytest, was started), else to the ``sys.path`` entry it was imported from.

    The project root first: ``src/app/routes.py``, not ``app/routes.py`` because ``src``
    is on ``sys.path`` too, so that the log, the findings endpoint and the pytest report
    name a file the same way, as the project's own tree does.
    """
    shown = _display_cache.get(filename)
    if shown is None:
        shown = filename
        if os.path.isabs(filename):
            entries = sorted((p for p in sys.path if p and os.path.isabs(p)), key=len, reverse=True)
            for root in (os.getcwd(), *entries):
                if filename.startswith(root.rstrip(os.sep) + os.sep):
                    shown = filename[len(root.rstrip(os.sep)) + 1 :]
                    break
        if len(_display_cache) < _MAX_CACHED_CODES:
            _display_cache[filename] = shown
    return shown
