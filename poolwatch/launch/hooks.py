"""What ``poolwatch run``'s bootstrap calls once a module is imported: each function puts
wrappers on the library's own functions that tell :class:`~.automatic.Automatic` what
the app does. Each wrapper calls the library's function unchanged, and nothing it adds
may fail the app: a fault is logged and the app goes on.

* ``starlette.applications`` / ``fastapi.applications``: ``build_middleware_stack``,
  which Starlette calls on an app's first lifespan event or request, while middleware
  can still be added (FastAPI has its own copy of it);
* ``sqlalchemy``: ``create_engine``, under every name SQLAlchemy exports it;
  ``sqlalchemy.ext.asyncio.engine``: ``create_async_engine`` (which calls
  ``create_engine`` as it was when it was imported);
* ``tortoise``: ``Tortoise.init`` and, from Tortoise 1.0, ``TortoiseContext.init``
  (``RegisterTortoise`` and ``register_tortoise`` call one of them);
* ``gunicorn.arbiter``, ``uvicorn.supervisors.multiprocess``: a warning when the server
  starts several workers that the launcher did not see (a config file's ``workers``,
  ``uvicorn.run(workers=2)``), with no multiprocess directory.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from poolwatch.launch.automatic import Automatic

__all__ = [
    "automatic",
    "fastapi_imported",
    "gunicorn_imported",
    "sqlalchemy_asyncio_imported",
    "sqlalchemy_imported",
    "starlette_imported",
    "tortoise_imported",
    "uvicorn_supervisor_imported",
]

logger = logging.getLogger("poolwatch")

_WRAPPED = "__poolwatch_run__"  # set on each wrapper: never wrapped twice
_F = TypeVar("_F", bound=Callable[..., Any])

_made: list[Automatic] = []
_lock = threading.Lock()


def automatic() -> Automatic:
    """This process's :class:`Automatic`, made on first use."""
    with _lock:
        if not _made:
            _made.append(Automatic(os.environ))
        return _made[0]


def _tell(what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:
        logger.exception("poolwatch run: %s failed; the app goes on without it", what)


def _mark(wrapper: _F) -> _F:
    setattr(wrapper, _WRAPPED, True)
    return wrapper


def _wrapped(function: object) -> bool:
    return bool(getattr(function, _WRAPPED, False))


# -- Starlette and FastAPI ---------------------------------------------------------------


def _wrap_build(cls: type) -> None:
    build = cls.__dict__.get("build_middleware_stack")
    if build is None or _wrapped(build):
        return

    @functools.wraps(build)
    def build_middleware_stack(self: Any) -> Any:
        _tell("instrumenting the app", lambda: automatic().app_building(self))
        return build(self)

    cls.build_middleware_stack = _mark(build_middleware_stack)  # type: ignore[attr-defined]


def starlette_imported(module: ModuleType) -> None:
    """``starlette.applications`` was imported."""
    _wrap_build(module.Starlette)


def fastapi_imported(module: ModuleType) -> None:
    """``fastapi.applications`` was imported."""
    _wrap_build(module.FastAPI)


# -- SQLAlchemy ----------------------------------------------------------------------------


def _engine_factory(create: _F) -> _F:
    @functools.wraps(create)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        engine = create(*args, **kwargs)
        _tell("instrumenting an engine", lambda: automatic().engine_created(engine))
        return engine

    return _mark(wrapper)  # type: ignore[return-value]


def _replace(modules: list[ModuleType], name: str) -> None:
    """Put one wrapper of ``modules[0].<name>`` wherever that very function is exported."""
    original = getattr(modules[0], name, None)
    if original is None or _wrapped(original):
        return
    wrapper = _engine_factory(original)
    for module in modules:
        if getattr(module, name, None) is original:
            setattr(module, name, wrapper)


def sqlalchemy_imported(module: ModuleType) -> None:
    """``sqlalchemy`` was imported."""
    import sqlalchemy.engine
    import sqlalchemy.engine.create

    _replace([sqlalchemy.engine.create, sqlalchemy.engine, module], "create_engine")


def sqlalchemy_asyncio_imported(module: ModuleType) -> None:
    """``sqlalchemy.ext.asyncio.engine`` was imported (its package, importing it,
    exports the wrapper then)."""
    _replace([module], "create_async_engine")


# -- Tortoise ------------------------------------------------------------------------------


def _wrap_init(cls: type) -> None:
    descriptor = cls.__dict__.get("init")
    is_classmethod = isinstance(descriptor, classmethod)
    init = descriptor.__func__ if isinstance(descriptor, classmethod) else descriptor
    if init is None or _wrapped(init):
        return

    @functools.wraps(init)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tell("instrumenting Tortoise", lambda: automatic().tortoise_initialising())
        return await init(*args, **kwargs)

    _mark(wrapper)
    cls.init = classmethod(wrapper) if is_classmethod else wrapper  # type: ignore[attr-defined]


def tortoise_imported(module: ModuleType) -> None:
    """``tortoise`` was imported."""
    _wrap_init(module.Tortoise)
    context = getattr(module, "TortoiseContext", None)
    if context is None:
        try:
            from tortoise import context as context_module
        except ImportError:  # before Tortoise 1.0
            return
        context = getattr(context_module, "TortoiseContext", None)
    if isinstance(context, type):
        _wrap_init(context)


# -- servers' own worker counts ---------------------------------------------------------------


def _warn_unseen(server: str, workers: object, how: str) -> None:
    if isinstance(workers, int) and workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        logger.warning(
            "poolwatch run: %s starts %d workers, without multiprocess mode: each one's "
            "/metrics shows only its own. %s, or run `poolwatch run --multiprocess -- ...`",
            server,
            workers,
            how,
        )


def _before(cls: type, name: str, check: Callable[[Any], None]) -> None:
    method = cls.__dict__.get(name)
    if method is None or _wrapped(method):
        return

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _tell("checking the workers", lambda: check(self))
        return method(self, *args, **kwargs)

    setattr(cls, name, _mark(wrapper))


def gunicorn_imported(module: ModuleType) -> None:
    """``gunicorn.arbiter`` was imported: warn when its workers, set where the launcher
    could not see them (a config file), run without multiprocess mode."""

    def check(arbiter: Any) -> None:
        workers = getattr(arbiter, "num_workers", 1)
        _warn_unseen("gunicorn", workers, f"Give the count on the command line (-w {workers})")

    _before(module.Arbiter, "start", check)


def uvicorn_supervisor_imported(module: ModuleType) -> None:
    """``uvicorn.supervisors.multiprocess`` was imported: the same for uvicorn's workers
    (``uvicorn.run(..., workers=2)`` in a ``python -m`` app)."""

    def check(supervisor: Any) -> None:
        workers = getattr(supervisor, "processes_num", 1)
        _warn_unseen("uvicorn", workers, "Set WEB_CONCURRENCY instead of workers=")

    _before(module.Multiprocess, "run", check)
