"""The code that runs between two lines of one function, read from its syntax tree. Pure.

A connection held between two statements waits on whatever the code between them does.
Both statements are known by their lines (the call paths either side of the gap), so
that code can be read: the statements after the first line and before the second, the
rest of a ``with`` block whose exit released the connection, the rest of a loop's body
and the start of its next turn. :func:`region` yields every call in it as a
:class:`Step`, with whether it runs on every path from the first line to the second
(``certain``): a call in a straight run of statements does; one in an ``if`` branch, a
loop body, an ``except`` handler, the right of an ``and``/``or`` or after a possible
``return`` does not, unless getting to the second line proves it ran (past ``if a or
b: raise``, both ``a`` and ``b`` ran).

Lines that do not fall where the tree says they would (the file changed since it was
loaded, a line outside the function) raise :class:`Unreadable`: what ran is not known.

Only the standard library's :mod:`ast`; nothing here imports, reads a file or a clock.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "Step",
    "Steps",
    "Unreadable",
    "after_last_yield",
    "awaited_calls",
    "calls_in",
    "loop_around",
    "loop_line",
    "region",
    "walk_scope",
    "with_around",
]


class Step(NamedTuple):
    """One call of the code between two lines."""

    call: ast.Call
    certain: bool
    """It runs on every path between the two lines."""
    sending: bool = False
    """It is on the second line, where the next statement is sent: it may be the call
    that sends it (``await session.execute(...)``), or one of its arguments."""


Steps = Iterator[Step]


class Unreadable(Exception):
    """The lines are not where the function's syntax tree has statements."""


_Block = Sequence[ast.stmt]
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_WITHS = (ast.With, ast.AsyncWith)
_EXITS = (ast.Return, ast.Raise, ast.Break, ast.Continue)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def region(body: _Block, first: int | None, last: int | None) -> Steps:
    """The calls of ``body`` that run after line ``first`` and before line ``last``.

    ``first=None``: from the start of ``body``; ``last=None``: to its end, where a
    statement that may ``return`` or ``raise`` makes what follows it uncertain.
    """
    start = -1 if first is None else _index(body, first)
    end = len(body) if last is None else _index(body, last)
    if start is None or end is None or start > end:
        raise Unreadable(f"lines {first} and {last} are not in order in one block")
    if start == end:
        yield from _inside(body[start], first, last)
        return
    certain = True
    if start >= 0:
        yield from _after(body[start], first)
        certain = last is not None or not _may_exit(body[start])
    for statement in body[start + 1 : end]:
        if last is not None and isinstance(statement, ast.If) and _guards(statement):
            # Past `if not valid: raise`: the test ran, and came out false.
            yield from _decided(statement.test, value=False, certain=certain)
            continue
        yield from _statement(statement, certain)
        if last is None and _may_exit(statement):
            certain = False
    if end < len(body) and last is not None:
        yield from _before(body[end], last)


def calls_in(body: _Block) -> Steps:
    """Every call of a function's ``body``, as when the function is called."""
    return _block(body, certain=True)


def after_last_yield(body: _Block, line: int) -> int | None:
    """The line of the last ``yield`` before ``line`` in a generator's ``body`` (where a
    resumed generator, such as a dependency that yields a session, took up again)."""
    found = None
    for node in walk_scope(body):
        if isinstance(node, ast.Yield | ast.YieldFrom) and node.lineno < line:
            found = max(found or 0, node.lineno)
    return found


def with_around(body: _Block, line: int) -> ast.With | ast.AsyncWith | None:
    """The innermost ``with`` (or ``async with``) block of ``body`` that holds ``line``."""
    found = None
    for node in walk_scope(body):
        if isinstance(node, _WITHS) and _holds(node.body, line):
            found = node  # walked outermost first: the last is the innermost
    return found


def loop_around(body: _Block, line: int) -> ast.For | ast.AsyncFor | ast.While | None:
    """The innermost loop of ``body`` whose body holds ``line``."""
    found = None
    for node in walk_scope(body):
        if isinstance(node, _LOOPS) and _holds(node.body, line):
            found = node  # walked outermost first: the last is the innermost
    return found


def loop_line(body: _Block, line: int) -> int | None:
    """The line of the innermost loop of ``body`` that runs ``line`` again and again: a
    loop whose body holds it, or a comprehension (``[await save(x) for x in xs]``) on it."""
    loop = loop_around(body, line)
    found = None if loop is None else loop.lineno
    for node in walk_scope(body):
        if (
            isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp)
            and node.lineno <= line <= (node.end_lineno or node.lineno)
            and (found is None or node.lineno >= found)
        ):
            found = node.lineno
    return found


# -- where the lines are -------------------------------------------------------------


def _index(body: _Block, line: int) -> int | None:
    for i, statement in enumerate(body):
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            return i
    return None


def _holds(body: _Block, line: int) -> bool:
    return _index(body, line) is not None


def _blocks(statement: ast.stmt) -> list[_Block]:
    """The statement lists inside a compound statement."""
    if isinstance(statement, ast.If | ast.For | ast.AsyncFor | ast.While):
        return [statement.body, statement.orelse]
    if isinstance(statement, _WITHS):
        return [statement.body]
    if isinstance(statement, ast.Try | ast.TryStar):
        handlers = [handler.body for handler in statement.handlers]
        return [statement.body, *handlers, statement.orelse, statement.finalbody]
    if isinstance(statement, ast.Match):
        return [case.body for case in statement.cases]
    return []


def _block_of(statement: ast.stmt, line: int) -> _Block | None:
    return next((block for block in _blocks(statement) if _holds(block, line)), None)


def _on_header(statement: ast.stmt, line: int) -> bool:
    """Whether ``line`` is the header of a compound statement (``for row in await
    session.execute(...):``), before any of its blocks."""
    return bool(_blocks(statement)) and _block_of(statement, line) is None


# -- the parts of a statement ---------------------------------------------------------


def _inside(statement: ast.stmt, first: int | None, last: int | None) -> Steps:
    """Both lines in one statement: what runs between them inside it."""
    if first is None or last is None:
        raise Unreadable("a line of a region is missing")
    if isinstance(statement, _WITHS) and last == statement.lineno:
        # The connection went back as the block ended (the exit is the header's line):
        # the rest of the block ran after the first statement.
        body = _block_of(statement, first)
        if body is not None:
            yield from region(body, first, None)
        return
    if _on_header(statement, first):
        # From the header into one of its blocks: it ran from its start to the line.
        block = _block_of(statement, last)
        if block is None:
            return  # both on the header: one line, nothing between
        yield from region(block, None, last)
        return
    block = _block_of(statement, first)
    if block is None:
        return  # a simple statement: two statements sent from one line
    if _holds(block, last):
        if isinstance(statement, _LOOPS) and last <= first:
            # The next turn of the loop: the rest of this one, the start of the next.
            yield from region(block, first, None)
            yield from _header_of_turn(statement)
            yield from region(block, None, last)
        else:
            yield from region(block, first, last)
        return
    if isinstance(statement, ast.Try | ast.TryStar):
        other = _block_of(statement, last)
        if other is not None:
            yield from _uncertain(region(block, first, None))
            yield from region(other, None, last)
            return
    if isinstance(statement, _LOOPS) and _on_header(statement, last):
        # The loop's header again (`for row in await result.fetchmany()`): the rest of
        # the turn, then the header's own calls.
        yield from region(block, first, None)
        yield from _sending(_header(statement))
        return
    raise Unreadable(f"no path from line {first} to line {last}")


def _after(statement: ast.stmt, first: int | None) -> Steps:
    """What runs in ``statement`` after line ``first``, until the statement ends."""
    if first is None:
        return
    if _on_header(statement, first):
        # A statement sent from a header (`for row in await ...:`): its blocks run next,
        # a `with` block surely, a branch or a loop's body maybe.
        for inner in _blocks(statement):
            yield from _block(inner, certain=isinstance(statement, _WITHS))
        return
    block = _block_of(statement, first)
    if block is None:
        return  # a simple statement: nothing of it runs after the line
    yield from region(block, first, None)
    if isinstance(statement, _LOOPS):
        yield from _uncertain(_header_of_turn(statement))  # the turns after this one
        yield from _block(statement.body, certain=False)
    if isinstance(statement, ast.Try | ast.TryStar) and block is not statement.finalbody:
        yield from _block(statement.finalbody, certain=True)


def _before(statement: ast.stmt, last: int) -> Steps:
    """What runs in ``statement`` before line ``last``, from its start."""
    if isinstance(statement, _WITHS) and last == statement.lineno:
        return  # the header itself: entering (or leaving) the block
    if _on_header(statement, last):
        yield from _sending(_header(statement))
        return
    block = _block_of(statement, last)
    if block is None:
        # A simple statement: the line that sends the next statement.
        yield from _sending(_statement(statement, certain=True))
        return
    if isinstance(statement, ast.If):
        # In a branch: the test ran, and decided for it.
        yield from _decided(statement.test, value=block is statement.body, certain=True)
    else:
        yield from _header(statement)
    if isinstance(statement, ast.Try | ast.TryStar) and block is not statement.body:
        yield from _uncertain(_block(statement.body, certain=True))
    yield from region(block, None, last)


def _header(statement: ast.stmt) -> Steps:
    """The calls a compound statement makes before its block: an ``if``'s test, a
    loop's iterable, a ``with``'s context managers, a ``match``'s subject."""
    if isinstance(statement, ast.If | ast.While):
        yield from _expression(statement.test, certain=True)
    elif isinstance(statement, ast.For | ast.AsyncFor):
        yield from _expression(statement.iter, certain=True)
    elif isinstance(statement, _WITHS):
        for item in statement.items:
            yield from _expression(item.context_expr, certain=True)
    elif isinstance(statement, ast.Match):
        yield from _expression(statement.subject, certain=True)


def _header_of_turn(loop: ast.For | ast.AsyncFor | ast.While) -> Steps:
    """What a loop runs between two turns: a ``while``'s test; nothing for a ``for``,
    which takes its next item from an iterator made once. An ``async for`` awaits its
    next item, which may come from anywhere (a stream of rows, a socket): not known."""
    if isinstance(loop, ast.While):
        yield from _expression(loop.test, certain=True)
    elif isinstance(loop, ast.AsyncFor):
        raise Unreadable("an async for awaits its next item")


def _statement(statement: ast.stmt, certain: bool) -> Steps:
    """Every call of a whole statement."""
    if isinstance(statement, _SCOPES):
        return  # a definition runs nothing of its body
    blocks = _blocks(statement)
    if not blocks:
        yield from _expression(statement, certain)
        return
    yield from _header(statement) if certain else _uncertain(_header(statement))
    if isinstance(statement, _WITHS):
        yield from _block(statement.body, certain)
    elif isinstance(statement, ast.Try | ast.TryStar):
        yield from _block(statement.body, certain)
        for handler in statement.handlers:
            yield from _block(handler.body, certain=False)
        yield from _block(statement.orelse, certain=False)
        yield from _block(statement.finalbody, certain)
    else:  # if, loops, match: a branch or a body that may not run
        for block in blocks:
            yield from _block(block, certain=False)


def _block(body: _Block, certain: bool) -> Steps:
    for statement in body:
        yield from _statement(statement, certain)
        if _may_exit(statement):
            certain = False


def _expression(node: ast.AST, certain: bool) -> Steps:
    """The calls of an expression (or a simple statement), in the order they run."""
    if isinstance(node, _SCOPES):
        return
    if isinstance(node, ast.Call):
        yield from _expression(node.func, certain)
        for argument in (*node.args, *(keyword.value for keyword in node.keywords)):
            yield from _expression(argument, certain)
        yield Step(node, certain)
        return
    if isinstance(node, ast.BoolOp):  # `a or await b`: b runs only if a is false
        yield from _expression(node.values[0], certain)
        for value in node.values[1:]:
            yield from _expression(value, certain=False)
        return
    if isinstance(node, ast.IfExp):
        yield from _expression(node.test, certain)
        yield from _expression(node.body, certain=False)
        yield from _expression(node.orelse, certain=False)
        return
    if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        first = node.generators[0]
        yield from _expression(first.iter, certain)
        for child in ast.iter_child_nodes(node):
            if child is not first:
                yield from _expression(child, certain=False)
        yield from _expression(first.target, certain=False)
        for condition in first.ifs:
            yield from _expression(condition, certain=False)
        return
    for child in ast.iter_child_nodes(node):
        yield from _expression(child, certain)


def _decided(test: ast.expr, value: bool, certain: bool) -> Steps:
    """The calls of a test known to have come out ``value``: an ``or`` that came out
    false, or an ``and`` that came out true, evaluated every operand."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        yield from _decided(test.operand, not value, certain)
        return
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or if not value else ast.And):
        for operand in test.values:
            yield from _decided(operand, value, certain)
        return
    yield from _expression(test, certain)


def _guards(statement: ast.If) -> bool:
    """An ``if`` with no ``else`` whose body always leaves the block (``if user is None
    or not valid: raise ...``): code after it ran only where its test was false."""
    return not statement.orelse and any(isinstance(inner, _EXITS) for inner in statement.body)


def _uncertain(steps: Steps) -> Steps:
    for step in steps:
        yield step._replace(certain=False)


def _sending(steps: Steps) -> Steps:
    """The calls of the line that sends the next statement: they run before it, or are
    its own, or (a call on its result) run after it."""
    for step in steps:
        yield step._replace(certain=False, sending=True)


def _may_exit(statement: ast.stmt) -> bool:
    """Whether ``statement`` may end its block early (a ``return``, ``raise``,
    ``break`` or ``continue`` anywhere in it, outside nested definitions)."""
    return any(isinstance(node, _EXITS) for node in walk_scope([statement]))


def walk_scope(body: _Block) -> Iterator[ast.AST]:
    """The nodes of ``body`` in order, nested functions, classes and lambdas included but
    not entered."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def awaited_calls(body: _Block) -> set[int]:
    """The ids of the calls of ``body`` that are awaited: ``await f()``, the awaitables
    handed to one that awaits them (``await asyncio.gather(f(), g())``), the context managers
    of ``async with`` and the iterables of ``async for``. A coroutine function called
    any other way (``asyncio.create_task(f())``) does not run in the caller's time."""
    awaited: set[int] = set()
    for node in walk_scope(body):
        if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
            awaited.add(id(node.value))
            if _name_of(node.value.func) not in _AWAITING:
                continue
            for given in node.value.args:
                argument = given.value if isinstance(given, ast.Starred) else given
                if isinstance(argument, ast.ListComp | ast.GeneratorExp):
                    argument = argument.elt
                if isinstance(argument, ast.Call):
                    awaited.add(id(argument))
        elif isinstance(node, ast.AsyncWith):
            awaited.update(id(item.context_expr) for item in node.items)
        elif isinstance(node, ast.AsyncFor):
            awaited.add(id(node.iter))
    return awaited


# Functions that await the awaitables they are handed (asyncio's, anyio's, trio's).
_AWAITING = frozenset({"gather", "wait", "wait_for", "shield", "timeout"})


def _name_of(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""
