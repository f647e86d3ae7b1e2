"""Whose code a frame runs, what a library frame is doing, and how its file is shown.

As error trackers do, where a module lives decides whether its frames are the
application's: code installed in ``site-packages`` / ``dist-packages`` and the standard
library are libraries (SQLModel, a repository package, any ORM wrapper), and so are
poolwatch, the well-known ORMs, drivers and frameworks by name (also when installed
editable) and the modules in ``ignore_modules`` (an app's own data layer).
:func:`verdict_of` says it for one code object, in bits the call-site walk
(:mod:`.callsite`) tests; the walk decides once per code object and remembers.

Three kinds of library frame are told apart, because they change what a statement run
under them means: an ORM's relation loader (a lazy load: the relation it loads is named
by the adapter that registered a namer for it), an ORM operation that runs several
statements in one call by design (``Session.merge``'s loads by primary key, a flush's
writes, a cascade's loads), and a serializer (FastAPI validating a ``response_model``
after the endpoint returned).

:func:`display_path` shows a file as the project's own tree names it, so that the log,
the findings endpoint and the pytest report agree.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from collections.abc import Callable
from types import CodeType, FrameType

__all__ = [
    "APP",
    "INLINE",
    "INSTALLED",
    "LIBRARY",
    "LIBRARY_PACKAGES",
    "OPERATION",
    "RELATION",
    "SERIALIZER",
    "display_path",
    "is_installed",
    "is_library_module",
    "register_relation_namer",
    "relation_name",
    "verdict_of",
]

# Top-level packages whose frames are never the call site. Everything from the standard
# library is added at run time (sys.stdlib_module_names).
LIBRARY_PACKAGES = frozenset(
    {
        "poolwatch", "tortoise", "pypika", "pypika_tortoise", "sqlalchemy", "asyncpg",
        "psycopg", "psycopg_pool", "psycopg2", "aiosqlite", "aiomysql", "asyncmy", "pymysql",
        "MySQLdb", "starlette", "fastapi", "anyio", "sniffio", "uvicorn", "gunicorn",
        "hypercorn", "uvloop", "greenlet", "pydantic", "pydantic_core", "httpx", "httpcore",
        "_pytest", "pytest", "pytest_asyncio", "pluggy", "typing_extensions",
        "console_script", "sqlmodel",
    }
)  # fmt: skip
# poolwatch's own demo is an application: its findings must point into it.
_APPLICATION_PACKAGES = ("poolwatch.demo",)
# Files shown, remembered up to this many (the walk's caches are bounded alike).
_MAX_SHOWN = 65536

# What a code object is: the application's, an installed package's (a library, unless no
# frame is the application's), or a known library's; a known library's frame may also be
# a relation loader, an ORM operation or a serializer (bits, combined).
APP, INSTALLED, LIBRARY, INLINE = 0, 1, 2, 3
RELATION, OPERATION, SERIALIZER = 4, 8, 16
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
# ORM operations that run several statements in one call by design, by qualified name:
# a merge loads each object it merges (and its cascade) by primary key, a refresh reloads,
# a flush writes the unit of work, a delete loads the collections its cascade deletes, a
# bulk operation sends its batches. Statements under one such call are one call's cost:
# a loop is many calls, never many statements of one.
_OPERATIONS = {
    "sqlalchemy.orm.session": frozenset(
        {
            "Session.merge", "Session.merge_all", "Session.refresh", "Session.flush",
            "Session.delete", "Session.delete_all",
        }
    ),
    "tortoise.models": frozenset({"Model.fetch_related"}),
    "tortoise.queryset": frozenset(
        {"BulkCreateQuery._execute", "BulkUpdateQuery._execute", "BulkUpdateQuery._execute_many"}
    ),
}  # fmt: skip
# FastAPI's modules that run a request's endpoint and then validate and encode what it
# returned. Reached before any application frame, they mean that no application code ran
# the statement: the response's serialization did (a response_model reading a relation),
# and the application frames further out (a test's client, the app's own middleware)
# are not where it came from: the request's endpoint is.
_SERIALIZERS = ("fastapi.routing", "fastapi._compat", "fastapi.encoders")
# module -> a function that names the relation a loader frame of that module loads
# (``Article.author``); registered by the ORM adapters.
_relation_namers: dict[str, Callable[[FrameType], str | None]] = {}


def register_relation_namer(module: str, namer: Callable[[FrameType], str | None]) -> None:
    """Name the relation that a relation-loader frame of ``module`` loads with ``namer``
    (an adapter's: it reads its ORM's own objects). ``namer`` may return ``None``."""
    _relation_namers[module] = namer


def relation_name(loader: FrameType) -> str:
    """``Article.author``: the relation a relation-loader frame loads, as its module's
    namer names it ("" if none does)."""
    namer = _relation_namers.get(_module_of(loader))
    if namer is None:
        return ""
    try:
        return namer(loader) or ""
    except Exception:  # an ORM's objects not as expected: the relation stays unnamed
        return ""


def verdict_of(code: CodeType, frame: FrameType, ignore: tuple[str, ...]) -> int:
    """What ``code`` (running in ``frame``) is: :data:`APP`, :data:`INSTALLED`,
    :data:`INLINE`, or :data:`LIBRARY` with any of :data:`RELATION`, :data:`OPERATION`
    and :data:`SERIALIZER` added; ``ignore`` holds module prefixes to treat as a library."""
    module = _module_of(frame)
    if code.co_name in _INLINED:
        verdict = INLINE
    elif module.startswith(_APPLICATION_PACKAGES):
        verdict = APP
    elif is_library_module(module, ignore):
        verdict = LIBRARY
        loaders = _RELATION_LOADERS.get(module)
        if loaders is not None and code.co_name.startswith(loaders):
            verdict |= RELATION
        if code.co_qualname in _OPERATIONS.get(module, ()):
            verdict |= OPERATION
        if module.startswith(_SERIALIZERS):
            verdict |= SERIALIZER
    elif is_installed(code.co_filename):
        verdict = INSTALLED
    else:
        verdict = APP
    return verdict


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
        if len(_display_cache) < _MAX_SHOWN:
            _display_cache[filename] = shown
    return shown
