"""Reads the application's source between two statements: what the connection waited on.

A held connection's gap lies between two statements whose call paths are known
(``file:line in function`` frames, outermost first). :class:`WaitReader` finds those
functions in the application's source (the files the running modules were loaded from,
through :mod:`linecache`), takes the code that runs between the two lines
(:mod:`.regions`), and judges each call in it (:mod:`.waits`), following application
functions called there three calls deep. Each pair of call paths is read once and the
answer kept, so a gap costs a dictionary look-up after the first; a file is parsed once.

What it cannot see, it says it does not know (:data:`~.waits.UNKNOWN`): a function it
cannot find (a lambda, source missing or changed on disk since the app started, a call
path cut short), and the calls :func:`~.waits.judge` finds opaque.
"""

from __future__ import annotations

import ast
import linecache
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

from poolwatch.pools import regions, source
from poolwatch.pools.waits import NOTHING, UNKNOWN, Reading, reading
from poolwatch.queries.callsite import MAX_PATH
from poolwatch.queries.frames import display_path, is_installed, is_library_module

__all__ = ["WaitReader"]

_DEPTH = 3  # application functions followed from the gap's code
_MAX_PAIRS = 4096
_MAX_SOURCE = 2_000_000  # characters: a generated module is no app code to read
_FRAME = re.compile(r"^(?P<file>.+):(?P<line>\d+) in (?P<function>.+)$")


class _Frame(NamedTuple):
    file: str
    line: int
    function: str


def _frames(path: str) -> list[_Frame] | None:
    frames = []
    for part in path.split(" -> "):
        match = _FRAME.match(part)
        if match is None:
            return None
        frames.append(_Frame(match["file"], int(match["line"]), match["function"]))
    return frames


def _same_function(one: _Frame, other: _Frame) -> bool:
    return one.file == other.file and one.function == other.function


_Found = tuple[source.Scope, source.Function]
_Part = tuple[_Found, regions.Steps]  # calls of one function, with its scope


class WaitReader:
    """Says what the code between two statements waits on; one per pool's held_idle
    report. Answers are kept per pair of call paths (and files, once parsed)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], Reading] = {}
        self._rests: dict[str, Reading] = {}
        self._modules: dict[str, source.Module | None] = {}
        self._bodies: dict[tuple[str, int], Reading] = {}
        self._files: dict[str, str | None] = {}  # display path -> filename

    def between(self, before: str, after: str) -> Reading:
        """What runs after the statement of call path ``before`` and until the one
        (or the release) of ``after`` waits on.

        ``after=""``: until a release whose line is not known (SQLAlchemy's
        ``AsyncSession`` closes in a task of its own as its ``async with`` block ends):
        the rest of the innermost ``with`` block around the statement, where there is
        one (the connection goes back as it ends), else the rest of its functions.
        """
        key = (before, after)
        known = self._pairs.get(key)
        if known is not None:
            return known
        if len(self._pairs) >= _MAX_PAIRS:
            self._pairs.clear()
        self._pairs[key] = UNKNOWN  # a fault below is met once, not on every gap
        first, last = _frames(before) if before else None, _frames(after) if after else []
        if first is None or last is None:
            return UNKNOWN
        parts = self._gap(first, last) if last else self._release(first)
        found = self._pairs[key] = self._read(parts)
        return found

    def after(self, before: str) -> Reading:
        """What runs after the statement of call path ``before`` until its functions
        return waits on."""
        known = self._rests.get(before)
        if known is not None:
            return known
        if len(self._rests) >= _MAX_PAIRS:
            self._rests.clear()
        self._rests[before] = UNKNOWN
        first = _frames(before)
        if first is None:
            return UNKNOWN
        found = self._rests[before] = self._read(self._tails(first))
        return found

    def loop_of(self, path: str) -> str:
        """The loop that ran the statement of call path ``path`` again and again: the
        innermost frame whose line is in the body of a ``for``, ``while`` or ``async for``,
        or in a comprehension, as ``file:line in function (for item in items:)``; ``""``
        where none is found. The same source, read for a per-row write's report."""
        frames = _frames(path) if path else None
        for frame in reversed(frames or []):
            try:
                scope, function = self._function(frame)
            except regions.Unreadable:
                continue
            line = regions.loop_line(function.body, frame.line)
            if line is not None:
                text = linecache.getline(scope.module.filename, line).strip()
                text = text if len(text) <= 80 else text[:77] + "..."
                return f"{frame.file}:{line} in {frame.function} ({text})"
        return ""

    # -- the code of a gap -----------------------------------------------------------

    def _gap(self, first: list[_Frame], last: list[_Frame]) -> Iterator[_Part]:
        depth = min(len(first), len(last))
        split = next((i for i in range(depth) if first[i] != last[i]), depth)
        if split == depth == len(first) == len(last):
            # The same statement again: the turn of a loop around it, in the innermost
            # function that has one.
            for i in reversed(range(depth)):
                found = self._function(first[i])
                loop = regions.loop_around(found[1].body, first[i].line)
                if loop is not None:
                    yield from self._tails(first[i + 1 :])
                    line = first[i].line
                    yield found, regions.region(found[1].body, line, line)
                    yield from self._heads(last[i + 1 :])
                    return
            raise regions.Unreadable("the same statement twice, and no loop around it")
        cut = len(first) >= MAX_PATH or len(last) >= MAX_PATH
        if split < depth and _same_function(first[split], last[split]):
            # One function, two lines: what runs between them there, and on each side
            # the rest of the calls the first was in and the start of those of the last.
            found = self._function(first[split])
            yield from self._tails(first[split + 1 :])
            body = found[1].body
            yield found, regions.region(body, first[split].line, last[split].line)
            yield from self._heads(last[split + 1 :])
            return
        if split == 0 and cut:
            raise regions.Unreadable("a call path cut short: where the two meet is not known")
        # Two calls from one line, or two functions the framework calls one after the
        # other (a dependency, then the endpoint): the rest of the first, the start of
        # the second.
        yield from self._tails(first[split:])
        yield from self._heads(last[split:])

    def _release(self, frames: list[_Frame]) -> Iterator[_Part]:
        """What runs after the last frame's line until the block that holds the
        connection ends: a ``with`` around it, else each function's end, innermost
        first."""
        for frame in reversed(frames):
            found = self._function(frame)
            block = regions.with_around(found[1].body, frame.line)
            if block is not None:
                yield found, regions.region(block.body, frame.line, None)
                return
            yield found, regions.region(found[1].body, frame.line, None)

    def _tails(self, frames: list[_Frame]) -> Iterator[_Part]:
        """What runs after each frame's line until its function returns, innermost
        first (an inner function returns before its caller goes on)."""
        for frame in reversed(frames):
            found = self._function(frame)
            yield found, regions.region(found[1].body, frame.line, None)

    def _heads(self, frames: list[_Frame]) -> Iterator[_Part]:
        """What runs in each frame before its line, from where the function started or,
        for a generator taken up again (a dependency that yields), its last yield."""
        for frame in frames:
            found = self._function(frame)
            body = found[1].body
            start = regions.after_last_yield(body, frame.line)
            yield found, regions.region(body, start, frame.line)

    def _read(self, parts: Iterator[_Part], depth: int = _DEPTH) -> Reading:
        def follow(scope: source.Scope, name: str, awaited: bool) -> Reading | None:
            return self._follow(scope, name, awaited, depth)

        return reading(((found[0], step) for found, steps in parts for step in steps), follow)

    def _follow(self, scope: source.Scope, name: str, awaited: bool, depth: int) -> Reading | None:
        """What the application function ``name`` called from ``scope`` waits on."""
        located = self._locate(scope, name)
        if located is None:
            return None
        module, function, owner = located
        if isinstance(function, ast.AsyncFunctionDef) and not awaited:
            return NOTHING  # a coroutine made and not awaited here runs nothing here
        if depth <= 1:
            return UNKNOWN
        key = (module.filename, function.lineno)
        found = self._bodies.get(key)
        if found is None:
            self._bodies[key] = UNKNOWN  # a function that calls itself
            inner = source.Scope(module, function, owner)
            body = iter([((inner, function), regions.calls_in(function.body))])
            found = self._bodies[key] = self._read(body, depth - 1)
        if found.wait is None or found.wait.inside:
            return found
        where = f"{owner.name}.{function.name}" if owner is not None else function.name
        return found._replace(wait=found.wait._replace(inside=where))

    def _locate(
        self, scope: source.Scope, name: str
    ) -> tuple[source.Module, source.Function, Any] | None:
        module = scope.module
        local_prefix = f"{module.name}.<locals>."
        if name.startswith(local_prefix) and scope.function is not None:
            function = scope.locals.get(name[len(local_prefix) :])
            return None if function is None else (module, function, None)
        if name.startswith(module.name + "."):
            member = module.member(name[len(module.name) + 1 :])
            return None if member is None else (module, *member)
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            loaded = sys.modules.get(".".join(parts[:cut]))
            if loaded is None:
                continue
            filename = getattr(loaded, "__file__", None)
            if not isinstance(filename, str) or not self._application(loaded):
                return None
            other = self._module(filename, loaded.__name__, loaded)
            member = None if other is None else other.member(".".join(parts[cut:]))
            return None if other is None or member is None else (other, *member)
        return None

    @staticmethod
    def _application(loaded: Any) -> bool:
        """Whether a loaded module is the application's: no library's, not installed."""
        filename = getattr(loaded, "__file__", None)
        return (
            isinstance(filename, str)
            and not is_library_module(loaded.__name__)
            and not is_installed(filename)
        )

    # -- the source ------------------------------------------------------------------

    def _function(self, frame: _Frame) -> _Found:
        if frame.function.endswith(">"):
            # <module>, <lambda>, <genexpr>: no function of its own to read
            raise regions.Unreadable(f"{frame.function} has no function to read")
        filename = self._filename(frame.file)
        module = None if filename is None else self._module(filename)
        if module is None:
            raise regions.Unreadable(f"no source for {frame.file}")
        function, owner = module.function(frame.function, frame.line)
        if function is None:
            raise regions.Unreadable(f"no function {frame.function} in {frame.file}")
        return source.Scope(module, function, owner), function

    def _filename(self, shown: str) -> str | None:
        """The file a call path names (as :func:`display_path` showed it)."""
        if shown in self._files:
            return self._files[shown]
        found: str | None = shown
        if not os.path.isabs(shown):
            # display_path showed it from the working directory, else from a sys.path
            # entry; a module's own file settles any doubt.
            roots = (os.getcwd(), *(p for p in sys.path if p and os.path.isabs(p)))
            found = next(
                (p for root in roots if os.path.isfile(p := os.path.join(root, shown))), None
            )
            if found is None or display_path(found) != shown:
                found = next(
                    (
                        path
                        for loaded in list(sys.modules.values())
                        if isinstance(path := getattr(loaded, "__file__", None), str)
                        and display_path(path) == shown
                    ),
                    found,
                )
        if len(self._files) < _MAX_PAIRS:
            self._files[shown] = found
        return found

    def _module(self, filename: str, name: str = "", loaded: Any = None) -> source.Module | None:
        if filename in self._modules:
            return self._modules[filename]
        if len(self._modules) >= _MAX_PAIRS:
            self._modules.clear()
        self._modules[filename] = None
        if not name:
            loaded = next(
                (m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == filename),
                None,
            )
            name = getattr(loaded, "__name__", "") or ""
        if name == "__main__":
            spec = getattr(loaded, "__spec__", None)
            name = getattr(spec, "name", "") or ""
        lines = linecache.getlines(filename, getattr(loaded, "__dict__", None))
        text = "".join(lines)
        if not text or len(text) > _MAX_SOURCE:
            return None
        module = self._modules[filename] = source.parse(filename, name, text)
        if module is not None:
            module.find_class = self._class
        return module

    def _class(self, name: str) -> tuple[source.Module, ast.ClassDef] | None:
        """An application class by its dotted name, in whichever module defines it."""
        module_name, _, class_name = name.rpartition(".")
        loaded = sys.modules.get(module_name)
        filename = getattr(loaded, "__file__", None)
        if loaded is None or not isinstance(filename, str) or not self._application(loaded):
            return None
        module = self._module(filename, module_name, loaded)
        node = None if module is None else module.names.get(class_name)
        return (module, node) if module is not None and isinstance(node, ast.ClassDef) else None
