"""An application module as the wait reader sees it, from its syntax tree. Pure.

:class:`Module` is one parsed file: what its imports and top-level names stand for, as
dotted names, and its functions by qualified name (``make_app.<locals>.login``,
``AccountRepository.by_email``). :class:`Scope` is one function of it being read: what
each name in it stands for, from its parameters' annotations (a ``Depends`` included),
its assignments (``client = httpx.AsyncClient()``), its ``with`` targets and, in a
method, the attributes its class sets on ``self``. Names are resolved by reading, never
by importing or running anything.

Only the standard library's :mod:`ast`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import cast

from poolwatch.pools import regions

__all__ = ["Function", "Module", "Scope", "parse"]

Function = ast.FunctionDef | ast.AsyncFunctionDef


def parse(filename: str, name: str, text: str) -> Module | None:
    """The module ``name`` whose source ``text`` was loaded from ``filename``, or
    ``None`` if it does not parse."""
    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError):
        return None
    return Module(filename, name, tree)


class Module:
    """One parsed module: its imports and top-level names, as dotted names."""

    def __init__(self, filename: str, name: str, tree: ast.Module) -> None:
        self.filename = filename
        self.name = name or f"<{filename}>"
        self.tree = tree
        self.imports: dict[str, str] = {}
        package = name if filename.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        top = alias.name.partition(".")[0]
                        self.imports[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{base}.{alias.name}"
        self.names: dict[str, ast.AST] = {}
        self.types: dict[str, str] = {}  # module-level variable -> its type (dotted)
        for statement in tree.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.names[statement.name] = statement
        # Finds a class by its dotted name, for the types of its attributes: this
        # module's own; a reader that sees other modules sets one that finds theirs.
        self.find_class: Callable[[str], tuple[Module, ast.ClassDef] | None] = self._own_class
        self._attributes: dict[str, dict[str, str]] = {}
        scope = Scope(self, None, None)
        for statement in tree.body:
            scope.learn(statement)
        self.types.update(scope.types)

    def _own_class(self, name: str) -> tuple[Module, ast.ClassDef] | None:
        prefix = self.name + "."
        node = self.names.get(name[len(prefix) :]) if name.startswith(prefix) else None
        return (self, node) if isinstance(node, ast.ClassDef) else None

    def attribute(self, owner: str, attribute: str) -> str | None:
        """The type of ``attribute`` on instances of the class ``owner`` (a dotted
        name), as the class sets or annotates it; ``None``: not known."""
        found = self.find_class(owner)
        if found is None:
            return None
        module, node = found
        known = module._attributes.get(node.name)
        if known is None:
            module._attributes[node.name] = {}  # a class whose attributes name itself
            known = module._attributes[node.name] = Scope(module, None, node).attributes
        return known.get(attribute)

    def function(self, qualname: str, line: int) -> tuple[Function | None, ast.ClassDef | None]:
        """The function ``qualname`` whose lines hold ``line``, and the class it is a
        method of."""
        body: list[ast.stmt] = self.tree.body
        found: ast.AST | None = None
        owner: ast.ClassDef | None = None
        for name in qualname.split("."):
            if name == "<locals>":
                continue
            candidates = [
                node
                for node in regions.walk_scope(body)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and node.name == name
            ]
            if not candidates:
                return None, None
            holding = [c for c in candidates if c.lineno <= line <= (c.end_lineno or c.lineno)]
            owner = found if isinstance(found, ast.ClassDef) else None
            found = (holding or candidates)[0]
            body = found.body
        if isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef):
            return found, owner
        return None, None

    def member(self, qualname: str) -> tuple[Function, ast.ClassDef | None] | None:
        """A function of the module or a method of one of its classes (``Hasher.verify``),
        by its dotted name."""
        first, _, rest = qualname.partition(".")
        node = self.names.get(first)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not rest:
            return node, None
        if isinstance(node, ast.ClassDef) and rest and "." not in rest:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == rest:
                    return item, node
        return None


class Scope:
    """A function being read: what its names stand for (imports, definitions, the types
    of its variables and parameters, ``self`` and the attributes its class sets)."""

    def __init__(
        self, module: Module, function: Function | None, owner: ast.ClassDef | None
    ) -> None:
        self.module = module
        self.function = function
        self.owner = owner
        self.types: dict[str, str] = {}
        self.locals: dict[str, Function] = {}
        self.attributes: dict[str, str] = {}
        self.awaited: set[int] = set()
        if owner is not None:
            self._learn_class(owner)
        if function is not None:
            self._learn_function(function)

    def _learn_class(self, owner: ast.ClassDef) -> None:
        """``self`` and the attributes the class annotates or sets on ``self``: made
        there (``self.client = httpx.AsyncClient()``) or given to a method with an
        annotation (``def __init__(self, session: AsyncSession)``)."""
        self.types["self"] = f"{self.module.name}.{owner.name}"
        for node in ast.walk(owner):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self._annotated(self.attributes, node.target.id, node.annotation)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                given = Scope(self.module, None, None)
                given._parameters(node)
                for inner in ast.walk(node):
                    if not isinstance(inner, ast.Assign | ast.AnnAssign) or inner.value is None:
                        continue
                    value = inner.value
                    kind = self._made_by(value)
                    if kind is None and isinstance(value, ast.Name):
                        kind = given.types.get(value.id)
                    targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                    for target in targets:
                        if kind is not None and _is_self_attribute(target):
                            self.attributes[cast(ast.Attribute, target).attr] = kind

    def _parameters(self, function: Function) -> None:
        arguments = function.args
        for argument in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs):
            if argument.annotation is not None:
                self._annotated(self.types, argument.arg, argument.annotation)

    def _learn_function(self, function: Function) -> None:
        """The function's parameters, variables, local functions and awaited calls."""
        self.awaited = regions.awaited_calls(function.body)
        self._parameters(function)
        for node in regions.walk_scope(function.body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.locals.setdefault(node.name, node)
            elif isinstance(node, ast.stmt):
                self.learn(node)

    def learn(self, statement: ast.stmt) -> None:
        """The names ``statement`` gives a type: ``client = httpx.AsyncClient()``,
        ``async with aiohttp.ClientSession() as session``, ``client: httpx.Client``."""
        if isinstance(statement, ast.Assign):
            kind = self._made_by(statement.value)
            for target in statement.targets:
                if kind is not None and isinstance(target, ast.Name):
                    self.types[target.id] = kind
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            self._annotated(self.types, statement.target.id, statement.annotation)
        elif isinstance(statement, ast.With | ast.AsyncWith):
            for item in statement.items:
                kind = self._made_by(item.context_expr)
                if kind is not None and isinstance(item.optional_vars, ast.Name):
                    self.types[item.optional_vars.id] = kind

    def _made_by(self, value: ast.expr) -> str | None:
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, ast.Call):
            return self.dotted(value.func)
        return None

    def _annotated(self, into: dict[str, str], name: str, annotation: ast.expr) -> None:
        kind = self.dotted(_unwrap(annotation))
        if kind is not None:
            into[name] = kind

    def dotted(self, node: ast.expr) -> str | None:
        """The dotted name ``node`` stands for (``httpx.AsyncClient.get`` for
        ``client.get`` of an ``httpx.AsyncClient``), or ``None``."""
        if isinstance(node, ast.Name):
            name = node.id
            if name in self.types:
                return self.types[name]
            module = self.module
            if name in self.locals:
                return f"{module.name}.<locals>.{name}"
            if name in module.imports:
                return module.imports[name]
            if name in module.names:
                return f"{module.name}.{name}"
            return module.types.get(name)
        if isinstance(node, ast.Attribute):
            if _is_self_attribute(node) and node.attr in self.attributes:
                return self.attributes[node.attr]
            base = self.dotted(node.value)
            if base is None:
                return None
            return self.module.attribute(base, node.attr) or f"{base}.{node.attr}"
        if isinstance(node, ast.Call):  # httpx.AsyncClient().get: a method of what it made
            return self.dotted(node.func)
        if isinstance(node, ast.Await):
            return self.dotted(node.value)
        return None


def _is_self_attribute(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _unwrap(annotation: ast.expr) -> ast.expr:
    """``Annotated[httpx.AsyncClient, Depends(...)]``, ``Optional[X]``, ``X | None``
    and ``"X"``: the ``X``."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            return _unwrap(ast.parse(annotation.value, mode="eval").body)
        except SyntaxError:
            return annotation
    if isinstance(annotation, ast.Subscript):
        inner = annotation.slice
        first = inner.elts[0] if isinstance(inner, ast.Tuple) and inner.elts else inner
        return _unwrap(first)
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        left = annotation.left
        if isinstance(left, ast.Constant) and left.value is None:
            return _unwrap(annotation.right)
        return _unwrap(left)
    return annotation
