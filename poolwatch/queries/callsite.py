"""Where in the user's code a query comes from.

The call site of a query is the innermost frame of the running stack that belongs to the
application rather than to a library (:mod:`.frames` says which frames are the
application's). Should no frame be the app's (an app deployed into ``site-packages``
itself), the innermost installed frame that is not a known library stands in. Walking
the stack is the only way to get it without patching attribute access; it is kept cheap
by deciding "library or not" once per code object.

The walk also notes three kinds of library frame below the application's, because they
change what a statement means (see :class:`Trace`): an ORM's relation loader (a lazy
load), an ORM operation that runs several statements in one call by design, and a
serializer (FastAPI validating a ``response_model`` after the endpoint returned, with no
application frame left on the stack: the request's endpoint is the place to blame).

Where the running stack holds no application frame, the walk goes on where the code
waiting for it is suspended: a parent greenlet, or the task awaiting a gathered one
(:mod:`.tasks`).
"""

from __future__ import annotations

import asyncio
import linecache
import sys
from collections.abc import Iterable, Iterator
from types import CodeType, FrameType
from typing import Any, NamedTuple

from poolwatch.queries.frames import (
    APP,
    INLINE,
    INSTALLED,
    LIBRARY,
    OPERATION,
    RELATION,
    SERIALIZER,
    display_path,
    relation_name,
    verdict_of,
)
from poolwatch.queries.tasks import (
    awaiting_tasks,
    suspended_frames,
    task_boundary_code,
    waiting_greenlets,
)

__all__ = [
    "MAX_PATH",
    "CallSite",
    "CallSiteFinder",
    "Trace",
    "WalkMemo",
    "function_site",
]

# Application frames in a call path: the helper, its caller, and the loop above them.
MAX_PATH = 4
# Library frames tolerated between two application frames (a decorator, a context
# manager); past that the walk has reached the framework that called the endpoint.
_MAX_GAP = 3
_MAX_CACHED_CODES = 65536

# Why a walk ended: the path is complete, the frame that runs a task, the end of a stack.
_FULL, _AT_TASK, _END_OF_STACK, _SERIALIZING = 0, 1, 2, 3


class CallSite(NamedTuple):
    """A line in the application: ``file:line in function``."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


class Trace(NamedTuple):
    """Where a statement came from (see :meth:`CallSiteFinder.find_path`)."""

    site: str
    """The innermost application frame, ``file:line in function`` ("" if none)."""
    path: str
    """The application frames, outermost first, joined by ``" -> "``."""
    by_relation: bool
    """An ORM's relation loader ran the statement."""
    origin: str
    """The path's outermost function, ``file in function``."""
    relation: str = ""
    """The relation the loader loads, ``Model.attribute``, where its adapter names it."""
    operation: FrameType | None = None
    """The frame of the ORM operation that ran it (a merge, a flush), if one did: one
    call, told apart from the next by the frame's identity while it is held."""
    serialized: bool = False
    """No application frame, and a response serializer ran it: ``path`` is empty and the
    request's endpoint is where it came from."""

    @property
    def operation_name(self) -> str:
        """``Session.merge``: the ORM operation's qualified name, or ""."""
        frame = self.operation
        return "" if frame is None else frame.f_code.co_qualname


# Code flags of generator and async generator functions (inspect.CO_GENERATOR,
# inspect.CO_ASYNC_GENERATOR): their frames are resumed by whoever iterates them, so
# what lies above one is not fixed while it lives.
_GENERATOR_FLAGS = 0x20 | 0x200
# Entries a scope's memo keeps at most in each of its tables (a scope may gather thousands
# of tasks; hooks are a handful), emptied when reached.
_MAX_MEMO_ENTRIES = 256
# Chains remembered above one hook's code (see WalkMemo.jumps).
_MAX_CHAINS = 4


# What a walk found: (its first application frame, that frame's bytecode offset then,
# the finder and depth it walked with, its trace); and a chain up to it from a hook's
# code: (frames from the hook's frame to the one below the application's, that frame's
# code, what the walk found).
_Found = tuple[FrameType, int, object, int, Trace]
_Chain = tuple[int, CodeType, _Found]
# Application frames where a task is suspended: (the frames, innermost first, the
# innermost's bytecode offset then, the finder and depth they were found with).
_Suspended = tuple[list[FrameType], int, object, int]


class WalkMemo:
    """The last walk's answer, for the statements of one scope (see
    :meth:`CallSiteFinder.find_path`), kept by whoever keeps the scope's queries: the
    frame it holds lives no longer than the scope."""

    __slots__ = ("jumps", "last", "suspended", "tasks")

    def __init__(self) -> None:
        # (first application frame, its bytecode offset, finder, depth, trace), replaced
        # whole: a statement from another thread reads one or the other, never a mix.
        self.last: _Found | None = None
        # id(code of the walk's first frame) -> that code, and the chains walked up from
        # it, latest first (see _jump): where a hook sent from the same library code can
        # look first. One line's statements may come up through a few chains in turn (a
        # query's own, each of its eager loads', an eager-load hook's), and one frame
        # may send them from two of its lines (``session.scalars(query).one()``).
        self.jumps: dict[int, tuple[CodeType, tuple[_Chain, ...]]] = {}
        # A gathered task with no application frame of its own -> (the frames where the
        # task awaiting it is suspended, the innermost's bytecode offset, finder, depth).
        # That task stays suspended there until this one ends, so a prefetch query's
        # checkout, statement and release find the same frames with one search.
        self.tasks: dict[asyncio.Task[Any], _Suspended] = {}
        # A task awaiting gathered ones -> (its application frames where it is suspended,
        # the innermost's bytecode offset, finder, depth): the next child gathered from
        # the same await finds them with no look at the task's coroutines.
        self.suspended: dict[asyncio.Task[Any], _Suspended] = {}


class CallSiteFinder:
    """Finds the call site of the running code; one per PoolWatch (its ignore list).

    ``ignore_modules`` adds module prefixes (``"myapp.db"``) to treat like a library, for
    applications that wrap the ORM in a layer of their own.
    """

    def __init__(self, ignore_modules: Iterable[str] = ()) -> None:
        self._ignore = tuple(ignore_modules)
        # id(code) -> APP, INSTALLED or LIBRARY, decided once per function. Keyed by id
        # because hashing a code object hashes its bytecode on every lookup; _seen holds
        # each code object so that its id cannot be reused while the verdict is cached.
        self._library: dict[int, int] = {}
        self._seen: list[CodeType] = []
        # (id(code), offset) -> (code, "file:line in function"): a loop formats one string
        self._sites: dict[tuple[int, int], tuple[CodeType, str]] = {}
        # (code id, offset, ... of each path frame, the loader's relation or None) ->
        # (its Trace, the code objects the key names)
        self._paths: dict[tuple[object, ...], tuple[Trace, tuple[CodeType, ...]]] = {}
        self._stop = task_boundary_code()

    def find(self, skip: int = 1) -> str | None:
        """The call site of the code running now (``file:line in function``), if any.

        ``skip`` frames are known to be poolwatch's own: ``sys._getframe(skip)`` steps
        over them without materialising a frame object for each.
        """
        found = self.find_path(skip + 1, depth=1)  # one frame: the walk ends there
        return None if found is None else found[0]

    def find_path(  # noqa: PLR0912, PLR0915 - one loop on purpose: see the comment in it
        self, skip: int = 1, depth: int = MAX_PATH, memo: WalkMemo | None = None
    ) -> Trace | None:
        """Where the code running now comes from: its call site and application call
        path, and what ran the statement below them (:class:`Trace`).

        The path is the innermost ``depth`` application frames, outermost first,
        joined by ``" -> "``: ``service.py:136 in list_articles -> favorite.py:27 in
        count``. The loop that calls a per-row helper is in it, and two callers of one
        helper have two paths. The call site is its innermost frame. ``None`` when no
        frame is the application's (nor a serializer's).

        With a ``memo`` (a scope's), the walk stops at the first application frame when
        it is the very frame the last walk stopped at, at the same bytecode offset, with
        nothing but plain library frames below it: a loop's statements. A running
        frame's callers, and a coroutine's awaiting ones, stay what they were while it
        runs, and so does the rest of the walk (a generator's do not: its frames are
        never remembered).
        """
        try:
            frame: FrameType | None = sys._getframe(skip)
        except ValueError:  # a shallower stack than the caller promised
            frame = sys._getframe(1)
            memo = None  # skip is not where this stack starts: no jump either
        start = frame  # the hook's library frame, where a jump is remembered from
        if memo is not None and start is not None:
            jumped = _jump(memo, start, skip, self, depth)
            if jumped is not None:
                return jumped
        # This runs for every statement, over 10-25 frames: the walk is one loop in one
        # function, and allocates nothing but the path and its key in the usual case (a
        # Python call or a small object costs as much as a few frames of the walk).
        library = self._library
        stop = self._stop
        path: list[FrameType] = []
        # Each path frame's code and bytecode offset (by id: hashing a code object hashes
        # its bytecode): formatting "file:line in function" (f_lineno decodes the line
        # table) happens once per distinct path.
        key: list[object] = []
        notes: _Walk | None = None  # made for the first frame that is not a plain library's
        at_task = False  # the running stack ended at the frame that runs a task
        parents: Iterator[FrameType] | None = None
        hops = 0  # frames walked on the running stack before the first application one
        first_hops = -1  # ... once found there (-1: not, or in another stack)
        while True:
            # A walk ends with depth frames, _MAX_GAP library frames past the last
            # application frame (the framework that called the endpoint), or at the frame
            # that runs an asyncio callback: below it lie the event loop and whatever
            # started it, never the code that issued this query.
            ended = _END_OF_STACK
            gap = 0
            while frame is not None:
                code = frame.f_code
                verdict = library.get(id(code))
                if verdict is None:
                    verdict = self._judge(code, frame)
                if verdict is APP:
                    if not path and notes is None and memo is not None:
                        last = memo.last
                        if (
                            last is not None
                            and last[0] is frame
                            and last[1] == frame.f_lasti
                            and last[2] is self
                            and last[3] == depth
                        ):
                            if parents is None and hops > 0 and start is not None:
                                _remember_jump(memo, start, skip, hops, last)
                            return last[4]
                    if not path and parents is None:
                        first_hops = hops
                    path.append(frame)
                    key.append(id(code))
                    key.append(frame.f_lasti)
                    if len(path) >= depth:
                        ended = _FULL
                        break
                    gap = 0
                elif path:
                    if verdict is not INLINE:
                        gap += 1
                        if gap > _MAX_GAP:
                            ended = _FULL
                            break
                elif verdict is not LIBRARY and verdict is not INLINE:
                    if notes is None:
                        notes = _Walk()
                    notes.note(frame, verdict)
                    if notes.serializer:
                        ended = _SERIALIZING
                        break
                if code is stop:
                    ended = _AT_TASK
                    break
                frame = frame.f_back
                hops += 1
            if parents is None:
                at_task = ended is _AT_TASK
            if ended is not _END_OF_STACK or len(path) >= depth:
                break
            # SQLAlchemy's asyncio layer runs the ORM in a greenlet whose stack ends at the
            # greenlet; the awaiting coroutines are on the stacks of those waiting for it.
            if parents is None:
                parents = waiting_greenlets()
            frame = next(parents, None)
            if frame is None:
                break
        walked = bool(path)  # found by this walk, not where another task waits
        if not path and at_task:
            path = self._awaited_by(depth, memo)
        if notes is None:
            if not path:
                return None
        elif not path or notes.loader is not None or notes.operation is not None:
            return self._noted(path, notes)
        if len(key) != 2 * len(path):  # frames found beyond the walk: keyed here
            key = _key_of(path)
        key.append(None)  # no relation loader (see _noted)
        path_key = tuple(key)
        known = self._paths.get(path_key)
        if known is None:
            known = self._remember(path_key, path, False, "")
        trace = known[0]
        if memo is not None and walked and notes is None:
            first = path[0]
            if not first.f_code.co_flags & _GENERATOR_FLAGS:
                memo.last = last = (first, first.f_lasti, self, depth, trace)
                if first_hops > 0 and start is not None:
                    _remember_jump(memo, start, skip, first_hops, last)
        return trace

    def _noted(self, path: list[FrameType], notes: _Walk) -> Trace | None:
        """:meth:`find_path`'s answer where the walk noted a relation loader, an ORM
        operation or no application frame (:class:`_Walk`)."""
        loader = notes.loader
        relation = "" if loader is None else relation_name(loader)
        if not path:
            # No application frame: FastAPI's serialization ran it, or a relation was
            # loaded with no application code on the stack at all, which only a
            # framework reading the objects an endpoint returned does (FastAPI validates
            # a sync endpoint's response in the thread pool, and a compiled pydantic 1
            # leaves no frame of its own there).
            if notes.serializer or (loader is not None and notes.installed is None):
                return Trace("", "", loader is not None, "", relation, notes.operation, True)
            if notes.installed is None:
                return None
            path = [notes.installed]
        key = _key_of(path)
        # The loader's relation is part of the key (None: no loader): what the adapter
        # names it may differ between two loads from one line (getattr(row, name)).
        key.append(None if loader is None else relation)
        path_key = tuple(key)
        known = self._paths.get(path_key)
        if known is None:
            known = self._remember(path_key, path, loader is not None, relation)
        trace = known[0]
        if notes.operation is not None:  # the operation's frame is this statement's
            return tuple.__new__(Trace, (*trace[:5], notes.operation, False))
        return trace

    def _remember(
        self, key: tuple[object, ...], path: list[FrameType], by_relation: bool, relation: str
    ) -> tuple[Trace, tuple[CodeType, ...]]:
        """The trace of a path first seen, formatted once and cached under ``key``."""
        if len(self._paths) >= _MAX_CACHED_CODES:
            self._paths.clear()
        sites = [self._site(frame) for frame in reversed(path)]
        code = path[-1].f_code
        origin = f"{display_path(code.co_filename)} in {code.co_qualname}"
        found = Trace(sites[-1], " -> ".join(sites), by_relation, origin, relation)
        # The entry holds the code objects its key names by id, so no id is reused while
        # it is cached.
        known = self._paths[key] = (found, tuple(frame.f_code for frame in path))
        return known

    # -- the walk ----------------------------------------------------------------------

    def _judge(self, code: CodeType, frame: FrameType) -> int:
        if len(self._library) >= _MAX_CACHED_CODES:
            self._library.clear()
            self._seen.clear()
        verdict = verdict_of(code, frame, self._ignore)
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

    def _awaited_by(self, depth: int, memo: WalkMemo | None) -> list[FrameType]:
        """:meth:`_from_awaiting_task`, remembered per running task in ``memo``: found
        again only once the awaiting frame has moved on (its offset changed)."""
        if memo is None:
            return self._from_awaiting_task(depth)
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: no task to wait for this one
            return []
        if task is None:
            return []
        known = _recalled(memo.tasks, task, self, depth)
        if known is not None:
            return known
        path = self._from_awaiting_task(depth, memo)
        if path:  # none yet: the task may be awaited later, from anywhere
            _recall_later(memo.tasks, task, path, self, depth)
        return path

    def _from_awaiting_task(self, depth: int, memo: WalkMemo | None = None) -> list[FrameType]:
        for task in awaiting_tasks():
            path = self._suspended_in(task, depth, memo)
            if path:
                return path
        return []

    def _suspended_in(
        self, task: asyncio.Task[Any], depth: int, memo: WalkMemo | None
    ) -> list[FrameType]:
        """:meth:`_application_frames`, remembered per awaiting task in ``memo``: each of
        a gather's children (a prefetch's queries, one task each) finds its parent still
        suspended in the frames the first one found, at the same offset."""
        if memo is None:
            return self._application_frames(task, depth)
        known = _recalled(memo.suspended, task, self, depth)
        if known is not None:
            return known
        path = self._application_frames(task, depth)
        if path:
            _recall_later(memo.suspended, task, path, self, depth)
        return path

    def _application_frames(self, task: asyncio.Task[Any], depth: int) -> list[FrameType]:
        """The application frames nearest to where ``task`` is suspended, innermost
        first, ended as a walk is (``depth`` frames, or a gap of library frames)."""
        chain: list[tuple[FrameType, int]] = []  # outermost first: the awaits, in order
        for frame in suspended_frames(task):
            verdict = self._library.get(id(frame.f_code))
            if verdict is None:
                verdict = self._judge(frame.f_code, frame)
            chain.append((frame, verdict))
        found: list[FrameType] = []
        gap = 0
        for frame, verdict in reversed(chain):
            if verdict == APP:
                found.append(frame)
                gap = 0
                if len(found) >= depth:
                    break
            elif found and verdict != INLINE:
                gap += 1
                if gap > _MAX_GAP:
                    break
        return found


def _recalled(
    table: dict[asyncio.Task[Any], _Suspended], task: asyncio.Task[Any], finder: object, depth: int
) -> list[FrameType] | None:
    """The frames ``table`` keeps for ``task``, where ``finder`` found them at ``depth``
    and the innermost has not moved on since (its offset is the same)."""
    known = table.get(task)
    if known is not None:
        frames, offset, walker, found_depth = known
        if walker is finder and found_depth == depth and frames[0].f_lasti == offset:
            return frames
    return None


def _recall_later(
    table: dict[asyncio.Task[Any], _Suspended],
    task: asyncio.Task[Any],
    frames: list[FrameType],
    finder: object,
    depth: int,
) -> None:
    """Keep ``frames`` for ``task`` in ``table`` (see :func:`_recalled`), bounded."""
    if len(table) >= _MAX_MEMO_ENTRIES:
        table.clear()
    table[task] = (frames, frames[0].f_lasti, finder, depth)


def _jump(memo: WalkMemo, start: FrameType, skip: int, finder: object, depth: int) -> Trace | None:
    """The trace a walk would find, looked up without the walk: a loop's statement
    leaves the same library code (``start``) as an earlier one from that code did, and
    the frame as many frames above it is the application frame that walk ended at, at
    the same offset, calling the same function.

    Each chain remembered from ``start``'s code (latest first) is tried in turn.
    ``sys._getframe(n)`` steps over frames inside the interpreter and makes a frame
    object for the one it returns only, where a walk makes one for each frame crossed
    (15-25 below an ORM call), and judges each: in an ORM's own context that walk costs
    several microseconds per statement, this a fraction of one. The frames between are
    not looked at: the same call from the same instruction, ending in the same library
    code after as many frames, is taken to be the same chain (an ORM operation's or a
    relation loader's walks are never remembered, nor a generator's).
    """
    code = start.f_code
    jump = memo.jumps.get(id(code))
    if jump is None or jump[0] is not code:
        return None
    for chain in jump[1]:
        try:
            # The frame below the application's (this function's frame is one below the
            # caller's, that skip counts from): one step through the frames between.
            callee = sys._getframe(skip + chain[0])
        except ValueError:  # a shallower stack: another chain
            continue
        if callee.f_code is chain[1]:
            found = chain[2]
            frame = found[0]
            if (
                callee.f_back is frame
                and frame.f_lasti == found[1]
                and found[2] is finder
                and found[3] == depth
            ):
                return found[4]
    return None


def _remember_jump(memo: WalkMemo, start: FrameType, skip: int, hops: int, found: _Found) -> None:
    """Note, for :func:`_jump`, where the walk that just ended found its first
    application frame (``found``, as :attr:`WalkMemo.last` holds it): ``hops`` frames
    above the walk's first, ``start`` (``skip`` frames above
    :meth:`CallSiteFinder.find_path`'s, one up from here)."""
    # The frame just below the application's: skip + hops from find_path's frame.
    chain = (hops, sys._getframe(skip + hops).f_code, found)
    code = start.f_code
    known = memo.jumps.get(id(code))
    if known is None or known[0] is not code:
        if len(memo.jumps) >= _MAX_MEMO_ENTRIES:
            memo.jumps.clear()
        memo.jumps[id(code)] = (code, (chain,))
        return
    # The same chain to another line of the same frame (or to another frame) replaces
    # the one it found before.
    kept = tuple(c for c in known[1] if c[0] != hops or c[1] is not chain[1])
    memo.jumps[id(code)] = (code, (chain, *kept[: _MAX_CHAINS - 1]))


class _Walk:
    """What one walk found below the application's frames, where a frame was more than
    a plain library's (made only then: most walks meet none)."""

    __slots__ = ("installed", "loader", "operation", "serializer")

    def __init__(self) -> None:
        self.installed: FrameType | None = None  # the innermost installed-package frame
        self.loader: FrameType | None = None  # the innermost relation loader
        self.operation: FrameType | None = None  # the outermost ORM operation
        self.serializer = False

    def note(self, frame: FrameType, verdict: int) -> None:
        """A frame below the application's that is not a plain library's."""
        if verdict is INSTALLED:
            if self.installed is None:
                self.installed = frame
            return
        if verdict & RELATION and self.loader is None:
            self.loader = frame  # the innermost: the load running now
        if verdict & OPERATION:
            self.operation = frame  # the outermost: the call the application made
        if verdict & SERIALIZER:
            self.serializer = True


def _key_of(path: list[FrameType]) -> list[object]:
    """The cache key of a path's frames: each one's code (by id) and bytecode offset."""
    key: list[object] = []
    for frame in path:
        key.append(id(frame.f_code))
        key.append(frame.f_lasti)
    return key


def function_site(function: Any) -> str | None:
    """``file:line in function`` of a function's ``def`` line (decorators skipped), for
    naming an endpoint; ``None`` for anything without Python code."""
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    code = getattr(function, "__code__", None)
    if not isinstance(code, CodeType):
        return None
    line = code.co_firstlineno
    # co_firstlineno is the first decorator's line: the def is the first line after it
    # that starts one.
    for offset in range(16):
        text = linecache.getline(code.co_filename, line + offset).lstrip()
        if text.startswith(("def ", "async def ")):
            line += offset
            break
    return str(CallSite(display_path(code.co_filename), line, code.co_qualname))
