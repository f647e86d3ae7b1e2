"""``poolwatch run``'s bootstrap, run by Python at the start of every process of the
command (the server and each of its workers), from ``PYTHONPATH``, which the launcher
set: this directory holds this one file.

At start-up it imports nothing of poolwatch. It puts a finder first on ``sys.meta_path``
that, once one of a few modules has been imported (Starlette's and FastAPI's
applications, SQLAlchemy, Tortoise), calls the function of ``poolwatch.launch.hooks``
named for it; then it runs the ``sitecustomize`` it hides, if there is one. In the
command's first process it also arranges for the multiprocess directory the launcher
made to be removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

RUN = "_POOLWATCH_RUN"  # the launcher's process id: this is a `poolwatch run` command
MARKER = "poolwatch-run.pid"  # in a multiprocess directory the launcher made
HOOKS_MODULE = "poolwatch.launch.hooks"
# module imported -> the function of poolwatch.launch.hooks that it calls
HOOKS = {
    "starlette.applications": "starlette_imported",
    "fastapi.applications": "fastapi_imported",
    "sqlalchemy": "sqlalchemy_imported",
    "sqlalchemy.ext.asyncio.engine": "sqlalchemy_asyncio_imported",
    "tortoise": "tortoise_imported",
    "gunicorn.arbiter": "gunicorn_imported",
    "uvicorn.supervisors.multiprocess": "uvicorn_supervisor_imported",
}

Hook = Callable[[ModuleType], None]


def _say(message: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"poolwatch run: {message}\n")


class _Loader(importlib.abc.Loader):
    """The module's own loader, which calls the hooks once the module has run."""

    def __init__(self, inner: Any, hooks: PostImportHooks) -> None:
        self._inner = inner
        self._hooks = hooks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._inner.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        # The module shows its own loader, as if this one had never been there.
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        self._hooks.imported(module)

    def __getattr__(self, name: str) -> Any:  # get_code, get_resource_reader ...
        return getattr(self._inner, name)


class PostImportHooks(importlib.abc.MetaPathFinder):
    """Calls functions after a module is imported (at once if it is already)."""

    def __init__(self, report: Callable[[str], None] = _say) -> None:
        self._hooks: dict[str, list[Hook]] = {}
        self._lock = threading.RLock()
        self._report = report

    def when_imported(self, name: str, hook: Hook) -> None:
        """Call ``hook(module)`` once module ``name`` has been imported."""
        with self._lock:
            module = sys.modules.get(name)
            if module is None:
                self._hooks.setdefault(name, []).append(hook)
                return
        self._call(hook, module)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._hooks:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, self)
            return spec
        return None

    def imported(self, module: ModuleType) -> None:
        with self._lock:
            hooks = self._hooks.pop(module.__name__, [])
        for hook in hooks:
            self._call(hook, module)

    def _call(self, hook: Hook, module: ModuleType) -> None:
        try:
            hook(module)
        except Exception as exc:  # never fail the app's import
            self._report(f"instrumenting {module.__name__} failed ({exc!r}); it runs as is")


def _named(function: str) -> Hook:
    """The hook ``poolwatch.launch.hooks.<function>``, imported when it is first called."""

    def hook(module: ModuleType) -> None:
        try:
            hooks = importlib.import_module(HOOKS_MODULE)
        except ImportError as exc:
            _unavailable(exc)
            return
        getattr(hooks, function)(module)

    return hook


_said: list[str] = []


def _unavailable(exc: ImportError) -> None:
    if not _said:
        _said.append(str(exc))
        _say(
            f"poolwatch cannot be imported by {sys.executable} ({exc}); the app runs "
            "without it: run the command with the Python that poolwatch is installed in"
        )


def _remove_at_exit(environ: Any) -> None:
    """In the launcher's own process (the command's first), remove the multiprocess
    directory the launcher made, once the process exits (not when a worker it forked
    does: they inherit this handler)."""
    try:
        pid = int(environ.get(RUN, ""))
    except ValueError:
        return
    path = environ.get("PROMETHEUS_MULTIPROC_DIR")
    if pid != os.getpid() or not path:
        return
    try:
        with open(os.path.join(path, MARKER)) as marker:
            if int(marker.read().strip()) != pid:
                return
    except (OSError, ValueError):
        return  # the user's own directory: theirs to keep

    def remove() -> None:
        if os.getpid() == pid:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


def _chain() -> None:
    """Run the ``sitecustomize`` this one hides (a virtualenv's, a distribution's)."""
    here = os.path.dirname(os.path.realpath(__file__))
    mine = sys.modules.pop("sitecustomize", None)
    hidden = [p for p in sys.path if os.path.realpath(p or os.curdir) == here]
    for entry in hidden:
        sys.path.remove(entry)
    try:
        importlib.import_module("sitecustomize")  # the next one on the path
    except ImportError as exc:
        if exc.name != "sitecustomize":
            _say(f"error in the hidden sitecustomize: {exc!r}")
        if mine is not None:
            sys.modules["sitecustomize"] = mine
    except Exception as exc:  # what site.py does for its own
        _say(f"error in the hidden sitecustomize: {exc!r}")
        if mine is not None:
            sys.modules["sitecustomize"] = mine


def start(environ: Any = os.environ) -> PostImportHooks | None:
    """Install the hooks in this process (if ``poolwatch run`` started it)."""
    if RUN not in environ or any(type(f).__name__ == "PostImportHooks" for f in sys.meta_path):
        return None  # not a poolwatch run command, or started already
    hooks = PostImportHooks()
    sys.meta_path.insert(0, hooks)
    for name, function in HOOKS.items():
        hooks.when_imported(name, _named(function))
    _remove_at_exit(environ)
    return hooks


if __name__ == "sitecustomize":
    start()
    _chain()
